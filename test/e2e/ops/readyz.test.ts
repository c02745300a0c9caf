/**
 * /readyz asks what serving needs of the root — search permission for the server's own user —
 * not its mode bits: a root the server may search but not list (0711, owned by someone else)
 * serves every file and is ready; one it may not search is not ready, and ready again once it
 * may. Permission checks pass trivially for root, so when the tests run as root the server runs
 * as `nobody` (setpriv, as the unprivileged storage tests do): the compiled binary, from a
 * directory open to that user, since a checkout under a directory of mode 0700 is not.
 * Run as an ordinary user, the server is that user and owns the root: its owner bits decide
 * (0311 search-only, 0611 no search).
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { executableBy } from "../../helpers/as-user.ts";
import { compiledBinary } from "../../helpers/binary.ts";
import { run } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

setDefaultTimeout(30_000);

const asRoot = process.getuid?.() === 0;
const setpriv = Bun.which("setpriv");
/** searchable but not listable, and not searchable, for the server's user */
const SEARCH_ONLY = asRoot ? 0o711 : 0o311;
const NO_SEARCH = asRoot ? 0o700 : 0o611;

let base = "";
let root = "";
let server: ChildServer | null = null;
const content = patternBytes(300_000, 17);

async function readyz(): Promise<{ status: number; body: string }> {
  const response = await fetch(`${server!.metricsUrl}/readyz`, { signal: AbortSignal.timeout(3000) });
  return { status: response.status, body: await response.text() };
}

function uidOf(pid: number): number {
  const m = /^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m?.[1]);
}

beforeAll(async () => {
  if (asRoot && setpriv === null) throw new Error("tests run as root need setpriv (util-linux) to run the server unprivileged");
  base = tempDir("tftpd-readyz-");
  chmodSync(base, 0o755); // the server's user walks through it to the root
  root = join(base, "root");
  mkdirSync(root);
  writeFile(root, "boot.bin", content);
  chmodSync(join(root, "boot.bin"), 0o644);
  chmodSync(root, SEARCH_ONLY);
  let binary: string | undefined;
  if (asRoot) {
    // the server as nobody: `serve ARGS` goes through a wrapper
    const asNobody = [setpriv!, "--reuid=nobody", "--regid=nogroup", "--clear-groups"];
    const tftpd = executableBy(asNobody, await compiledBinary(), base);
    binary = join(base, "serve-as-nobody");
    writeFileSync(binary, `#!/bin/sh\nexec ${asNobody.join(" ")} ${tftpd} "$@"\n`);
    chmodSync(binary, 0o755);
  }
  // TFTPD_TFTP_USER unset: the test preload's "root" is no user an unprivileged server can be
  server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0"], { binary, env: { HOME: base, TFTPD_TFTP_USER: undefined } });
}, 180_000); // the first compiled binary of a test run is built here

afterAll(async () => {
  await server?.stop("SIGKILL");
  if (root) chmodSync(root, 0o755);
  if (base) removeDir(base);
});

describe("/readyz and the root's permissions", () => {
  test("the server runs as a user the permission checks apply to", () => {
    const uid = uidOf(server!.proc.pid);
    expect(uid).not.toBe(0);
    if (asRoot) expect(uid).toBe(65534);
  });

  test("a root the server may search but not list is ready, and serves", async () => {
    expect(await readyz()).toEqual({ status: 200, body: "ready\n" });
    const out = join(base, "got.bin");
    const r = await run(["curl", "-sS", "--max-time", "10", "-o", out, `tftp://127.0.0.1:${server!.port}/boot.bin`], { timeoutMs: 12_000 });
    expect(r.stderr).toBe("");
    expect(sha256(readFileSync(out))).toBe(sha256(content));
  });

  test("a root the server may not search is not ready, naming why; ready again once it may", async () => {
    chmodSync(root, NO_SEARCH);
    try {
      const r = await readyz();
      expect(r.status).toBe(503);
      expect(r.body).toBe(`not ready: root ${root} not searchable by this process (EACCES)\n`);
    } finally {
      chmodSync(root, SEARCH_ONLY);
    }
    expect(await readyz()).toEqual({ status: 200, body: "ready\n" });
  });
});

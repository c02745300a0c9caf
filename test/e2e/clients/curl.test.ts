/**
 * curl's tftp:// client against the in-process server: byte-exact downloads at every block-size
 * edge, RFC 2348 blksize, IPv6, a missing file, and uploads (allowed and refused).
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { patternBytes, removeDir, sha256, sha256File, tempDir, writeFile } from "../../helpers/files.ts";
import { run } from "../../helpers/run.ts";
import { recordAfter, startServer, type InProcessServer } from "../../helpers/server.ts";

setDefaultTimeout(60_000);

/** curl exit codes for TFTP (libcurl CURLE_TFTP_NOTFOUND, CURLE_TFTP_PERM). */
const CURLE_TFTP_NOTFOUND = 68;
const CURLE_TFTP_PERM = 69;

const SIZES = [0, 1, 511, 512, 513, 1 << 20, 3 * (1 << 20) + 7];

/** Every curl run is bounded twice: by curl itself and by the runner. */
function curl(args: string[], timeoutMs = 30_000) {
  return run(["curl", "-sS", "--max-time", String(Math.ceil(timeoutMs / 1000)), ...args], { timeoutMs: timeoutMs + 5_000 });
}

/** The first record after index `from` that matches, waiting for it (bounded). */

let root: string;
let out: string;
let server: InProcessServer;
const files = new Map<string, string>(); // name -> sha256

beforeAll(async () => {
  root = tempDir("tftpd-curl-root-");
  out = tempDir("tftpd-curl-out-");
  for (const [i, size] of SIZES.entries()) {
    const bytes = patternBytes(size, 100 + i);
    writeFile(root, `f-${size}.bin`, bytes);
    files.set(`f-${size}.bin`, sha256(bytes));
  }
  server = await startServer(root, { blksizeMax: 8192 });
});

afterAll(async () => {
  await server?.stop();
  removeDir(root);
  removeDir(out);
});

describe("curl downloads are byte-exact", () => {
  for (const blksize of [null, 1468, 8192] as const) {
    for (const size of SIZES) {
      const label = blksize === null ? "default blksize 512" : `--tftp-blksize ${blksize}`;
      // curl 7.88 rejects an OACK carrying "tsize 0" (exit 71, "invalid tsize -:0:- value in OACK
      // packet"), which is what RFC 2349 tells a server to answer for an empty file. So an empty
      // file is fetched with --tftp-no-options (plain RFC 1350, blksize 512), and only once.
      if (size === 0 && blksize !== null) continue;
      test(`${size} bytes, ${label}${size === 0 ? " (--tftp-no-options)" : ""}`, async () => {
        const name = `f-${size}.bin`;
        const dest = join(out, `${name}.${blksize ?? 512}`);
        const from = server.records.length;
        const extra = size === 0 ? ["--tftp-no-options"] : blksize === null ? [] : ["--tftp-blksize", String(blksize)];
        const r = await curl([...extra, "-o", dest, `tftp://127.0.0.1:${server.port}/${name}`]);
        expect(r.stderr).toBe("");
        expect(r.exitCode).toBe(0);
        expect(await sha256File(dest)).toBe(files.get(name)!);
        const record = await recordAfter(server, from, (x) => x.file === name);
        expect(record).toMatchObject({ file: name, direction: "read", result: "ok", bytes: size, blksize: blksize ?? 512, windowsize: 1 });
      });
    }
  }
});

test("IPv6: tftp://[::1]:PORT/ against a server listening on [::1]", async () => {
  const v6 = await startServer(root, { listen: [{ host: "::1", port: 0 }] });
  try {
    expect(v6.host).toBe("::1");
    const dest = join(out, "v6.bin");
    const r = await curl(["--tftp-blksize", "1468", "-o", dest, `tftp://[::1]:${v6.port}/f-${1 << 20}.bin`]);
    expect(r.exitCode).toBe(0);
    expect(await sha256File(dest)).toBe(files.get(`f-${1 << 20}.bin`)!);
    const record = await recordAfter(v6, 0, () => true);
    expect(record.result).toBe("ok");
    expect(record.client).toMatch(/^\[::1\]:\d+$/);
  } finally {
    await v6.stop();
  }
});

test("a missing file: curl exits with CURLE_TFTP_NOTFOUND (68) and writes nothing", async () => {
  const dest = join(out, "missing.bin");
  const r = await curl(["-o", dest, `tftp://127.0.0.1:${server.port}/no-such-file.bin`]);
  expect(r.exitCode).toBe(CURLE_TFTP_NOTFOUND);
  expect(existsSync(dest) ? readFileSync(dest).length : 0).toBe(0);
});

describe("uploads with curl -T", () => {
  test("write=create stores the file byte-exact", async () => {
    const upRoot = tempDir("tftpd-curl-up-");
    const up = await startServer(upRoot, { write: "create" });
    try {
      for (const [size, blksize] of [[0, null], [513, null], [(1 << 20) + 3, 1468]] as const) {
        const local = writeFile(out, `up-${size}.bin`, patternBytes(size, 7 + size));
        const from = up.records.length;
        const extra = blksize === null ? [] : ["--tftp-blksize", String(blksize)];
        const r = await curl([...extra, "-T", local, `tftp://127.0.0.1:${up.port}/up-${size}.bin`]);
        expect(r.stderr).toBe("");
        expect(r.exitCode).toBe(0);
        const record = await recordAfter(up, from, (x) => x.file === `up-${size}.bin`);
        expect(record).toMatchObject({ direction: "write", result: "ok", bytes: size, file: `up-${size}.bin` });
        expect(await sha256File(join(upRoot, `up-${size}.bin`))).toBe(await sha256File(local));
      }
    } finally {
      await up.stop();
      removeDir(upRoot);
    }
  });

  test("write=off (the default) refuses with ERROR 2: curl exits CURLE_TFTP_PERM (69), nothing stored", async () => {
    const local = writeFile(out, "refused.bin", patternBytes(1000, 3));
    const r = await curl(["-T", local, `tftp://127.0.0.1:${server.port}/refused.bin`]);
    expect(r.exitCode).toBe(CURLE_TFTP_PERM);
    expect(existsSync(join(root, "refused.bin"))).toBe(false);
  });
});

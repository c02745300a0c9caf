/**
 * Root confinement over the wire: hostile names, symlinks, directories and missing files get
 * the right ERROR and never one byte from outside the root.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, readdirSync, readFileSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { Opcode } from "../../../src/protocol/packet.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { download, peerTracker, rrq, wrq } from "../../helpers/raw.ts";
import { startServer, type InProcessServer } from "../../helpers/server.ts";

const peers = peerTracker();
afterEach(() => peers.closeAll());

const SECRET = "TOP-SECRET-OUTSIDE-THE-ROOT\n";
const DECOY = "root:x:0:0:decoy inside the tftp root:/:/bin/false\n";
const inner = patternBytes(2000, 51);

let base: string;
let root: string;
let srv: InProcessServer;

beforeAll(async () => {
  base = tempDir();
  root = join(base, "root");
  mkdirSync(root);
  writeFile(base, "x", SECRET);
  writeFile(base, "outside/secret.bin", SECRET);
  writeFile(root, "etc/passwd", DECOY);
  writeFile(root, "sub/file.bin", inner);
  symlinkSync(join(base, "x"), join(root, "evil"));
  symlinkSync(join(base, "outside"), join(root, "evildir"));
  symlinkSync("sub/file.bin", join(root, "alias.bin")); // inside → inside: fine
  mkdirSync(join(root, "emptydir"));
  srv = await startServer(root, { timeoutMs: 1000, write: "overwrite" });
});
afterAll(async () => {
  await srv.stop();
  removeDir(base);
});

const secretBytes = Buffer.from(SECRET);

/** Requests `name` and expects exactly one ERROR `code` back, and no byte of the secret. */
async function refused(request: Uint8Array, code: number): Promise<void> {
  const peer = await peers.open();
  peer.send(request, srv.port, "127.0.0.1");
  const replies = await peer.collect(200);
  for (const r of replies) expect(Buffer.from(r.bytes).includes(secretBytes.subarray(0, 12))).toBe(false);
  expect(replies.map((r) => r.packet?.op)).toEqual([Opcode.ERROR]);
  const packet = replies[0]!.packet;
  if (packet?.op === Opcode.ERROR) expect(packet.code).toBe(code);
}

function outsideUntouched(): void {
  expect(readFileSync(join(base, "x"), "utf8")).toBe(SECRET);
  expect(readdirSync(base).sort()).toEqual(["outside", "root", "x"]);
  expect(readdirSync(join(base, "outside"))).toEqual(["secret.bin"]);
}

describe("reads", () => {
  test("../x → ERROR 2", async () => {
    await refused(rrq("../x"), 2);
  });

  test("a/../../x → ERROR 2", async () => {
    await refused(rrq("a/../../x"), 2);
  });

  test("..\\x (backslashes) → ERROR 2", async () => {
    await refused(rrq("..\\x"), 2);
  });

  test("/etc/passwd means the root's etc/passwd, never the system's", async () => {
    const got = await download(await peers.open(), srv.port, "/etc/passwd");
    expect(new TextDecoder().decode(got.bytes)).toBe(DECOY);
  });

  test("/etc/passwd on a root without one → ERROR 1, not the system file", async () => {
    const bare = tempDir();
    const other = await startServer(bare, { timeoutMs: 1000 });
    try {
      const peer = await peers.open();
      peer.send(rrq("/etc/passwd"), other.port, "127.0.0.1");
      const replies = await peer.collect(200);
      expect(replies.map((r) => r.packet?.op)).toEqual([Opcode.ERROR]);
      if (replies[0]!.packet?.op === Opcode.ERROR) expect(replies[0]!.packet.code).toBe(1);
    } finally {
      await other.stop();
      removeDir(bare);
    }
  });

  test("\\sub\\file.bin: backslashes are separators", async () => {
    const got = await download(await peers.open(), srv.port, "\\sub\\file.bin");
    expect(sha256(got.bytes)).toBe(sha256(inner));
  });

  test("a symlink inside the root that points inside it is served", async () => {
    const got = await download(await peers.open(), srv.port, "alias.bin");
    expect(sha256(got.bytes)).toBe(sha256(inner));
  });

  test("a symlink inside the root pointing at a file outside → ERROR 2, not one byte", async () => {
    await refused(rrq("evil"), 2);
  });

  test("a path through a symlinked directory outside the root → ERROR 2, not one byte", async () => {
    await refused(rrq("evildir/secret.bin"), 2);
  });

  test("a directory → ERROR 2", async () => {
    await refused(rrq("sub"), 2);
    await refused(rrq("emptydir/"), 2);
    await refused(rrq("/"), 2);
  });

  test("a missing file → ERROR 1", async () => {
    await refused(rrq("nope.bin"), 1);
    await refused(rrq("nodir/nope.bin"), 1);
  });

  test("an upload's temporary name is never served", async () => {
    writeFile(root, ".f.0123456789ab.tftpd-part", "partial");
    await refused(rrq(".f.0123456789ab.tftpd-part"), 2);
  });
});

describe("writes", () => {
  test("WRQ ../x → ERROR 2, the outside file untouched", async () => {
    await refused(wrq("../x"), 2);
    outsideUntouched();
  });

  test("WRQ onto a symlink that points outside → ERROR 2, the target untouched", async () => {
    await refused(wrq("evil"), 2);
    outsideUntouched();
  });

  test("WRQ through a symlinked directory outside the root → ERROR 2, nothing created there", async () => {
    await refused(wrq("evildir/new.bin"), 2);
    outsideUntouched();
  });

  test("WRQ into a missing directory → ERROR 1, no directory created", async () => {
    await refused(wrq("newdir/file.bin"), 1);
    expect(readdirSync(root).includes("newdir")).toBe(false);
  });
});

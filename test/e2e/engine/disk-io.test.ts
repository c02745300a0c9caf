/**
 * The io section against the kernel's page cache, read with mincore (test/helpers/page-cache.ts)
 * on files started cold (their pages dropped with POSIX_FADV_DONTNEED, that file only):
 * - io.read_ahead: a file served from disk (the cache off) is read into memory ahead of a
 *   client that has taken only its first blocks; without it only the kernel's own read-ahead;
 * - io.direct_io: the file cache's copy of a file does not leave the file in the page cache;
 *   without it the copy leaves it there; on a file system without O_DIRECT `config check`
 *   says so.
 * Both served on the transfer workers' epoll loop, as by default.
 */
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { rrq, ack, download } from "../../helpers/raw.ts";
import { patternBytes, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { evictFromPageCache, residentBytes } from "../../helpers/page-cache.ts";
import { startServer } from "../../helpers/server.ts";
import { BUN, MAIN, run } from "../../helpers/run.ts";
import { Opcode } from "../../../src/protocol/packet.ts";
import { testScope } from "../../helpers/test-scope.ts";

setDefaultTimeout(30_000);

const MiB = 1 << 20;
const { peers, servers, dirs } = testScope();

/** a root on the disk (not a tmpfs: its pages would be the file itself) holding a cold file */
function coldFile(size: number, seed: number): { root: string; path: string; bytes: Uint8Array } {
  const root = tempDir("tftpd-disk-io-");
  dirs.push(root);
  const bytes = patternBytes(size, seed);
  const path = writeFile(root, "big.bin", bytes);
  evictFromPageCache(path);
  expect(residentBytes(path)).toBeLessThan(256 * 1024);
  return { root, path, bytes };
}

/** Takes the first `blocks` blocks of `name` (blksize 1468), then stops answering. */
async function firstBlocks(port: number, name: string, blocks: number): Promise<void> {
  const peer = await peers.open();
  peer.send(rrq(name, "octet", [["blksize", "1468"]]), port);
  let reply = await peer.next(3000);
  expect(reply.packet?.op).toBe(Opcode.OACK);
  peer.send(ack(0), reply.port);
  for (let block = 1; block <= blocks; block++) {
    reply = await peer.next(3000);
    expect(reply.packet).toMatchObject({ op: Opcode.DATA, block });
    peer.send(ack(block), reply.port);
  }
}

describe("io.read_ahead: a file served from disk", () => {
  for (const [readAheadBytes, expectation] of [
    [32 * MiB, "the next megabytes are in memory before the client asks"],
    [0, "only what the kernel reads ahead by itself"],
  ] as const) {
    test(`read_ahead ${readAheadBytes / MiB} MiB: ${expectation}`, async () => {
      const { root, path } = coldFile(48 * MiB, 7);
      // the cache off: every read of the transfer goes to the file itself
      const s = await startServer(root, { cacheBytes: 0, ioLoop: "epoll", diskIo: { readAheadBytes, directFills: false, ioThreads: 0 } });
      servers.push(s);
      await firstBlocks(s.port, "big.bin", 8);
      await Bun.sleep(400); // the disk's reads, asked for, land
      const resident = residentBytes(path);
      if (readAheadBytes > 0) expect(resident).toBeGreaterThanOrEqual(4 * MiB);
      else expect(resident).toBeLessThan(2 * MiB);
    });
  }
});

describe("io.direct_io: the file cache's copy", () => {
  for (const directFills of [true, false]) {
    test(directFills ? "direct_io true: copied past the page cache, which keeps none of the file" : "direct_io false: the copy leaves the file in the page cache", async () => {
      const { root, path, bytes } = coldFile(16 * MiB, 8);
      const s = await startServer(root, { cacheBytes: 64 * MiB, ioLoop: "epoll", diskIo: { readAheadBytes: 0, directFills, ioThreads: 2 } });
      servers.push(s);
      const peer = await peers.open();
      const r = await download(peer, s.port, "big.bin", { options: [["blksize", "8192"], ["windowsize", "16"]], timeoutMs: 20_000 });
      expect(sha256(r.bytes)).toBe(sha256(bytes));
      expect(s.server.cache.stats.misses).toBe(1);
      const resident = residentBytes(path);
      if (directFills) expect(resident).toBeLessThan(1 * MiB);
      else expect(resident).toBeGreaterThanOrEqual(12 * MiB);
    });
  }
});


describe("io.direct_io on a file system without O_DIRECT", () => {
  test("config check says so in one line naming the key and the root (ramfs, in a mount namespace of the test's own)", async () => {
    if (process.getuid?.() !== 0) throw new Error("this test needs root to mount a ramfs in a private mount namespace (unshare -m); run the tests as root, as CI does");
    const work = tempDir("tftpd-no-odirect-");
    dirs.push(work);
    const root = join(work, "root");
    mkdirSync(root);
    const config = join(work, "config.json");
    writeFileSync(config, JSON.stringify({ tftp: { root }, io: { direct_io: true } }));
    // the mount lives and dies with the namespace: the machine never sees it
    const script = `mount -t ramfs ramfs '${root}' && echo x > '${root}/f' && exec '${BUN}' '${MAIN}' config check --config '${config}'`;
    const r = await run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], { timeoutMs: 20_000 });
    expect(r.exitCode).toBe(0);
    expect(r.stdout + r.stderr).toContain(`io.direct_io is true, but the file system of ${root} takes no O_DIRECT: the file cache copies its files through the page cache`);
    // and on this disk, where O_DIRECT works, nothing is said
    const ondisk = join(work, "disk");
    mkdirSync(ondisk);
    writeFileSync(join(ondisk, "f"), "x");
    writeFileSync(config, JSON.stringify({ tftp: { root: ondisk }, io: { direct_io: true } }));
    const quiet = await run([BUN, MAIN, "config", "check", "--config", config]);
    expect(quiet.exitCode).toBe(0);
    expect(quiet.stdout + quiet.stderr).not.toContain("O_DIRECT");
  });
});

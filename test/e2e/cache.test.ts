/**
 * The file cache through the real server (in-process, loopback): concurrent curl downloads of
 * one file share one fill; a transfer in flight keeps the bytes it started with when the file
 * is overwritten (`cp`) or truncated to 0 under it, the next request sees the new version, and
 * the server stays up. Without the cache the same overwrite ends the transfer with an ERROR
 * before a block of the new version leaves. A deleted file's copy leaves the cache when the
 * next request for it finds nothing.
 */
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import { join } from "node:path";
import { Opcode } from "../../src/protocol/packet.ts";
import { patternBytes, sha256, sha256File, tempDir, writeFile } from "../helpers/files.ts";
import { ack, describeReceived, recordWhere, rrq } from "../helpers/raw.ts";
import { run } from "../helpers/run.ts";
import { startServer, type InProcessServer } from "../helpers/server.ts";
import { testScope } from "../helpers/test-scope.ts";

setDefaultTimeout(60_000);

const MiB = 1 << 20;
const BLOCK = 512;

const { peers, servers, dirs } = testScope();

function dir(prefix: string): string {
  const d = tempDir(prefix);
  dirs.push(d);
  return d;
}

async function serve(root: string, cacheBytes = 64 * MiB): Promise<InProcessServer> {
  const s = await startServer(root, { cacheBytes });
  servers.push(s);
  return s;
}

/** Every curl run is bounded twice: by curl itself and by the runner. */
function curl(args: string[], timeoutMs = 30_000) {
  return run(["curl", "-sS", "--max-time", String(Math.ceil(timeoutMs / 1000)), ...args], { timeoutMs: timeoutMs + 5_000 });
}

async function curlGet(server: InProcessServer, name: string, dest: string, extra: string[] = []): Promise<string> {
  const r = await curl([...extra, "-o", dest, `tftp://127.0.0.1:${server.port}/${name}`]);
  if (r.exitCode !== 0) throw new Error(`curl ${name}: exit ${r.exitCode}: ${r.stderr}`);
  return sha256File(dest);
}

interface SlowResult {
  /** the payloads of the blocks in order, as the client keeps them */
  bytes: Uint8Array;
  /** every DATA that arrived, retransmissions included */
  seen: { block: number; data: Uint8Array }[];
  /** the server's ERROR, when it ended the transfer with one */
  error: string | null;
}

/**
 * A lock-step client at the default blksize (512, no options) that stops after DATA `pauseAt`,
 * runs `midway` before acknowledging it (the transfer is in flight, the server waiting for that
 * ACK and retransmitting), then carries on to the end (or the server's ERROR). Retransmitted
 * blocks are recorded, not kept.
 */
async function slowDownload(server: InProcessServer, name: string, pauseAt: number, midway: () => Promise<void>): Promise<SlowResult> {
  const peer = await peers.open();
  peer.send(rrq(name), server.port, server.host);
  const chunks: Uint8Array[] = [];
  const seen: SlowResult["seen"] = [];
  let tid: { port: number; address: string } | null = null;
  let error: string | null = null;
  for (let expected = 1; ; ) {
    const r = await peer.next(3000);
    if (r.packet?.op === Opcode.ERROR) {
      error = `${r.packet.code} ${r.packet.message}`;
      break;
    }
    if (r.packet?.op !== Opcode.DATA) throw new Error(`expected DATA ${expected}, got ${describeReceived(r)}`);
    tid ??= { port: r.port, address: r.address };
    if (r.port !== tid.port || r.address !== tid.address) throw new Error(`DATA from a second TID: ${describeReceived(r)}`);
    seen.push({ block: r.packet.block, data: r.packet.data });
    if (r.packet.block !== (expected & 0xffff)) continue; // a retransmission of a block we have
    chunks.push(r.packet.data);
    if (expected === pauseAt) await midway();
    peer.send(ack(expected & 0xffff), tid.port, tid.address);
    if (r.packet.data.length < BLOCK) break;
    expected++;
  }
  const bytes = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.length;
  }
  return { bytes, seen, error };
}

/** Every DATA sent (retransmissions too) carries exactly the old content at its offset. */
function expectOnlyOldBytes(seen: SlowResult["seen"], old: Uint8Array): void {
  const wrong = seen.filter(({ block, data }) => {
    const want = old.subarray((block - 1) * BLOCK, Math.min(old.length, block * BLOCK));
    return sha256(data) !== sha256(want);
  });
  expect(wrong.map((w) => w.block)).toEqual([]);
}

test("20 concurrent curl downloads of one 8 MiB file are byte-exact and share one fill", async () => {
  const root = dir("tftpd-cache-root-");
  const out = dir("tftpd-cache-out-");
  const content = patternBytes(8 * MiB, 41);
  writeFile(root, "initrd.img", content);
  const server = await serve(root);

  const sums = await Promise.all(
    Array.from({ length: 20 }, (_, i) => curlGet(server, "initrd.img", join(out, `${i}.bin`), ["--tftp-blksize", "8192"])),
  );
  expect(sums).toEqual(Array.from({ length: 20 }, () => sha256(content)));
  expect(server.server.cache.stats).toMatchObject({ misses: 1, hits: 19, bypasses: 0, entries: 1, bytes: content.length });
  const records = server.records.filter((r) => r.file === "initrd.img");
  expect(records.map((r) => r.result)).toEqual(Array.from({ length: 20 }, () => "ok"));
});

describe("the served file changes during a transfer", () => {
  const OLD = patternBytes(MiB + 100, 42);
  const NEW = patternBytes(700 * 1024 + 3, 43);

  test("cp over it: the running transfer completes with the old bytes, the next download gets the new ones", async () => {
    const root = dir("tftpd-cache-root-");
    const out = dir("tftpd-cache-out-");
    const file = writeFile(root, "boot.img", OLD);
    const replacement = writeFile(out, "new.img", NEW);
    const inode = fs.statSync(file).ino;
    const server = await serve(root);

    const result = await slowDownload(server, "boot.img", 10, async () => {
      expect(server.server.cache.stats).toMatchObject({ misses: 1, bypasses: 0 });
      const cp = await run(["cp", replacement, file]);
      expect(cp.exitCode).toBe(0);
      expect(fs.statSync(file).ino).toBe(inode); // overwritten in place, the hard case
      expect(await sha256File(file)).toBe(sha256(NEW));
    });
    expect(result.error).toBeNull();
    expect(result.bytes.length).toBe(OLD.length);
    expect(sha256(result.bytes)).toBe(sha256(OLD));
    expectOnlyOldBytes(result.seen, OLD);
    expect((await recordWhere(server, (r) => r.file === "boot.img")).result).toBe("ok");

    // The next request is a new version (a miss) and the server is still answering.
    expect(await curlGet(server, "boot.img", join(out, "after.bin"))).toBe(sha256(NEW));
    expect(server.server.cache.stats).toMatchObject({ misses: 2, bypasses: 0 });
  });

  test("truncated to 0: the server neither crashes nor sends anything but the old bytes", async () => {
    const root = dir("tftpd-cache-root-");
    const out = dir("tftpd-cache-out-");
    const file = writeFile(root, "boot.img", OLD);
    writeFile(root, "other.img", NEW);
    const server = await serve(root);

    const result = await slowDownload(server, "boot.img", 10, async () => {
      fs.truncateSync(file, 0);
      expect(fs.statSync(file).size).toBe(0);
    });
    expect(result.error).toBeNull();
    expectOnlyOldBytes(result.seen, OLD);
    expect(sha256(result.bytes)).toBe(sha256(OLD));
    expect((await recordWhere(server, (r) => r.file === "boot.img")).result).toBe("ok");

    // Still alive: the now-empty file downloads as empty, another file downloads whole.
    expect(await curlGet(server, "boot.img", join(out, "empty.bin"), ["--tftp-no-options"])).toBe(sha256(new Uint8Array(0)));
    expect(await curlGet(server, "other.img", join(out, "other.bin"))).toBe(sha256(NEW));
    expect(server.server.cache.stats).toMatchObject({ misses: 3, bypasses: 0 });
  });

  test("without the cache, the same overwrite ends the transfer with an ERROR: no block of the new version leaves", async () => {
    const root = dir("tftpd-cache-root-");
    const out = dir("tftpd-cache-out-");
    const file = writeFile(root, "boot.img", OLD);
    const replacement = writeFile(out, "new.img", NEW);
    const server = await serve(root, 0);

    const result = await slowDownload(server, "boot.img", 10, async () => {
      expect((await run(["cp", replacement, file])).exitCode).toBe(0);
    });
    expect(server.server.cache.stats).toMatchObject({ misses: 0, bypasses: 1 });
    // Read from the live file, the blocks after the pause would carry the new content: the
    // server notices the file changed and stops instead.
    expectOnlyOldBytes(result.seen, OLD);
    expect(result.error).toStartWith("0 ");
    expect(result.error).toContain("file changed during transfer");
    const record = await recordWhere(server, (r) => r.file === "boot.img");
    expect(record.result).toBe("error");
  });
});

describe("a deleted file leaves the cache", () => {
  test("the next request is ERROR 1 and the copy is released; a new file under the name is served new", async () => {
    const root = dir("tftpd-cache-root-");
    const out = dir("tftpd-cache-out-");
    const file = writeFile(root, "boot.img", patternBytes(MiB, 50));
    const server = await serve(root);
    expect(await curlGet(server, "boot.img", join(out, "a.bin"))).toBe(sha256(patternBytes(MiB, 50)));
    expect(server.server.cache.stats).toMatchObject({ entries: 1, bytes: MiB });

    fs.unlinkSync(file);
    const missing = await curl(["-o", join(out, "b.bin"), `tftp://127.0.0.1:${server.port}/boot.img`]);
    expect(missing.exitCode).toBe(68); // CURLE_TFTP_NOTFOUND: ERROR 1
    expect(server.server.cache.stats).toMatchObject({ entries: 0, bytes: 0 });

    writeFile(root, "boot.img", patternBytes(MiB / 2, 51));
    expect(await curlGet(server, "boot.img", join(out, "c.bin"))).toBe(sha256(patternBytes(MiB / 2, 51)));
    expect(server.server.cache.stats).toMatchObject({ entries: 1, bytes: MiB / 2 });
  });
});

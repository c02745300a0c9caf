/**
 * Uploads (WRQ) over the wire: write policies, atomic publication, aborted and oversize
 * uploads leaving nothing behind, windows, duplicates and the final dally.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync, statfsSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Opcode } from "../../../src/protocol/packet.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { download, data, error, peerTracker, rawPacket, type RawPeer, recordWhere, upload, waitFor, wrq } from "../../helpers/raw.ts";
import { tftpd, run } from "../../helpers/run.ts";
import { startServer, type InProcessServer } from "../../helpers/server.ts";

const peers = peerTracker();
afterEach(() => peers.closeAll());

const OLD = patternBytes(3000, 61);
const NEW = patternBytes(5000, 62);

function listing(dir: string): string[] {
  return readdirSync(dir, { recursive: true }).map(String).sort();
}

function fileHash(path: string): string {
  return sha256(readFileSync(path));
}

/** WRQ, then the first `blocks` blocks of `content` lock-step; returns the transfer port. */
async function startUpload(peer: RawPeer, port: number, name: string, content: Uint8Array, blocks: number): Promise<number> {
  peer.send(wrq(name), port, "127.0.0.1");
  const a0 = await peer.nextAck(0);
  for (let b = 1; b <= blocks; b++) {
    peer.send(data(b, content.subarray((b - 1) * 512, b * 512)), a0.port, "127.0.0.1");
    await peer.nextAck(b);
  }
  return a0.port;
}

describe('write "off"', () => {
  test("WRQ → ERROR 2, nothing created", async () => {
    const root = tempDir();
    const srv = await startServer(root, { write: "off" });
    try {
      const peer = await peers.open();
      peer.send(wrq("new.bin"), srv.port, "127.0.0.1");
      const err = await peer.nextError(2);
      expect(err.port).toBe(srv.port);
      await peer.expectNothing(100);
      expect(listing(root)).toEqual([]);
    } finally {
      await srv.stop();
      removeDir(root);
    }
  });
});

describe('write "create"', () => {
  let root: string;
  let srv: InProcessServer;

  beforeAll(async () => {
    root = tempDir();
    writeFile(root, "existing.bin", OLD);
    // a retransmit timeout well above the test's own pauses: any ACK seen is an answer
    srv = await startServer(root, { write: "create", timeoutMs: 500, retries: 2, uploadMax: 2000 + 1 });
  });
  afterAll(async () => {
    await srv.stop();
    removeDir(root);
  });

  test("a new file appears byte-exact", async () => {
    const small = NEW.subarray(0, 1800);
    await upload(await peers.open(), srv.port, "new.bin", small);
    expect(fileHash(join(root, "new.bin"))).toBe(sha256(small));
    const record = await recordWhere(srv, (r) => r.file === "new.bin");
    expect(record.result).toBe("ok");
    expect(record.bytes).toBe(1800);
  });

  test("an empty upload is one empty DATA and creates an empty file", async () => {
    await upload(await peers.open(), srv.port, "empty.bin", new Uint8Array(0));
    expect(readFileSync(join(root, "empty.bin")).length).toBe(0);
  });

  test("an exact multiple of blksize ends with a zero-length DATA and is stored whole", async () => {
    const peer = await peers.open();
    const tid = await startUpload(peer, srv.port, "exact.bin", NEW, 2);
    // after two full blocks the file is not complete: nothing is published yet
    expect(existsSync(join(root, "exact.bin"))).toBe(false);
    peer.send(data(3, new Uint8Array(0)), tid, "127.0.0.1");
    await peer.nextAck(3);
    expect(fileHash(join(root, "exact.bin"))).toBe(sha256(NEW.subarray(0, 1024)));
  });

  test("an existing file → ERROR 6, its content untouched", async () => {
    const peer = await peers.open();
    peer.send(wrq("existing.bin"), srv.port, "127.0.0.1");
    await peer.nextError(6);
    expect(fileHash(join(root, "existing.bin"))).toBe(sha256(OLD));
  });

  test("while the upload runs the final name does not exist yet", async () => {
    const before = listing(root);
    const peer = await peers.open();
    const tid = await startUpload(peer, srv.port, "growing.bin", NEW, 3);
    expect(existsSync(join(root, "growing.bin"))).toBe(false);
    // last block (short): now it is published
    peer.send(data(4, NEW.subarray(1536, 1900)), tid, "127.0.0.1");
    await peer.nextAck(4);
    expect(fileHash(join(root, "growing.bin"))).toBe(sha256(NEW.subarray(0, 1900)));
    expect(listing(root)).toEqual([...before, "growing.bin"].sort());
  });

  test("an upload over uploadMax → ERROR 3, nothing left", async () => {
    const before = listing(root);
    const peer = await peers.open();
    peer.send(wrq("toobig.bin"), srv.port, "127.0.0.1");
    const a0 = await peer.nextAck(0);
    for (let b = 1; b <= 3; b++) {
      peer.send(data(b, NEW.subarray((b - 1) * 512, b * 512)), a0.port, "127.0.0.1");
      await peer.nextAck(b);
    }
    // 2048 bytes > 2001
    peer.send(data(4, NEW.subarray(1536, 2048)), a0.port, "127.0.0.1");
    await peer.nextError(3);
    expect(listing(root)).toEqual(before);
    const record = await recordWhere(srv, (r) => r.file === "toobig.bin");
    expect(record.result).toBe("error");
  });

  test("the client sends ERROR mid-way: the directory is exactly as before", async () => {
    const before = listing(root);
    const peer = await peers.open();
    const tid = await startUpload(peer, srv.port, "aborted.bin", NEW, 2);
    peer.send(error(0, "user cancelled"), tid, "127.0.0.1");
    const record = await recordWhere(srv, (r) => r.file === "aborted.bin");
    expect(record.result).toBe("client-error");
    expect(listing(root)).toEqual(before);
    await peer.expectNothing(100);
  });

  test("the client stops answering: give-up leaves the directory exactly as before", async () => {
    const quick = await startServer(root, { write: "create", timeoutMs: 100, retries: 2 });
    try {
      const before = listing(root);
      const peer = await peers.open();
      await startUpload(peer, quick.port, "silent.bin", NEW, 2);
      // ACK 2 comes again twice (100 ms, then 200 ms later), then the server gives up
      const copies = await peer.collect(900);
      expect(copies.map((c) => c.packet)).toEqual([
        { op: Opcode.ACK, block: 2 },
        { op: Opcode.ACK, block: 2 },
      ]);
      const record = await recordWhere(quick, (r) => r.file === "silent.bin", 3000);
      expect(record.result).toBe("timeout");
      expect(listing(root)).toEqual(before);
      expect(quick.server.activeTransfers).toBe(0);
    } finally {
      await quick.stop();
    }
  });

  test("a DATA larger than blksize is no block of the upload: dropped, counted, the upload goes on", async () => {
    const peer = await peers.open();
    peer.send(wrq("fat.bin"), srv.port, "127.0.0.1");
    const a0 = await peer.nextAck(0);
    peer.send(data(1, NEW.subarray(0, 600)), a0.port, "127.0.0.1");
    await peer.expectNothing(100);
    expect(existsSync(join(root, "fat.bin"))).toBe(false);
    peer.send(data(1, NEW.subarray(0, 512)), a0.port, "127.0.0.1");
    await peer.nextAck(1);
    peer.send(data(2, NEW.subarray(512, 700)), a0.port, "127.0.0.1");
    await peer.nextAck(2);
    const record = await recordWhere(srv, (r) => r.file === "fat.bin");
    expect(record.result).toBe("ok");
    expect(record.strays).toEqual({ malformed: 1 });
    expect(fileHash(join(root, "fat.bin"))).toBe(sha256(NEW.subarray(0, 700)));
  });

  test("a retransmitted final DATA after the final ACK gets the ACK again (dally)", async () => {
    const peer = await peers.open();
    const tid = await startUpload(peer, srv.port, "dally.bin", NEW, 1);
    const last = data(2, NEW.subarray(512, 700));
    peer.send(last, tid, "127.0.0.1");
    await peer.nextAck(2);
    // our final ACK "was lost": the client sends its last block again
    peer.send(last, tid, "127.0.0.1");
    const again = await peer.nextAck(2, 400);
    expect(again.port).toBe(tid);
    await peer.expectNothing(50);
    expect(fileHash(join(root, "dally.bin"))).toBe(sha256(NEW.subarray(0, 700)));
  });

  test("a duplicate DATA (lost ACK) is ACKed again and stored once", async () => {
    const peer = await peers.open();
    const tid = await startUpload(peer, srv.port, "dup.bin", NEW, 2);
    peer.send(data(2, NEW.subarray(512, 1024)), tid, "127.0.0.1");
    await peer.nextAck(2);
    // an older duplicate (block 1) is not answered (RFC 1123 §4.2.3.1)
    peer.send(data(1, NEW.subarray(0, 512)), tid, "127.0.0.1");
    await peer.expectNothing(60);
    peer.send(data(3, NEW.subarray(1024, 1100)), tid, "127.0.0.1");
    await peer.nextAck(3);
    expect(fileHash(join(root, "dup.bin"))).toBe(sha256(NEW.subarray(0, 1100)));
  });
});

describe('write "overwrite"', () => {
  let root: string;
  let srv: InProcessServer;

  beforeAll(async () => {
    root = tempDir();
    srv = await startServer(root, { write: "overwrite", timeoutMs: 500, retries: 2 });
  });
  afterAll(async () => {
    await srv.stop();
    removeDir(root);
  });

  test("replaces an existing file; during the upload it keeps the old content", async () => {
    writeFile(root, "cfg.bin", OLD);
    const peer = await peers.open();
    const tid = await startUpload(peer, srv.port, "cfg.bin", NEW, 4);
    expect(fileHash(join(root, "cfg.bin"))).toBe(sha256(OLD));
    for (let b = 5; b <= 10; b++) {
      peer.send(data(b, NEW.subarray((b - 1) * 512, b * 512)), tid, "127.0.0.1");
      await peer.nextAck(b);
    }
    expect(fileHash(join(root, "cfg.bin"))).toBe(sha256(NEW));
    expect(listing(root)).toEqual(["cfg.bin"]);
  });

  test("an aborted overwrite leaves the old file and no temporary file", async () => {
    writeFile(root, "keep.bin", OLD);
    const before = listing(root);
    const peer = await peers.open();
    const tid = await startUpload(peer, srv.port, "keep.bin", NEW, 3);
    peer.send(error(0, "abort"), tid, "127.0.0.1");
    await recordWhere(srv, (r) => r.file === "keep.bin");
    expect(listing(root)).toEqual(before);
    expect(fileHash(join(root, "keep.bin"))).toBe(sha256(OLD));
  });

  test("windowsize 4 upload: one ACK per window, byte-exact", async () => {
    const peer = await peers.open();
    peer.send(wrq("win.bin", "octet", [["windowsize", "4"]]), srv.port, "127.0.0.1");
    const oack = await peer.nextOack();
    expect(oack.packet.options.get("windowsize")).toBe("4");
    for (let b = 1; b <= 4; b++) peer.send(data(b, NEW.subarray((b - 1) * 512, b * 512)), oack.port, "127.0.0.1");
    await peer.nextAck(4);
    await peer.expectNothing(30); // no ACK 1..3
    // a gap: 5, 6, then 8 and 9 (7 "lost") → the server ACKs 6 once, so the client rewinds to 7
    for (const b of [5, 6, 8, 9]) peer.send(data(b, NEW.subarray((b - 1) * 512, b * 512)), oack.port, "127.0.0.1");
    await peer.nextAck(6);
    await peer.expectNothing(30); // one ACK per gap, not one per out-of-order block
    for (const b of [7, 8, 9, 10]) peer.send(data(b, NEW.subarray((b - 1) * 512, b * 512)), oack.port, "127.0.0.1");
    const final = await peer.next();
    expect(final.packet).toEqual({ op: Opcode.ACK, block: 10 });
    expect(fileHash(join(root, "win.bin"))).toBe(sha256(NEW));
  });
});

/** Bytes an unprivileged writer may still use on the file system of `dir`. */
function freeBytes(dir: string): number {
  const st = statfsSync(dir);
  return st.bavail * st.bsize;
}

describe("a declared size (tsize) the server cannot store is refused before any DATA", () => {
  let root: string;
  let srv: InProcessServer;

  beforeAll(async () => {
    root = tempDir();
    // no upload limit below the free space: what refuses is the free space itself
    srv = await startServer(root, { write: "create", uploadMax: Number.MAX_SAFE_INTEGER });
  });
  afterAll(async () => {
    await srv.stop();
    removeDir(root);
  });

  for (const [what, tsize, message] of [
    ["1 PB", "1000000000000000", "disk full: not enough free space"],
    ["the free space plus 1 GiB", "FREE+1G", "disk full: not enough free space"],
    ["more than any number (30 digits)", "9".repeat(30), "file too large"],
  ] as const) {
    test(`tsize of ${what} → ERROR 3 "${message}" from the listen port, nothing created`, async () => {
      const peer = await peers.open();
      const value = tsize === "FREE+1G" ? String(freeBytes(root) + (1 << 30)) : tsize;
      peer.send(wrq("huge.img", "octet", [["tsize", value]]), srv.port, "127.0.0.1");
      const err = await peer.nextError(3);
      expect(err.packet.message).toBe(message);
      expect(err.port).toBe(srv.port); // no transfer was started for it
      await peer.expectNothing(100);
      expect(listing(root)).toEqual([]);
    });
  }

  test("a tsize that fits is acknowledged and the upload completes", async () => {
    const content = patternBytes(3000, 7);
    const result = await upload(await peers.open(), srv.port, "fits.bin", content, { options: [["tsize", "3000"]] });
    expect(result.oack?.get("tsize")).toBe("3000");
    expect(fileHash(join(root, "fits.bin"))).toBe(sha256(content));
  });

  test("real clients (curl -T, tftpd put --tsize) are refused at once with ERROR 3 for a file larger than the free space", async () => {
    const outside = tempDir();
    try {
      const sparse = join(outside, "huge.img");
      writeFileSync(sparse, "");
      truncateSync(sparse, freeBytes(root) + (1 << 30)); // sparse: takes no space
      const before = listing(root);
      const started = performance.now();
      const curl = await run(["curl", "-sS", "--max-time", "10", "-T", sparse, `tftp://127.0.0.1:${srv.port}/huge.img`], { timeoutMs: 15_000 });
      expect(curl.exitCode).toBe(70); // curl: "disk full or allocation exceeded" (TFTP ERROR 3)
      const put = await tftpd(["put", "--tsize", `127.0.0.1:${srv.port}`, sparse], { timeoutMs: 15_000 });
      expect(put.exitCode).not.toBe(0);
      expect(put.stderr).toContain("disk full: not enough free space (TFTP error 3)");
      expect(performance.now() - started).toBeLessThan(5000);
      expect(listing(root)).toEqual(before);
    } finally {
      removeDir(outside);
    }
  });
});

describe("file names are bytes: invalid UTF-8 is refused, never folded into one name", () => {
  // Before, each of these decoded to "\uFFFD\uFFFD" and so named one file.
  const NAMES: [string, number[]][] = [
    ["C0 AF", [0xc0, 0xaf]],
    ["FF FE", [0xff, 0xfe]],
    ["80 80", [0x80, 0x80]],
  ];
  let root: string;
  let srv: InProcessServer;
  const FOLDED = "\uFFFD\uFFFD";
  const CONTENT = patternBytes(700, 9);

  beforeAll(async () => {
    root = tempDir();
    writeFile(root, FOLDED, CONTENT); // the file the invalid names used to reach
    srv = await startServer(root, { write: "overwrite" });
  });
  afterAll(async () => {
    await srv.stop();
    removeDir(root);
  });

  for (const [hex, name] of NAMES) {
    for (const op of [Opcode.RRQ, Opcode.WRQ] as const) {
      test(`${op === Opcode.RRQ ? "RRQ" : "WRQ"} of the name ${hex} → ERROR 2 "file name is not valid UTF-8", nothing served or written`, async () => {
        const peer = await peers.open();
        peer.send(rawPacket(op, Uint8Array.from(name), new Uint8Array(1), "octet", new Uint8Array(1)), srv.port, "127.0.0.1");
        const err = await peer.nextError(2);
        expect(err.packet.message).toBe("file name is not valid UTF-8");
        expect(err.port).toBe(srv.port);
        await peer.expectNothing(100);
        expect(listing(root)).toEqual([FOLDED]);
        expect(fileHash(join(root, FOLDED))).toBe(sha256(CONTENT));
      });
    }
  }

  test("the valid UTF-8 name of U+FFFD U+FFFD still reaches its own file", async () => {
    const got = await download(await peers.open(), srv.port, FOLDED);
    expect(sha256(got.bytes)).toBe(sha256(CONTENT));
  });
});

describe("every way an upload ends leaves no temporary file", () => {
  let root: string;

  beforeAll(() => {
    root = tempDir();
  });
  afterAll(() => removeDir(root));

  /** A started upload of `name` on `s`, `blocks` blocks in, then paused. */
  async function halfway(s: InProcessServer, name: string, blocks = 3): Promise<{ peer: RawPeer; tid: number }> {
    const peer = await peers.open();
    const tid = await startUpload(peer, s.port, name, NEW, blocks);
    expect(readdirSync(root).some((n) => n.startsWith(`.${name}.`))).toBe(true); // the temporary file is there
    return { peer, tid };
  }

  test("the server stops mid-upload: the client hears why, the directory is as before", async () => {
    const s = await startServer(root, { write: "create", timeoutMs: 2000 });
    const before = listing(root);
    const { peer } = await halfway(s, "stopped.bin");
    await s.stop();
    const err = await peer.nextError(0);
    expect(err.packet.message).toBe("server shutting down");
    expect(listing(root)).toEqual(before);
  });

  test("a drain whose grace ends before the upload does cuts it and leaves nothing", async () => {
    const s = await startServer(root, { write: "create", timeoutMs: 2000 });
    const before = listing(root);
    await halfway(s, "drained.bin");
    expect(await s.server.drain(100)).toBe(1);
    expect(listing(root)).toEqual(before);
  });

  test("a connection_pool deadline (idle timeout) ends a stalled upload and leaves nothing", async () => {
    const s = await startServer(root, {
      write: "create",
      timeoutMs: 5000,
      lifetimes: { connectionTimeoutMs: 30_000, idleTimeoutMs: 300, maxLifetimeMs: 3_600_000 },
    });
    try {
      const before = listing(root);
      await halfway(s, "idle.bin");
      const record = await recordWhere(s, (r) => r.file === "idle.bin", 4000);
      expect(record.result).toBe("timeout");
      expect(listing(root)).toEqual(before);
    } finally {
      await s.stop();
    }
  });

  test("a new request from the same client port after a timeout supersedes the upload; only the new file remains", async () => {
    const s = await startServer(root, { write: "create", timeoutMs: 200, retries: 10 });
    try {
      const before = listing(root);
      const { peer } = await halfway(s, "first.bin");
      await Bun.sleep(400); // older than a timeout: a client that rebooted, same port
      const fresh = NEW.subarray(0, 1000);
      peer.send(wrq("second.bin"), s.port, "127.0.0.1");
      // the abandoned upload's ACK retransmissions may still be in flight: skip to the new ACK 0
      let tid = -1;
      for (let i = 0; i < 20 && tid < 0; i++) {
        const r = await peer.next(2000);
        if (r.packet?.op === Opcode.ACK && r.packet.block === 0) tid = r.port;
      }
      expect(tid).toBeGreaterThan(0);
      peer.send(data(1, fresh.subarray(0, 512)), tid, "127.0.0.1");
      peer.send(data(2, fresh.subarray(512)), tid, "127.0.0.1");
      await waitFor(() => existsSync(join(root, "second.bin")), 2000, "second.bin");
      await waitFor(() => s.records.some((r) => r.file === "first.bin"), 2000, "the first upload's end");
      expect(listing(root)).toEqual([...before, "second.bin"].sort());
      expect(fileHash(join(root, "second.bin"))).toBe(sha256(fresh));
    } finally {
      await s.stop();
    }
  });

  test("a refusal at commit (overwrite target became a directory) leaves only that directory", async () => {
    const s = await startServer(root, { write: "overwrite", timeoutMs: 2000 });
    try {
      const before = listing(root);
      const { peer, tid } = await halfway(s, "became-dir");
      mkdirSync(join(root, "became-dir"));
      peer.send(data(4, NEW.subarray(1536, 1600)), tid, "127.0.0.1");
      await peer.nextError(2);
      expect(listing(root)).toEqual([...before, "became-dir"].sort());
    } finally {
      await s.stop();
    }
  });
});

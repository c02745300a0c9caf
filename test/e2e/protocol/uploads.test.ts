/**
 * Uploads (WRQ) over the wire: write policies, atomic publication, aborted and oversize
 * uploads leaving nothing behind, windows, duplicates and the final dally.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Opcode } from "../../../src/protocol/packet.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { data, error, peerTracker, type RawPeer, recordWhere, upload, wrq } from "../../helpers/raw.ts";
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

  test("a DATA larger than blksize → ERROR 4, nothing left", async () => {
    const before = listing(root);
    const peer = await peers.open();
    peer.send(wrq("fat.bin"), srv.port, "127.0.0.1");
    const a0 = await peer.nextAck(0);
    peer.send(data(1, NEW.subarray(0, 600)), a0.port, "127.0.0.1");
    await peer.nextError(4);
    expect(listing(root)).toEqual(before);
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

/**
 * The one end of both state machines (EndingTransfer): however a read or an upload ends, the
 * client hears at most one ERROR, the file or upload is given back, the channel closes (an
 * upload's after a dally) and the end callback runs exactly once, whatever ends follow.
 * Real sockets on loopback (a transfer channel and a raw client), real files for uploads.
 */
import { afterAll, afterEach, expect, test } from "bun:test";
import fs from "node:fs";
import { join } from "node:path";
import { ErrorCode } from "../../../src/protocol/packet.ts";
import { memorySource } from "../../../src/storage/source.ts";
import { prepareUpload, type UploadSink } from "../../../src/storage/upload.ts";
import { ReadTransfer } from "../../../src/server/read-transfer.ts";
import type { TransferOutcome, TransferParams } from "../../../src/server/transfer.ts";
import { openTransferChannel } from "../../../src/server/transport.ts";
import { WriteTransfer } from "../../../src/server/write-transfer.ts";
import { patternBytes, removeDir, sha256, tempDir } from "../../helpers/files.ts";
import { ack, data, error, peerTracker, type RawPeer } from "../../helpers/raw.ts";

const peers = peerTracker();
const roots: string[] = [];
/** transfers still able to fire timers: cancelled after each test */
const running: { cancel(): void }[] = [];
afterEach(() => {
  for (const t of running.splice(0)) t.cancel();
  peers.closeAll();
});
afterAll(() => {
  for (const root of roots) removeDir(root);
});

function params(timeoutMs: number, retries = 5): TransferParams {
  return { blksize: 512, windowsize: 1, oack: null, retransmit: { timeoutMs, fixed: true, retries }, receivedAt: performance.now() };
}

/** A client, and the ends its transfer reports. */
async function setUp(): Promise<{ client: RawPeer; ends: TransferOutcome[]; onEnd: (o: TransferOutcome) => void }> {
  const client = await peers.open();
  const ends: TransferOutcome[] = [];
  return { client, ends, onEnd: (outcome) => ends.push(outcome) };
}

async function startRead(bytes: Uint8Array, timeoutMs = 2000, retries = 5) {
  const { client, ends, onEnd } = await setUp();
  const source = memorySource(bytes);
  let transfer: ReadTransfer | null = null;
  const channel = await openTransferChannel("127.0.0.1", { address: "127.0.0.1", port: client.port }, null, (b) => transfer?.handle(b));
  transfer = new ReadTransfer(channel, source, params(timeoutMs, retries), onEnd);
  running.push(transfer);
  transfer.start();
  return { client, ends, source, transfer, port: channel.localPort };
}

async function startWrite(timeoutMs = 2000, retries = 5) {
  const { client, ends, onEnd } = await setUp();
  const root = tempDir("tftpd-transfer-end-");
  roots.push(root);
  const prepared = await prepareUpload(root, "up.bin", "create", Infinity);
  if (!prepared.ok) throw new Error(prepared.message);
  const sink: UploadSink = prepared.sink;
  let transfer: WriteTransfer | null = null;
  const channel = await openTransferChannel("127.0.0.1", { address: "127.0.0.1", port: client.port }, null, (b) => transfer?.handle(b));
  transfer = new WriteTransfer(channel, sink, { ...params(timeoutMs, retries), mode: "octet", writeBehind: false }, onEnd);
  running.push(transfer);
  transfer.start();
  await client.nextAck(0);
  return { client, ends, sink, transfer, port: channel.localPort, path: join(root, "up.bin") };
}

test("a read the client stopped with an ERROR ends once: later cancel, expire and supersede send nothing and report nothing", async () => {
  const { client, ends, source, transfer, port } = await startRead(patternBytes(512 * 4, 1));
  await client.nextData(1);
  client.send(error(ErrorCode.DISK_FULL, "no room"), port);
  await Bun.sleep(50);
  transfer.cancel("server shutting down");
  transfer.expire("transfer idle for too long");
  transfer.supersede();
  await client.expectNothing(200);
  expect(ends).toHaveLength(1);
  expect(ends[0]).toMatchObject({ result: "client-error", bytes: 0, error: { code: ErrorCode.DISK_FULL, message: "no room", from: "client" } });
  // the file was given back
  expect(() => source.read(0, new Uint8Array(512), 0, 512)).toThrow(/closed/);
});

test("a read cancelled mid-way tells the client once, counts what was acknowledged, and stops its clock", async () => {
  const { client, ends, transfer, port } = await startRead(patternBytes(512 * 10, 2), 300);
  await client.nextData(1);
  client.send(ack(1), port);
  await client.nextData(2);
  transfer.cancel("going away");
  const told = await client.nextError(ErrorCode.NOT_DEFINED);
  expect(told.packet.message).toBe("going away");
  transfer.cancel("again");
  // no retransmission of DATA 2 after the end, though its timeout (300 ms) passes twice
  await client.expectNothing(700);
  expect(ends).toEqual([{ result: "error", bytes: 512, retransmits: 0, firstResponseMs: expect.any(Number), error: { code: 0, message: "going away", from: "server" } }]);
});

test("a read whose client goes silent after its first ACK gives up once, as a timeout", async () => {
  const { client, ends, port } = await startRead(patternBytes(600, 3), 50, 2);
  await client.nextData(1);
  client.send(ack(1), port);
  const got = await client.collect(600);
  // DATA 2 and two retransmissions, nothing after the give-up
  expect(got.map((r) => r.packet?.op === 3 && r.packet.block)).toEqual([2, 2, 2]);
  expect(ends).toHaveLength(1);
  expect(ends[0]).toMatchObject({ result: "timeout", bytes: 512, retransmits: 2 });
});

test("a read whose client never answers: its one DATA, nothing on the timer, and an end without an ERROR", async () => {
  const { client, ends, transfer } = await startRead(patternBytes(600, 3), 50, 2);
  const got = await client.collect(600);
  expect(got.map((r) => r.packet?.op === 3 && r.packet.block)).toEqual([1]);
  expect(ends).toEqual([{ result: "timeout", bytes: 0, retransmits: 0, firstResponseMs: expect.any(Number) }]);
  // a deadline or a shutdown after it tells nobody anything either
  transfer.expire("late");
  await client.expectNothing(100);
});

test("a read whose client never answered is ended by a deadline without an ERROR (its first packet again only for a repeated request); a shutdown tells it once", async () => {
  const { client, ends, transfer } = await startRead(patternBytes(600, 3), 2000);
  await client.nextData(1);
  transfer.answerRepeat();
  await client.nextData(1);
  transfer.expire("no answer to the first packet in time");
  await client.expectNothing(200);
  expect(ends).toEqual([{ result: "timeout", bytes: 0, retransmits: 1, firstResponseMs: expect.any(Number) }]);
  const other = await startRead(patternBytes(600, 3), 2000);
  await other.client.nextData(1);
  // a failure of our own is no silence a forged request could buy: the client hears it, once
  other.transfer.cancel();
  const told = await other.client.collect(200);
  expect(told.map((r) => r.packet?.op === 5 && r.packet.message)).toEqual(["server shutting down"]);
  expect(other.ends).toMatchObject([{ result: "error", error: { code: 0, message: "server shutting down", from: "server" } }]);
});

test("an upload reports ok once, dallies (its last block again gets the ACK again), and a cancel in the dally sends no ERROR", async () => {
  const { client, ends, transfer, port, path } = await startWrite(2000);
  const payload = patternBytes(300, 4);
  client.send(data(1, payload), port);
  await client.nextAck(1);
  expect(ends).toHaveLength(1);
  expect(ends[0]).toMatchObject({ result: "ok", bytes: 300 });
  expect(sha256(fs.readFileSync(path))).toBe(sha256(payload));
  // our final ACK was lost: the client sends its last block again
  client.send(data(1, payload), port);
  await client.nextAck(1);
  transfer.cancel();
  transfer.supersede();
  client.send(data(1, payload), port);
  await client.expectNothing(300);
  expect(ends).toHaveLength(1);
  expect(fs.existsSync(path)).toBe(true);
});

test("an upload's dally ends by itself after two timeouts", async () => {
  const { client, ends, port } = await startWrite(100);
  client.send(data(1, new Uint8Array(10)), port);
  await client.nextAck(1);
  await Bun.sleep(350);
  client.send(data(1, new Uint8Array(10)), port);
  await client.expectNothing(300);
  expect(ends).toHaveLength(1);
});

test("an upload whose client goes silent after DATA 1 gives up once, as a timeout, and leaves no file behind", async () => {
  const { client, ends, sink, path, port } = await startWrite(50, 2);
  client.send(data(1, patternBytes(512, 7)), port);
  await client.nextAck(1);
  const got = await client.collect(600);
  // ACK 1 sent again twice, nothing after the give-up
  expect(got.map((r) => r.packet?.op === 4 && r.packet.block)).toEqual([1, 1]);
  expect(ends).toHaveLength(1);
  expect(ends[0]).toMatchObject({ result: "timeout", bytes: 512, retransmits: 2 });
  expect(fs.existsSync(sink.tempPath)).toBe(false);
  expect(fs.existsSync(path)).toBe(false);
});

test("an upload whose client never sends DATA 1: its one ACK 0, nothing on the timer, no ERROR, no file", async () => {
  const { client, ends, sink, path } = await startWrite(50, 2);
  await client.expectNothing(600);
  expect(ends).toEqual([{ result: "timeout", bytes: 0, retransmits: 0, firstResponseMs: expect.any(Number) }]);
  expect(fs.existsSync(sink.tempPath)).toBe(false);
  expect(fs.existsSync(path)).toBe(false);
});

test("an upload cancelled mid-way tells the client once, aborts the upload and reports the bytes stored", async () => {
  const { client, ends, sink, transfer, port, path } = await startWrite(2000);
  client.send(data(1, patternBytes(512, 5)), port);
  await client.nextAck(1);
  transfer.cancel();
  expect((await client.nextError(ErrorCode.NOT_DEFINED)).packet.message).toBe("server shutting down");
  transfer.expire("late");
  client.send(data(2, patternBytes(512, 6)), port);
  await client.expectNothing(200);
  expect(ends).toHaveLength(1);
  expect(ends[0]).toMatchObject({ result: "error", bytes: 512, error: { code: 0, message: "server shutting down", from: "server" } });
  expect(fs.existsSync(sink.tempPath)).toBe(false);
  expect(fs.existsSync(path)).toBe(false);
});

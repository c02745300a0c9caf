/**
 * Property-based fuzzing of both transfer state machines (fast-check): random interleavings of
 * DATA, ACK, ERROR, duplicates, late and stray packets, forged and mutated datagrams, resends
 * and ends, played against a ReadTransfer over a real in-memory FileSource and a WriteTransfer
 * over a real upload (prepareUpload in a temporary directory).
 *
 * The transfers talk to a RecordingChannel: a TransferChannel that keeps a copy of every
 * datagram instead of putting it on a socket, so thousands of sequences run in seconds. The
 * retransmission timer is driven through the transfer itself (answerRepeat sends again what
 * the clock guards); the configured timeout is long enough that no timer fires during a run,
 * and every transfer is ended at the end of its sequence (cancel, expire, supersede).
 *
 * Invariants, after every step and at the end:
 *  - nothing throws;
 *  - every DATA sent carries exactly the file's bytes at its block's offset (never a byte
 *    outside the file), every OACK is the negotiated one, every ACK names a block the client
 *    sent, and an ERROR is sent only when the server ends the transfer (with its code);
 *  - a duplicate or stale ACK never triggers a send (RFC 1123 §4.2.3.1);
 *  - the transfer always ends: the end callback fires exactly once, its channel is closed and
 *    nothing is sent after that, its file is given back;
 *  - an upload is either published whole (exactly the client's bytes) or leaves no file and no
 *    temporary file behind.
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import fs from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { decodePacket, encodeAck, encodeData, encodeError, encodeOack, encodeRequest } from "../../../src/protocol/codec.ts";
import { fromNetascii } from "../../../src/protocol/netascii.ts";
import { ErrorCode, Opcode, type TransferMode } from "../../../src/protocol/packet.ts";
import { ReadTransfer } from "../../../src/server/read-transfer.ts";
import { STRAY_KINDS, type StrayKind, type TransferOutcome, type TransferParams } from "../../../src/server/transfer.ts";
import type { TransferChannel } from "../../../src/server/transport.ts";
import { WriteTransfer } from "../../../src/server/write-transfer.ts";
import { memorySource } from "../../../src/storage/source.ts";
import { prepareUpload } from "../../../src/storage/upload.ts";
import { removeDir, tempDir } from "../../helpers/files.ts";

// thousands of runs, an upload published (fsync) in many: seconds, not the default 5 s
setDefaultTimeout(30_000);

/** No timer may fire during a run: retransmission is driven by the sequence. */
const NEVER_MS = 600_000;

/** A TransferChannel that records what the transfer sends, as it would leave the socket. */
class RecordingChannel implements TransferChannel {
  readonly localPort = 0;
  readonly sent: Uint8Array[] = [];
  closed = false;
  sentAfterClose = 0;

  send(packet: Uint8Array): void {
    if (this.closed) this.sentAfterClose++;
    // a copy: the transfer reuses its packet buffers once the channel has taken them
    this.sent.push(packet.slice());
  }

  sendMany(packets: readonly Uint8Array[]): void {
    for (const packet of packets) this.send(packet);
  }

  settle(): void {}

  close(): void {
    this.closed = true;
  }
}

function params(blksize: number, windowsize: number, oack: [string, string][] | null): TransferParams {
  return { blksize, windowsize, oack, retransmit: { timeoutMs: NEVER_MS, fixed: false, retries: 5 }, receivedAt: performance.now() };
}

const endArb = fc.constantFrom("cancel" as const, "expire" as const, "supersede" as const);
const strayArb = fc.constantFrom<StrayKind>(...STRAY_KINDS);
const errorArb = fc.record({ code: fc.integer({ min: 0, max: 0xffff }), message: fc.string({ maxLength: 20 }).filter((s) => !s.includes("\0")) });
/** Random bytes, and short ones around the opcodes a transfer takes. */
const garbageArb = fc.oneof(
  fc.uint8Array({ maxLength: 80 }),
  fc.tuple(fc.integer({ min: 0, max: 7 }), fc.uint8Array({ maxLength: 6 })).map(([op, rest]) => Uint8Array.of(0, op, ...rest)),
);
const setupArb = fc.record({
  blksize: fc.constantFrom(8, 13, 64, 512),
  windowsize: fc.integer({ min: 1, max: 6 }),
  withOack: fc.boolean(),
});

/** The client's side of a read: what it sends to the transfer, chosen from what it has seen. */
type ReadAction =
  | { k: "ack-newest" }
  | { k: "ack-back"; back: number }
  | { k: "ack-wire"; wire: number }
  | { k: "error"; code: number; message: string }
  | { k: "garbage"; bytes: Uint8Array }
  | { k: "echo"; flip: number; at: number }
  | { k: "request" }
  | { k: "resend" }
  | { k: "stray"; kind: StrayKind }
  | { k: "finish" }
  | { k: "end"; how: "cancel" | "expire" | "supersede" };

const readActionArb: fc.Arbitrary<ReadAction> = fc.oneof(
  { weight: 8, arbitrary: fc.constant({ k: "ack-newest" as const }) },
  { weight: 3, arbitrary: fc.integer({ min: 0, max: 5 }).map((back) => ({ k: "ack-back" as const, back })) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 0xffff }).map((wire) => ({ k: "ack-wire" as const, wire })) },
  { weight: 1, arbitrary: errorArb.map((e) => ({ k: "error" as const, ...e })) },
  { weight: 3, arbitrary: garbageArb.map((bytes) => ({ k: "garbage" as const, bytes })) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant("echo" as const), flip: fc.integer({ min: 0, max: 255 }), at: fc.nat() }) },
  { weight: 1, arbitrary: fc.constant({ k: "request" as const }) },
  { weight: 2, arbitrary: fc.constant({ k: "resend" as const }) },
  { weight: 1, arbitrary: strayArb.map((kind) => ({ k: "stray" as const, kind })) },
  { weight: 1, arbitrary: fc.constant({ k: "finish" as const }) },
  { weight: 1, arbitrary: endArb.map((how) => ({ k: "end" as const, how })) },
);

function ack(block: number): Uint8Array {
  return encodeAck(block);
}

/** Ends a transfer from the server's side, as the engine does. */
function endBy(transfer: ReadTransfer | WriteTransfer, how: "cancel" | "expire" | "supersede"): void {
  if (how === "cancel") transfer.cancel("stopped");
  else if (how === "expire") transfer.expire("transfer idle for too long");
  else transfer.supersede();
}

describe("ReadTransfer under random interleavings", () => {
  test("sends only the file's bytes, answers no stray, never resends on a stale ACK, and always ends once", () => {
    const results = new Map<string, number>();
    fc.assert(
      fc.property(setupArb, fc.uint8Array({ maxLength: 700 }), fc.array(readActionArb, { maxLength: 40 }), (setup, file, actions) => {
        const { blksize, windowsize } = setup;
        const oack: [string, string][] | null = setup.withOack ? [["blksize", String(blksize)], ["tsize", String(file.length)]] : null;
        const lastBlock = Math.floor(file.length / blksize) + 1;
        const channel = new RecordingChannel();
        const source = memorySource(file);
        const ends: TransferOutcome[] = [];
        const transfer = new ReadTransfer(channel, source, params(blksize, windowsize, oack), (o) => ends.push(o));

        let checked = 0;
        let newestData = 0;
        let highestAck = -1;
        let sawData = false;
        let errorsSent = 0;
        const clientErrors: number[] = [];
        /** checks the datagrams sent since the last check; `mayEnd`: the step may send an ERROR */
        const check = (mayEnd: boolean): number => {
          const fresh = channel.sent.length - checked;
          for (; checked < channel.sent.length; checked++) {
            const decoded = decodePacket(channel.sent[checked]!);
            if (!decoded.ok) throw new Error(`sent an undecodable datagram: ${decoded.message}`);
            const packet = decoded.packet;
            if (packet.op === Opcode.DATA) {
              expect(packet.block).toBeGreaterThanOrEqual(1);
              expect(packet.block).toBeLessThanOrEqual(lastBlock);
              const offset = (packet.block - 1) * blksize;
              expect(packet.data).toEqual(file.subarray(offset, Math.min(file.length, offset + blksize)));
              newestData = Math.max(newestData, packet.block);
              sawData = true;
            } else if (packet.op === Opcode.OACK) {
              expect(oack).not.toBeNull();
              expect(channel.sent[checked]).toEqual(encodeOack(oack!));
            } else if (packet.op === Opcode.ERROR) {
              expect(mayEnd).toBe(true);
              expect(packet.code).toBe(ErrorCode.NOT_DEFINED);
              errorsSent++;
            } else {
              throw new Error(`a read sent opcode ${packet.op}`);
            }
          }
          return fresh;
        };

        transfer.start();
        check(false);
        for (const action of actions) {
          switch (action.k) {
            case "ack-newest":
            case "ack-back":
            case "ack-wire": {
              const block =
                action.k === "ack-newest" ? newestData : action.k === "ack-back" ? Math.max(0, newestData - action.back) : action.wire;
              // stale (at or below what was acknowledged) or never sent: must not trigger a send
              const stale = (sawData && block <= highestAck) || block > newestData;
              transfer.handle(ack(block));
              const sent = check(false);
              if (stale) expect(sent).toBe(0);
              else highestAck = Math.max(highestAck, block);
              break;
            }
            case "error":
              clientErrors.push(action.code);
              transfer.handle(encodeError(action.code, action.message));
              expect(check(false)).toBe(0);
              break;
            case "garbage":
              // an ACK in disguise steers the transfer like any ACK; every other datagram is dropped
              transfer.handle(action.bytes);
              if (!(action.bytes.length >= 4 && action.bytes[0] === 0 && (action.bytes[1] === Opcode.ACK || action.bytes[1] === Opcode.ERROR))) {
                expect(check(false)).toBe(0);
              } else {
                if (action.bytes[1] === Opcode.ERROR) clientErrors.push((action.bytes[2]! << 8) | action.bytes[3]!);
                check(false);
              }
              break;
            case "echo": {
              // one of our own datagrams sent back, one byte changed: DATA and OACK are no client packets
              const last = channel.sent.at(-1);
              if (!last) break;
              const bytes = last.slice();
              bytes[action.at % bytes.length] = action.flip;
              const isAck = bytes.length >= 4 && bytes[0] === 0 && bytes[1] === Opcode.ACK;
              const isError = bytes.length >= 4 && bytes[0] === 0 && bytes[1] === Opcode.ERROR;
              if (isError) clientErrors.push((bytes[2]! << 8) | bytes[3]!);
              transfer.handle(bytes);
              if (!isAck && !isError) expect(check(false)).toBe(0);
              else check(false);
              break;
            }
            case "request":
              transfer.handle(encodeRequest(Opcode.RRQ, "file", "octet", [["blksize", "1468"]]));
              expect(check(false)).toBe(0);
              break;
            case "resend":
              transfer.answerRepeat();
              check(false);
              break;
            case "stray":
              transfer.noteStray(action.kind);
              expect(check(false)).toBe(0);
              break;
            case "finish":
              for (let i = 0; i <= lastBlock + 1 && ends.length === 0; i++) {
                transfer.handle(ack(newestData));
                check(false);
              }
              break;
            case "end":
              endBy(transfer, action.how);
              check(true);
              break;
          }
        }

        // whatever the sequence did, the transfer ends now, and only once
        transfer.cancel("stopped");
        check(true);
        transfer.expire("transfer idle for too long");
        transfer.supersede();
        expect(check(false)).toBe(0);
        transfer.handle(ack(newestData));
        expect(check(false)).toBe(0);

        expect(ends).toHaveLength(1);
        expect(channel.closed).toBe(true);
        expect(channel.sentAfterClose).toBe(0);
        expect(errorsSent).toBeLessThanOrEqual(1);
        expect(() => source.read(0, new Uint8Array(8), 0, 8)).toThrow(/closed/);
        const outcome = ends[0]!;
        results.set(outcome.result, (results.get(outcome.result) ?? 0) + 1);
        expect(outcome.bytes).toBeGreaterThanOrEqual(0);
        expect(outcome.bytes).toBeLessThanOrEqual(file.length);
        if (outcome.result === "ok") {
          expect(outcome.bytes).toBe(file.length);
          expect(newestData).toBe(lastBlock);
        }
        if (outcome.result === "client-error" || outcome.result === "probe") {
          expect(clientErrors).toContain(outcome.error!.code);
        }
        if (outcome.result === "probe") expect(outcome.error!.code).toBe(ErrorCode.OPTION_REFUSED);
        // the client hears of our end exactly when the outcome says so (a client that never
        // answered hears nothing: one datagram for its one request)
        expect(errorsSent).toBe(outcome.error?.from === "server" ? 1 : 0);
      }),
      { numRuns: 3000 },
    );
    // the sequences reached every way a read ends, the whole file included
    for (const result of ["ok", "client-error", "error", "timeout", "superseded"]) expect(results.get(result) ?? 0).toBeGreaterThan(0);
  });
});

/** The client's side of an upload: the blocks of its file, in order or not, and strays. */
type WriteAction =
  | { k: "next" }
  | { k: "again"; back: number }
  | { k: "ahead"; by: number }
  | { k: "rewind" }
  | { k: "wire"; wire: number }
  | { k: "oversize" }
  | { k: "error"; code: number; message: string }
  | { k: "garbage"; bytes: Uint8Array }
  | { k: "ack"; wire: number }
  | { k: "resend" }
  | { k: "finish" }
  | { k: "end"; how: "cancel" | "expire" | "supersede" };

const writeActionArb: fc.Arbitrary<WriteAction> = fc.oneof(
  { weight: 10, arbitrary: fc.constant({ k: "next" as const }) },
  { weight: 3, arbitrary: fc.integer({ min: 0, max: 4 }).map((back) => ({ k: "again" as const, back })) },
  { weight: 2, arbitrary: fc.integer({ min: 1, max: 8 }).map((by) => ({ k: "ahead" as const, by })) },
  { weight: 2, arbitrary: fc.constant({ k: "rewind" as const }) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }).map((wire) => ({ k: "wire" as const, wire })) },
  { weight: 1, arbitrary: fc.constant({ k: "oversize" as const }) },
  { weight: 1, arbitrary: errorArb.map((e) => ({ k: "error" as const, ...e })) },
  { weight: 3, arbitrary: garbageArb.map((bytes) => ({ k: "garbage" as const, bytes })) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }).map((wire) => ({ k: "ack" as const, wire })) },
  { weight: 2, arbitrary: fc.constant({ k: "resend" as const }) },
  { weight: 1, arbitrary: fc.constant({ k: "finish" as const }) },
  { weight: 1, arbitrary: endArb.map((how) => ({ k: "end" as const, how })) },
);

describe("WriteTransfer under random interleavings", () => {
  const dir = tempDir("tftpd-transfer-fuzz-");
  afterAll(() => removeDir(dir));
  let uploads = 0;

  test("acknowledges only what the client sent, and publishes the whole file or nothing", async () => {
    const results = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(
        setupArb,
        fc.constantFrom<TransferMode>("octet", "octet", "netascii"),
        fc.uint8Array({ maxLength: 300 }),
        fc.constantFrom(Infinity, Infinity, Infinity, 0, 50, 200),
        fc.array(writeActionArb, { maxLength: 40 }),
        async (setup, mode, file, maxBytes, actions) => {
          const { blksize, windowsize } = setup;
          const oack: [string, string][] | null = setup.withOack ? [["blksize", String(blksize)]] : null;
          const name = `up-${uploads++}.bin`;
          const prepared = await prepareUpload(dir, name, "create", maxBytes);
          if (!prepared.ok) throw new Error(prepared.message);
          const channel = new RecordingChannel();
          const ends: TransferOutcome[] = [];
          const transfer = new WriteTransfer(channel, prepared.sink, { ...params(blksize, windowsize, oack), mode, writeBehind: false }, (o) => ends.push(o));

          const blocks = Math.floor(file.length / blksize) + 1;
          const block = (n: number) => file.subarray((n - 1) * blksize, Math.min(file.length, n * blksize));
          const stored = mode === "netascii" ? fromNetascii(file) : file;
          let cursor = 1;
          let highestSent = 0;
          let lastAckSeen = 0;
          let checked = 0;
          let serverError: number | null = null;
          const clientErrors: number[] = [];
          const check = (mayEnd: boolean): void => {
            for (; checked < channel.sent.length; checked++) {
              const decoded = decodePacket(channel.sent[checked]!);
              if (!decoded.ok) throw new Error(`sent an undecodable datagram: ${decoded.message}`);
              const packet = decoded.packet;
              if (packet.op === Opcode.ACK) {
                // an ACK names a block the client sent, never one it did not
                expect(packet.block).toBeLessThanOrEqual(highestSent);
                lastAckSeen = packet.block;
              } else if (packet.op === Opcode.OACK) {
                expect(oack).not.toBeNull();
                expect(channel.sent[checked]).toEqual(encodeOack(oack!));
              } else if (packet.op === Opcode.ERROR) {
                // the server's own end, or an upload over its size limit
                expect(serverError).toBeNull();
                serverError = packet.code;
                if (packet.code === ErrorCode.DISK_FULL) expect(stored.length).toBeGreaterThan(maxBytes);
                else expect(mayEnd && packet.code === ErrorCode.NOT_DEFINED).toBe(true);
              } else {
                throw new Error(`an upload sent opcode ${packet.op}`);
              }
            }
          };
          const sendBlock = (n: number) => {
            if (n >= 1 && n <= blocks) {
              highestSent = Math.max(highestSent, n);
              transfer.handle(encodeData(n, block(n)));
            }
            check(false);
          };

          transfer.start();
          check(false);
          for (const action of actions) {
            // the last block in: the file goes to disk (off the event loop) before its ACK
            await transfer.publishing;
            check(false);
            switch (action.k) {
              case "next":
                sendBlock(cursor);
                if (cursor <= blocks) cursor++;
                break;
              case "again":
                sendBlock(cursor - 1 - action.back);
                break;
              case "ahead":
                sendBlock(cursor + action.by);
                break;
              case "rewind":
                cursor = lastAckSeen + 1;
                break;
              case "wire":
                // a block number this file does not have: its bytes are anything
                if (action.wire === 0 || action.wire > blocks) {
                  transfer.handle(encodeData(action.wire, new Uint8Array(blksize)));
                  check(false);
                }
                break;
              case "oversize":
                transfer.handle(encodeData(cursor, new Uint8Array(blksize + 1)));
                check(false);
                break;
              case "error":
                clientErrors.push(action.code);
                transfer.handle(encodeError(action.code, action.message));
                check(false);
                break;
              case "garbage": {
                // anything but a DATA: a forged DATA of a block the file has would be the file's
                const bytes = action.bytes.slice();
                if (bytes.length >= 2 && bytes[0] === 0 && bytes[1] === Opcode.DATA) bytes[1] = Opcode.ACK;
                if (bytes.length >= 4 && bytes[0] === 0 && bytes[1] === Opcode.ERROR) clientErrors.push((bytes[2]! << 8) | bytes[3]!);
                transfer.handle(bytes);
                check(false);
                break;
              }
              case "ack":
                transfer.handle(encodeAck(action.wire));
                check(false);
                break;
              case "resend":
                transfer.answerRepeat();
                check(false);
                break;
              case "finish":
                for (let n = lastAckSeen + 1; n <= blocks && ends.length === 0; n++) sendBlock(n);
                cursor = blocks + 1;
                break;
              case "end":
                endBy(transfer, action.how);
                check(true);
                break;
            }
          }

          await transfer.publishing;
          check(false);
          transfer.cancel("stopped");
          check(true);
          transfer.expire("transfer idle for too long");
          transfer.supersede();
          const before = channel.sent.length;
          transfer.handle(encodeData(blocks, block(blocks)));
          expect(channel.sent.length).toBe(before);

          expect(ends).toHaveLength(1);
          expect(channel.closed).toBe(true);
          expect(channel.sentAfterClose).toBe(0);
          const outcome = ends[0]!;
          results.set(outcome.result, (results.get(outcome.result) ?? 0) + 1);
          const path = join(dir, name);
          if (outcome.result === "ok") {
            expect(fs.readFileSync(path)).toEqual(Buffer.from(stored));
            expect(outcome.bytes).toBe(stored.length);
            expect(highestSent).toBe(blocks);
          } else {
            expect(fs.existsSync(path)).toBe(false);
          }
          if (outcome.result === "client-error") expect(clientErrors).toContain(outcome.error!.code);
          // no temporary file of this upload is left, whatever happened
          expect(fs.readdirSync(dir).filter((f) => f.startsWith(`.${name}.`))).toEqual([]);
        },
      ),
      { numRuns: 500 },
    );
    for (const result of ["ok", "client-error", "error", "timeout", "superseded"]) expect(results.get(result) ?? 0).toBeGreaterThan(0);
  });
});

/**
 * WRQ state machine: the client sends DATA, the server ACKs (RFC 1350), once per window of
 * blocks when windowsize was negotiated (RFC 7440). Bytes go to an UploadSink that publishes
 * the file atomically only when the last block has arrived.
 */
import { decodePacket, encodeAck, encodeError, encodeOack } from "../protocol/codec.ts";
import { NetasciiDecoder } from "../protocol/netascii.ts";
import { ErrorCode, Opcode, type TransferMode } from "../protocol/packet.ts";
import type { UploadSink } from "../storage/upload.ts";
import type { TransferChannel } from "./transport.ts";
import {
  countStray,
  RetransmitClock,
  type RetransmitPolicy,
  type StrayKind,
  type StrayTally,
  type TransferOutcome,
  type TransferResult,
} from "./transfer.ts";

export interface WriteTransferParams {
  blksize: number;
  windowsize: number;
  mode: TransferMode;
  oack: [string, string][] | null;
  retransmit: RetransmitPolicy;
  receivedAt: number;
}

export class WriteTransfer {
  /** next block we expect */
  private expected = 1;
  /** last block we acknowledged (0 = the ACK 0 / OACK that opened the transfer) */
  private lastAcked = 0;
  private inWindow = 0;
  /** a gap was reported with an ACK since the last progress; report it once, not per block */
  private gapReported = false;
  private phase: "receiving" | "dallying" | "done" = "receiving";
  private retransmits = 0;
  private firstResponseMs = -1;
  private reported = false;
  private strays: StrayTally | null = null;
  readonly clock: RetransmitClock;
  private readonly netascii: NetasciiDecoder | null;

  constructor(
    private readonly channel: TransferChannel,
    private readonly sink: UploadSink,
    private readonly params: WriteTransferParams,
    private readonly onEnd: (outcome: TransferOutcome) => void,
  ) {
    this.netascii = params.mode === "netascii" ? new NetasciiDecoder() : null;
    this.clock = new RetransmitClock(
      params.retransmit,
      () => this.retransmit(),
      () => this.finish("timeout"),
    );
  }

  start(): void {
    this.firstResponseMs = performance.now() - this.params.receivedAt;
    this.sendLastAck();
    this.clock.progress();
  }

  handle(bytes: Uint8Array): void {
    if (this.phase === "done") return;
    // Anything from the client's port but a well-formed DATA or ERROR is dropped and counted:
    // answering it with an ERROR would let one forged datagram end the upload.
    const decoded = decodePacket(bytes);
    if (!decoded.ok) {
      this.noteStray("malformed");
      return;
    }
    const packet = decoded.packet;
    if (packet.op === Opcode.DATA) {
      this.onData(packet.block, packet.data);
    } else if (packet.op === Opcode.ERROR) {
      if (this.phase === "receiving") {
        this.finish("client-error", { code: packet.code, message: packet.message, from: "client" });
      } else {
        this.close();
      }
    } else {
      this.noteStray("unexpected-opcode");
    }
  }

  /**
   * The client's request came again while this transfer runs (engine.requestAgain decided it is
   * the same request, sent again because our first ACK or OACK was lost): it goes again.
   */
  answerRepeat(): void {
    if (this.phase === "receiving") this.retransmit();
  }

  /** Counts a datagram from the client's port that was dropped (here, or at the listen port). */
  noteStray(kind: StrayKind): void {
    if (this.phase === "receiving") this.strays = countStray(this.strays, kind);
  }

  /** The client asked anew after a silence (engine.requestAgain): ends without an ERROR. */
  supersede(): void {
    if (this.phase === "dallying") this.close();
    else this.finish("superseded");
  }

  private onData(wire: number, data: Uint8Array): void {
    if (this.phase === "dallying") {
      // Our final ACK was lost and the client sent its last block again: answer it again.
      if (wire === (this.lastAcked & 0xffff)) this.channel.send(encodeAck(wire));
      return;
    }
    // A block over the negotiated size is no block of this upload (RFC 2348).
    if (data.length > this.params.blksize) {
      this.noteStray("malformed");
      return;
    }
    if (wire !== (this.expected & 0xffff)) {
      this.onOutOfOrder(wire);
      return;
    }
    if (!this.store(this.netascii ? this.netascii.push(data) : data)) return;

    const block = this.expected++;
    this.gapReported = false;
    if (data.length < this.params.blksize) {
      this.complete(block);
      return;
    }
    if (++this.inWindow >= this.params.windowsize) {
      this.lastAcked = block;
      this.inWindow = 0;
      this.sendLastAck();
    }
    this.clock.progress();
  }

  /** RFC 7440 §4: on a gap, acknowledge the last block received in order so the sender rewinds. */
  private onOutOfOrder(wire: number): void {
    const ahead = (wire - this.expected) & 0xffff;
    if (ahead < 0x8000) {
      // The client sends at most a window past the last block we acknowledged (expected - 1
      // or earlier): a block beyond that was never sent by it.
      if (ahead >= this.params.windowsize) {
        this.noteStray("out-of-window");
        return;
      }
      if (this.gapReported) return;
      this.gapReported = true;
      this.lastAcked = this.expected - 1;
      this.inWindow = 0;
      this.sendLastAck();
      return;
    }
    // A repeat of the block we last acknowledged means our ACK was lost: repeat it. Any other
    // old block is a duplicate and must not trigger a send (RFC 1123 §4.2.3.1).
    if (this.lastAcked > 0 && wire === (this.lastAcked & 0xffff)) {
      this.retransmits++;
      this.sendLastAck();
    }
  }

  private store(bytes: Uint8Array): boolean {
    if (bytes.length === 0) return true;
    const refusal = this.sink.write(bytes);
    if (refusal) {
      this.fail(refusal.code, refusal.message);
      return false;
    }
    return true;
  }

  private complete(block: number): void {
    if (this.netascii && !this.store(this.netascii.end())) return;
    const refusal = this.sink.commit();
    if (refusal) {
      this.fail(refusal.code, refusal.message);
      return;
    }
    this.lastAcked = block;
    this.sendLastAck();
    this.report("ok");
    // RFC 1350 §6: dally, so a client whose final ACK was lost can get it again.
    this.phase = "dallying";
    this.clock.stop();
    setTimeout(() => this.close(), this.params.retransmit.timeoutMs * 2);
  }

  private sendLastAck(): void {
    if (this.lastAcked === 0 && this.params.oack) this.channel.send(encodeOack(this.params.oack));
    else this.channel.send(encodeAck(this.lastAcked & 0xffff));
  }

  private retransmit(): void {
    this.retransmits++;
    this.lastAcked = this.expected - 1;
    this.inWindow = 0;
    this.sendLastAck();
  }

  /** Ends the transfer from our side; the client is told why. */
  cancel(reason = "server shutting down"): void {
    if (this.phase === "done") return;
    if (this.phase === "dallying") return this.close();
    this.fail(ErrorCode.NOT_DEFINED, reason);
  }

  /** Ends a transfer that passed a connection_pool deadline (the engine's sweep decides). */
  expire(message: string): void {
    if (this.phase === "done") return;
    this.fail(ErrorCode.NOT_DEFINED, message, "timeout");
  }

  /** Ends the transfer from our side, telling the client why. */
  private fail(code: number, message: string, result: TransferResult = "error"): void {
    this.channel.send(encodeError(code, message));
    this.finish(result, { code, message, from: "server" });
  }

  private finish(result: TransferResult, error?: TransferOutcome["error"]): void {
    if (this.phase === "done") return;
    this.sink.abort();
    this.report(result, error);
    this.close();
  }

  private report(result: TransferResult, error?: TransferOutcome["error"]): void {
    if (this.reported) return;
    this.reported = true;
    this.onEnd({
      result,
      bytes: this.sink.written,
      retransmits: this.retransmits,
      firstResponseMs: Math.max(0, this.firstResponseMs),
      ...(error ? { error } : {}),
      ...(this.strays ? { strays: this.strays } : {}),
    });
  }

  private close(): void {
    this.phase = "done";
    this.clock.stop();
    this.channel.close();
  }
}

/**
 * WRQ state machine: the client sends DATA, the server ACKs (RFC 1350), once per window of
 * blocks when windowsize was negotiated (RFC 7440). Bytes go to an UploadSink that publishes
 * the file atomically only when the last block has arrived.
 *
 * When the final ACK goes (io.write_behind): false, once the file is on disk (fdatasync) and
 * published, so an acknowledged upload survives a crash; true, as soon as the last block is
 * in, with the sync and the publish after it (an acknowledged upload may then be lost to a
 * crash, never published half-written). Either way the disk is waited for off the event loop.
 */
import { decodePacket, encodeAck, encodeOack } from "../protocol/codec.ts";
import { NetasciiDecoder } from "../protocol/netascii.ts";
import { Opcode, type TransferMode } from "../protocol/packet.ts";
import type { UploadSink } from "../storage/upload.ts";
import type { TransferChannel } from "./transport.ts";
import { EndingTransfer, type TransferOutcome, type TransferParams, type TransferResult } from "./transfer.ts";

export interface WriteTransferParams extends TransferParams {
  mode: TransferMode;
  /** io.write_behind: the final ACK before the file is on disk */
  writeBehind: boolean;
}

export class WriteTransfer extends EndingTransfer<WriteTransferParams> {
  /** next block we expect */
  private expected = 1;
  /** last block we acknowledged (0 = the ACK 0 / OACK that opened the transfer) */
  private lastAcked = 0;
  private inWindow = 0;
  /** a gap was reported with an ACK since the last progress; report it once, not per block */
  private gapReported = false;
  private readonly netascii: NetasciiDecoder | null;
  /** the last block is in and the file is being synced and published; settles once the transfer knows how it went */
  publishing: Promise<void> | null = null;

  constructor(
    channel: TransferChannel,
    private readonly sink: UploadSink,
    params: WriteTransferParams,
    onEnd: (outcome: TransferOutcome) => void,
  ) {
    super(channel, params, onEnd);
    this.netascii = params.mode === "netascii" ? new NetasciiDecoder() : null;
  }

  start(): void {
    this.markFirstResponse();
    this.sendLastAck();
    this.clock.progress();
  }

  /** While dallying after the last block, only that block sent again and an ERROR still count. */
  handle(bytes: Uint8Array): void {
    if (this.state === "closed") return;
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
      // (while dallying: the upload is complete, and this only ends the dally)
      this.end("client-error", { code: packet.code, message: packet.message, from: "client" });
    } else {
      this.noteStray("unexpected-opcode");
    }
  }

  private onData(wire: number, data: Uint8Array): void {
    if (this.publishing || this.state === "lingering") {
      // The last block again: the final ACK, if it went (dallying, or write-behind), was lost
      // and goes again; before it goes, the client only repeats itself while the disk works.
      const acked = this.state === "lingering" || this.params.writeBehind;
      if (acked && wire === (this.lastAcked & 0xffff)) this.channel.send(encodeAck(wire));
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
      this.clock.heard();
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
    // nothing is resent while the disk works: the last block is in, and its ACK is the next word
    this.clock.stop();
    this.lastAcked = block;
    if (this.params.writeBehind) this.sendLastAck();
    this.publishing = this.sink.publish().then((refusal) => {
      this.publishing = null;
      if (this.state !== "running") return; // ended meanwhile (the server stopped): the upload is gone
      if (refusal) {
        this.fail(refusal.code, refusal.message);
        return;
      }
      if (!this.params.writeBehind) this.sendLastAck();
      // RFC 1350 §6: dally, so a client whose final ACK was lost can get it again.
      this.end("ok", undefined, this.params.retransmit.timeoutMs * 2);
    });
  }

  private sendLastAck(): void {
    if (this.lastAcked === 0 && this.params.oack) this.channel.send(encodeOack(this.params.oack));
    else this.channel.send(encodeAck(this.lastAcked & 0xffff));
  }

  protected override retransmit(): void {
    this.retransmits++;
    this.lastAcked = this.expected - 1;
    this.inWindow = 0;
    this.sendLastAck();
  }

  protected override bytesMoved(): number {
    return this.sink.written;
  }

  /** An upload that ends any other way than complete leaves nothing behind. */
  protected override release(result: TransferResult): void {
    if (result !== "ok") this.sink.abort();
  }
}

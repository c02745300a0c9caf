/**
 * WRQ: the sending side, lock-step or windowed (RFC 7440).
 *
 * Sorcerer's Apprentice (RFC 1123 §4.2.3.1): a duplicate ACK never triggers a resend; only
 * the retransmit timer does. An ACK of a block inside the window means the receiver saw a
 * gap: the next window starts right after it.
 */
import { writeDataHeader } from "../protocol/codec.ts";
import { blockCount, DATA_HEADER_SIZE, ErrorCode, Opcode, type Packet } from "../protocol/packet.ts";
import { ClientSession } from "./session.ts";
import { openSource, type Source } from "./source.ts";
import type { TransferReport, UploadOptions } from "./types.ts";

/** Datagrams per sendMany call (and packet buffers kept per session). */
const BATCH = 32;
const OPNAMES = ["?", "RRQ", "WRQ", "DATA", "ACK", "ERROR", "OACK"];

class UploadSession extends ClientSession<TransferReport> {
  private source: Source | null = null;
  private size = 0;
  /** Blocks in the transfer: the last one is shorter than blksize (possibly empty). */
  private total = 0;
  /** Absolute number of the last acknowledged block. */
  private acked = 0;
  /** Absolute number of the last block of the window in flight. */
  private sentHigh = 0;
  private started = false;
  private readonly pool: Uint8Array[] = [];
  private readonly batch: (Uint8Array | number | string)[] = [];
  private readonly batchBlocks: number[] = [];
  /** After a short sendMany: the first block still to send once the socket drains. */
  private resumeAt = 0;
  private resumeTo = 0;

  constructor(private readonly o: UploadOptions) {
    super(o, Opcode.WRQ);
  }

  protected prepare(): void {
    this.source = openSource(this.o.source, this.o.mode ?? "octet");
    this.size = this.source.size;
    if (this.requested.has("tsize")) this.requested.set("tsize", String(this.size));
  }

  protected acceptsFirst(packet: Packet): boolean {
    return packet.op === Opcode.ACK || packet.op === Opcode.OACK || packet.op === Opcode.ERROR;
  }

  protected onPacket(packet: Packet): void {
    switch (packet.op) {
      case Opcode.ACK:
        if (!this.started) {
          if (packet.block !== 0) {
            this.fail(ErrorCode.ILLEGAL_OPERATION, `expected ACK 0, got ACK ${packet.block}`, "local", true);
            return;
          }
          this.noOack(); // ACK 0 instead of an OACK: the server ignored our options
          this.start();
          return;
        }
        this.onAck(packet.block);
        return;
      case Opcode.OACK: {
        if (this.started) return; // a repeated OACK: our DATA 1 was lost; the timer resends
        const refused = this.applyOack(packet.options);
        if (refused !== null) {
          this.fail(ErrorCode.OPTION_REFUSED, refused, "local", true);
          return;
        }
        this.start();
        return;
      }
      default:
        this.fail(ErrorCode.ILLEGAL_OPERATION, `unexpected ${OPNAMES[packet.op] ?? "packet"} during upload`, "local", true);
    }
  }

  private start(): void {
    this.started = true;
    this.total = blockCount(this.size, this.blksize);
    this.sendWindow();
    this.progress();
  }

  private onAck(wire: number): void {
    // Unsigned distance from the last ACK: old and duplicate ACKs land far outside the window.
    const delta = (wire - this.acked) & 0xffff;
    if (delta === 0 || delta > this.sentHigh - this.acked) return;
    this.acked += delta;
    this.blocks = this.acked;
    this.bytes = Math.min(this.acked * this.blksize, this.size);
    this.o.onProgress?.(this.bytes, this.size);
    if (this.acked === this.total) {
      this.succeed(0);
      return;
    }
    this.sendWindow();
    this.progress();
  }

  private sendWindow(): void {
    this.sentHigh = Math.min(this.acked + this.windowsize, this.total);
    this.sendBlocks(this.acked + 1, this.sentHigh);
  }

  protected retransmit(): void {
    this.retransmits += this.sentHigh - this.acked;
    this.sendBlocks(this.acked + 1, this.sentHigh);
  }

  protected override onDrain(): void {
    if (this.resumeAt > this.acked && this.resumeAt <= this.resumeTo) this.sendBlocks(this.resumeAt, this.resumeTo);
    else this.resumeAt = 0;
  }

  private sendBlocks(from: number, to: number): void {
    const sock = this.sock;
    const addr = this.peerAddr;
    if (sock === null || addr === null) return;
    this.resumeAt = 0;
    const batch = this.batch;
    const blocks = this.batchBlocks;
    let block = from;
    while (block <= to) {
      batch.length = 0;
      blocks.length = 0;
      for (let slot = 0; block <= to && slot < BATCH; block++, slot++) {
        const packet = this.packet(block, slot);
        if (this.drop?.("out", packet)) continue;
        batch.push(packet, this.peerPort, addr);
        blocks.push(block);
      }
      if (blocks.length === 0) continue;
      let sent: number;
      try {
        sent = sock.sendMany(batch);
      } catch {
        sent = blocks.length; // a send error is a loss; the timer resends
      }
      if (sent < blocks.length) {
        this.resumeAt = blocks[sent] ?? 0;
        this.resumeTo = to;
        return;
      }
    }
  }

  /** Builds DATA `block` in pooled buffer `slot`: one copy (or pread) of the payload. */
  private packet(block: number, slot: number): Uint8Array {
    const position = (block - 1) * this.blksize;
    const length = Math.max(0, Math.min(this.blksize, this.size - position));
    let buf = this.pool[slot];
    if (buf === undefined || buf.length < DATA_HEADER_SIZE + length) {
      buf = new Uint8Array(DATA_HEADER_SIZE + Math.min(this.blksize, this.size));
      this.pool[slot] = buf;
    }
    writeDataHeader(buf, block & 0xffff);
    this.source!.read(buf, DATA_HEADER_SIZE, length, position);
    return buf.subarray(0, DATA_HEADER_SIZE + length);
  }

  protected release(_ok: boolean): void {
    const source = this.source;
    this.source = null;
    source?.close();
  }

  protected extra(): Record<string, never> {
    return {};
  }
}

/** Uploads to `remote` on host:port. Never rejects: failures come back as `ok: false`. */
export function upload(opts: UploadOptions): Promise<TransferReport> {
  return new UploadSession(opts).run();
}

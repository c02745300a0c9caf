/**
 * RRQ: the receiving side of RFC 1350 with blksize (RFC 2348), tsize (RFC 2349) and
 * windowsize (RFC 7440).
 */
import { NetasciiDecoder } from "../protocol/netascii.ts";
import { ErrorCode, Opcode, type Packet } from "../protocol/packet.ts";
import { ClientSession } from "./session.ts";
import { CallbackSink, FileSink, MemorySink, type Sink } from "./sink.ts";
import type { DownloadOptions, DownloadReport } from "./types.ts";

const OPNAMES = ["?", "RRQ", "WRQ", "DATA", "ACK", "ERROR", "OACK"];

class DownloadSession extends ClientSession<DownloadReport> {
  private sink: Sink | null = null;
  private memory: MemorySink | null = null;
  private data: Uint8Array | undefined;
  private decoder: NetasciiDecoder | null;
  /** Absolute number of the last block received in order (0 = none). */
  private lastInOrder = 0;
  /** Absolute number of the block we last acknowledged. */
  private lastAcked = 0;
  /** In-order blocks received since our last ACK. */
  private sinceAck = 0;
  /** A gap in the current window was already answered (RFC 7440 §4: one ACK per gap). */
  private gapAcked = false;
  private started = false;
  private readonly ack = new Uint8Array(4);

  constructor(private readonly o: DownloadOptions) {
    super(o, Opcode.RRQ);
    this.decoder = o.mode === "netascii" ? new NetasciiDecoder() : null;
    this.ack[1] = Opcode.ACK;
  }

  protected prepare(): void {
    if (this.o.onData) this.sink = new CallbackSink(this.o.onData);
    else if (this.o.file !== undefined) this.sink = new FileSink(this.o.file);
    else this.sink = this.memory = new MemorySink();
  }

  /**
   * A transfer's first DATA is block 1 (RFC 1350 §6). Any other block arriving before the
   * server's first reply is a stray: an earlier transfer to this port (a session that used the
   * same port number before, whose final ACK was lost) still sending its last block. Taken as
   * the first reply it would lock this download onto that transfer, with no options.
   */
  protected acceptsFirst(packet: Packet): boolean {
    if (packet.op === Opcode.DATA) return packet.block === 1;
    return packet.op === Opcode.OACK || packet.op === Opcode.ERROR;
  }

  protected onPacket(packet: Packet): void {
    switch (packet.op) {
      case Opcode.DATA:
        if (!this.started) {
          this.started = true; // DATA without OACK: the server ignored our options
          this.noOack();
        }
        this.onData(packet.block, packet.data);
        return;
      case Opcode.OACK:
        if (!this.started) {
          this.started = true;
          const refused = this.applyOack(packet.options);
          if (refused !== null) {
            this.fail(ErrorCode.OPTION_REFUSED, refused, "local", true);
            return;
          }
          if (this.tsize !== null) this.memory?.reserve(this.tsize);
          this.sendAck(0);
          this.progress();
        } else if (this.lastInOrder === 0 && this.oack !== null) {
          // The server repeats its OACK: our ACK 0 was lost.
          this.retransmits++;
          this.sendAck(0);
        }
        return;
      default:
        this.fail(ErrorCode.ILLEGAL_OPERATION, `unexpected ${OPNAMES[packet.op] ?? "packet"} during download`, "local", true);
    }
  }

  private onData(wire: number, payload: Uint8Array): void {
    const expected = this.lastInOrder + 1;
    // Block numbers are 16 bits and roll over 65535 → 0: place the wire number nearest the
    // expected absolute block.
    let delta = (wire - expected) & 0xffff;
    if (delta >= 0x8000) delta -= 0x10000;

    if (delta === 0) {
      if (payload.length > this.blksize) {
        this.fail(ErrorCode.ILLEGAL_OPERATION, `block ${wire} larger than blksize ${this.blksize}`, "local", true);
        return;
      }
      this.lastInOrder = expected;
      this.blocks = expected;
      this.bytes += payload.length;
      this.gapAcked = false;
      const sink = this.sink!;
      sink.write(this.decoder ? this.decoder.push(payload) : payload);
      this.o.onProgress?.(this.bytes, this.tsize);
      if (payload.length < this.blksize) {
        this.sendAck(expected);
        if (this.decoder) sink.write(this.decoder.end());
        this.succeed(this.o.dallyMs ?? this.baseRto);
        return;
      }
      if (++this.sinceAck >= this.windowsize) this.sendAck(expected);
      this.progress();
    } else if (delta > 0) {
      // A gap: ACK the last in-order block once, and the sender restarts after it.
      if (!this.gapAcked) {
        this.gapAcked = true;
        this.sendAck(this.lastInOrder);
      }
    } else if (expected + delta === this.lastAcked && this.lastInOrder === this.lastAcked) {
      // The last block of the previous window again: the sender lost our ACK.
      this.retransmits++;
      this.sendAck(this.lastAcked);
    }
    // Any other old block is a duplicate: ignore it.
  }

  protected override onDallyPacket(packet: Packet): void {
    // The server repeats the final block: our last ACK was lost.
    if (packet.op === Opcode.DATA && packet.block === (this.lastInOrder & 0xffff)) this.sendAck(this.lastInOrder);
  }

  protected retransmit(): void {
    this.retransmits++;
    this.sendAck(this.lastInOrder);
  }

  private sendAck(block: number): void {
    this.ack[2] = (block >>> 8) & 0xff;
    this.ack[3] = block & 0xff;
    this.lastAcked = block;
    this.sinceAck = 0;
    this.sendToPeer(this.ack);
  }

  protected release(ok: boolean): void {
    const sink = this.sink;
    if (sink === null) return;
    if (ok) {
      this.data = sink.commit();
      this.sink = null;
    } else {
      this.sink = null;
      sink.discard();
    }
  }

  protected extra(): Pick<DownloadReport, "data"> {
    return this.memory && this.data ? { data: this.data } : {};
  }
}

/** Downloads `remote` from host:port. Never rejects: failures come back as `ok: false`. */
export function download(opts: DownloadOptions): Promise<DownloadReport> {
  return new DownloadSession(opts).run();
}

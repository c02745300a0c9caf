/**
 * RRQ state machine: the server sends DATA, the client ACKs. RFC 1350 with the window of
 * RFC 7440 (windowsize 1 is exactly RFC 1350's lock-step).
 */
import { decodePacket, encodeOack, writeDataHeader } from "../protocol/codec.ts";
import { now } from "../net/turn-clock.ts";
import { blockCount, DATA_HEADER_SIZE, ErrorCode, Opcode } from "../protocol/packet.ts";
import type { FileSource } from "../storage/source.ts";
import type { TransferChannel } from "./transport.ts";
import { threadSendArena, type SendArena } from "./send-arena.ts";
import { absoluteBlock, EndingTransfer, type TransferOutcome, type TransferParams, type TransferResult } from "./transfer.ts";

/** Longest pause between windows after repeated losses. */
const PACING_MAX_MS = 50;
/**
 * A window leaves in batches of at most this many blocks and bytes, each sent as soon as it is
 * copied: the client works on the first blocks while the server copies the next, instead of
 * idling until the whole window is ready. One 100 MiB transfer at windowsize 64 (server and
 * client on separate CPUs, medians of 8): blksize 1468 ~3,550 → ~4,050 Mbit/s (batches of 16);
 * blksize 8192 ~11,150 → ~11,900 (batches of 8 = 64 KiB). A batch, headers included, also fits
 * one UDP GSO send (GSO_MAX_BYTES), which a windowed transfer's own socket turns it into.
 */
const WINDOW_BATCH_BLOCKS = 16;
const WINDOW_BATCH_BYTES = 63 * 1024;

export class ReadTransfer extends EndingTransfer {
  /** highest block the client acknowledged */
  private acked = 0;
  /** highest block sent so far */
  private sentUpTo = 0;
  private readonly lastBlock: number;
  /** "oack": the OACK waits for its ACK 0 */
  private phase: "oack" | "data" = "data";
  /** a window waits for bytes still being fetched (FileSource.whenReadable) */
  private awaitingBytes = false;
  /** blocks per sendmmsg within a window (WINDOW_BATCH_*) */
  private readonly batchBlocks: number;
  private readonly packets: Uint8Array[] = [];
  /** when the window in flight was first sent, and whether any of it was sent again since */
  private windowSentAt = 0;
  private windowResent = false;
  /**
   * RFC 7440 §6 asks a windowed sender for congestion control. A client ACKs only after a full
   * window, so shrinking the window would stall it until its timeout; instead, after a loss
   * the next windows wait pacingMs before leaving (doubling on each loss, halving on each
   * clean window): full speed on a clean LAN, backing off on a lossy one.
   */
  private pacingMs = 0;
  private paced: ReturnType<typeof setTimeout> | null = null;

  constructor(
    channel: TransferChannel,
    private readonly source: FileSource,
    params: TransferParams,
    onEnd: (outcome: TransferOutcome) => void,
    /** where packets are built: borrowed per batch, so an idle transfer holds none */
    private readonly arena: SendArena = threadSendArena,
  ) {
    super(channel, params, onEnd);
    this.lastBlock = blockCount(source.size, params.blksize);
    this.batchBlocks = Math.max(1, Math.min(WINDOW_BATCH_BLOCKS, Math.floor(WINDOW_BATCH_BYTES / params.blksize)));
  }

  start(): void {
    if (this.params.oack) {
      this.phase = "oack";
      this.markFirstResponse();
      this.channel.send(encodeOack(this.params.oack));
      this.clock.progress();
    } else {
      // one packet for one request: a window follows only the client's first ACK
      this.sendWindow(1, false, 1);
      this.clock.progress();
    }
  }

  handle(bytes: Uint8Array): void {
    if (this.state !== "running") return;
    // The hot path, once per window: an ACK is opcode 4 and a block number (RFC 1350 §5),
    // read in place without building a packet object.
    if (bytes.length >= 4 && bytes[0] === 0 && bytes[1] === Opcode.ACK) {
      this.onAck((bytes[2]! << 8) | bytes[3]!);
      return;
    }
    // Anything else from the client's port but a well-formed ERROR is dropped and counted:
    // answering it with an ERROR would let one forged datagram end the transfer.
    const decoded = decodePacket(bytes);
    if (!decoded.ok) {
      this.noteStray("malformed");
      return;
    }
    const packet = decoded.packet;
    if (packet.op !== Opcode.ERROR) {
      // (an ACK the codec accepts always took the path above)
      this.noteStray("unexpected-opcode");
      return;
    }
    // RFC 2347: an ERROR 8 in answer to the OACK is how firmware probes tsize.
    this.end(this.phase === "oack" && packet.code === ErrorCode.OPTION_REFUSED ? "probe" : "client-error", {
      code: packet.code,
      message: packet.message,
      from: "client",
    });
  }

  private onAck(wire: number): void {
    if (this.phase === "oack") {
      if (wire !== 0) {
        this.noteStray("out-of-window");
        return;
      }
      this.phase = "data";
      this.sendWindow(1, false);
      this.clock.progress();
      return;
    }
    const block = absoluteBlock(wire, this.sentUpTo);
    // RFC 1123 §4.2.3.1 (Sorcerer's Apprentice): a duplicate or stale ACK never triggers a send.
    if (block <= this.acked) {
      // (mapped below the newest block sent, an ACK up to half the block space ahead of it
      // lands here too: it names a block never sent)
      const ahead = (wire - this.sentUpTo) & 0xffff;
      if (ahead !== 0 && ahead < 0x8000) this.noteStray("out-of-window");
      // the client repeats its ACK because our answer did not reach it
      else if (block === this.acked) this.clock.heard();
      return;
    }
    this.acked = block;
    if (block === this.sentUpTo && !this.windowResent) this.clock.sample(now() - this.windowSentAt);
    if (block === this.lastBlock) {
      this.end("ok");
      return;
    }
    const rewind = block < this.sentUpTo;
    if (rewind) {
      // RFC 7440 §4: an ACK inside the window means the blocks after it were lost, and the
      // sender resumes right after the acknowledged block.
      this.retransmits += this.sentUpTo - block;
      this.lost();
    } else {
      this.pacingMs = this.pacingMs > 1 ? this.pacingMs / 2 : 0;
    }
    this.clock.progress();
    if (this.pacingMs === 0) {
      this.sendWindow(block + 1, rewind);
      return;
    }
    this.paced = setTimeout(() => {
      this.paced = null;
      if (this.state === "running") this.sendWindow(block + 1, rewind);
    }, this.pacingMs);
  }

  private lost(): void {
    if (this.params.windowsize > 1) this.pacingMs = Math.min(PACING_MAX_MS, Math.max(1, this.pacingMs * 2));
  }

  protected override retransmit(): void {
    // nothing went out yet: the window leaves once its bytes are in (no loss to react to)
    if (this.awaitingBytes) return;
    if (this.phase === "oack") {
      this.retransmits++;
      if (this.params.oack) this.channel.send(encodeOack(this.params.oack));
      return;
    }
    if (this.paced) {
      // The window this timer guards has not even left yet: send it now.
      clearTimeout(this.paced);
      this.paced = null;
    } else {
      this.retransmits += this.sentUpTo - this.acked;
      this.lost();
    }
    // (a client that never answered asked again for its first packet: only that one goes)
    this.sendWindow(this.acked + 1, true, this.clock.established ? this.params.windowsize : 1);
  }

  /**
   * @param again true when these blocks were sent before (then no RTT sample may come of it)
   * @param blocks how many blocks from `first` (fewer when the file ends sooner)
   */
  private sendWindow(first: number, again: boolean, blocks = this.params.windowsize): void {
    const { blksize } = this.params;
    const last = Math.min(first + blocks - 1, this.lastBlock);
    if (this.source.whenReadable) {
      // bytes still arriving (a file being fetched from the fleet's cache): this window goes
      // out once they are in; a retransmission asked for meanwhile is that same send
      const pending = this.source.whenReadable(Math.min(this.source.size, last * blksize));
      if (pending) {
        if (!this.awaitingBytes) {
          this.awaitingBytes = true;
          pending.then(
            () => {
              this.awaitingBytes = false;
              if (this.state === "running") this.sendWindow(first, again, blocks);
            },
            (error: Error) => {
              this.awaitingBytes = false;
              this.fail(ErrorCode.NOT_DEFINED, `read error: ${error.message}`);
            },
          );
        }
        return;
      }
    }
    this.packets.length = 0;
    const stride = blksize + DATA_HEADER_SIZE;
    let run = this.arena.take(stride, Math.min(this.batchBlocks, last - first + 1), this.channel);
    let slot = run.first;
    for (let block = first; block <= last; block++) {
      const packet = run.packets[slot++]!;
      const position = (block - 1) * blksize;
      const want = Math.max(0, Math.min(blksize, this.source.size - position));
      let got: number;
      try {
        got = want === 0 ? 0 : this.source.read(position, packet, DATA_HEADER_SIZE, want);
      } catch (error) {
        this.fail(ErrorCode.NOT_DEFINED, `read error: ${(error as Error).message}`);
        return;
      }
      if (got !== want) {
        // The file shrank under us: a short block would end the transfer with wrong content.
        this.fail(ErrorCode.NOT_DEFINED, "file changed during transfer");
        return;
      }
      writeDataHeader(packet, block & 0xffff);
      // Only the final block is short; full blocks reuse the arena's view as is.
      this.packets.push(got === blksize ? packet : packet.subarray(0, DATA_HEADER_SIZE + got));
      if (this.packets.length === this.batchBlocks && block < last) {
        this.markFirstResponse();
        this.channel.sendMany(this.packets);
        this.channel.settle();
        this.packets.length = 0;
        run = this.arena.take(stride, Math.min(this.batchBlocks, last - block), this.channel);
        slot = run.first;
      }
    }
    this.markFirstResponse();
    if (this.packets.length === 1) this.channel.send(this.packets[0]!);
    else this.channel.sendMany(this.packets);
    // the last batch of a split window goes out now too, not at the end of the event-loop turn
    // (where shared sockets gather the datagrams of many transfers)
    if (last - first >= this.batchBlocks) this.channel.settle();
    this.sentUpTo = last;
    this.windowResent = again;
    if (!again) this.windowSentAt = now();
  }

  protected override bytesMoved(result: TransferResult): number {
    return result === "ok" ? this.source.size : Math.min(this.acked * this.params.blksize, this.source.size);
  }

  protected override release(): void {
    if (this.paced) clearTimeout(this.paced);
    this.source.close();
  }
}

/**
 * The buffers DATA packets are built in, shared by every read transfer of a thread. A read
 * transfer copies a window's blocks from its file on every send and resend, so it needs packet
 * buffers only from the copy until the socket has taken the datagrams: between windows, and
 * before its first one (a request answered with an OACK that is never acknowledged), it holds
 * none.
 *
 * The arena is one buffer handed out front to back in runs of packets of one transfer's size.
 * Shared transfer sockets queue datagrams until the end of the event-loop turn (or until a
 * batch is full), so a region may be handed out again only once whatever was queued from it
 * has left: before the cursor wraps to the front, every channel that took packets since the
 * last wrap is settled (TransferChannel.settle sends what it queued). Per-transfer sockets
 * send at once; their settle does nothing.
 */
import type { TransferChannel } from "./transport.ts";

/** Bytes of the arena buffer: several windows of any size, so wraps (and early flushes) are rare. */
const SEND_ARENA_BYTES = 1 << 20;
/**
 * Packet views kept per packet size: a run is a slice of ready-made views, since cutting a new
 * view per packet costs more than the rest of choosing its buffer. Small packets use only the
 * front of the buffer rather than keeping thousands of views.
 */
const MAX_VIEWS_PER_SIZE = 1024;
/** Packet sizes whose views are kept; one more drops the oldest (clients use a handful). */
const MAX_SIZES = 16;

/** Packet buffers handed out by SendArena.take: packets[first] .. packets[first + count - 1]. */
export interface PacketRun {
  packets: readonly Uint8Array[];
  first: number;
}

export class SendArena {
  private buffer: Uint8Array | null = null;
  /** next free byte of the buffer in this lap */
  private cursor = 0;
  /** channels that took packets in this lap, to settle before the buffer is handed out again */
  private readonly takers: TransferChannel[] = [];
  private readonly views = new Map<number, Uint8Array[]>();
  /** the last size asked for and its views: the common case is one size for every transfer */
  private lastStride = 0;
  private lastViews: Uint8Array[] = [];
  /** one run object, refilled by every take (nothing is allocated per window) */
  private readonly run: { packets: Uint8Array[]; first: number } = { packets: [], first: 0 };
  private wraps = 0;

  constructor(private readonly bytes = SEND_ARENA_BYTES) {}

  /** how many times the buffer was handed out from the front again (a new lap) */
  get laps(): number {
    return this.wraps;
  }

  /**
   * `count` packet buffers of `stride` bytes for `channel`. They stay the caller's until the
   * next take, by any transfer of this thread: fill them and hand them to the channel first.
   * The returned run is reused by the next take.
   */
  take(stride: number, count: number, channel: TransferChannel): PacketRun {
    const views = stride === this.lastStride ? this.lastViews : this.viewsOf(stride);
    if (count > views.length) throw new RangeError(`a run of ${count} packets of ${stride} bytes does not fit the send arena`);
    let first = Math.ceil(this.cursor / stride);
    if (first + count > views.length) {
      // Out of room: the front is free again once what was queued from this lap has left.
      // (Wrapping early for a transfer running alone, to rebuild its packets in bytes still in
      // the CPU's cache, measured slower: every early wrap settles, and sends, on its own.)
      this.wrap();
      first = 0;
    }
    this.cursor = (first + count) * stride;
    if (this.takers[this.takers.length - 1] !== channel) this.takers.push(channel);
    this.run.packets = views;
    this.run.first = first;
    return this.run;
  }

  /** Sends whatever is still queued from this lap's buffers, and starts the next lap. */
  private wrap(): void {
    for (const channel of this.takers) channel.settle();
    this.takers.length = 0;
    this.cursor = 0;
    this.wraps++;
  }

  private viewsOf(stride: number): Uint8Array[] {
    let views = this.views.get(stride);
    if (!views) {
      const fit = Math.min(MAX_VIEWS_PER_SIZE, Math.floor(this.bytes / stride));
      this.buffer ??= new Uint8Array(this.bytes);
      views = [];
      for (let i = 0; i < fit; i++) views.push(this.buffer.subarray(i * stride, (i + 1) * stride));
      if (this.views.size >= MAX_SIZES) this.views.delete(this.views.keys().next().value!);
      this.views.set(stride, views);
    }
    this.lastStride = stride;
    this.lastViews = views;
    return views;
  }
}

/** The arena of this thread (each worker thread has its own module instance, so its own arena). */
export const threadSendArena = new SendArena();

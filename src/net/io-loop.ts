/**
 * A readiness loop for the sockets of udp-ffi.ts: epoll_wait, then every ready socket drains
 * its datagrams in batches (recvmmsg), then every socket sends what it queued (sendmmsg).
 *
 * It runs on a JS thread between that thread's other work: each turn is one setImmediate
 * callback, so timers and messages still run between turns. While nothing is ready the turn
 * blocks in epoll_wait, so the thread must not also own Bun sockets (they would wait): it runs
 * in transfer workers, whose sockets are all ours. What else may need the thread wakes it:
 * another thread writes to `wakeFd` (an eventfd) after posting it a message, and a thread with
 * transfers running wakes at least every IDLE_WAIT_MS for its timers (retransmissions are due
 * no sooner than RTO_MIN_MS, 200 ms). With no transfers it sleeps until woken. With a WakeGate
 * the other thread writes only while this one may be asleep, and a turn whose messages are
 * still unread does not sleep.
 */
import { ptr } from "bun:ffi";
import { EINTR, netLayout, netLibc, type Layout, type NetLibc } from "./libc.ts";
import { beginTurn, endTurn, now } from "./turn-clock.ts";
import type { WakeGate } from "./wake-gate.ts";

export interface Readable {
  /** reads every datagram that is waiting (ready per epoll) */
  drain(): void;
}

export interface Flushable {
  /** sends what was queued; called at the end of every turn that queued something */
  flush(): void;
}

const EPOLL_CLOEXEC = 0x80000;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLLIN = 0x1;
const EFD_NONBLOCK = 0x800;
const EFD_CLOEXEC = 0x80000;
const MAX_EVENTS = 64;
/** Longest sleep while transfers run, so their timers fire at most this late. */
export const IDLE_WAIT_MS = 2;
/** How long a loop waits with nothing running and nothing arriving before its idle work (onIdle). */
export const IDLE_WORK_AFTER_MS = 250;

export class IoLoop {
  private readonly events: Uint8Array;
  private readonly eventsAt: number;
  private readonly eventView: DataView;
  private readonly readers = new Map<number, Readable>();
  /** descriptors drained first in a turn (watch) */
  private readonly firstFds = new Set<number>();
  private readonly pending = new Set<Flushable>();
  private readonly counter = new BigUint64Array(1);
  private scheduled = false;
  private closed = false;
  /** transfers running on this loop's sockets: while any do, sleeps are short */
  holds = 0;
  /** batch.batch_timeout: the longest a queued datagram waits within a turn */
  batchTimeoutMs = 1;
  /**
   * Runs once the loop has had no transfer running and no datagram arriving for
   * IDLE_WORK_AFTER_MS after datagrams came: work that would otherwise fall on the next
   * request. (Asleep in epoll_wait, the thread runs no timers, its runtime's own included.)
   */
  onIdle: (() => void) | null = null;
  /** datagrams arrived since the loop last ran onIdle */
  private busySinceIdle = false;
  private oldestQueuedAt = 0;
  private readonly turnBound = (): void => this.turn();

  private constructor(
    private readonly lib: NetLibc,
    private readonly layout: Layout,
    private readonly epfd: number,
    /** eventfd another thread writes to after posting this one a message */
    readonly wakeFd: number,
    private readonly gate: WakeGate | null,
  ) {
    // (every buffer handed to libc is made from an ArrayBuffer: asking a small typed array for
    // its .buffer later would move its bytes away from a pointer taken before)
    this.events = new Uint8Array(new ArrayBuffer(MAX_EVENTS * layout.epollEventBytes));
    this.eventsAt = ptr(this.events);
    this.eventView = new DataView(this.events.buffer);
    this.watch(wakeFd, { drain: () => this.lib.read(this.wakeFd, ptr(this.counter), 8) });
  }

  /**
   * A loop for this thread, or null where libc or its struct layouts are out of reach; `gate`:
   * shared with the thread that posts this one messages (they then write wakeFd only when told)
   */
  static open(gate: WakeGate | null = null): IoLoop | null {
    const lib = netLibc();
    const layout = netLayout();
    if (!lib || !layout) return null;
    const epfd = lib.epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) return null;
    const wakeFd = lib.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wakeFd < 0) {
      lib.close(epfd);
      return null;
    }
    return new IoLoop(lib, layout, epfd, wakeFd, gate);
  }

  /**
   * Calls `reader.drain()` whenever `fd` has datagrams waiting; `first`: before the sockets
   * watched without it, in every turn both are ready (a listen socket: a request waiting is a
   * client waiting for its first packet, while a running transfer's client has a window in
   * flight).
   */
  watch(fd: number, reader: Readable, first = false): void {
    const event = new Uint8Array(new ArrayBuffer(this.layout.epollEventBytes));
    const view = new DataView(event.buffer);
    view.setUint32(0, EPOLLIN, true);
    view.setUint32(this.layout.epollDataOffset, fd, true);
    if (this.lib.epoll_ctl(this.epfd, EPOLL_CTL_ADD, fd, ptr(event)) !== 0) {
      throw new Error(`epoll_ctl(ADD, ${fd}) failed: errno ${this.lib.errno()}`);
    }
    this.readers.set(fd, reader);
    if (first) this.firstFds.add(fd);
    this.schedule();
  }

  unwatch(fd: number): void {
    if (!this.readers.delete(fd)) return;
    this.firstFds.delete(fd);
    // (closing the descriptor would drop it from the set too; a socket closed later may not be)
    this.lib.epoll_ctl(this.epfd, EPOLL_CTL_DEL, fd, ptr(this.events));
  }

  /**
   * `socket` queued datagrams: it is flushed at the end of this turn, before the next sleep, or
   * once its oldest has waited batchTimeoutMs within a long turn (sendIfDue).
   */
  queued(socket: Flushable): void {
    if (this.pending.size === 0) this.oldestQueuedAt = now();
    this.pending.add(socket);
    this.schedule();
  }

  /**
   * Sends what was queued if the oldest of it has waited batchTimeoutMs: called by sockets
   * between their receive batches, so a turn that keeps reading (a flood) does not hold
   * answers back for its whole length.
   */
  sendIfDue(): void {
    if (this.pending.size > 0 && performance.now() - this.oldestQueuedAt >= this.batchTimeoutMs) this.flushAll();
  }

  /**
   * Stops the loop and closes its epoll descriptor (the sockets close their own). The wake
   * descriptor stays open: the thread that writes to it closes it once it can no longer write
   * (closeWake), so a write never lands on a descriptor number reused meanwhile.
   */
  close(): void {
    this.flushAll();
    this.closed = true;
    this.readers.clear();
    this.firstFds.clear();
    this.lib.close(this.epfd);
  }

  private schedule(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    setImmediate(this.turnBound);
  }

  private turn(): void {
    this.scheduled = false;
    if (this.closed) return;
    // what timers and messages queued since the last turn leaves before any sleep
    this.flushAll();
    let wait = this.holds > 0 ? IDLE_WAIT_MS : this.busySinceIdle && this.onIdle ? IDLE_WORK_AFTER_MS : -1;
    if (this.gate && !this.gate.maySleep()) wait = 0;
    const ready = this.lib.epoll_wait(this.epfd, this.eventsAt, MAX_EVENTS, wait);
    this.gate?.awake();
    if (ready < 0 && this.lib.errno() !== EINTR) throw new Error(`epoll_wait failed: errno ${this.lib.errno()}`);
    if (ready === 0 && wait === IDLE_WORK_AFTER_MS) {
      this.busySinceIdle = false;
      this.onIdle?.();
    }
    beginTurn();
    try {
      if (this.firstFds.size > 0) for (let i = 0; i < ready; i++) this.drainIf(i, true);
      for (let i = 0; i < ready; i++) this.drainIf(i, false);
      this.flushAll();
    } finally {
      endTurn();
    }
    // sockets only of the wake descriptor: the thread has nothing here to wait for
    if (this.readers.size > 1) this.schedule();
  }

  /** Drains the reader of ready event `i` if it is (or is not) one drained first. */
  private drainIf(i: number, first: boolean): void {
    const fd = this.eventView.getUint32(i * this.layout.epollEventBytes + this.layout.epollDataOffset, true);
    if (this.firstFds.has(fd) !== first) return;
    if (fd !== this.wakeFd) this.busySinceIdle = true;
    this.readers.get(fd)?.drain();
  }

  private flushAll(): void {
    if (this.pending.size === 0) return;
    for (const socket of this.pending) socket.flush();
    this.pending.clear();
  }
}

const ONE = new BigUint64Array([1n]);

/** Wakes the loop whose wakeFd this is (from another thread, after posting it a message). */
export function wakeLoop(wakeFd: number): void {
  netLibc()?.write(wakeFd, ptr(ONE), 8);
}

/** Closes a loop's wake descriptor, once its thread has ended. */
export function closeWake(wakeFd: number): void {
  netLibc()?.close(wakeFd);
}

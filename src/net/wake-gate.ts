/**
 * Whether a thread's I/O loop may be asleep in epoll_wait, shared with the thread that posts it
 * messages: the poster writes the loop's wake descriptor only when the loop may be asleep, and
 * the loop sleeps only when every message posted to it has been read. In a storm the worker is
 * awake for nearly every job handed to it, and the write (a system call that wakes nothing)
 * was part of the main thread's cost of each.
 *
 * Dekker's handshake over sequentially consistent atomics: the poster counts its message, then
 * reads the flag; the loop raises the flag, then reads the count. Whichever comes second sees
 * what the other wrote, so a message is never left unread while the loop sleeps.
 */
const SLEEPING = 0;
const POSTED = 1;

export class WakeGate {
  private readonly cells: Int32Array;
  /** messages the loop's thread has read (kept on its side only; wraps as the count does) */
  private read = 0;

  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(2 * Int32Array.BYTES_PER_ELEMENT)) {
    this.cells = new Int32Array(buffer);
  }

  /** Poster, after posting a message: true when the loop may be asleep and must be woken. */
  posted(): boolean {
    Atomics.add(this.cells, POSTED, 1);
    return Atomics.load(this.cells, SLEEPING) === 1;
  }

  /** The loop's thread read one posted message. */
  received(): void {
    this.read = (this.read + 1) | 0;
  }

  /** The loop, before a wait: false when a posted message is still unread (then it must only look). */
  maySleep(): boolean {
    Atomics.store(this.cells, SLEEPING, 1);
    if (Atomics.load(this.cells, POSTED) === this.read) return true;
    Atomics.store(this.cells, SLEEPING, 0);
    return false;
  }

  /** The loop, after its wait. */
  awake(): void {
    Atomics.store(this.cells, SLEEPING, 0);
  }
}

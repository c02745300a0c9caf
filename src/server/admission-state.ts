/**
 * What admission counts (transfers in all, per client address, per address and file, and the
 * memory they reserved), in shared memory, so that every thread that admits transfers (the
 * main thread, and transfer workers taking requests themselves) counts against the same
 * limits. One lock guards it all: an admission checks every limit and takes from each, or
 * from none. Its hold is a few table probes; the threads that contend for it are few.
 *
 * Keys are hashed to 64 bits (two 32-bit FNV-1a hashes with different bases); two keys with
 * one hash would share a count, which only makes a limit stricter, at odds of 2^-64 per pair.
 * The tables use linear probing, and a count that falls to zero gives its slot back by
 * backward shift, so no tombstones pile up however many addresses come and go.
 */

const LOCK = 0;
/** tries to take a held lock before sleeping on it (locked) */
const LOCK_SPINS = 100;
const TOTAL = 1;
const IP_ENTRIES = 2;
const CLIENT_ENTRIES = 3;
/** Float64 index of the reserved bytes (byte 16) */
const RESERVED = 2;
const HEADER_BYTES = 32;
/** int32 cells per slot: hash a, hash b, count (0: empty) */
const SLOT_CELLS = 3;
/** a table fuller than this refuses new keys (its probes would grow long) */
const MAX_LOAD = 0.75;

export type Table = "ip" | "client";

export class AdmissionState {
  private readonly cells: Int32Array;
  private readonly floats: Float64Array;
  /** slots per table */
  readonly capacity: number;
  private readonly mask: number;

  /** `capacity`: distinct keys each table holds at once, rounded up to a power of two over the load factor */
  static create(capacity: number): AdmissionState {
    let slots = 16;
    while (slots * MAX_LOAD < capacity) slots *= 2;
    return new AdmissionState(new SharedArrayBuffer(HEADER_BYTES + 2 * slots * SLOT_CELLS * 4));
  }

  /** The state another thread made, from its buffer. */
  constructor(readonly buffer: SharedArrayBuffer) {
    this.cells = new Int32Array(buffer);
    this.floats = new Float64Array(buffer, 0, HEADER_BYTES / 8);
    this.capacity = (buffer.byteLength - HEADER_BYTES) / (2 * SLOT_CELLS * 4);
    this.mask = this.capacity - 1;
  }

  /**
   * Runs `body` holding the lock: 0 free, 1 held, 2 held with a thread asleep on it (a futex
   * mutex through Atomics.wait / notify). A holder keeps it for a few table probes, so a thread
   * that finds it held spins a little first; past that the holder is not running (the threads
   * may share a CPU, and a holder preempted by the waiter would otherwise be spun against for
   * the waiter's whole time slice), so it sleeps until the holder lets go.
   */
  locked<T>(body: () => T): T {
    const cells = this.cells;
    let state = Atomics.compareExchange(cells, LOCK, 0, 1);
    if (state !== 0) {
      for (let spin = 0; spin < LOCK_SPINS && state !== 0; spin++) state = Atomics.compareExchange(cells, LOCK, 0, 1);
      // held still: mark it contended and sleep; who takes it from here takes it as contended
      while (state !== 0) {
        if (state === 2 || Atomics.compareExchange(cells, LOCK, 1, 2) !== 0) Atomics.wait(cells, LOCK, 2);
        state = Atomics.compareExchange(cells, LOCK, 0, 2);
      }
    }
    try {
      return body();
    } finally {
      if (Atomics.exchange(cells, LOCK, 0) === 2) Atomics.notify(cells, LOCK, 1);
    }
  }

  // --- the rest is called with the lock held ---

  get total(): number {
    return this.cells[TOTAL]!;
  }

  set total(n: number) {
    this.cells[TOTAL] = n;
  }

  get reserved(): number {
    return this.floats[RESERVED]!;
  }

  set reserved(bytes: number) {
    this.floats[RESERVED] = bytes;
  }

  count(table: Table, key: string): number {
    const at = this.find(table, hashA(key), hashB(key));
    return at < 0 ? 0 : this.cells[at + 2]!;
  }

  /** Adds one to `key`'s count; false (nothing added) when the table has no room for a new key. */
  increment(table: Table, key: string): boolean {
    const a = hashA(key);
    const b = hashB(key);
    const at = this.find(table, a, b);
    if (at >= 0) {
      this.cells[at + 2]!++;
      return true;
    }
    const entries = table === "ip" ? IP_ENTRIES : CLIENT_ENTRIES;
    if (this.cells[entries]! + 1 > this.capacity * MAX_LOAD) return false;
    const slot = this.emptySlotFor(table, a);
    this.cells[slot] = a;
    this.cells[slot + 1] = b;
    this.cells[slot + 2] = 1;
    this.cells[entries]!++;
    return true;
  }

  /** Takes one from `key`'s count; false when it has none. */
  decrement(table: Table, key: string): boolean {
    const at = this.find(table, hashA(key), hashB(key));
    if (at < 0) return false;
    if (--this.cells[at + 2]! === 0) this.remove(table, at);
    return true;
  }

  private base(table: Table): number {
    return HEADER_BYTES / 4 + (table === "ip" ? 0 : this.capacity * SLOT_CELLS);
  }

  /** the cell index of `key`'s slot, or -1 */
  private find(table: Table, a: number, b: number): number {
    const base = this.base(table);
    const cells = this.cells;
    for (let i = a & this.mask; ; i = (i + 1) & this.mask) {
      const at = base + i * SLOT_CELLS;
      if (cells[at + 2] === 0) return -1;
      if (cells[at] === a && cells[at + 1] === b) return at;
    }
  }

  private emptySlotFor(table: Table, a: number): number {
    const base = this.base(table);
    for (let i = a & this.mask; ; i = (i + 1) & this.mask) {
      const at = base + i * SLOT_CELLS;
      if (this.cells[at + 2] === 0) return at;
    }
  }

  /** Empties the slot at `at`, moving later keys of its probe run back so that none is cut off from its home. */
  private remove(table: Table, at: number): void {
    const base = this.base(table);
    const cells = this.cells;
    let hole = (at - base) / SLOT_CELLS;
    for (let i = (hole + 1) & this.mask; ; i = (i + 1) & this.mask) {
      const from = base + i * SLOT_CELLS;
      if (cells[from + 2] === 0) break;
      const home = cells[from]! & this.mask;
      // the key at i may move into the hole when its home is not inside (hole, i]
      const between = hole <= i ? home > hole && home <= i : home > hole || home <= i;
      if (between) continue;
      const to = base + hole * SLOT_CELLS;
      cells[to] = cells[from]!;
      cells[to + 1] = cells[from + 1]!;
      cells[to + 2] = cells[from + 2]!;
      hole = i;
    }
    const to = base + hole * SLOT_CELLS;
    cells[to] = 0;
    cells[to + 1] = 0;
    cells[to + 2] = 0;
    cells[table === "ip" ? IP_ENTRIES : CLIENT_ENTRIES]!--;
  }
}

function hashA(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  return h | 0;
}

function hashB(key: string): number {
  let h = 0x050c5d1f;
  for (let i = key.length - 1; i >= 0; i--) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  return h | 0;
}

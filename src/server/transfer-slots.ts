/**
 * Transfer slots (connection_pool.*, performance.memory.connection_pool_size): what a transfer
 * with a socket of its own sends and receives through, kept for the next transfer instead of
 * allocated and collected per transfer. Under a storm of windowed transfers (UEFI firmware asks
 * windowsize 4) every transfer would otherwise allocate its socket's buffers and leave them to
 * the collector; a slot is taken as the socket opens and given back as it closes.
 *
 * A pool is one thread's (each transfer engine has its own, so nothing is shared or locked):
 * it starts with `preallocate` idle slots, holds at most `max` (a transfer past them gets
 * buffers of its own, collected after it), and gives up slots idle for `idleMs` down to `min`.
 */

export interface SlotPoolSettings {
  /** slots made as the pool starts */
  preallocate: number;
  /** idle slots kept however long they sit unused */
  min: number;
  /** most slots the pool holds, busy and idle together; 0: none are kept */
  max: number;
  /** how long a slot past `min` may sit idle before it is given up */
  idleMs: number;
}

/** What a pool did, for tftpd_transfer_slots and tftpd_transfer_slot_allocations_total. */
export interface SlotStats {
  idle: number;
  busy: number;
  /** slots made since the pool started, those preallocated included */
  allocated: number;
  /** transfers that took an idle slot */
  reused: number;
}

export class SlotPool<Slot> {
  /** idle slots, the most recently used last: a transfer takes the warmest */
  private readonly idle: Slot[] = [];
  /** when each idle slot was given back; never decreasing, so the oldest are at the front */
  private readonly idleSince: number[] = [];
  private busy = 0;
  private allocated = 0;
  private reused = 0;

  constructor(
    private readonly make: () => Slot,
    private readonly settings: SlotPoolSettings,
    private readonly clock: () => number = () => performance.now(),
  ) {
    const count = Math.min(settings.preallocate, settings.max);
    const now = clock();
    for (let i = 0; i < count; i++) {
      this.idle.push(this.allocate());
      this.idleSince.push(now);
    }
  }

  take(): Slot {
    this.busy++;
    const slot = this.idle.pop();
    if (slot === undefined) return this.allocate();
    this.idleSince.pop();
    this.reused++;
    return slot;
  }

  /** `slot` is free again: kept when the pool has room for it, else left to the collector */
  give(slot: Slot): void {
    this.busy--;
    if (this.idle.length + this.busy < this.settings.max) {
      this.idle.push(slot);
      this.idleSince.push(this.clock());
    }
  }

  /** Gives up the slots past `min` that sat idle for idleMs. */
  trim(): void {
    const spare = this.idle.length - this.settings.min;
    if (spare <= 0) return;
    const before = this.clock() - this.settings.idleMs;
    let stale = 0;
    while (stale < spare && this.idleSince[stale]! <= before) stale++;
    if (stale === 0) return;
    this.idle.splice(0, stale);
    this.idleSince.splice(0, stale);
  }

  get stats(): SlotStats {
    return { idle: this.idle.length, busy: this.busy, allocated: this.allocated, reused: this.reused };
  }

  private allocate(): Slot {
    this.allocated++;
    return this.make();
  }
}

/** A node's pool settings shared out over its `engines` (each engine holds its share). */
export function slotShare(node: SlotPoolSettings, engines: number): SlotPoolSettings {
  const share = (n: number) => Math.ceil(n / Math.max(1, engines));
  return { preallocate: share(node.preallocate), min: share(node.min), max: share(node.max), idleMs: node.idleMs };
}

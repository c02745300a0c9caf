/** A manual clock for the scheduler tests: timers fire only when the test advances time. */
import type { Timers } from "../../../src/bench/schedule.ts";

interface Pending {
  id: number;
  at: number;
  fn: () => void;
}

export class FakeClock implements Timers {
  t = 0;
  private nextId = 1;
  private pending: Pending[] = [];

  /** `granularity` rounds every timer delay up to a multiple of it, as real timers do (1 ms). */
  constructor(private readonly granularity = 0) {}

  now(): number {
    return this.t;
  }

  set(fn: () => void, ms: number): unknown {
    const delay = this.granularity > 0 ? Math.max(this.granularity, Math.ceil(ms / this.granularity) * this.granularity) : ms;
    const id = this.nextId++;
    this.pending.push({ id, at: this.t + delay, fn });
    return id;
  }

  clear(handle: unknown): void {
    this.pending = this.pending.filter((p) => p.id !== handle);
  }

  get timers(): number {
    return this.pending.length;
  }

  /** Runs every timer due up to now + ms, in time order, moving the clock to each. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      let next: Pending | undefined;
      for (const p of this.pending) if (p.at <= end && (next === undefined || p.at < next.at || (p.at === next.at && p.id < next.id))) next = p;
      if (next === undefined) break;
      this.pending = this.pending.filter((p) => p !== next);
      this.t = Math.max(this.t, next.at);
      next.fn();
    }
    this.t = end;
  }

  /** Advances until no timer is left (bounded). */
  drain(limitMs = 1e9): void {
    const stopAt = this.t + limitMs;
    while (this.pending.length > 0 && this.t < stopAt) {
      const at = Math.min(...this.pending.map((p) => p.at));
      this.advance(Math.max(0, at - this.t));
    }
  }
}

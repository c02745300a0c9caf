/**
 * When `tftpd bench` starts transfers.
 *
 * - Closed loop (no rate): keep exactly `concurrency` transfers in flight; a new one starts as
 *   soon as one ends. The first wave starts in one synchronous loop.
 * - Open loop (rate N/s): arrival k is due at t0 + k/N whatever the server does, so a slow
 *   server meets the same offered load; `concurrency` caps the transfers in flight, and an
 *   arrival that finds the cap full starts as soon as a slot frees (its lag is recorded).
 *
 * Both stop after `total` starts and/or once `durationMs` has passed since t0 (whichever comes
 * first), then wait for the transfers in flight. One timer for the whole schedule (open loop
 * only), never one per transfer. Pure: the clock and timer are injected, so tests run on a
 * fake clock.
 */

export interface SchedulePlan {
  /** Most transfers in flight at once (≥ 1). */
  concurrency: number;
  /** Transfers to start in all; null: no limit (then durationMs is set). */
  total: number | null;
  /** Stop starting new transfers this long after the first; null: no limit. */
  durationMs: number | null;
  /** Arrivals per second (open loop); null: closed loop. */
  rate: number | null;
}

export interface Timers {
  now(): number;
  set(fn: () => void, ms: number): unknown;
  clear(handle: unknown): void;
}

export const realTimers: Timers = {
  now: () => performance.now(),
  set: (fn, ms) => setTimeout(fn, ms),
  clear: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/**
 * Starts transfer `index` (0, 1, 2, …); `lagMs` is how late it starts against its due time
 * (open loop; 0 in a closed loop). It must call `done` exactly once when the transfer ends
 * (synchronously is allowed).
 */
export type Launch = (index: number, lagMs: number, done: () => void) => void;

/** An arrival counts as late when it starts more than this after its due time. */
export const LATE_MS = 5;

export class ArrivalScheduler {
  /** Transfers started, finished, in flight now, and the most ever in flight. */
  started = 0;
  finished = 0;
  inFlight = 0;
  maxInFlight = 0;
  /** Open loop: arrivals started more than LATE_MS after their due time, and the worst lag. */
  lateStarts = 0;
  maxLagMs = 0;
  /** When the schedule began (timers.now()), and whether new starts have stopped. */
  t0 = 0;
  stopped = false;

  private readonly interval: number;
  private timer: unknown = null;
  private pumping = false;
  private again = false;
  private resolveIdle: (() => void) | null = null;
  private readonly doneFn = (): void => {
    this.inFlight--;
    this.finished++;
    this.pump();
  };

  constructor(
    private readonly plan: SchedulePlan,
    private readonly launch: Launch,
    private readonly timers: Timers = realTimers,
  ) {
    if (!Number.isInteger(plan.concurrency) || plan.concurrency < 1) throw new Error("concurrency must be ≥ 1");
    if (plan.total === null && plan.durationMs === null) throw new Error("need a total or a duration");
    if (plan.rate !== null && !(plan.rate > 0)) throw new Error("rate must be > 0");
    this.interval = plan.rate === null ? 0 : 1000 / plan.rate;
  }

  /** Due time of arrival `index` relative to t0 (open loop). */
  dueAt(index: number): number {
    return index * this.interval;
  }

  /** Begins; resolves once starting has stopped and every started transfer has ended. */
  run(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.resolveIdle = resolve;
      this.t0 = this.timers.now();
      this.pump();
    });
  }

  /** Starts nothing more (Ctrl-C, or the caller's own limit); transfers in flight go on. */
  stop(): void {
    this.stopped = true;
    this.clearTimer();
    this.pump();
  }

  private more(): boolean {
    return !this.stopped && (this.plan.total === null || this.started < this.plan.total);
  }

  private pump(): void {
    // `launch` may call `done` synchronously: never recurse, loop instead.
    if (this.pumping) {
      this.again = true;
      return;
    }
    this.pumping = true;
    try {
      do {
        this.again = false;
        this.step();
      } while (this.again);
    } finally {
      this.pumping = false;
    }
    if (!this.more() && this.inFlight === 0 && this.resolveIdle !== null) {
      const resolve = this.resolveIdle;
      this.resolveIdle = null;
      this.clearTimer();
      resolve();
    }
  }

  private step(): void {
    if (!this.more()) return;
    const now = this.timers.now();
    const elapsed = now - this.t0;
    const duration = this.plan.durationMs;
    if (duration !== null && elapsed >= duration && this.started > 0) {
      this.stopped = true;
      this.clearTimer();
      return;
    }
    const cap = this.plan.concurrency;
    if (this.plan.rate === null) {
      while (this.inFlight < cap && this.more()) this.startOne(0);
      return;
    }
    while (this.more() && this.inFlight < cap) {
      const due = this.dueAt(this.started);
      if (duration !== null && due >= duration && this.started > 0) {
        // The next arrival falls after the end of the run.
        this.stopped = true;
        this.clearTimer();
        return;
      }
      if (due > elapsed) break;
      this.startOne(elapsed - due);
    }
    // Wake up for the next arrival; when the cap is full, the next `done` pumps instead.
    if (this.more() && this.inFlight < cap && this.timer === null) {
      const wait = Math.max(0, this.dueAt(this.started) - (this.timers.now() - this.t0));
      this.timer = this.timers.set(this.onTimer, wait);
    }
  }

  private readonly onTimer = (): void => {
    this.timer = null;
    this.pump();
  };

  private startOne(lagMs: number): void {
    const index = this.started++;
    this.inFlight++;
    if (this.inFlight > this.maxInFlight) this.maxInFlight = this.inFlight;
    if (lagMs > LATE_MS) this.lateStarts++;
    if (lagMs > this.maxLagMs) this.maxLagMs = lagMs;
    let called = false;
    this.launch(index, lagMs, () => {
      if (called) return;
      called = true;
      this.doneFn();
    });
  }

  private clearTimer(): void {
    if (this.timer !== null) this.timers.clear(this.timer);
    this.timer = null;
  }
}

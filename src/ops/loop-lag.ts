/**
 * How late the main thread's event loop runs (listeners, the request pipeline, the metrics
 * endpoint): a timer notes, each time it fires, how long after its due time it ran.
 *
 * node:perf_hooks' monitorEventLoopDelay measures the same thing every 10 ms, but under Bun it
 * cost the main thread about a quarter of its CPU per transfer in a boot storm (1 MiB × 2,000 at
 * concurrency 1,000 from 2,000 source addresses, main-thread CPU per transfer over 6 and 9 runs
 * alternating: 138 µs on average with it, 114 µs with this timer every 100 ms), CPU taken from
 * the requests a storm queues.
 */
import { percentile } from "../bench/stats.ts";

/** Samples kept between two readings at most: a server nobody scrapes keeps the newest. */
const MAX_SAMPLES = 4096;

export class LoopLag {
  private samples: number[] = [];
  private due: number;
  private readonly timer: ReturnType<typeof setTimeout>;

  constructor(private readonly intervalMs: number) {
    this.due = performance.now() + intervalMs;
    this.timer = setTimeout(() => this.fired(), intervalMs);
    // (a reading of the loop must not keep the process alive)
    this.timer.unref();
  }

  /** The p99 of the delays noted since the last call, in milliseconds (0 with none). */
  takeP99Ms(): number {
    const samples = this.samples;
    this.samples = [];
    return percentile(samples.sort((a, b) => a - b), 99) ?? 0;
  }

  private fired(): void {
    const now = performance.now();
    if (this.samples.length === MAX_SAMPLES) this.samples.splice(0, MAX_SAMPLES / 2);
    this.samples.push(Math.max(0, now - this.due));
    this.due = now + this.intervalMs;
    this.timer.refresh();
  }
}

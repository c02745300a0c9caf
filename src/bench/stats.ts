/**
 * Latency statistics for `tftpd bench`: every sample kept in one growable Float64Array (8 bytes
 * a sample, no per-sample objects), sorted once at the end, nearest-rank percentiles.
 */

export interface Percentiles {
  p50: number | null;
  p90: number | null;
  p99: number | null;
  max: number | null;
}

export class Samples {
  private buf: Float64Array;
  private n = 0;

  /** `expected`: how many samples are likely (the planned total), to allocate once (up to 1 Mi; beyond, it doubles). */
  constructor(expected = 1024) {
    this.buf = new Float64Array(Math.max(16, Math.min(expected, 1 << 20)));
  }

  get length(): number {
    return this.n;
  }

  push(value: number): void {
    if (this.n === this.buf.length) {
      const grown = new Float64Array(this.buf.length * 2);
      grown.set(this.buf);
      this.buf = grown;
    }
    this.buf[this.n++] = value;
  }

  /** The samples sorted ascending (a view; sorts in place, so call it at the end). */
  sorted(): Float64Array {
    return this.buf.subarray(0, this.n).sort();
  }

  percentiles(): Percentiles {
    return percentiles(this.sorted());
  }
}

/**
 * Nearest-rank percentile of ascending `sorted`: the smallest sample with at least p % of
 * the samples at or below it. p in (0, 100]; null when there are no samples.
 */
export function percentile(sorted: ArrayLike<number>, p: number): number | null {
  const n = sorted.length;
  if (n === 0) return null;
  if (!(p > 0)) return sorted[0]!;
  const rank = Math.ceil((p / 100) * n);
  return sorted[Math.min(n, Math.max(1, rank)) - 1]!;
}

export function percentiles(sorted: ArrayLike<number>): Percentiles {
  return {
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    max: sorted.length === 0 ? null : sorted[sorted.length - 1]!,
  };
}

/** Rounds to `digits` decimals (for JSON and display); null stays null. */
export function round(value: number | null, digits = 3): number | null {
  if (value === null || !Number.isFinite(value)) return null;
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

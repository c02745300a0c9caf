/**
 * Tiny terminal charts for `tftpd metrics --watch`: one block character per value, scaled
 * between the smallest and largest value shown, and a rolling history per figure.
 */

const BARS = "▁▂▃▄▅▆▇█";

/**
 * The last `width` values as a bar per value, ▁ for the window's minimum and █ for its maximum.
 * Values that are not finite (null figures, NaN) are drawn as a space; a window whose values
 * are all equal is a flat row of ▁; an empty one is "".
 */
export function sparkline(values: readonly number[], width = 20): string {
  const shown = width > 0 ? values.slice(-Math.floor(width)) : [];
  const finite = shown.filter((v) => Number.isFinite(v));
  if (finite.length === 0) return shown.map(() => " ").join("");
  let min = Infinity;
  let max = -Infinity;
  for (const v of finite) {
    if (v < min) min = v;
    if (v > max) max = v;
  }
  const span = max - min;
  const top = BARS.length - 1;
  return shown
    .map((v) => {
      if (!Number.isFinite(v)) return " ";
      if (span === 0) return BARS[0];
      return BARS[Math.min(top, Math.max(0, Math.round(((v - min) / span) * top)))];
    })
    .join("");
}

/** The last `capacity` values of each named figure, oldest first. */
export class History {
  private readonly series = new Map<string, number[]>();

  constructor(readonly capacity = 20) {
    if (!(Number.isInteger(capacity) && capacity > 0)) throw new RangeError(`History capacity must be a positive integer, got ${capacity}`);
  }

  /** Appends a value (null is kept as NaN, a gap), dropping the oldest beyond the capacity. */
  push(name: string, value: number | null): void {
    let values = this.series.get(name);
    if (!values) {
      values = [];
      this.series.set(name, values);
    }
    values.push(value ?? NaN);
    if (values.length > this.capacity) values.splice(0, values.length - this.capacity);
  }

  values(name: string): number[] {
    return [...(this.series.get(name) ?? [])];
  }

  /** The figure's values as a sparkline as wide as the history. */
  sparkline(name: string): string {
    return sparkline(this.values(name), this.capacity);
  }
}

/** Each line padded to the longest, then two spaces and its sparkline (lines without one kept as is). */
export function withSparklines(lines: readonly string[], sparks: readonly (string | undefined)[]): string[] {
  const width = Math.max(0, ...lines.map((l) => l.length));
  return lines.map((line, i) => {
    const spark = sparks[i];
    return spark ? `${line.padEnd(width)}  ${spark}` : line;
  });
}

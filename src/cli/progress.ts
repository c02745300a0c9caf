/**
 * A one-line progress bar for `tftpd get` / `tftpd put` on stderr: bytes, total when known,
 * rate and ETA, redrawn at most 10 times a second. Only for a TTY: `createProgress` returns
 * null otherwise, so scripts and pipes see nothing.
 */

const REDRAW_MS = 100;

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)} ${units[u]}`;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "--:--";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

interface Output {
  write(text: string): unknown;
  columns?: number;
}

export class ProgressBar {
  private readonly startedAt = performance.now();
  private lastDraw = 0;
  private bytes = 0;
  private total: number | null = null;
  private drawn = false;

  private readonly label: string;

  constructor(
    label: string,
    private readonly out: Output = process.stderr,
  ) {
    this.label = label.length > 32 ? `…${label.slice(-31)}` : label;
  }

  /** Records progress; redraws when the last redraw is at least 100 ms old. */
  update(bytes: number, total: number | null): void {
    this.bytes = bytes;
    this.total = total;
    const now = performance.now();
    if (now - this.lastDraw < REDRAW_MS) return;
    this.lastDraw = now;
    this.draw(now);
  }

  /** Final redraw and a newline. */
  done(): void {
    this.draw(performance.now());
    this.out.write("\n");
    this.drawn = false;
  }

  /** Erases the bar (before an error line). */
  clear(): void {
    if (this.drawn) this.out.write("\r\x1b[2K");
    this.drawn = false;
  }

  /** The line as drawn now; exported for tests. */
  line(now = performance.now()): string {
    const elapsed = Math.max((now - this.startedAt) / 1000, 1e-3);
    const rate = this.bytes / elapsed;
    const width = Math.max(this.out.columns || 80, 40);
    const rateText = `${formatBytes(Math.round(rate))}/s`;
    if (this.total === null || this.total <= 0) {
      return `${this.label}  ${formatBytes(this.bytes)}  ${rateText}  ${formatDuration(elapsed)}`;
    }
    const fraction = Math.min(this.bytes / this.total, 1);
    const eta = rate > 0 ? (this.total - this.bytes) / rate : Number.NaN;
    const tail = ` ${String(Math.floor(fraction * 100)).padStart(3)}%  ${formatBytes(this.bytes)} / ${formatBytes(this.total)}  ${rateText}  ETA ${formatDuration(eta)}`;
    const room = width - this.label.length - tail.length - 5;
    if (room < 10) return `${this.label}${tail}`;
    const barWidth = Math.min(room, 40);
    const filled = Math.round(fraction * barWidth);
    return `${this.label} [${"=".repeat(filled)}${" ".repeat(barWidth - filled)}]${tail}`;
  }

  private draw(now: number): void {
    this.out.write(`\r\x1b[2K${this.line(now)}`);
    this.drawn = true;
  }
}

/** A progress bar on stderr, or null when stderr is not a terminal. */
export function createProgress(label: string): ProgressBar | null {
  return process.stderr.isTTY ? new ProgressBar(label) : null;
}

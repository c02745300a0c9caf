/**
 * What the two transfer state machines (read-transfer.ts, write-transfer.ts) share: how a
 * transfer ends, and the retransmission clock.
 */

export type TransferResult =
  /** every byte delivered and acknowledged */
  | "ok"
  /** RFC 2347 size probe: the client read the OACK (tsize) and answered ERROR 8 */
  | "probe"
  /** the client sent an ERROR and stopped */
  | "client-error"
  /** no answer after the last retry */
  | "timeout"
  /** the server stopped it: storage error, illegal packet, file changed */
  | "error";

export interface TransferOutcome {
  result: TransferResult;
  /** payload bytes acknowledged (read) or stored (write) */
  bytes: number;
  retransmits: number;
  /** request received → first OACK/DATA/ACK sent, in ms */
  firstResponseMs: number;
  /** the ERROR sent or received, when there was one */
  error?: { code: number; message: string; from: "client" | "server" };
}

export interface RetransmitPolicy {
  /** first retransmit timeout */
  timeoutMs: number;
  /** true when the client fixed the timeout (RFC 2349): no backoff */
  fixed: boolean;
  /** retransmissions before giving up */
  retries: number;
}

/** Backoff stops growing at this multiple of the first timeout. */
const BACKOFF_CAP = 4;

/**
 * One timer per transfer, with exponential backoff unless the client fixed the timeout; gives
 * up after `retries` expiries in a row without progress.
 *
 * Progress happens on every ACK, so it only moves a deadline: the timer is created once and,
 * when it fires early, re-armed for what is left. Clearing and re-creating a timer per block
 * cost more than the rest of the ACK path.
 */
export class RetransmitClock {
  private timer: ReturnType<typeof setTimeout> | null = null;
  private currentMs: number;
  private deadline = 0;
  private misses = 0;
  private stopped = false;

  constructor(
    private readonly policy: RetransmitPolicy,
    private readonly onRetransmit: () => void,
    private readonly onGiveUp: () => void,
  ) {
    this.currentMs = policy.timeoutMs;
  }

  /** Progress was made: reset the backoff and push the deadline out. */
  progress(): void {
    this.misses = 0;
    this.currentMs = this.policy.timeoutMs;
    this.arm();
  }

  arm(): void {
    if (this.stopped) return;
    this.deadline = performance.now() + this.currentMs;
    this.timer ??= setTimeout(() => this.fire(), this.currentMs);
  }

  /** Final: a stopped clock never fires again, whatever is called after. */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private fire(): void {
    this.timer = null;
    if (this.stopped) return;
    const early = this.deadline - performance.now();
    if (early > 1) {
      this.timer = setTimeout(() => this.fire(), early);
      return;
    }
    if (this.misses >= this.policy.retries) {
      this.onGiveUp();
      return;
    }
    this.misses++;
    if (!this.policy.fixed) {
      this.currentMs = Math.min(this.currentMs * 2, this.policy.timeoutMs * BACKOFF_CAP);
    }
    this.onRetransmit();
    this.arm();
  }
}

/**
 * Wire block numbers are 16 bits and roll over 65535 → 0; transfers count blocks with plain
 * numbers. Maps a wire number to the absolute block at or below `newest` that it names.
 */
export function absoluteBlock(wire: number, newest: number): number {
  return newest - (((newest & 0xffff) - wire) & 0xffff);
}

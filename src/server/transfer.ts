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
/** Lowest timeout the round-trip estimate may set (Linux TCP's RTO floor). */
export const RTO_MIN_MS = 200;

/**
 * One timer per transfer, with exponential backoff unless the client fixed the timeout; gives
 * up after `retries` expiries in a row without progress.
 *
 * When the client fixed no timeout, round-trip samples set it as RFC 6298 does for TCP:
 * smoothed RTT plus four deviations, between RTO_MIN_MS and the configured timeout — so a
 * block lost on a LAN is resent after a fraction of a second, not after the full timeout.
 *
 * Progress happens on every ACK, so it only moves a deadline: the timer is created once and,
 * when it fires early, re-armed for what is left. Clearing and re-creating a timer per block
 * cost more than the rest of the ACK path.
 */
export class RetransmitClock {
  private timer: ReturnType<typeof setTimeout> | null = null;
  private currentMs: number;
  private deadline = 0;
  /** when the pending timer is due */
  private timerAt = 0;
  private misses = 0;
  private stopped = false;
  /** for connection_pool deadlines: when the transfer began and last moved forward */
  readonly startedAt = performance.now();
  lastProgressAt = this.startedAt;
  /** progress() calls: the first comes from start(), the second from the client's first answer */
  private progressCount = 0;
  /** RFC 6298 §2 state; null until the first sample */
  private srtt: number | null = null;
  private rttvar = 0;
  private rto: number;
  /** the shortest silence that ends a transfer: the configured timeouts, backed off, in a row */
  private readonly patienceMs: number;

  constructor(
    private readonly policy: RetransmitPolicy,
    private readonly onRetransmit: () => void,
    private readonly onGiveUp: () => void,
  ) {
    this.currentMs = policy.timeoutMs;
    this.rto = policy.timeoutMs;
    let patience = 0;
    for (let i = 0, wait = policy.timeoutMs; i <= policy.retries; i++) {
      patience += wait;
      if (!policy.fixed) wait = Math.min(wait * 2, policy.timeoutMs * BACKOFF_CAP);
    }
    this.patienceMs = patience;
  }

  get timeoutMs(): number {
    return this.currentMs;
  }

  /** true once the client answered the transfer's first packet */
  get established(): boolean {
    return this.progressCount >= 2;
  }

  /**
   * A round trip measured on a window sent once (Karn's rule: never on a retransmitted one).
   * RFC 6298 §2.2-2.3, with alpha 1/8 and beta 1/4.
   */
  sample(rttMs: number): void {
    if (this.policy.fixed) return;
    if (this.srtt === null) {
      this.srtt = rttMs;
      this.rttvar = rttMs / 2;
    } else {
      this.rttvar = 0.75 * this.rttvar + 0.25 * Math.abs(this.srtt - rttMs);
      this.srtt = 0.875 * this.srtt + 0.125 * rttMs;
    }
    this.rto = Math.min(this.policy.timeoutMs, Math.max(RTO_MIN_MS, this.srtt + 4 * this.rttvar));
  }

  /** Progress was made: reset the backoff and push the deadline out. */
  progress(): void {
    this.lastProgressAt = performance.now();
    this.progressCount++;
    this.misses = 0;
    this.currentMs = this.rto;
    this.arm();
  }

  arm(): void {
    if (this.stopped) return;
    const now = performance.now();
    this.deadline = now + this.currentMs;
    // A timer due before the deadline re-arms itself when it fires; one due after it (the
    // timeout just shrank) must be replaced.
    if (this.timer && this.timerAt > this.deadline + 1) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (!this.timer) {
      this.timerAt = this.deadline;
      this.timer = setTimeout(() => this.fire(), this.currentMs);
    }
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
      this.timerAt = this.deadline;
      this.timer = setTimeout(() => this.fire(), early);
      return;
    }
    // Give up after `retries` misses, but never sooner than the configured timeout schedule
    // would have: a timeout shortened by quick round trips speeds up recovery from loss, not
    // the verdict on a client that is merely slow for a moment (a busy firmware, a busy host).
    if (this.misses >= this.policy.retries && performance.now() - this.lastProgressAt >= this.patienceMs) {
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

/** connection_pool.*: how long a transfer may take to start, sit idle, and run in all. */
export interface Lifetimes {
  connectionTimeoutMs: number;
  idleTimeoutMs: number;
  maxLifetimeMs: number;
}

/** What the engine's deadline sweep needs from a transfer. */
export interface Expirable {
  readonly clock: RetransmitClock;
  expire(message: string): void;
}

/** The deadline a transfer has passed at `now`, as the ERROR text, or null. */
export function overdue(clock: RetransmitClock, limits: Lifetimes, now: number): string | null {
  if (now - clock.startedAt > limits.maxLifetimeMs) return "transfer exceeded its maximum lifetime";
  if (!clock.established && now - clock.startedAt > limits.connectionTimeoutMs) return "no answer to the first packet in time";
  if (now - clock.lastProgressAt > limits.idleTimeoutMs) return "transfer idle for too long";
  return null;
}

/**
 * Wire block numbers are 16 bits and roll over 65535 → 0; transfers count blocks with plain
 * numbers. Maps a wire number to the absolute block at or below `newest` that it names.
 */
export function absoluteBlock(wire: number, newest: number): number {
  return newest - (((newest & 0xffff) - wire) & 0xffff);
}

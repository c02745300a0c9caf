/**
 * What the two transfer state machines (read-transfer.ts, write-transfer.ts) share: the face
 * the engine sees (`Transfer`), how a transfer ends (`EndingTransfer`), and the retransmission
 * clock.
 */
import { now } from "../net/turn-clock.ts";
import { encodeError } from "../protocol/codec.ts";
import { ErrorCode } from "../protocol/packet.ts";
import type { TransferChannel } from "./transport.ts";

export type TransferResult =
  /** every byte delivered and acknowledged */
  | "ok"
  /** RFC 2347 size probe: the client read the OACK (tsize) and answered ERROR 8 */
  | "probe"
  /** the client sent an ERROR and stopped */
  | "client-error"
  /** no answer after the last retry */
  | "timeout"
  /** the server stopped it: storage error, file changed */
  | "error"
  /**
   * not a failure: the client, silent for longer than the timeout, sent a new request from the
   * same port (it rebooted), so the old transfer ended without an ERROR and the new one runs
   */
  | "superseded"
  /**
   * never started, nothing sent: its source address already had as many transfers that never
   * answered their first packet as one engine runs for one address (engine.ts, unverifiedBudget)
   */
  | "dropped";

/**
 * Datagrams from the client's own address and port that were dropped instead of steering its
 * transfer: undecodable ones ("malformed", including a DATA over the block size), packets of an
 * opcode the transfer never takes ("unexpected-opcode": DATA, RRQ, WRQ, OACK to a read; ACK,
 * RRQ, WRQ, OACK to a write), an ACK of a block never sent or a DATA past the window
 * ("out-of-window"), and a request to the listen port while the transfer runs and progresses
 * ("duplicate-request").
 */
export const STRAY_KINDS = ["malformed", "unexpected-opcode", "out-of-window", "duplicate-request"] as const;
export type StrayKind = (typeof STRAY_KINDS)[number];
export type StrayTally = Partial<Record<StrayKind, number>>;

/** Counts one stray into `tally`, made on the first one: most transfers never see any. */
export function countStray(tally: StrayTally | null, kind: StrayKind): StrayTally {
  const counted = tally ?? {};
  counted[kind] = (counted[kind] ?? 0) + 1;
  return counted;
}

export interface TransferOutcome {
  result: TransferResult;
  /** payload bytes acknowledged (read) or stored (write) */
  bytes: number;
  retransmits: number;
  /** request received → first OACK/DATA/ACK sent, in ms */
  firstResponseMs: number;
  /** the ERROR sent or received, when there was one */
  error?: { code: number; message: string; from: "client" | "server" };
  /** datagrams from the client's port that were dropped, by kind; absent when there were none */
  strays?: StrayTally;
}

export interface RetransmitPolicy {
  /** first retransmit timeout */
  timeoutMs: number;
  /** true when the client fixed the timeout (RFC 2349): no backoff */
  fixed: boolean;
  /** retransmissions before giving up */
  retries: number;
  /**
   * The client's port can be reached by anyone's forged datagrams (a read on a shared port,
   * whose number every client learns): once established, the timer resends only on credit,
   * one resend earned by each datagram heard from the client (its request, each ACK, each
   * repeat), at most `retries` banked. A forged ACK draws its answer and one resend at most;
   * a client a few blocks in has a full bank, and a stall is resent on the timer as before.
   */
  clientPaced?: boolean;
}

/**
 * A transfer's retransmit policy: the timeout the client fixed (RFC 2349, no backoff), else
 * the server's own starting timeout.
 */
export function retransmitPolicy(clientTimeoutMs: number | null, serverTimeoutMs: number, retries: number): RetransmitPolicy {
  return clientTimeoutMs === null ? { timeoutMs: serverTimeoutMs, fixed: false, retries } : { timeoutMs: clientTimeoutMs, fixed: true, retries };
}

/**
 * How many times its usual patience a client-paced transfer out of credit waits for its client
 * (RetransmitPolicy.clientPaced): its wait costs a slot, never a datagram.
 */
export const STARVED_PATIENCE = 4;

/** Lowest timeout the round-trip estimate may set (Linux TCP's RTO floor). */
export const RTO_MIN_MS = 200;

/**
 * One timer per transfer, with exponential backoff unless the client fixed the timeout; gives
 * up after `retries` expiries in a row without progress, once the client has also been silent
 * for the whole schedule. Before the client's first answer it sends nothing: it only ends the
 * transfer after the same patience (fire()).
 *
 * The backoff never waits longer than the configured timeout between two sends of a window.
 * That timeout is what clients are known to tolerate (PXE ROMs and most clients resend every
 * second or few and give up after a handful of tries, and their resends are duplicates the
 * server must ignore): a server backing off past it is still waiting when the client gives up.
 * RFC 1123 §4.2.3.2's exponential backoff still applies below it, from the round-trip estimate
 * up; what keeps a lossy network from being flooded is that a stalled transfer sends one window
 * per timeout at most, and a duplicate ACK never triggers a send.
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
  readonly startedAt = now();
  lastProgressAt = this.startedAt;
  /** when the packet this clock guards last went out (first sent, or sent again) */
  lastSentAt = this.startedAt;
  /** progress() calls: the first comes from start(), the second from the client's first answer */
  private progressCount = 0;
  /** resends the timer may still send (RetransmitPolicy.clientPaced): one per datagram heard */
  private credit = 0;
  /** when the client last sent something that moved nothing forward (heard()) */
  private lastHeardAt = 0;
  /** RFC 6298 §2 state; null until the first sample */
  private srtt: number | null = null;
  private rttvar = 0;
  private rto: number;
  /**
   * the shortest silence that ends a transfer: the configured timeout, `retries` + 1 times in a
   * row; also how long a transfer whose client never answered waits for it (see fire())
   */
  private readonly patienceMs: number;

  constructor(
    private readonly policy: RetransmitPolicy,
    private readonly onRetransmit: () => void,
    private readonly onGiveUp: () => void,
  ) {
    this.currentMs = policy.timeoutMs;
    this.rto = policy.timeoutMs;
    this.patienceMs = policy.timeoutMs * (policy.retries + 1);
  }

  /** the configured (or client-fixed) timeout: the backoff's ceiling */
  get baseTimeoutMs(): number {
    return this.policy.timeoutMs;
  }

  get timeoutMs(): number {
    return this.currentMs;
  }

  /**
   * true once the client answered the transfer's first packet: only then has the client shown
   * that the request came from its address (a forged source never sees that packet)
   */
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
    this.lastProgressAt = now();
    this.lastSentAt = this.lastProgressAt;
    this.progressCount++;
    this.earn();
    this.misses = 0;
    this.currentMs = this.rto;
    this.arm();
  }

  /**
   * The client repeated its last packet (our answer to it was lost): it is there, so the
   * give-up waits (fire()), and a client-paced timer has earned one more resend.
   */
  heard(): void {
    this.earn();
    this.lastHeardAt = now();
  }

  private earn(): void {
    if (this.credit < this.policy.retries) this.credit++;
  }

  /**
   * The guarded packet went out again outside the timer (a repeated request was answered). A
   * client that has not answered yet gets the whole wait again for this copy: it is still there.
   */
  sentAgain(): void {
    this.lastSentAt = now();
    if (!this.established) this.arm();
  }

  arm(): void {
    if (this.stopped) return;
    const at = now();
    this.deadline = at + (this.established ? this.currentMs : this.patienceMs);
    // A timer due before the deadline re-arms itself when it fires; one due after it (the
    // timeout just shrank) must be replaced.
    if (this.timer && this.timerAt > this.deadline + 1) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (!this.timer) this.wakeAt(this.deadline, at);
  }

  /** The timer, due at `deadline` (`at`: now). */
  private wakeAt(deadline: number, at: number): void {
    this.timerAt = deadline;
    this.timer = setTimeout(() => this.fire(), deadline - at);
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
    const at = now();
    if (this.deadline - at > 1) {
      this.wakeAt(this.deadline, at);
      return;
    }
    // Until the client answers, nothing shows that the request came from the address it names:
    // a forged one would turn every packet sent on this timer into traffic aimed at someone
    // else. So the first packet goes out again only for a request that comes again (one
    // datagram for one), and the timer, armed for the whole patience, only ends the transfer.
    if (!this.established) {
      this.onGiveUp();
      return;
    }
    // Give up after `retries` misses, but never sooner than the configured timeout schedule
    // would have: a timeout shortened by quick round trips speeds up recovery from loss, not
    // the verdict on a client that is merely slow for a moment (a busy firmware, a busy host).
    // Patience runs from when the client was last heard: one still repeating its last packet
    // is there, and on a lossy path our resend may get through yet (it gives up on its own).
    // A client-paced transfer out of credit sends nothing while it waits, so it waits longer:
    // a client backing off (1, 2, 4, 8 s between repeats) is still on its way.
    // Past `retries` misses, a resend whose answer could not come before the patience runs out
    // buys nothing: the rest is waited out in silence. The turn clock may read up to a
    // millisecond behind the timer that woke us, hence the slack (as for the deadline above).
    const patience = this.policy.clientPaced && this.credit === 0 ? this.patienceMs * STARVED_PATIENCE : this.patienceMs;
    if (this.misses >= this.policy.retries) {
      const left = patience - (at - Math.max(this.lastProgressAt, this.lastHeardAt));
      if (left <= 1) {
        this.onGiveUp();
        return;
      }
      if (left < this.currentMs) {
        this.deadline = at + left;
        this.wakeAt(this.deadline, at);
        return;
      }
    }
    this.misses++;
    if (!this.policy.fixed) this.currentMs = Math.min(this.currentMs * 2, this.policy.timeoutMs);
    // out of credit: a miss all the same (give-up counts it), but nothing goes out
    if (this.policy.clientPaced) {
      if (this.credit === 0) {
        this.arm();
        return;
      }
      this.credit--;
    }
    this.lastSentAt = now();
    this.onRetransmit();
    this.arm();
  }
}

/**
 * What to do with a request that arrives at the listen port from the port of a client whose
 * transfer runs ("same" when its bytes equal the request that began the transfer):
 * - "resend": the client never answered the transfer's first packet, so it is the same request
 *   sent again (its answer was lost): answer it with that first packet again, the only way that
 *   packet is ever sent again (see RetransmitClock.fire) — unless that packet left less than
 *   RTO_MIN_MS ago: a client resends after its own timeout, so such a request was sent before
 *   our answer could reach it (a burst of copies) and is ignored;
 * - "ignore": the transfer progressed within its timeout: the client is busy with it, so the
 *   request is a stray (a late duplicate, or not the client's at all) and must not end it;
 * - "supersede": the client went silent for longer than its timeout and asks anew (it
 *   rebooted onto the same port), or never answered and asks for something else: the old
 *   transfer ends, without an ERROR (that would reach the new session), and the new one runs.
 */
export type RepeatAction = "resend" | "ignore" | "supersede";

export function judgeRepeat(clock: RetransmitClock, same: boolean, now: number): RepeatAction {
  if (!clock.established) {
    if (!same) return "supersede";
    return now - clock.lastSentAt >= RTO_MIN_MS ? "resend" : "ignore";
  }
  return now - clock.lastProgressAt > clock.baseTimeoutMs ? "supersede" : "ignore";
}

/** connection_pool.*: how long a transfer may take to start, sit idle, and run in all. */
export interface Lifetimes {
  connectionTimeoutMs: number;
  idleTimeoutMs: number;
  maxLifetimeMs: number;
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

/** What both state machines are given besides their channel and their bytes. */
export interface TransferParams {
  blksize: number;
  windowsize: number;
  oack: [string, string][] | null;
  retransmit: RetransmitPolicy;
  /** when the request arrived, on this thread's performance.now() clock */
  receivedAt: number;
}

/** A running read or write, as the engine drives it. */
export interface Transfer {
  /** its deadlines (overdue) and how to take a repeated request (judgeRepeat) */
  readonly clock: RetransmitClock;
  /** sends the first packet (OACK, DATA 1 or ACK 0) */
  start(): void;
  /** a datagram from the client's address and port */
  handle(bytes: Uint8Array): void;
  /** the client's request came again because our first packet was lost: it goes again */
  answerRepeat(): void;
  /** counts a datagram from the client's port that was dropped (here, or at the listen port) */
  noteStray(kind: StrayKind): void;
  /** the client asked anew after a silence: ends without an ERROR (that would reach the new session) */
  supersede(): void;
  /** ends the transfer from our side; the client is told why */
  cancel(reason?: string): void;
  /** ends a transfer that passed a connection_pool deadline (the engine's sweep decides) */
  expire(message: string): void;
}

/**
 * - "running": the outcome is still open;
 * - "lingering": the outcome is reported, the channel still answers (an upload's dally);
 * - "closed": the channel is closed and nothing more happens.
 */
type EndState = "running" | "lingering" | "closed";

/**
 * The end of both state machines, in one place: however a transfer ends (done, client ERROR,
 * give-up, cancel, deadline, superseded), its clock stops, what it holds is given back
 * (`release`), its channel closes (or lingers, then closes), and the end callback gets the
 * one TransferOutcome, exactly once.
 */
export abstract class EndingTransfer<P extends TransferParams = TransferParams> implements Transfer {
  protected state: EndState = "running";
  protected retransmits = 0;
  private firstResponseMs = -1;
  private strays: StrayTally | null = null;
  private lingerTimer: ReturnType<typeof setTimeout> | null = null;
  readonly clock: RetransmitClock;

  constructor(
    protected readonly channel: TransferChannel,
    protected readonly params: P,
    private readonly onEnd: (outcome: TransferOutcome) => void,
  ) {
    this.clock = new RetransmitClock(
      params.retransmit,
      () => this.retransmit(),
      () => this.end("timeout"),
    );
  }

  abstract start(): void;
  abstract handle(bytes: Uint8Array): void;
  /** sends again what the clock guards (the window, the last ACK, the OACK) */
  protected abstract retransmit(): void;
  /** payload bytes acknowledged (read) or stored (write) when the transfer ends with `result` */
  protected abstract bytesMoved(result: TransferResult): number;
  /** gives back what the transfer holds (its file, its upload, its timers) as it ends */
  protected abstract release(result: TransferResult): void;

  answerRepeat(): void {
    if (this.state === "running") this.retransmit();
  }

  noteStray(kind: StrayKind): void {
    if (this.state === "running") this.strays = countStray(this.strays, kind);
  }

  supersede(): void {
    this.end("superseded");
  }

  cancel(reason = "server shutting down"): void {
    this.fail(ErrorCode.NOT_DEFINED, reason);
  }

  expire(message: string): void {
    this.fail(ErrorCode.NOT_DEFINED, message, "timeout");
  }

  protected markFirstResponse(): void {
    if (this.firstResponseMs < 0) this.firstResponseMs = performance.now() - this.params.receivedAt;
  }

  /**
   * Ends the transfer from our side, telling the client why — unless its outcome is settled, or
   * it ends for silence (a deadline) before the client ever answered the packet it was sent: an
   * ERROR then would be a second datagram for one request, aimed at an address that may never
   * have asked (see RetransmitClock.fire), and silence is what a forged request gets. A failure
   * of our own (the file could not be read, the server stops) is told: a client waiting on its
   * first packet would otherwise hang until its own timeouts run out, and no sender can cause it.
   */
  protected fail(code: number, message: string, result: TransferResult = "error"): void {
    const tell = this.state === "running" && (result !== "timeout" || this.clock.established || this.firstResponseMs < 0);
    if (tell) this.channel.send(encodeError(code, message));
    this.end(result, tell ? { code, message, from: "server" } : undefined);
  }

  /**
   * The one way a transfer ends. `lingerMs` keeps the channel open that long after the
   * outcome is reported (RFC 1350 §6's dally after an upload's final ACK). Once the outcome
   * is settled, any further end only closes the channel.
   */
  protected end(result: TransferResult, error?: TransferOutcome["error"], lingerMs = 0): void {
    if (this.state !== "running") {
      this.close();
      return;
    }
    const outcome: TransferOutcome = {
      result,
      bytes: this.bytesMoved(result),
      retransmits: this.retransmits,
      firstResponseMs: Math.max(0, this.firstResponseMs),
      ...(error ? { error } : {}),
      ...(this.strays ? { strays: this.strays } : {}),
    };
    this.clock.stop();
    this.release(result);
    if (lingerMs > 0) {
      this.state = "lingering";
      this.lingerTimer = setTimeout(() => this.close(), lingerMs);
    } else {
      this.close();
    }
    this.onEnd(outcome);
  }

  private close(): void {
    if (this.state === "closed") return;
    this.state = "closed";
    this.clock.stop();
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.channel.close();
  }
}

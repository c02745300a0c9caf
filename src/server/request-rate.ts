/**
 * Request rate per source address (limits.requests_per_second_per_ip, request_burst_per_ip): a
 * token bucket per source IP, so one address cannot flood the listener (or, through refusals,
 * the log). Requests over the rate are dropped; what was dropped is handed out as one summary
 * per source and interval, never one line per request.
 *
 * The state is bounded: a source idle long enough for its bucket to be full again is forgotten
 * (a new bucket would be the same), and past `maxSources` the oldest source is forgotten to make
 * room, so a flood of forged sources costs a fixed amount of memory. Forgetting only ever
 * gives a source a full bucket again: it can make the limit more lenient, never stricter.
 */
import { TokenBucket } from "./token-bucket.ts";

export interface RequestRateLimits {
  /** requests per second per source address; 0: no limit */
  perSecond: number;
  burst: number;
}

/** Requests from one source dropped over its rate since the last summary. */
export interface RateLimitedSource {
  address: string;
  dropped: number;
}

/** What was dropped over the rate in one interval. */
export interface RateLimitSummary {
  sources: RateLimitedSource[];
  /** dropped by sources forgotten (to bound memory) before they were reported */
  unreported: number;
}

interface SourceState {
  bucket: TokenBucket;
  lastSeen: number;
  /** dropped since the last summary */
  dropped: number;
}

/** Enough for every machine of a large fleet booting at once; a few MiB at most. */
export const MAX_SOURCES = 65_536;

export class RequestRate {
  private readonly sources = new Map<string, SourceState>();
  private limits: RequestRateLimits;
  /** dropped in all, for the metrics */
  private droppedTotal = 0;
  /** dropped by sources forgotten (to make room) before their summary */
  private droppedUnreported = 0;

  constructor(
    limits: RequestRateLimits,
    private readonly maxSources = MAX_SOURCES,
  ) {
    this.limits = limits;
  }

  /** the limits as they are now */
  get current(): RequestRateLimits {
    return this.limits;
  }

  get enabled(): boolean {
    return this.limits.perSecond > 0;
  }

  /** requests dropped over the rate since start */
  get dropped(): number {
    return this.droppedTotal;
  }

  /** sources with state held now */
  get size(): number {
    return this.sources.size;
  }

  /** New limits start every source afresh (with a full bucket); what it dropped is still reported. */
  setLimits(limits: RequestRateLimits, now: number = performance.now()): void {
    if (limits.perSecond === this.limits.perSecond && limits.burst === this.limits.burst) return;
    this.limits = limits;
    for (const state of this.sources.values()) state.bucket = new TokenBucket(limits.perSecond, limits.burst, now);
  }

  /** May a request from `address`, arriving at `now` (ms, performance.now()), go on? */
  allow(address: string, now: number): boolean {
    if (this.limits.perSecond <= 0) return true;
    let state = this.sources.get(address);
    if (state === undefined) {
      if (this.sources.size >= this.maxSources) this.forgetOldest();
      state = { bucket: new TokenBucket(this.limits.perSecond, this.limits.burst, now), lastSeen: now, dropped: 0 };
      this.sources.set(address, state);
    }
    state.lastSeen = now;
    if (state.bucket.take(now)) return true;
    state.dropped++;
    this.droppedTotal++;
    return false;
  }

  /**
   * What was dropped since the last call, per source, and by sources forgotten before they
   * were reported; forgets the sources whose buckets are full again (all, once the limit is off).
   */
  summarize(now: number): RateLimitSummary {
    const sources: RateLimitedSource[] = [];
    const refillMs = (this.limits.burst / Math.max(this.limits.perSecond, Number.MIN_VALUE)) * 1000;
    for (const [address, state] of this.sources) {
      if (state.dropped > 0) {
        sources.push({ address, dropped: state.dropped });
        state.dropped = 0;
      } else if (!this.enabled || now - state.lastSeen >= refillMs) {
        this.sources.delete(address);
      }
    }
    const unreported = this.droppedUnreported;
    this.droppedUnreported = 0;
    return { sources, unreported };
  }

  private forgetOldest(): void {
    // a Map iterates in insertion order: the first key is the source that came first (an
    // LRU would cost a delete and a set per request; at the cap, any choice is only lenient)
    const oldest = this.sources.keys().next();
    if (oldest.done) return;
    this.droppedUnreported += this.sources.get(oldest.value)?.dropped ?? 0;
    this.sources.delete(oldest.value);
  }
}

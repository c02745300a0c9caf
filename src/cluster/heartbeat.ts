/**
 * A node's heartbeat: every interval it writes its figures to its own hash in Redis (which
 * expires after three missed beats) and its id, scored by the time, to the fleet's node index.
 * `tftpd cluster status` and `tftpd metrics --cluster` read both (fleet.ts): a node whose hash
 * is there is live, one whose hash has expired is dead, last seen at its index score.
 *
 * Redis being down is normal: a beat that fails is forgotten and the next one tries again.
 */
import { hostname as osHostname } from "node:os";
import type { TransferRecord } from "../server/server.ts";
import { VERSION } from "../version.ts";
import type { RedisLink } from "./redis.ts";

/** Milliseconds between beats unless the node says otherwise. */
const HEARTBEAT_INTERVAL_MS = 2000;

/** A heartbeat hash lives this many intervals: a node is dead after missing them all. */
export const BEATS_TO_LIVE = 3;

/** What a node reports of itself, read at every beat. */
export interface NodeFigures {
  /** TFTP listen addresses, "HOST:PORT" */
  addresses: string[];
  /** the metrics endpoint, e.g. "http://127.0.0.1:9469"; null when metrics are off */
  metricsUrl: string | null;
  /** transfers running now */
  activeTransfers: number;
  /** finished transfers since the node started */
  transfersTotal: number;
  /** of those, the ones that timed out or ended in an error */
  failedTotal: number;
  /** file bytes delivered to clients since the node started */
  bytesSentTotal: number;
  /** bytes held by the node's local file cache */
  cacheBytes: number;
}

/** The fields of a heartbeat hash, every value a string as Redis keeps it. */
export type HeartbeatFields = Record<
  | "id"
  | "hostname"
  | "pid"
  | "version"
  | "addresses"
  | "metrics"
  | "started_at"
  | "uptime_s"
  | "active"
  | "transfers_total"
  | "failed_total"
  | "bytes_sent_total"
  | "throughput_bps"
  | "cache_bytes"
  | "redis",
  string
>;

/** Transfer counts for the heartbeat, fed with every transfer's end record. */
export class TransferTally {
  transfers = 0;
  failed = 0;
  bytesSent = 0;

  count(record: TransferRecord): void {
    this.transfers++;
    if (record.result === "timeout" || record.result === "error") this.failed++;
    if (record.direction === "read") this.bytesSent += record.bytes;
  }
}

/** "HOST:PORT" of the first listen address → the default node id, `${hostname}:${port}`. */
export function defaultNodeId(host: string, firstAddress: string | undefined): string {
  const port = firstAddress?.slice(firstAddress.lastIndexOf(":") + 1) ?? "0";
  return `${host}:${port}`;
}

/** The hash a beat writes: pure, so the field set is tested without Redis. */
export function heartbeatFields(
  node: { id: string; hostname: string; pid: number; startedAt: Date },
  figures: NodeFigures,
  throughputBps: number,
  nowMs: number,
): HeartbeatFields {
  return {
    id: node.id,
    hostname: node.hostname,
    pid: String(node.pid),
    version: VERSION,
    addresses: figures.addresses.join(","),
    metrics: figures.metricsUrl ?? "",
    started_at: node.startedAt.toISOString(),
    uptime_s: String(Math.max(0, Math.floor((nowMs - node.startedAt.getTime()) / 1000))),
    active: String(figures.activeTransfers),
    transfers_total: String(figures.transfersTotal),
    failed_total: String(figures.failedTotal),
    bytes_sent_total: String(figures.bytesSentTotal),
    throughput_bps: String(Math.round(throughputBps)),
    cache_bytes: String(figures.cacheBytes),
    redis: "up",
  };
}

export interface HeartbeatOptions {
  /** default `${hostname}:${port of the first address}` */
  id?: string;
  intervalMs?: number;
  hostname?: string;
  /** when the node started (default: when the process started) */
  startedAt?: Date;
}

export class Heartbeat {
  readonly id: string;
  readonly intervalMs: number;
  private readonly hostname: string;
  private readonly startedAt: Date;
  private timer: ReturnType<typeof setInterval> | null = null;
  private offState: (() => void) | null = null;
  private inFlight: Promise<void> | null = null;
  /** bytes sent and the time at the previous beat: throughput is the difference */
  private lastBytes = 0;
  private lastAtMs = 0;
  private throughputBps = 0;
  private written = 0;

  constructor(
    private readonly link: RedisLink,
    private readonly figures: () => NodeFigures,
    options: HeartbeatOptions = {},
  ) {
    this.hostname = options.hostname ?? osHostname();
    this.intervalMs = options.intervalMs ?? HEARTBEAT_INTERVAL_MS;
    if (!(this.intervalMs > 0)) throw new Error(`heartbeat interval must be above 0 ms, got ${this.intervalMs}`);
    this.startedAt = options.startedAt ?? new Date(Math.round(performance.timeOrigin));
    this.id = options.id ?? defaultNodeId(this.hostname, figures().addresses[0]);
  }

  /** beats written so far (failed ones not counted) */
  get beats(): number {
    return this.written;
  }

  /** Beats now, then every interval, and at once whenever the link comes (back) up. */
  start(): void {
    if (this.timer) return;
    this.lastBytes = this.figures().bytesSentTotal;
    this.lastAtMs = Date.now();
    this.timer = setInterval(() => void this.beat(), this.intervalMs);
    this.offState = this.link.onState((state) => {
      if (state === "up") void this.beat();
    });
    void this.beat();
  }

  /** One beat; never rejects. Skipped while the previous one is still waiting for Redis. */
  beat(): Promise<void> {
    if (this.inFlight) return this.inFlight;
    this.inFlight = this.write().finally(() => {
      this.inFlight = null;
    });
    return this.inFlight;
  }

  /**
   * Stops beating and deletes the node's hash; its index entry stays, scored now, so the
   * fleet shows it dead, last seen when it stopped. Never rejects (Redis may be down).
   */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.offState?.();
    this.offState = null;
    // Redis down: nothing to wait for, the hash expires by itself
    if (!this.link.up) return;
    // a beat still on its way must not land after the delete and bring the hash back
    await this.inFlight;
    const keys = this.link.keys;
    try {
      await this.link.client.multi().del(keys.node(this.id)).zadd(keys.nodeIndex, Date.now(), this.id).exec();
    } catch {
      // Redis down: the hash expires by itself
    }
  }

  private async write(): Promise<void> {
    try {
      await this.writeOnce();
    } catch {
      // Redis down or failing over: the next beat tries again
    }
  }

  private async writeOnce(): Promise<void> {
    const now = Date.now();
    const figures = this.figures();
    // bytes count when a transfer ends: a rate over a few milliseconds (a beat right after
    // the link came back) would be noise, so a short gap keeps the previous rate
    const elapsedMs = now - this.lastAtMs;
    if (elapsedMs >= this.intervalMs / 2) {
      this.throughputBps = ((figures.bytesSentTotal - this.lastBytes) * 8 * 1000) / elapsedMs;
      this.lastBytes = figures.bytesSentTotal;
      this.lastAtMs = now;
    }
    const fields = heartbeatFields(
      { id: this.id, hostname: this.hostname, pid: process.pid, startedAt: this.startedAt },
      figures,
      this.throughputBps,
      now,
    );
    const keys = this.link.keys;
    const key = keys.node(this.id);
    // one slot ({fleet}), so one transaction: the hash, its expiry and the index together
    const replies = await this.link.client
      .multi()
      .hset(key, fields)
      .pexpire(key, BEATS_TO_LIVE * this.intervalMs)
      .zadd(keys.nodeIndex, now, this.id)
      .exec();
    if (replies && replies.every(([error]) => error === null)) this.written++;
  }
}

/**
 * The fleet as the heartbeats (heartbeat.ts) describe it: `readFleet` reads the node index and
 * every node's hash from Redis; everything else here is pure formatting of what it read, for
 * `tftpd cluster status` and `tftpd metrics --cluster`: one greppable line per node, a `fleet`
 * line of totals, and JSON.
 */
import type { CachedFile } from "./content.ts";
import type { HeartbeatFields } from "./heartbeat.ts";
import { formatBits } from "../ops/summary.ts";
import type { RedisLink } from "./redis.ts";

/** Index entries of nodes not seen for this long are removed by whoever reads the fleet. */
const PRUNE_AFTER_MS = 24 * 3600 * 1000;

interface NodeSeen {
  id: string;
  /** the node's last heartbeat (ms since the epoch, the node's clock) */
  last_seen_ms: number;
  /** seconds between the last heartbeat and the read */
  last_seen_s_ago: number;
}

/** A node whose heartbeat hash is there: its figures as of its last beat. */
export interface LiveNode extends NodeSeen {
  state: "live";
  hostname: string;
  pid: number;
  version: string;
  addresses: string[];
  /** the node's metrics endpoint, null when it has none */
  metrics: string | null;
  started_at: string;
  uptime_s: number;
  active: number;
  transfers_total: number;
  failed_total: number;
  bytes_sent_total: number;
  throughput_bps: number;
  cache_bytes: number;
}

/** A node in the index whose heartbeat hash has expired (or that stopped). */
export interface DeadNode extends NodeSeen {
  state: "dead";
}

export type NodeStatus = LiveNode | DeadNode;

export interface FleetStatus {
  /** when the fleet was read (ms since the epoch) */
  read_at_ms: number;
  /** every node in the index, by id */
  nodes: NodeStatus[];
  /** index entries removed by this read (not seen for 24 h) */
  pruned: number;
}

/** Figures summed over the live nodes. */
export interface FleetTotals {
  live: number;
  dead: number;
  active: number;
  throughput_bps: number;
  transfers_total: number;
  failed_total: number;
  bytes_sent_total: number;
  cache_bytes: number;
}

const count = (text: string | undefined): number => {
  const n = Number(text);
  return Number.isFinite(n) ? n : 0;
};

/** One index entry and its hash (empty when expired) → the node's status. */
export function nodeStatus(id: string, lastSeenMs: number, hash: Partial<HeartbeatFields>, nowMs: number): NodeStatus {
  const seen = { id, last_seen_ms: lastSeenMs, last_seen_s_ago: Math.max(0, Math.round((nowMs - lastSeenMs) / 1000)) };
  if (Object.keys(hash).length === 0) return { state: "dead", ...seen };
  return {
    state: "live",
    ...seen,
    hostname: hash.hostname ?? "",
    pid: count(hash.pid),
    version: hash.version ?? "",
    addresses: (hash.addresses ?? "").split(",").filter((a) => a !== ""),
    metrics: hash.metrics ? hash.metrics : null,
    started_at: hash.started_at ?? "",
    uptime_s: count(hash.uptime_s),
    active: count(hash.active),
    transfers_total: count(hash.transfers_total),
    failed_total: count(hash.failed_total),
    bytes_sent_total: count(hash.bytes_sent_total),
    throughput_bps: count(hash.throughput_bps),
    cache_bytes: count(hash.cache_bytes),
  };
}

/** The replies of a pipeline, or the first error in it thrown. */
function replies(results: [Error | null, unknown][] | null): unknown[] {
  if (!results) throw new Error("Redis transaction aborted");
  for (const [error] of results) if (error) throw error;
  return results.map(([, value]) => value);
}

/** A WITHSCORES reply, flat ([member, score, …]) or paired ([[member, score], …]). */
function scoredMembers(reply: unknown[]): { id: string; score: number }[] {
  const members: { id: string; score: number }[] = [];
  if (reply.length > 0 && Array.isArray(reply[0])) {
    for (const pair of reply as [string, string | number][]) members.push({ id: String(pair[0]), score: Number(pair[1]) });
  } else {
    for (let i = 0; i + 1 < reply.length; i += 2) members.push({ id: String(reply[i]), score: Number(reply[i + 1]) });
  }
  return members;
}

/**
 * Reads the fleet: prunes index entries older than 24 h, then reads every remaining node's
 * heartbeat hash. Rejects when Redis cannot answer.
 */
export async function readFleet(link: RedisLink, nowMs = Date.now()): Promise<FleetStatus> {
  const keys = link.keys;
  // every key carries {fleet}: one slot, so one pipeline to one master
  const [pruned, flat] = replies(
    await link.client
      .pipeline()
      .zremrangebyscore(keys.nodeIndex, "-inf", `(${nowMs - PRUNE_AFTER_MS}`)
      .zrange(keys.nodeIndex, 0, "-1", "WITHSCORES")
      .exec(),
  ) as [number, unknown[]];
  const index = scoredMembers(flat);
  let hashes: Record<string, string>[] = [];
  if (index.length > 0) {
    const pipeline = link.client.pipeline();
    for (const { id } of index) pipeline.hgetall(keys.node(id));
    hashes = replies(await pipeline.exec()) as Record<string, string>[];
  }
  const nodes = index
    .map(({ id, score }, i) => nodeStatus(id, score, hashes[i] ?? {}, nowMs))
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return { read_at_ms: nowMs, nodes, pruned };
}

/** The live nodes' figures summed, with the count of live and dead nodes. */
export function summedFigures(status: FleetStatus): FleetTotals {
  const totals: FleetTotals = {
    live: 0,
    dead: 0,
    active: 0,
    throughput_bps: 0,
    transfers_total: 0,
    failed_total: 0,
    bytes_sent_total: 0,
    cache_bytes: 0,
  };
  for (const node of status.nodes) {
    if (node.state === "dead") {
      totals.dead++;
      continue;
    }
    totals.live++;
    totals.active += node.active;
    totals.throughput_bps += node.throughput_bps;
    totals.transfers_total += node.transfers_total;
    totals.failed_total += node.failed_total;
    totals.bytes_sent_total += node.bytes_sent_total;
    totals.cache_bytes += node.cache_bytes;
  }
  return totals;
}

// ---------------------------------------------------------------------------------------------
// Formatting

/** 1536 → "1.5 KiB"; whole bytes below 1 KiB */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = bytes;
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

/** Seconds as the two largest units: "42s", "3m04s", "2h03m", "5d02h". */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const pad = (n: number): string => String(n).padStart(2, "0");
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${pad(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d${pad(Math.floor((s % 86400) / 3600))}h`;
}

function deadLine(node: DeadNode): string {
  return `node ${node.id} dead last seen ${formatDuration(node.last_seen_s_ago)} ago`;
}

/** The `fleet` line: live and dead nodes and the live ones' figures summed. */
function totalsLine(totals: FleetTotals): string {
  return (
    `fleet live ${totals.live} dead ${totals.dead} active ${totals.active} throughput ${formatBits(totals.throughput_bps)} ` +
    `transfers ${totals.transfers_total} failed ${totals.failed_total} sent ${formatBytes(totals.bytes_sent_total)} ` +
    `cache ${formatBytes(totals.cache_bytes)}`
  );
}

/** `tftpd cluster status`: one `node` line per node, then the `fleet` line. */
export function fleetLines(status: FleetStatus): string[] {
  const lines = status.nodes.map((node) =>
    node.state === "dead"
      ? deadLine(node)
      : `node ${node.id} live version ${node.version || "?"} up ${formatDuration(node.uptime_s)} active ${node.active} ` +
        `throughput ${formatBits(node.throughput_bps)} transfers ${node.transfers_total} failed ${node.failed_total} ` +
        `sent ${formatBytes(node.bytes_sent_total)} cache ${formatBytes(node.cache_bytes)} ` +
        `addresses ${node.addresses.join(",") || "-"} metrics ${node.metrics ?? "-"} pid ${node.pid}`,
  );
  lines.push(totalsLine(summedFigures(status)));
  return lines;
}

/** `tftpd metrics --cluster`: each node's headline figures, then the `fleet` line. */
export function metricsLines(status: FleetStatus): string[] {
  const lines = status.nodes.map((node) =>
    node.state === "dead"
      ? deadLine(node)
      : `node ${node.id} throughput ${formatBits(node.throughput_bps)} active ${node.active} ` +
        `transfers ${node.transfers_total} failed ${node.failed_total} sent ${formatBytes(node.bytes_sent_total)} ` +
        `cache ${formatBytes(node.cache_bytes)}`,
  );
  lines.push(totalsLine(summedFigures(status)));
  return lines;
}

/** `tftpd metrics --cluster --json`: the headline figures per node and summed. */
export function metricsJson(status: FleetStatus): {
  nodes: (Pick<NodeStatus, "id" | "state" | "last_seen_s_ago"> & Partial<Omit<FleetTotals, "live" | "dead">>)[];
  fleet: FleetTotals;
} {
  return {
    nodes: status.nodes.map((node) =>
      node.state === "dead"
        ? { id: node.id, state: node.state, last_seen_s_ago: node.last_seen_s_ago }
        : {
            id: node.id,
            state: node.state,
            last_seen_s_ago: node.last_seen_s_ago,
            throughput_bps: node.throughput_bps,
            active: node.active,
            transfers_total: node.transfers_total,
            failed_total: node.failed_total,
            bytes_sent_total: node.bytes_sent_total,
            cache_bytes: node.cache_bytes,
          },
    ),
    fleet: summedFigures(status),
  };
}

export interface CacheTotals {
  files: number;
  size: number;
  stored: number;
}

export function cacheTotals(files: Pick<CachedFile, "size" | "stored">[]): CacheTotals {
  let size = 0;
  let stored = 0;
  for (const f of files) {
    size += f.size;
    stored += f.stored;
  }
  return { files: files.length, size, stored };
}

/** The shared cache: one `file` line per file, then the `cache` line. */
export function cacheLines(
  files: Pick<CachedFile, "name" | "size" | "stored" | "sha256" | "compression" | "lastServedMs" | "expiresInS">[],
  nowMs: number,
  maxSize?: number,
): string[] {
  const lines = files.map((f) => {
    const served = f.lastServedMs === null ? "never" : `${formatDuration((nowMs - f.lastServedMs) / 1000)} ago`;
    const expires = f.expiresInS === null ? "never" : formatDuration(f.expiresInS);
    return (
      `file ${f.name} size ${formatBytes(f.size)} stored ${formatBytes(f.stored)} compression ${f.compression} ` +
      `sha256 ${f.sha256.slice(0, 12)} last-served ${served} expires-in ${expires}`
    );
  });
  const totals = cacheTotals(files);
  const max = maxSize === undefined ? "" : ` max ${formatBytes(maxSize)}`;
  lines.push(`cache files ${totals.files} size ${formatBytes(totals.size)} stored ${formatBytes(totals.stored)}${max}`);
  return lines;
}

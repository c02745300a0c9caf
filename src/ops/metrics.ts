/**
 * The server's Prometheus metrics (prom-client). Every finished transfer reaches the main
 * thread as one record, workers included, so one registry on the main thread sums them all.
 * Names follow Prometheus conventions: base units, `_total` for counters, `_seconds`, `_bytes`.
 * What TFTP and HTTP both do (bytes sent, time to first byte, transfers, refusals, durations)
 * is one family with a `protocol` label, so a query sums or splits them as it needs.
 */
import { readdirSync, readFileSync } from "node:fs";
import client from "prom-client";
import type { HttpRecord } from "../http/frontend.ts";
import type { CacheStats } from "../storage/cache.ts";
import type { TransferRecord } from "../server/server.ts";
import { REFUSAL_KINDS, type RefusalKind, type RefusalRecord } from "../server/refusal-record.ts";
import type { SlotStats } from "../server/transfer-slots.ts";
import { BUILD_COMMIT, VERSION } from "../version.ts";
import { LoopLag } from "./loop-lag.ts";
import { TransferTotals } from "./transfer-totals.ts";

/** First responses on a LAN take tens of µs; a storm pushes them to ms; retries to seconds. */
const FIRST_RESPONSE_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
const DURATION_BUCKETS = [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

/** The `protocol` label of the families TFTP and HTTP share. */
type Protocol = "tftp" | "http";
const PROTOCOLS: readonly Protocol[] = ["tftp", "http"];

/** A family's child per protocol, bound once: a transfer's end then builds no label object. */
function perProtocol<C>(child: (labels: { protocol: Protocol }) => C): Record<Protocol, C> {
  return { tftp: child({ protocol: "tftp" }), http: child({ protocol: "http" }) };
}

/** The fleet side of a node in cluster mode: its Redis link and the shared cache's use. */
export interface ClusterStats {
  redisUp: boolean;
  lookups: number;
  fills: number;
  fillFailures: number;
  staleServes: number;
  unavailable: number;
}

export interface MetricsSources {
  activeTransfers(): number;
  /** bytes the running transfers reserved in the memory budget, and the budget (Infinity: none) */
  transferMemory?(): { reserved: number; budget: number };
  cacheStats(): CacheStats;
  /** the cache's cap in bytes (performance.memory.cache_size; 0 when the cache is off) */
  cacheCapacity?(): number;
  /** the workers' transfer slot pools together (null: none keeps slots) */
  transferSlots?(): SlotStats | null;
  /** requests dropped over their source's rate since start */
  requestsRateLimited?(): number;
  /** present when the node is in cluster mode */
  clusterStats?(): ClusterStats;
}

/** A counter that follows a running total kept elsewhere (the cache's, the cluster files'). */
function runningTotalCounter(registers: client.Registry[], name: string, help: string, total: () => number): void {
  let seen = 0;
  new client.Counter({
    name,
    help,
    registers,
    collect() {
      const now = total();
      if (now > seen) this.inc(now - seen);
      seen = now;
    },
  });
}

/** USER_HZ: /proc gives process times in 1/100 s on every Linux ABI, whatever the kernel's HZ. */
const PROC_TICKS_PER_SECOND = 100;

function readProc(path: string): string | null {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return null;
  }
}

/** A "Name:  N kB" line of /proc/self/status, in bytes. */
function statusBytes(field: string): number | null {
  const kb = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readProc("/proc/self/status") ?? "")?.[1];
  return kb === undefined ? null : Number(kb) * 1024;
}

/** When the process started, in Unix seconds: boot time plus its start in ticks since boot. */
function processStartSeconds(): number | null {
  const stat = readProc("/proc/self/stat");
  const bootTime = /^btime (\d+)$/m.exec(readProc("/proc/stat") ?? "")?.[1];
  if (stat === null || bootTime === undefined) return null;
  // the fields after the command name, which may itself hold spaces and parentheses
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const startTicks = Number(fields[19]); // field 22, starttime
  return Number(bootTime) + startTicks / PROC_TICKS_PER_SECOND;
}

/** The soft RLIMIT_NOFILE, from /proc/self/limits (Bun has no getrlimit). */
function maxOpenFiles(): number | null {
  const soft = /^Max open files\s+(\d+)/m.exec(readProc("/proc/self/limits") ?? "")?.[1];
  return soft === undefined ? null : Number(soft);
}

/**
 * The process figures, as the kernel counts them. Not prom-client's collectDefaultMetrics:
 * under Bun its CPU counters start at their registration and miss the start-up's CPU (0.2 to
 * 0.5 s behind /proc for good), its start time is rounded to the second from Bun's uptime, and
 * its nodejs_* metrics describe a V8 that is not there
 * (heap spaces all 0 but "old", a GC histogram that never sees a collection, 0 active handles
 * with sockets open, Bun's Node-compatibility version as "Node.js version").
 */
function registerProcessMetrics(registers: client.Registry[]): void {
  // getrusage(RUSAGE_SELF): every thread's, the transfer workers' included
  const cpu = (pick: (usage: NodeJS.CpuUsage) => number) => () => pick(process.cpuUsage()) / 1e6;
  runningTotalCounter(registers, "tftpd_process_cpu_user_seconds_total", "User CPU time spent in seconds, since the process started", cpu((u) => u.user));
  runningTotalCounter(registers, "tftpd_process_cpu_system_seconds_total", "System CPU time spent in seconds, since the process started", cpu((u) => u.system));
  runningTotalCounter(registers, "tftpd_process_cpu_seconds_total", "User and system CPU time spent in seconds, since the process started", cpu((u) => u.user + u.system));
  if (readProc("/proc/self/stat") === null) return; // not Linux: no /proc to read the rest from
  const gauge = (name: string, help: string, read: () => number | null) =>
    new client.Gauge({
      name,
      help,
      registers,
      collect() {
        const value = read();
        if (value !== null) this.set(value);
      },
    });
  const started = processStartSeconds();
  gauge("tftpd_process_start_time_seconds", "Start time of the process since the Unix epoch in seconds", () => started);
  gauge("tftpd_process_resident_memory_bytes", "Resident memory size in bytes (VmRSS)", () => statusBytes("VmRSS"));
  gauge("tftpd_process_virtual_memory_bytes", "Virtual memory size in bytes (VmSize)", () => statusBytes("VmSize"));
  gauge("tftpd_process_open_fds", "Number of open file descriptors", () => {
    // listing /proc/self/fd opens one more for the listing itself: not the server's
    try {
      return readdirSync("/proc/self/fd").length - 1;
    } catch {
      return null;
    }
  });
  gauge("tftpd_process_max_fds", "Maximum number of open file descriptors (soft RLIMIT_NOFILE)", maxOpenFiles);
}

/** How often the main thread's event-loop delay is sampled. */
const LOOP_LAG_STEP_MS = 100;

/** How late the main thread's event loop runs: the p99 of its delays since the last scrape (loop-lag.ts). */
function registerEventLoopLag(registers: client.Registry[]): void {
  const lag = new LoopLag(LOOP_LAG_STEP_MS);
  new client.Gauge({
    name: "tftpd_event_loop_lag_p99_seconds",
    help: `p99 of the main thread's event-loop delay since the last scrape, in seconds (requests wait this long to be read), from a timer due every ${LOOP_LAG_STEP_MS} ms`,
    registers,
    collect() {
      this.set(lag.takeP99Ms() / 1000);
    },
  });
}

export class ServerMetrics {
  readonly registry = new client.Registry();
  private readonly transfers: client.Counter;
  private readonly received: client.Counter;
  private readonly sent: Record<Protocol, client.Counter.Internal>;
  private readonly firstResponse: Record<Protocol, client.Histogram.Internal<"protocol">>;
  private readonly duration: Record<Protocol, client.Histogram.Internal<"protocol">>;
  private readonly retransmits: client.Counter;
  private readonly errorsSent: client.Counter;
  private readonly optionRequests: client.Counter;
  private readonly probes: client.Counter;
  private readonly refusals: client.Counter;
  private readonly requestsRefused: Record<Protocol, Record<RefusalKind, client.Counter.Internal>>;
  private readonly strays: client.Counter;
  private readonly garbageUnanswered: client.Counter;
  private readonly workerRestarts: client.Counter;
  private readonly httpRequests: client.Counter;
  private readonly renders: client.Counter;
  /** TFTP transfers ended since the last scrape: applied when one of their families is read */
  private readonly ended = new TransferTotals();

  constructor(sources: MetricsSources) {
    const registers = [this.registry];
    const collect = (): void => this.applyEnded();
    this.transfers = new client.Counter({
      name: "tftpd_transfers_total",
      help: "Finished transfers by protocol, direction and result. TFTP: ok, probe, superseded (not failures: the client asked anew from the same port after a silence), client-error, timeout, error, dropped; HTTP (every request that opened a file, read): ok, aborted (the client went away), failed (mid-body)",
      labelNames: ["protocol", "direction", "result"],
      registers,
      collect,
    });
    const sent = new client.Counter({
      name: "tftpd_sent_bytes_total",
      help: "File bytes delivered to clients, by protocol: acknowledged (TFTP), handed to the connection (HTTP body)",
      labelNames: ["protocol"],
      registers,
      collect,
    });
    this.sent = perProtocol((l) => sent.labels(l));
    // present from the start as the unlabelled family was: a rate over it needs no first transfer
    this.sent.tftp.inc(0);
    this.httpRequests = new client.Counter({
      name: "tftpd_http_requests_total",
      help: "HTTP requests for files that reached the pipeline, by method, status and result (ok, aborted by the client, failed mid-body)",
      labelNames: ["method", "status", "result"],
      registers,
    });
    this.renders = new client.Counter({
      name: "tftpd_generated_renders_total",
      help: "Generated files rendered, by template and result (ok, error: the request was refused)",
      labelNames: ["template", "result"],
      registers,
    });
    this.received = new client.Counter({ name: "tftpd_received_bytes_total", help: "File bytes received in uploads", registers, collect });
    const firstResponse = new client.Histogram({
      name: "tftpd_first_response_seconds",
      help: "Time to first byte, by protocol: request in to first OACK/DATA/ACK out (TFTP), request in to response headers out (HTTP)",
      labelNames: ["protocol"],
      buckets: FIRST_RESPONSE_BUCKETS,
      registers,
      collect,
    });
    this.firstResponse = perProtocol((l) => firstResponse.labels(l));
    firstResponse.zero({ protocol: "tftp" });
    const duration = new client.Histogram({
      name: "tftpd_transfer_duration_seconds",
      help: "Whole transfers, by protocol: request in to the last ACK (TFTP), to the response's end (HTTP)",
      labelNames: ["protocol"],
      buckets: DURATION_BUCKETS,
      registers,
      collect,
    });
    this.duration = perProtocol((l) => duration.labels(l));
    duration.zero({ protocol: "tftp" });
    this.retransmits = new client.Counter({ name: "tftpd_retransmits_total", help: "Datagrams sent again", registers, collect });
    this.errorsSent = new client.Counter({ name: "tftpd_errors_sent_total", help: "TFTP ERROR packets sent, by code", labelNames: ["code"], registers, collect });
    this.optionRequests = new client.Counter({
      name: "tftpd_option_requests_total",
      help: "Known options asked for by clients (RFC 2347), by option",
      labelNames: ["option"],
      registers,
      collect,
    });
    this.probes = new client.Counter({ name: "tftpd_size_probes_total", help: "Transfers that were tsize probes (ERROR 8 after the OACK)", registers, collect });
    this.refusals = new client.Counter({
      name: "tftpd_admission_refusals_total",
      help: "Requests refused by an admission limit, by limit",
      labelNames: ["limit"],
      registers,
    });
    const requestsRefused = new client.Counter({
      name: "tftpd_requests_refused_total",
      help: "Requests refused before a transfer began (answered with an ERROR or an HTTP status, or dropped), by protocol and reason: not_found, access, limit, allow_deny, options, malformed (datagrams at a listen port that are no valid request), other",
      labelNames: ["protocol", "reason"],
      registers,
    });
    // every reason of either protocol present from the start, so a rate over it needs no first refusal
    const byReason = (protocol: Protocol) =>
      Object.fromEntries(REFUSAL_KINDS.map((reason) => [reason, requestsRefused.labels({ protocol, reason })])) as Record<RefusalKind, client.Counter.Internal>;
    this.requestsRefused = perProtocol(({ protocol }) => byReason(protocol));
    for (const protocol of PROTOCOLS) for (const child of Object.values(this.requestsRefused[protocol])) child.inc(0);
    const rateLimited = sources.requestsRateLimited;
    if (rateLimited) {
      runningTotalCounter(
        registers,
        "tftpd_requests_rate_limited_total",
        "Requests dropped because their source address sent more than limits.requests_per_second_per_ip (after the burst)",
        rateLimited,
      );
    }
    this.strays = new client.Counter({
      name: "tftpd_stray_datagrams_total",
      help: "Datagrams from a transfer's client address and port that were dropped instead of steering it, by kind (malformed, unexpected-opcode, out-of-window, duplicate-request); counted when the transfer ends",
      labelNames: ["kind"],
      registers,
      collect,
    });
    this.workerRestarts = new client.Counter({
      name: "tftpd_worker_restarts_total",
      help: "Transfer workers that died (an uncaught error, or killed) and were replaced",
      registers,
    });
    this.garbageUnanswered = new client.Counter({
      name: "tftpd_listener_garbage_unanswered_total",
      help: "Datagrams at a listen port that were no request and got no ERROR back: over the listener's reply rate",
      registers,
    });
    new client.Gauge({
      name: "tftpd_active_transfers",
      help: "Transfers running now",
      registers,
      collect() {
        this.set(sources.activeTransfers());
      },
    });
    const transferMemory = sources.transferMemory;
    if (transferMemory) {
      new client.Gauge({
        name: "tftpd_transfer_memory_bytes",
        help: "Memory reserved by the running transfers in the budget (limits.max_transfer_memory)",
        registers,
        collect() {
          this.set(transferMemory().reserved);
        },
      });
      new client.Gauge({
        name: "tftpd_transfer_memory_budget_bytes",
        help: "The budget of memory the running transfers may reserve (limits.max_transfer_memory); a request past it is refused under limit=\"memory\"",
        registers,
        collect() {
          this.set(transferMemory().budget);
        },
      });
    }
    const transferSlots = sources.transferSlots;
    if (transferSlots) {
      new client.Gauge({
        name: "tftpd_transfer_slots",
        help: "Transfer slots (the buffers of a transfer's own socket, connection_pool.*) held by the workers: idle (warm, waiting) or busy (a transfer's)",
        labelNames: ["state"],
        registers,
        collect() {
          const stats = transferSlots();
          this.set({ state: "idle" }, stats?.idle ?? 0);
          this.set({ state: "busy" }, stats?.busy ?? 0);
        },
      });
      runningTotalCounter(
        registers,
        "tftpd_transfer_slot_allocations_total",
        "Transfer slots allocated (preallocated ones included); a transfer that found no idle slot allocated one",
        () => transferSlots()?.allocated ?? 0,
      );
      runningTotalCounter(registers, "tftpd_transfer_slot_reuses_total", "Transfers that took an idle transfer slot instead of allocating buffers", () => transferSlots()?.reused ?? 0);
    }
    const cacheCounter = (name: string, help: string, pick: (s: CacheStats) => number) =>
      runningTotalCounter(registers, name, help, () => pick(sources.cacheStats()));
    cacheCounter("tftpd_cache_hits_total", "Requests served from a cached copy", (s) => s.hits);
    cacheCounter("tftpd_cache_misses_total", "Requests for a file version not cached yet", (s) => s.misses);
    cacheCounter("tftpd_cache_bypasses_total", "Requests read from disk (too large, cache full, or copy not ready)", (s) => s.bypasses);
    cacheCounter("tftpd_cache_evictions_total", "Cached versions evicted to make room", (s) => s.evictions);
    new client.Gauge({
      name: "tftpd_cache_bytes",
      help: "Bytes held by cached file versions",
      registers,
      collect() {
        this.set(sources.cacheStats().bytes);
      },
    });
    const cacheCapacity = sources.cacheCapacity;
    if (cacheCapacity) {
      new client.Gauge({
        name: "tftpd_cache_capacity_bytes",
        help: "The cache's cap (performance.memory.cache_size; 0 when the cache is off): near it, new versions evict others or are read from disk",
        registers,
        collect() {
          this.set(cacheCapacity());
        },
      });
    }
    const clusterStats = sources.clusterStats;
    if (clusterStats) {
      new client.Gauge({
        name: "tftpd_redis_up",
        help: "1 while the fleet's Redis answers, 0 while the node serves local files only (degraded)",
        registers,
        collect() {
          this.set(clusterStats().redisUp ? 1 : 0);
        },
      });
      const clusterCounter = (name: string, help: string, pick: (s: ClusterStats) => number) =>
        runningTotalCounter(registers, name, help, () => pick(clusterStats()));
      clusterCounter("tftpd_cluster_lookups_total", "Requests for files the root lacks, looked up in the shared cache", (s) => s.lookups);
      clusterCounter("tftpd_cluster_fills_total", "Files fetched from the shared cache into the local cache", (s) => s.fills);
      clusterCounter("tftpd_cluster_fill_failures_total", "Fetches refused: a chunk missing or not matching its sha256, or Redis lost mid-fetch", (s) => s.fillFailures);
      clusterCounter("tftpd_cluster_stale_serves_total", "Requests served from a local copy while Redis did not answer", (s) => s.staleServes);
      clusterCounter("tftpd_cluster_unavailable_total", "Requests refused because only the unreachable shared cache could have served them", (s) => s.unavailable);
    }
    registerProcessMetrics(registers);
    registerEventLoopLag(registers);
    // what is running, for alerts and dashboards to tell versions apart (commit "dev" from source)
    new client.Gauge({
      name: "tftpd_build_info",
      help: "Always 1: the version and commit of this tftpd and the Bun it runs on",
      labelNames: ["version", "commit", "bun"],
      registers,
    }).set({ version: VERSION, commit: BUILD_COMMIT, bun: Bun.version }, 1);
  }

  /** A TFTP transfer ended: summed now, applied to its families when they are next read. */
  transferEnded(record: TransferRecord): void {
    if (this.ended.add(record)) this.applyEnded();
  }

  private applyEnded(): void {
    const t = this.ended.take();
    for (const [direction, byResult] of t.ends) for (const [result, count] of byResult) this.transfers.inc({ protocol: "tftp", direction, result }, count);
    if (t.sentBytes > 0) this.sent.tftp.inc(t.sentBytes);
    if (t.receivedBytes > 0) this.received.inc(t.receivedBytes);
    for (const seconds of t.firstResponse) this.firstResponse.tftp.observe(seconds);
    for (const seconds of t.duration) this.duration.tftp.observe(seconds);
    if (t.retransmits > 0) this.retransmits.inc(t.retransmits);
    for (const [code, count] of t.errorsSent) this.errorsSent.inc({ code: String(code) }, count);
    for (const [option, count] of t.options) this.optionRequests.inc({ option }, count);
    if (t.probes > 0) this.probes.inc(t.probes);
    for (const [kind, count] of t.strays) this.strays.inc({ kind }, count);
  }

  /** A datagram at a listen port that was no request, dropped over the reply rate. */
  garbageDropped(): void {
    this.garbageUnanswered.inc();
    this.refused("tftp", "malformed");
  }

  /** A datagram at a listen port that was no request, answered with ERROR `code` (null: dropped). */
  garbageRefused(code: number | null): void {
    if (code !== null) this.errorsSent.inc({ code: String(code) });
    this.refused("tftp", "malformed");
  }

  /** A transfer worker died and was replaced. */
  workerRestarted(): void {
    this.workerRestarts.inc();
  }

  /** A request refused before a transfer began (`code` null when it was dropped). */
  requestRefused(record: RefusalRecord): void {
    // an HTTP refusal carries the code TFTP would have sent, but answered with a status instead
    if (record.code !== null && record.protocol === undefined) this.errorsSent.inc({ code: String(record.code) });
    this.refused(record.protocol ?? "tftp", record.kind);
    if (record.kind !== "limit") return;
    const limit = /^busy: (\S+) transfer limit/.exec(record.reason)?.[1];
    if (limit) this.refusals.inc({ limit });
  }

  rendered(template: string, ok: boolean): void {
    this.renders.inc({ template, result: ok ? "ok" : "error" });
  }

  /** An HTTP request that opened a file, however it ended: a transfer of protocol "http". */
  httpServed(record: HttpRecord): void {
    this.httpRequests.inc({ method: record.method, status: String(record.status), result: record.result });
    this.transfers.inc({ protocol: "http", direction: "read", result: record.result });
    this.sent.http.inc(record.bytes);
    this.firstResponse.http.observe(record.firstByteMs / 1000);
    this.duration.http.observe(record.durationMs / 1000);
  }

  private refused(protocol: Protocol, reason: RefusalKind): void {
    this.requestsRefused[protocol][reason].inc();
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}

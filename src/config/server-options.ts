/**
 * The effective config as the server's options: the one place config keys become ServerOptions,
 * for `serve` at start and for the limits a pushed config reloads (cluster/config-sync.ts).
 */
import { availableParallelism } from "node:os";
import { planAffinity, usableCpus, type AffinityPlan } from "../net/affinity.ts";
import { takesDirectIo } from "../storage/disk-io.ts";
import { parseListenAddress } from "../net/address.ts";
import type { NetworkRule } from "../server/pipeline/rules.ts";
import type { ServerOptions } from "../server/server.ts";
import type { HttpOptions } from "../http/frontend.ts";
import type { GenerateSettings } from "../generate/generated-files.ts";
import { DEFAULT_MIME, defaultConfig, type Config } from "./schema.ts";

/**
 * "auto": one transfer engine per CPU but one. The main thread (listeners, admission, the
 * cache) and the kernel's loopback and NIC work need a core of their own: on a 2-CPU machine
 * a second engine measured slower, not faster, so there the main thread runs the transfers itself.
 */
export function workerCount(setting: number | "auto", cpus = availableParallelism()): number {
  return setting === "auto" ? Math.max(1, cpus - 1) : setting;
}

/** performance.cpu.affinity for the transfer workers, on the CPUs this process may use. */
function workerCpuPlan(config: Config): AffinityPlan {
  return planAffinity(config.performance.cpu.affinity, workerCount(config.performance.cpu.worker_threads), usableCpus());
}

/**
 * Threads of the file I/O pool: io.io_threads, no more than performance.cpu.thread_pool_size
 * (the ceiling on helper threads); 0 with io.async_io false (copies on the main thread).
 */
export function fileIoThreads(config: Config): number {
  return config.io.async_io ? Math.min(config.io.io_threads, config.performance.cpu.thread_pool_size) : 0;
}

/** Admission limits: read at start, and again for each pushed config (they reload). */
export function admissionLimits(config: Config): ServerOptions["limits"] {
  const limits = config.limits;
  return {
    maxTotal: limits.max_total_connections,
    maxPerIp: limits.max_connections_per_ip,
    maxPerClient: limits.max_connections_per_client,
    maxMemory: limits.max_transfer_memory,
    onLimit: limits.on_limit,
    requestRate: { perSecond: limits.requests_per_second_per_ip, burst: limits.request_burst_per_ip },
  };
}

/** `tftp.rules` as the server takes them (the schema already made CIDRs canonical and roots absolute). */
export function networkRules(config: Config): NetworkRule[] {
  return config.tftp.rules.map((rule) => ({
    clients: [...rule.clients],
    blksizeMax: rule.blksize_max,
    windowsizeMax: rule.windowsize_max,
    refuseOptions: [...rule.refuse_options],
    root: rule.root,
  }));
}

export function serverOptions(config: Config, remap: ServerOptions["remap"]): ServerOptions {
  const tftp = config.tftp;
  return {
    root: tftp.root,
    listen: tftp.listen.map((text) => parseListenAddress(text)),
    write: tftp.write,
    uploadMax: tftp.max_upload_size,
    blksizeMax: tftp.blksize_max,
    windowsizeMax: tftp.windowsize_max,
    windowBytesMax: tftp.window_bytes_max,
    timeoutMs: tftp.timeout * 1000,
    retries: tftp.retries,
    portRange: tftp.port_range,
    remap,
    allow: tftp.allow,
    deny: tftp.deny,
    uniqueRoot: tftp.unique_root,
    generate: generateSettings(config),
    rules: networkRules(config),
    cacheBytes: config.cache.enabled ? config.performance.memory.cache_size : 0,
    transferSockets: tftp.transfer_sockets,
    // batch_timeout 0: no datagram waits for a batch
    batch: { enabled: config.batch.enabled && config.batch.batch_timeout > 0, size: config.batch.batch_size, timeoutMs: config.batch.batch_timeout },
    gso: config.network.zero_copy,
    ioLoop: config.network.epoll ? "epoll" : "bun",
    requestsOnWorkers: config.network.requests_on_workers,
    singlePort: tftp.single_port,
    writeBehind: config.io.write_behind,
    diskIo: { readAheadBytes: config.io.read_ahead, directFills: config.io.direct_io, ioThreads: fileIoThreads(config) },
    workers: workerCount(config.performance.cpu.worker_threads),
    workerCpus: workerCpuPlan(config).perWorker,
    balance: { algorithm: config.load_balancing.algorithm, hashKey: config.load_balancing.hash_key },
    limits: admissionLimits(config),
    lifetimes: {
      connectionTimeoutMs: config.connection_pool.connection_timeout * 1000,
      idleTimeoutMs: config.connection_pool.idle_timeout * 1000,
      maxLifetimeMs: config.connection_pool.max_lifetime * 1000,
    },
    transferSlots: {
      preallocate: config.performance.memory.connection_pool_size,
      min: config.connection_pool.min_connections,
      max: config.connection_pool.max_connections,
      idleMs: config.connection_pool.idle_timeout * 1000,
    },
    receiveBufferBytes: config.performance.network.receive_buffer_size,
    sendBufferBytes: config.performance.network.send_buffer_size,
  };
}

/**
 * Settings this build accepts but cannot honour as written, one line each for `config check`
 * and the log at start.
 */
export function unhonouredSettings(config: Config): string[] {
  const lines: string[] = [];
  const affinity = workerCpuPlan(config);
  if (affinity.unhonoured) lines.push(affinity.unhonoured);
  if (config.io.async_io && config.io.io_threads > config.performance.cpu.thread_pool_size) {
    lines.push(
      `io.io_threads is ${config.io.io_threads}, more than performance.cpu.thread_pool_size ${config.performance.cpu.thread_pool_size}: the file I/O pool has ${fileIoThreads(config)} threads`,
    );
  }
  if (config.io.direct_io && takesDirectIo(config.tftp.root) === false) {
    lines.push(`io.direct_io is true, but the file system of ${config.tftp.root} takes no O_DIRECT: the file cache copies its files through the page cache`);
  }
  const pool = config.connection_pool;
  const pooled = defaultConfig();
  const slotsSet =
    config.performance.memory.connection_pool_size !== pooled.performance.memory.connection_pool_size ||
    pool.min_connections !== pooled.connection_pool.min_connections ||
    pool.max_connections !== pooled.connection_pool.max_connections;
  if (!config.network.epoll && slotsSet) {
    lines.push(
      "connection_pool.max_connections / min_connections and performance.memory.connection_pool_size set transfer slots, the buffers of network.epoll's transfer sockets; network.epoll is false, and Bun's sockets allocate buffers of their own: no slots are kept",
    );
  }
  if (config.network.io_uring) {
    lines.push(
      `network.io_uring is true, but this build has no io_uring loop (Bun offers none, and none is driven through libc): transfers use ${config.network.epoll ? "the epoll loop (network.epoll)" : "Bun's sockets (network.epoll is false)"}`,
    );
  }
  return lines;
}

/** The HTTP front end's settings (http.*): the built-in content types under the config's own. */
export function httpOptions(config: Config): HttpOptions {
  const h = config.http;
  return {
    listen: h.listen,
    tls: { listen: h.tls.listen, cert: h.tls.cert, key: h.tls.key },
    retryAfterSeconds: h.retry_after,
    mime: { ...DEFAULT_MIME, ...h.mime },
  };
}

/** The generated files' settings (generate.*). */
export function generateSettings(config: Config): GenerateSettings {
  const g = config.generate;
  return { inventory: g.inventory, templates: g.templates, files: g.files, httpBase: g.http_base };
}

/**
 * `tftpd serve`: load the config (file < TFTPD_* env < flags), start the server, log each
 * address once it is listening, and stop cleanly on SIGINT/SIGTERM.
 */
import { defineCommand } from "citty";
import { readdirSync } from "node:fs";
import { availableParallelism, hostname } from "node:os";
import { resolve } from "node:path";
import { loadConfig } from "../config/load.ts";
import { formatHostPort, parseListenAddress } from "../net/address.ts";
import type { Config } from "../config/schema.ts";
import { readTestSwitches, type TestSwitches } from "../config/test-switches.ts";
import { createLogger, flushLogs } from "../log.ts";
import { rootProblem, startOpsServer, type Readiness } from "../ops/http.ts";
import { ServerMetrics } from "../ops/metrics.ts";
import { autoTune } from "../ops/tune.ts";
import { isWildcard, expandListenAddresses } from "../net/interfaces.ts";
import { LossPlan } from "../server/loss.ts";
import { wasCapped } from "../net/sockopt.ts";
import { TftpServer, type ServerOptions } from "../server/server.ts";
import { loadRemapFile } from "../storage/remap.ts";
import { sweepAbandonedUploads } from "../storage/upload-sweep.ts";
import { ClusterFiles } from "../cluster/files.ts";
import { RedisMetadataCache } from "../cluster/metadata.ts";
import { RedisLink, redisSettings } from "../cluster/redis.ts";
import { ConfigSync, readPushed, startupConfig, type StartupConfig } from "../cluster/config-sync.ts";
import { Heartbeat, TransferTally } from "../cluster/heartbeat.ts";
import { ClusterLeases, leaseAdmission } from "../cluster/leases.ts";
import { fail, repeatedFlag, unknownOption } from "./args.ts";

const args = {
  config: { type: "string", description: "Config file (default /etc/tftpd/config.json when it exists)", valueHint: "FILE" },
  root: { type: "string", description: "Directory to serve (default /srv/tftp)", valueHint: "DIR" },
  listen: { type: "string", description: "ADDR:PORT to listen on, repeatable; IPv6 as [::1]:69", valueHint: "ADDR:PORT" },
  write: { type: "string", description: "Uploads: off (default), create (new files only), overwrite", valueHint: "off|create|overwrite" },
  "blksize-max": { type: "string", description: "Largest blksize granted (default 1468)", valueHint: "N" },
  "windowsize-max": { type: "string", description: "Largest windowsize granted (default 64)", valueHint: "N" },
  timeout: { type: "string", description: "Initial retransmit timeout in seconds (default 1)", valueHint: "S" },
  retries: { type: "string", description: "Retransmissions before a transfer is given up (default 5)", valueHint: "N" },
  "port-range": { type: "string", description: "Transfer ports LOW:HIGH (default: ephemeral)", valueHint: "LOW:HIGH" },
  remap: { type: "string", description: "File of remap rules (tftpd-hpa style)", valueHint: "FILE" },
  "log-level": { type: "string", description: "fatal|error|warn|info|debug|trace|silent", valueHint: "LEVEL" },
  redis: { type: "string", description: "Redis seed nodes HOST:PORT[,…] (config cache.redis.nodes)", valueHint: "HOST:PORT,…" },
  tune: { type: "boolean", default: true, description: "Tune kernel settings at start-up (--no-tune skips it; config tune.enabled)" },
} as const;

/** Flags → config key paths; values are read like TFTPD_* env values ("8192" is a number). */
const FLAG_KEYS: [flag: string, key: string][] = [
  ["root", "tftp.root"],
  ["write", "tftp.write"],
  ["blksize-max", "tftp.blksize_max"],
  ["windowsize-max", "tftp.windowsize_max"],
  ["timeout", "tftp.timeout"],
  ["retries", "tftp.retries"],
  ["port-range", "tftp.port_range"],
  ["remap", "tftp.remap"],
  ["log-level", "log.level"],
  ["redis", "cache.redis.nodes"],
];

function flagOverrides(
  values: Record<string, unknown>,
  rawArgs: string[],
): { overrides: Record<string, unknown>; overrideSources: Record<string, string> } {
  const overrides: Record<string, unknown> = {};
  const overrideSources: Record<string, string> = {};
  for (const [flag, key] of FLAG_KEYS) {
    if (values[flag] === undefined) continue;
    overrides[key] = values[flag];
    overrideSources[key] = `--${flag}`;
  }
  if (values.redis !== undefined) {
    // naming the fleet's Redis on the command line means joining it
    overrides["cache.type"] = "distributed";
    overrideSources["cache.type"] = "--redis";
  }
  const listen = repeatedFlag(rawArgs, "listen");
  if (listen.length > 0) {
    overrides["tftp.listen"] = listen;
    overrideSources["tftp.listen"] = "--listen";
  }
  return { overrides, overrideSources };
}

/**
 * "auto": one transfer engine per CPU but one. The main thread (listeners, admission, the
 * cache) and the kernel's loopback and NIC work need a core of their own: on a 2-CPU machine
 * a second engine measured slower, not faster (boot storm 2137 vs 2012 Mbit/s, ramp p99 first
 * response 6.6 vs 10.4 ms), so there the main thread runs the transfers itself.
 */
export function workerCount(setting: number | "auto", cpus = availableParallelism()): number {
  return setting === "auto" ? Math.max(1, cpus - 1) : setting;
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
    cacheBytes: config.cache.enabled ? config.performance.memory.cache_size : 0,
    transferSockets: tftp.transfer_sockets,
    batch: { enabled: config.batch.enabled, size: config.batch.batch_size },
    workers: workerCount(config.performance.cpu.worker_threads),
    balance: { algorithm: config.load_balancing.algorithm, hashKey: config.load_balancing.hash_key },
    limits: {
      maxTotal: config.limits.max_total_connections,
      maxPerIp: config.limits.max_connections_per_ip,
      maxPerClient: config.limits.max_connections_per_client,
      maxMemory: config.limits.max_transfer_memory,
      onLimit: config.limits.on_limit,
      requestRate: { perSecond: config.limits.requests_per_second_per_ip, burst: config.limits.request_burst_per_ip },
    },
    lifetimes: {
      connectionTimeoutMs: config.connection_pool.connection_timeout * 1000,
      idleTimeoutMs: config.connection_pool.idle_timeout * 1000,
      maxLifetimeMs: config.connection_pool.max_lifetime * 1000,
    },
    receiveBufferBytes: config.performance.network.receive_buffer_size,
    sendBufferBytes: config.performance.network.send_buffer_size,
  };
}

/** The shared-cache figures of a node in cluster mode that serves no files from it. */
const NO_CLUSTER_FILES = { lookups: 0, fills: 0, fillFailures: 0, staleServes: 0, unavailable: 0 };

/** How long a starting node waits for Redis to read the fleet's pushed config. */
const PUSHED_CONFIG_WAIT_MS = 2000;

/** How long running transfers may finish after SIGTERM (the unit's TimeoutStopSec is 20 s). */
const STOP_GRACE_MS = 15_000;

/** Ready: listening, the root still searchable, and the file cache working when one is configured. */
function readiness(server: TftpServer, root: string, wantCache: boolean, redis: RedisLink | null): Readiness {
  const reasons: string[] = [];
  const degraded: string[] = [];
  if (redis && !redis.up) degraded.push(`redis ${redis.state}${redis.lastError ? ` (${redis.lastError})` : ""}: serving local files only`);
  if (server.addresses.length === 0) reasons.push("not listening");
  if (wantCache && !server.cache.enabled) reasons.push("file cache unavailable (no memfd on this system)");
  const rootUnservable = rootProblem(root);
  if (rootUnservable) reasons.push(rootUnservable);
  return { ready: reasons.length === 0, reasons, degraded };
}

/** A file at the top of the root to show in the start-up hint, if there is one. */
function sampleFile(root: string): string | null {
  try {
    const names = readdirSync(root, { withFileTypes: true }).filter((e) => e.isFile() && !e.name.startsWith("."));
    return names.map((e) => e.name).sort()[0] ?? null;
  } catch {
    return null;
  }
}

export default defineCommand({
  meta: { name: "serve", description: "Run the TFTP server (the default command)" },
  args,
  async run({ args: values, rawArgs }) {
    const unknown = unknownOption(args, rawArgs);
    if (unknown) fail("serve", `unknown option ${unknown} (see tftpd serve --help)`, 2);

    const loaded = loadConfig({ file: values.config, env: process.env, ...flagOverrides(values, rawArgs) });
    if (!loaded.ok) {
      for (const line of loaded.errors) process.stderr.write(`tftpd serve: ${line}\n`);
      process.exit(1);
    }
    let config = loaded.config;
    let test: TestSwitches;
    try {
      test = readTestSwitches();
    } catch (error) {
      fail("serve", (error as Error).message, 1);
    }
    const log = createLogger(config.log.level);

    // The fleet's Redis, when the config uses it. A node serves its own root while Redis is
    // down or still starting, and the link reconnects by itself; at start it waits a moment
    // for the config pushed to the fleet, so settings that need a restart take effect.
    const wantsRedis =
      (config.cache.enabled && config.cache.type === "distributed") || config.limits.scope === "cluster" || config.cache.metadata_ttl > 0;
    const redisNodes = config.cache.redis.nodes;
    const redis = wantsRedis ? new RedisLink(redisSettings(config)) : null;
    redis?.onState((state, error) => {
      if (state === "up") log.info({ nodes: redisNodes }, "redis up");
      else log.warn({ nodes: redisNodes, state, error }, "redis unavailable: serving local files only");
    });
    const loadWith = (pushed: { content: unknown; source: string }) =>
      loadConfig({ file: values.config, env: process.env, pushed, ...flagOverrides(values, rawArgs) });
    let startedWith: StartupConfig | null = null;
    if (redis && (await redis.waitUp(PUSHED_CONFIG_WAIT_MS))) {
      const pushed = await readPushed(redis).catch(() => null);
      const start = pushed ? startupConfig(pushed, loadWith) : null;
      if (start?.ok) {
        startedWith = start.value;
        config = start.value.config;
        log.level = config.log.level;
        log.info({ version: start.value.version }, "started with the config pushed to the fleet");
      } else if (start) {
        log.error({ errors: start.errors }, "pushed config rejected: starting with this node's own config");
      }
    } else if (redis) {
      log.warn({ nodes: redisNodes }, "redis not reachable at start: starting with this node's own config");
    }

    let remap: ServerOptions["remap"] = startedWith?.rules ?? [];
    if (config.tftp.remap && !startedWith?.rules) {
      const rules = loadRemapFile(config.tftp.remap);
      if (!rules.ok) {
        for (const line of rules.errors) process.stderr.write(`tftpd serve: ${line}\n`);
        process.exit(1);
      }
      remap = rules.rules;
    }

    const options = serverOptions(config, remap);
    const expanded = expandListenAddresses(options.listen);
    options.listen = expanded.addresses;
    for (const skipped of expanded.skipped) log.debug({ address: skipped }, "not listening on link-local address");
    if (test.workerThrowAfterJobs !== null) {
      options.workerThrowAfterJobs = test.workerThrowAfterJobs;
      log.warn({ after_jobs: test.workerThrowAfterJobs }, "test switch: the first transfer worker will throw");
    }
    if (test.drop !== null) {
      options.loss = LossPlan.parse(test.drop);
      log.warn({ drop: test.drop }, "test loss injection is on");
    }

    // limits.scope "cluster": each transfer also holds a lease in Redis, counted fleet-wide; the
    // start time in the id keeps a restarted process (same host, same pid in a container) from
    // taking over the leases its previous life left to expire
    const leases = config.limits.scope === "cluster" && redis ? new ClusterLeases(redis, { nodeId: `${hostname()}:${process.pid}:${Date.now().toString(36)}` }) : null;
    if (leases) options.sharedAdmission = leaseAdmission(leases);

    let metrics: ServerMetrics | null = null;
    // transfer counts for the fleet heartbeat (kept whether or not metrics are on)
    const tally = new TransferTally();
    const server: TftpServer = new TftpServer(options, {
      listening: ({ host, port }, buffers) => {
        const address = formatHostPort(host, port);
        log.info({ address, receive_buffer: buffers?.receive, send_buffer: buffers?.send }, "listening");
        const wanted = options.receiveBufferBytes;
        if (buffers && wasCapped(wanted, buffers.receive)) {
          log.warn(
            { address, requested: wanted, granted: buffers.receive / 2 },
            "receive buffer capped by net.core.rmem_max: bursts of requests may be dropped (raise net.core.rmem_max)",
          );
        }
      },
      transferEnd: (r) => {
        metrics?.transferEnded(r);
        tally.count(r);
        // a superseded transfer is no failure: its client rebooted and asked anew
        const level = r.result === "ok" || r.result === "probe" || r.result === "superseded" ? "info" : "warn";
        log[level](
          {
            client: r.client,
            file: r.file,
            direction: r.direction,
            mode: r.mode,
            bytes: r.bytes,
            blksize: r.blksize,
            windowsize: r.windowsize,
            tsize: r.tsize,
            options: r.options,
            duration_ms: Math.round(r.durationMs * 100) / 100,
            first_response_ms: Math.round(r.firstResponseMs * 1000) / 1000,
            retransmits: r.retransmits,
            result: r.result,
            ...(r.error ? { error: r.error } : {}),
            ...(r.strays ? { strays: r.strays } : {}),
          },
          "transfer",
        );
      },
      // One line per refused request, with the name asked: a machine that fails to boot is
      // usually one missing file away, and this is where it shows.
      refused: (r) => {
        metrics?.requestRefused(r);
        log.info({ client: r.client, op: r.op, file: r.file, remapped: r.remapped, reason: r.reason, kind: r.kind, code: r.code }, "request refused");
      },
      // no request (no file to name): counted, and logged at debug only
      garbageRefused: (peer, reason, code) => {
        metrics?.garbageRefused(code);
        log.debug({ client: formatHostPort(peer.address, peer.port), reason, code }, "datagram refused");
      },
      // one line per source and interval, however many requests it sent over its rate
      rateLimited: ({ sources, unreported, intervalMs }) => {
        const interval_s = intervalMs / 1000;
        for (const s of sources) log.warn({ address: s.address, dropped: s.dropped, interval_s }, "requests rate-limited");
        if (unreported > 0) log.warn({ address: null, dropped: unreported, interval_s }, "requests rate-limited");
      },
      workerExit: (index, exit) => {
        metrics?.workerRestarted();
        log.error(
          { worker: index, reason: exit.reason, transfers_ended_with_error: exit.endedWithError, transfers_lost: exit.lost },
          "transfer worker died and was replaced; its transfers ended, the others go on",
        );
      },
      // counted, not logged: a flood of garbage would flood the log too
      garbageUnanswered: () => metrics?.garbageDropped(),
      sharedAdmissionDown: (error) => {
        log.warn({ error }, "cluster limits unavailable: admitting on this node's limits alone");
      },
      sharedAdmissionUp: () => {
        log.info("cluster limits available again");
      },
    });

    if (redis && config.cache.enabled && config.cache.type === "distributed") {
      // lookup order: this node's root, then the fleet's shared cache
      server.remoteFiles = new ClusterFiles(redis, server.cache, {
        filled: (file, bytes, ms) => log.info({ file, bytes, fill_ms: Math.round(ms) }, "fetched from the cluster cache"),
        fillFailed: (file, error) => log.error({ file, error }, "cluster cache fetch failed: not served"),
        servedStale: (file, error) => log.warn({ file, error }, "redis unavailable: served the local copy"),
      });
    }

    if (redis && config.cache.metadata_ttl > 0) {
      server.metadata = new RedisMetadataCache(redis, resolve(config.tftp.root), config.cache.metadata_ttl, config.cache.metadata_scope);
    }

    if (values.tune !== false && config.tune.enabled) {
      // Raise what the config needs (never lowers); without privileges it only warns.
      const tuned = await autoTune(config, { sysctlRoot: test.sysctlRoot ?? undefined });
      for (const c of tuned.changed) log.info({ key: c.key, from: c.from, to: c.to }, "tuned");
      for (const f of tuned.failed) log.warn({ key: f.key, reason: f.reason }, "could not tune");
    }
    try {
      await server.start();
    } catch (error) {
      fail("serve", (error as Error).message);
    }
    // Crash-only uploads: temporary files of uploads an earlier process never finished go now,
    // in the background (the walk of a big root must not delay serving; live uploads are safe).
    const idleMs = Math.max(config.connection_pool.idle_timeout, config.connection_pool.connection_timeout) * 1000;
    void sweepAbandonedUploads(config.tftp.root, { staleAfterMs: 2 * idleMs })
      .then((swept) => {
        const fields = { root: config.tftp.root, removed: swept.removed, in_use: swept.inUse, failed: swept.failed };
        if (swept.removed > 0) log.info(fields, "removed temporary files of interrupted uploads");
        else log.debug(fields, "no temporary files of interrupted uploads to remove");
        if (swept.failed > 0) log.warn(fields, "could not remove temporary files of interrupted uploads");
        if (!swept.complete) log.warn({ ...fields, entries: swept.entries }, "stopped looking for interrupted uploads: root too big");
      })
      .catch((error: unknown) => log.warn({ error: (error as Error).message }, "could not look for interrupted uploads"));
    let ops: { stop(force?: boolean): unknown } | null = null;
    let metricsUrl: string | null = null;
    if (config.metrics.enabled) {
      const clusterFiles = server.remoteFiles instanceof ClusterFiles ? server.remoteFiles : null;
      metrics = new ServerMetrics({
        activeTransfers: () => server.activeTransfers,
        transferMemory: () => server.transferMemory,
        requestsRateLimited: () => server.requestsRateLimited,
        cacheStats: () => server.cache.stats,
        clusterStats: redis ? () => ({ ...(clusterFiles?.stats ?? NO_CLUSTER_FILES), redisUp: redis.up }) : undefined,
      });
      const at = parseListenAddress(config.metrics.listen);
      try {
        const http = startOpsServer(at.host, at.port, metrics, () => readiness(server, config.tftp.root, options.cacheBytes > 0, redis), config.metrics.control);
        ops = http;
        metricsUrl = `http://${formatHostPort(at.host, http.port ?? at.port)}`;
        log.info({ address: formatHostPort(at.host, http.port ?? at.port) }, "metrics listening");
      } catch (error) {
        fail("serve", `metrics.listen ${config.metrics.listen}: ${(error as Error).message}`);
      }
    }
    const first = server.addresses.find((a) => !isWildcard(a.host));
    if (first) {
      const file = sampleFile(config.tftp.root) ?? "FILE";
      log.info(
        { root: config.tftp.root, config: loaded.source, write: config.tftp.write },
        `ready: fetch a file with  curl -o ${file} tftp://${formatHostPort(first.host, first.port)}/${file}`,
      );
    }

    // Cluster mode: beat into the fleet's Redis (tftpd cluster status, metrics --cluster).
    const heartbeat = redis
      ? new Heartbeat(
          redis,
          () => ({
            addresses: server.addresses.map((a) => formatHostPort(a.host, a.port)),
            metricsUrl,
            activeTransfers: server.activeTransfers,
            transfersTotal: tally.transfers,
            failedTotal: tally.failed,
            bytesSentTotal: tally.bytesSent,
            cacheBytes: server.cache.stats.bytes,
          }),
          { intervalMs: test.heartbeatMs ?? undefined },
        )
      : null;
    heartbeat?.start();

    // Cluster mode: apply the config pushed to the fleet (tftpd config push), now and on every
    // new version, over this node's file and under its env and flags.
    const configSync = redis
      ? new ConfigSync({
          redis,
          log,
          config,
          server,
          load: loadWith,
          startedWith,
          limitsOf: (c) => serverOptions(c, []).limits,
          pollMs: test.configPollMs ?? undefined,
        })
      : null;
    configSync?.start();

    // SIGTERM/SIGINT: stop taking requests, let running transfers finish for up to
    // STOP_GRACE_MS (a second signal ends them at once), then exit 0.
    let stopping = false;
    const shutdown = async (signal: string): Promise<void> => {
      if (stopping) {
        log.warn({ signal, active: server.activeTransfers }, "stopping now");
        await server.stop();
      } else {
        stopping = true;
        log.info({ signal, active: server.activeTransfers, grace_ms: STOP_GRACE_MS }, "stopping");
        const cut = await server.drain(STOP_GRACE_MS);
        if (cut > 0) log.warn({ cut }, "transfers still running at the end of the grace period were ended");
      }
      ops?.stop(true);
      configSync?.stop();
      await heartbeat?.stop();
      await leases?.stop();
      await redis?.close();
      flushLogs();
      process.exit(0);
    };
    process.on("SIGINT", () => void shutdown("SIGINT"));
    process.on("SIGTERM", () => void shutdown("SIGTERM"));
  },
});

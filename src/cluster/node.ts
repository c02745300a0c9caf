/**
 * A node's part in the fleet, from start to stop. Before the server exists: the link to the
 * fleet's Redis, the config pushed to the fleet (read at start, so settings that need a restart
 * take effect) and what the server takes from the fleet (its shared files, the metadata cache,
 * fleet-wide limits). Once the server runs: its heartbeat and the following of pushed configs.
 * A node whose config names no Redis gets a fleet of no parts, so its start-up reads the same.
 *
 * The node serves its own root while Redis is down or still starting; the link reconnects by
 * itself.
 */
import { hostname } from "node:os";
import { resolve } from "node:path";
import type { Config } from "../config/schema.ts";
import type { Logger } from "../log.ts";
import { formatHostPort } from "../net/address.ts";
import type { ClusterStats } from "../ops/metrics.ts";
import type { ServerDeps, TftpServer } from "../server/server.ts";
import type { FileCache } from "../storage/cache.ts";
import { ConfigSync, readPushed, startupConfig, type ConfigSyncOptions, type StartupConfig } from "./config-sync.ts";
import type { PushedLayer, RunningConfig } from "../ops/config-reload.ts";
import { ClusterFiles } from "./files.ts";
import { Heartbeat, type TransferTally } from "./heartbeat.ts";
import { ClusterLeases, leaseAdmission } from "./leases.ts";
import { RedisMetadataCache } from "./metadata.ts";
import { RedisLink, redisSettings } from "./redis.ts";

/** How long a starting node waits for Redis to read the fleet's pushed config. */
const PUSHED_CONFIG_WAIT_MS = 2000;

/** The shared-cache figures of a node in cluster mode that serves no files from it. */
const NO_CLUSTER_FILES = { lookups: 0, fills: 0, fillFailures: 0, staleServes: 0, unavailable: 0 };

export interface JoinOptions {
  /** the node's own effective config (its file < env < flags) */
  config: Config;
  log: Logger;
  /** the node's effective config with a pushed config layered in (its file < pushed < env < flags) */
  load: ConfigSyncOptions["load"];
  /** heartbeat interval (default heartbeat.ts's) */
  heartbeatMs?: number | null;
  /** how often the pushed config is polled (default config-sync.ts's) */
  configPollMs?: number | null;
}

/** What the server takes from the fleet. */
export type FleetDeps = Required<Pick<ServerDeps, "remoteFiles" | "metadata" | "sharedAdmission">>;

/** The running server as the fleet follows it. */
export type FleetServer = Pick<TftpServer, "addresses" | "activeTransfers" | "cache">;

/** What the heartbeat reports beyond the server's own figures. */
export interface NodeReport {
  metricsUrl: string | null;
  /** fed with every transfer's end record */
  tally: TransferTally;
}

export interface Fleet {
  /** the config to start with: the node's own, or with the fleet's pushed config in it */
  readonly config: Config;
  /** the pushed config `config` holds, or null */
  readonly startedWith: StartupConfig | null;
  /** the fleet's part of the metrics; undefined for a node without Redis */
  readonly clusterStats: (() => ClusterStats) | undefined;
  /** What the server takes from the fleet, sharing the server's file cache. Called once, before the server is built. */
  serverDeps(cache: FileCache): FleetDeps;
  /** why the node serves only in part (Redis unavailable), or null */
  degraded(): string | null;
  /** the server is listening: beat into the fleet and follow its pushed config into `running` */
  serve(server: FleetServer, report: NodeReport, running: RunningConfig): void;
  /** the pushed config the node runs with, to layer in again when its file is read again; null when none */
  latestPushed(): PushedLayer | null;
  /** after the server stopped: the fleet's parts stop, the last the link */
  stop(): Promise<void>;
}

/** Whether the config has the node use the fleet's Redis. */
export function usesFleet(config: Config): boolean {
  return (config.cache.enabled && config.cache.type === "distributed") || config.limits.scope === "cluster" || config.cache.metadata_ttl > 0;
}

/** Joins the fleet the config names (waiting a moment for its pushed config), or none. */
export async function joinFleet(options: JoinOptions): Promise<Fleet> {
  if (!usesFleet(options.config)) return alone(options.config);
  const { log } = options;
  const nodes = options.config.cache.redis.nodes;
  const link = new RedisLink(redisSettings(options.config));
  link.onState((state, error) => {
    if (state === "up") log.info({ nodes }, "redis up");
    else log.warn({ nodes, state, error }, "redis unavailable: serving local files only");
  });
  const startedWith = await pushedAtStart(link, options);
  return new FleetNode(link, startedWith?.config ?? options.config, startedWith, options);
}

/** The pushed config to start with, when Redis answers within a moment and the config is usable. */
async function pushedAtStart(link: RedisLink, { log, load, config }: JoinOptions): Promise<StartupConfig | null> {
  if (!(await link.waitUp(PUSHED_CONFIG_WAIT_MS))) {
    log.warn({ nodes: config.cache.redis.nodes }, "redis not reachable at start: starting with this node's own config");
    return null;
  }
  const pushed = await readPushed(link).catch(() => null);
  const start = pushed ? startupConfig(pushed, load) : null;
  if (!start) return null;
  if (!start.ok) {
    log.error({ errors: start.errors }, "pushed config rejected: starting with this node's own config");
    return null;
  }
  log.level = start.value.config.log.level;
  log.info({ version: start.value.version }, "started with the config pushed to the fleet");
  return start.value;
}

/** A node on its own: no Redis, nothing to start or stop. */
function alone(config: Config): Fleet {
  return {
    config,
    startedWith: null,
    clusterStats: undefined,
    serverDeps: () => ({ remoteFiles: null, metadata: null, sharedAdmission: null }),
    degraded: () => null,
    serve: () => {},
    latestPushed: () => null,
    stop: async () => {},
  };
}

class FleetNode implements Fleet {
  /**
   * limits.scope "cluster": each transfer also holds a lease in Redis, counted fleet-wide; the
   * start time in the id keeps a restarted process (same host, same pid in a container) from
   * taking over the leases its previous life left to expire
   */
  private readonly leases: ClusterLeases | null;
  private files: ClusterFiles | null = null;
  private heartbeat: Heartbeat | null = null;
  private configSync: ConfigSync | null = null;
  readonly clusterStats: () => ClusterStats;

  constructor(
    private readonly link: RedisLink,
    readonly config: Config,
    readonly startedWith: StartupConfig | null,
    private readonly options: JoinOptions,
  ) {
    this.leases = config.limits.scope === "cluster" ? new ClusterLeases(link, { nodeId: `${hostname()}:${process.pid}:${Date.now().toString(36)}` }) : null;
    this.clusterStats = () => ({ ...(this.files?.stats ?? NO_CLUSTER_FILES), redisUp: link.up });
  }

  serverDeps(cache: FileCache): FleetDeps {
    const { config, link } = this;
    const { log } = this.options;
    if (config.cache.enabled && config.cache.type === "distributed") {
      // lookup order: this node's root, then the fleet's shared cache
      this.files = new ClusterFiles(link, cache, {
        filled: (file, bytes, ms) => log.info({ file, bytes, fill_ms: Math.round(ms) }, "fetched from the cluster cache"),
        fillFailed: (file, error) => log.error({ file, error }, "cluster cache fetch failed: not served"),
        servedStale: (file, error) => log.warn({ file, error }, "redis unavailable: served the local copy"),
      });
    }
    const metadata =
      config.cache.metadata_ttl > 0 ? new RedisMetadataCache(link, resolve(config.tftp.root), config.cache.metadata_ttl, config.cache.metadata_scope) : null;
    return { remoteFiles: this.files, metadata, sharedAdmission: this.leases ? leaseAdmission(this.leases) : null };
  }

  degraded(): string | null {
    const { link } = this;
    return link.up ? null : `redis ${link.state}${link.lastError ? ` (${link.lastError})` : ""}: serving local files only`;
  }

  latestPushed(): PushedLayer | null {
    return this.configSync?.latestPushed ?? this.startedWith?.pushed ?? null;
  }

  serve(server: FleetServer, report: NodeReport, running: RunningConfig): void {
    const { link, startedWith } = this;
    const { log, load } = this.options;
    // beats for `tftpd cluster status` and `tftpd metrics --cluster`
    this.heartbeat = new Heartbeat(
      link,
      () => ({
        addresses: server.addresses.map((a) => formatHostPort(a.host, a.port)),
        metricsUrl: report.metricsUrl,
        activeTransfers: server.activeTransfers,
        transfersTotal: report.tally.transfers,
        failedTotal: report.tally.failed,
        bytesSentTotal: report.tally.bytesSent,
        cacheBytes: server.cache.stats.bytes,
      }),
      { intervalMs: this.options.heartbeatMs ?? undefined },
    );
    this.heartbeat.start();
    // the config pushed to the fleet (tftpd config push), now and on every new version, over
    // this node's file and under its env and flags
    this.configSync = new ConfigSync({ redis: link, log, running, load, startedWith, pollMs: this.options.configPollMs ?? undefined });
    this.configSync.start();
  }

  async stop(): Promise<void> {
    this.configSync?.stop();
    await this.heartbeat?.stop();
    await this.leases?.stop();
    await this.link.close();
  }
}

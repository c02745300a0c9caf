/**
 * The fleet's link to Redis: an ioredis Cluster (or one Redis server when cluster_mode is
 * false) built from `cache.redis.*`, with the keys of keys.ts and a state other parts watch.
 *
 * Failure is normal: commands never queue while the link is down (they fail at once, so a
 * request waits a bounded time, never forever), every command has a timeout, and the client
 * reconnects with backoff for as long as the process runs.
 */
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from "ioredis";
import type { Config } from "../config/schema.ts";
import { parseListenAddress } from "../net/address.ts";
import { KeySpace } from "./keys.ts";

export type RedisClient = Redis | Cluster;

export interface RedisSettings {
  /** seed nodes "HOST:PORT" */
  nodes: string[];
  clusterMode: boolean;
  password: string | null;
  tls: boolean;
  keyPrefix: string;
  noDelay: boolean;
  keepAlive: boolean;
  /** longest any one command may take before it fails */
  commandTimeoutMs: number;
}

/** Longest a command waits for Redis: a PXE ROM's request timeout is a few seconds. */
const COMMAND_TIMEOUT_MS = 2000;

/** Settings from the config; `nodes` (a `--redis HOST:PORT[,…]` flag) replaces cache.redis.nodes. */
export function redisSettings(config: Config, nodes?: string): RedisSettings {
  return {
    nodes: nodes === undefined ? config.cache.redis.nodes : splitNodes(nodes),
    clusterMode: config.cache.redis.cluster_mode,
    password: config.cache.redis.password,
    tls: config.cache.redis.tls,
    keyPrefix: config.cache.redis.key_prefix,
    noDelay: config.performance.network.tcp_nodelay,
    keepAlive: config.performance.network.tcp_keepalive,
    commandTimeoutMs: COMMAND_TIMEOUT_MS,
  };
}

/** "a:1,b:2" → ["a:1", "b:2"]; throws naming the address at fault. */
export function splitNodes(text: string): string[] {
  const nodes = text.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
  if (nodes.length === 0) throw new Error("--redis needs HOST:PORT[,HOST:PORT…]");
  for (const node of nodes) {
    const parsed = (() => {
      try {
        return parseListenAddress(node);
      } catch {
        return null;
      }
    })();
    if (!parsed || parsed.port === 0) throw new Error(`--redis: ${node} is not HOST:PORT`);
  }
  return nodes;
}

function hostPort(node: string): { host: string; port: number } {
  const { host, port } = parseListenAddress(node);
  return { host, port };
}

/** Reconnection delay: quick at first, then at most every 2 s. */
const backoff = (times: number): number => Math.min(50 * 2 ** Math.min(times, 6), 2000);

export type LinkState = "connecting" | "up" | "down";

export class RedisLink {
  readonly client: RedisClient;
  readonly keys: KeySpace;
  private current: LinkState = "connecting";
  private lastErrorText: string | null = null;
  private readonly listeners = new Set<(state: LinkState, error: string | null) => void>();

  constructor(readonly settings: RedisSettings) {
    if (settings.nodes.length === 0) throw new Error("cache.redis.nodes: no Redis nodes configured (or pass --redis HOST:PORT)");
    this.keys = new KeySpace(settings.keyPrefix);
    const connection: RedisOptions = {
      password: settings.password ?? undefined,
      tls: settings.tls ? {} : undefined,
      noDelay: settings.noDelay,
      // ioredis takes the keep-alive's initial delay; 0 leaves SO_KEEPALIVE off
      keepAlive: settings.keepAlive ? 10_000 : 0,
      connectTimeout: settings.commandTimeoutMs,
      commandTimeout: settings.commandTimeoutMs,
      maxRetriesPerRequest: 1,
    };
    if (settings.clusterMode) {
      const options: ClusterOptions = {
        redisOptions: connection,
        enableOfflineQueue: false,
        clusterRetryStrategy: backoff,
        // a failed master's slots move to its replica after cluster-node-timeout: retry
        // within a command's time budget instead of failing the request at once
        retryDelayOnFailover: 200,
        retryDelayOnClusterDown: 200,
        maxRedirections: 10,
        slotsRefreshTimeout: settings.commandTimeoutMs,
      };
      this.client = new Cluster(settings.nodes.map(hostPort), options);
    } else {
      const { host, port } = hostPort(settings.nodes[0]!);
      this.client = new Redis({ ...connection, host, port, enableOfflineQueue: false, retryStrategy: backoff });
    }
    this.client.on("ready", () => this.setState("up", null));
    this.client.on("error", (error: Error) => {
      this.lastErrorText = error.message;
    });
    this.client.on("close", () => this.setState(this.current === "connecting" ? "connecting" : "down", this.lastErrorText));
    this.client.on("end", () => this.setState("down", this.lastErrorText));
    // a cluster reports a lost node through "node error" and its state through "+node"/"-node";
    // what matters here is whether commands can run, which "ready"/"close" say
  }

  get state(): LinkState {
    return this.current;
  }

  get up(): boolean {
    return this.current === "up";
  }

  /** the last connection error, for logs and /readyz */
  get lastError(): string | null {
    return this.lastErrorText;
  }

  onState(listener: (state: LinkState, error: string | null) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Resolves true once the link is up, false if it is not within `timeoutMs`. */
  waitUp(timeoutMs: number): Promise<boolean> {
    if (this.up) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        off();
        resolve(false);
      }, timeoutMs);
      const off = this.onState((state) => {
        if (state !== "up") return;
        clearTimeout(timer);
        off();
        resolve(true);
      });
    });
  }

  async close(): Promise<void> {
    this.listeners.clear();
    try {
      await this.client.quit();
    } catch {
      this.client.disconnect();
    }
  }

  private setState(state: LinkState, error: string | null): void {
    if (state === this.current) return;
    this.current = state;
    for (const listener of this.listeners) listener(state, error);
  }
}

/**
 * For CLI commands: a link that is up, or one line saying which nodes did not answer (or that
 * they answer as a single Redis while the config asks for a cluster, and what to set).
 */
export async function connectOrFail(settings: RedisSettings, timeoutMs = 5000): Promise<RedisLink> {
  const link = new RedisLink(settings);
  if (await link.waitUp(timeoutMs)) return link;
  const why = link.lastError ? `: ${link.lastError}` : "";
  link.client.disconnect();
  if (settings.clusterMode) {
    const single = await singleRedisAmong(settings);
    if (single) {
      throw new Error(`Redis at ${single} answers but is not a cluster (cluster support disabled): set cache.redis.cluster_mode false (TFTPD_CACHE_REDIS_CLUSTER_MODE=false)`);
    }
  }
  throw new Error(`Redis at ${settings.nodes.join(",")} not reachable within ${timeoutMs} ms${why}`);
}

/** The first node that answers as a Redis server with cluster support off, or null. */
async function singleRedisAmong(settings: RedisSettings): Promise<string | null> {
  for (const node of settings.nodes) {
    const { host, port } = hostPort(node);
    const probe = new Redis({
      host,
      port,
      password: settings.password ?? undefined,
      tls: settings.tls ? {} : undefined,
      lazyConnect: true,
      connectTimeout: 2000,
      commandTimeout: 2000,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    probe.on("error", () => {});
    try {
      await probe.connect();
      if (/^cluster_enabled:0\s*$/m.test(await probe.info("cluster"))) return node;
    } catch {
      // not answering, or not Redis: nothing to tell beyond "not reachable"
    } finally {
      probe.disconnect();
    }
  }
  return null;
}

/**
 * The operations endpoint of a serving node (http.ts on `metrics.listen`): the metrics read from
 * the running server and the fleet, and the readiness /readyz answers with.
 */
import type { Config } from "../config/schema.ts";
import { formatHostPort, parseListenAddress } from "../net/address.ts";
import type { TftpServer } from "../server/server.ts";
import { rootProblem, startOpsServer, type Readiness } from "./http.ts";
import { ServerMetrics, type ClusterStats } from "./metrics.ts";

/** The running server as the endpoint reads it. */
export type ObservedServer = Pick<TftpServer, "addresses" | "activeTransfers" | "transferMemory" | "transferSlots" | "requestsRateLimited" | "cache" | "workers">;

/**
 * Ready: listening, the root still searchable, and the file cache working when one is
 * configured. `degraded`: why the node serves only in part (the fleet's Redis unavailable).
 */
export function nodeReadiness(server: Pick<ObservedServer, "addresses" | "cache">, root: string, wantCache: boolean, degraded: string | null): Readiness {
  const reasons: string[] = [];
  if (server.addresses.length === 0) reasons.push("not listening");
  if (wantCache && !server.cache.enabled) reasons.push("file cache unavailable (no memfd on this system)");
  const rootUnservable = rootProblem(root);
  if (rootUnservable) reasons.push(rootUnservable);
  return { ready: reasons.length === 0, reasons, degraded: degraded ? [degraded] : [] };
}

export interface NodeEndpoint {
  metrics: ServerMetrics;
  /** "http://HOST:PORT" */
  url: string;
  /** "HOST:PORT" it listens on (the port it got when metrics.listen asks for port 0) */
  address: string;
  stop(force?: boolean): unknown;
}

/** Starts the endpoint on `metrics.listen`; throws when it cannot listen there. */
export function startNodeEndpoint(
  config: Config,
  server: ObservedServer,
  fleet: { clusterStats: (() => ClusterStats) | undefined; degraded(): string | null },
): NodeEndpoint {
  const metrics = new ServerMetrics({
    activeTransfers: () => server.activeTransfers,
    transferMemory: () => server.transferMemory,
    transferSlots: () => server.transferSlots,
    requestsRateLimited: () => server.requestsRateLimited,
    cacheStats: () => server.cache.stats,
    cacheCapacity: () => (server.cache.enabled ? config.performance.memory.cache_size : 0),
    clusterStats: fleet.clusterStats,
  });
  const wantCache = config.cache.enabled && config.performance.memory.cache_size > 0;
  const at = parseListenAddress(config.metrics.listen);
  const http = startOpsServer(
    at.host,
    at.port,
    metrics,
    () => nodeReadiness(server, config.tftp.root, wantCache, fleet.degraded()),
    config.metrics.control,
    () => server.workers,
  );
  const address = formatHostPort(at.host, http.port ?? at.port);
  return { metrics, url: `http://${address}`, address, stop: (force) => http.stop(force) };
}

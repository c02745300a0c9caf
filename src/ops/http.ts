/**
 * The operations endpoint on `metrics.listen`: /metrics (Prometheus text), /healthz (the
 * process answers) and /readyz (listening, the root searchable; 200 "ready, degraded: …" while
 * the fleet's Redis is unavailable). Loopback by default. With
 * `metrics.control`, also the control endpoints `tftpd profile` uses, answered to loopback
 * clients only, whatever address the endpoint listens on: /debug/profile?seconds=N (a CPU
 * profile of the main thread and of every transfer worker) and /debug/heap (a heap snapshot).
 */
import type { Server } from "bun";
import { accessSync, constants, statSync } from "node:fs";
import type { ServerMetrics } from "./metrics.ts";
import { heapSnapshot, recordCpuProfile, type ProfiledWorkers } from "./profiler.ts";

/** Longest profile the control endpoint records. */
const MAX_PROFILE_SECONDS = 300;

function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  return address === "::1" || address.startsWith("127.") || address.startsWith("::ffff:127.");
}

export interface Readiness {
  ready: boolean;
  /** what is not ready, when not */
  reasons: string[];
  /**
   * what works only in part while the node still serves (Redis unavailable: local files and
   * local copies are served, files only the fleet's cache holds are not)
   */
  degraded?: string[];
}

/**
 * Why the root cannot be served from, or null when it can. Serving opens the files a request
 * names below the root, which takes search permission on it (x) for this process's user, not
 * read permission: a root of mode 0711 serves every file it holds without being listable.
 * Asked of the kernel (access(2)) rather than read from the mode bits, so owner, group, ACLs
 * and capabilities count as they do when a file is opened.
 */
export function rootProblem(root: string): string | null {
  try {
    if (!statSync(root).isDirectory()) return `root ${root} is not a directory`;
  } catch (error) {
    return `root ${root} not found (${(error as NodeJS.ErrnoException).code ?? "error"})`;
  }
  try {
    accessSync(root, constants.X_OK);
  } catch (error) {
    return `root ${root} not searchable by this process (${(error as NodeJS.ErrnoException).code ?? "error"})`;
  }
  return null;
}

export function startOpsServer(
  host: string,
  port: number,
  metrics: ServerMetrics,
  readiness: () => Readiness,
  control: boolean,
  /** the server's transfer workers (null: transfers run on the main thread), sampled with it */
  workers: () => ProfiledWorkers | null = () => null,
): Server<undefined> {
  let profiling = false;
  return Bun.serve({
    hostname: host,
    port,
    // a profile holds its request open for as long as it records
    idleTimeout: 0,
    async fetch(request, server) {
      const url = new URL(request.url);
      const pathname = url.pathname;
      if (pathname.startsWith("/debug/")) {
        if (!control) return new Response("control endpoints are off (metrics.control)\n", { status: 404 });
        if (!isLoopback(server.requestIP(request)?.address)) return new Response("loopback clients only\n", { status: 403 });
      }
      switch (pathname) {
        case "/debug/profile": {
          const seconds = Number(url.searchParams.get("seconds") ?? "10");
          if (!(seconds > 0 && seconds <= MAX_PROFILE_SECONDS)) {
            return new Response(`seconds must be above 0 and at most ${MAX_PROFILE_SECONDS}\n`, { status: 400 });
          }
          if (profiling) return new Response("a profile is already being recorded\n", { status: 409 });
          profiling = true;
          try {
            return Response.json(await recordCpuProfile(seconds, workers()));
          } finally {
            profiling = false;
          }
        }
        case "/debug/heap":
          return new Response(heapSnapshot(), { headers: { "content-type": "application/json" } });
        case "/metrics":
          return new Response(await metrics.text(), { headers: { "content-type": metrics.registry.contentType } });
        case "/healthz":
          return new Response("ok\n");
        case "/readyz": {
          const state = readiness();
          if (!state.ready) return new Response(`not ready: ${state.reasons.join("; ")}\n`, { status: 503 });
          // degraded stays 200: the node serves its root, and taking every node out of
          // service because Redis is down would stop the whole fleet
          const degraded = state.degraded ?? [];
          return new Response(degraded.length > 0 ? `ready, degraded: ${degraded.join("; ")}\n` : "ready\n");
        }
        default:
          return new Response("not found: try /metrics, /healthz or /readyz\n", { status: 404 });
      }
    },
  });
}

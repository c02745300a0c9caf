/**
 * The operations endpoint on `metrics.listen`: /metrics (Prometheus text), /healthz (the
 * process answers) and /readyz (listening, root readable). Loopback by default.
 */
import type { Server } from "bun";
import type { ServerMetrics } from "./metrics.ts";

export interface Readiness {
  ready: boolean;
  /** what is not ready, when not */
  reasons: string[];
}

export function startOpsServer(
  host: string,
  port: number,
  metrics: ServerMetrics,
  readiness: () => Readiness,
): Server<undefined> {
  return Bun.serve({
    hostname: host,
    port,
    async fetch(request) {
      const { pathname } = new URL(request.url);
      switch (pathname) {
        case "/metrics":
          return new Response(await metrics.text(), { headers: { "content-type": metrics.registry.contentType } });
        case "/healthz":
          return new Response("ok\n");
        case "/readyz": {
          const state = readiness();
          return state.ready
            ? new Response("ready\n")
            : new Response(`not ready: ${state.reasons.join("; ")}\n`, { status: 503 });
        }
        default:
          return new Response("not found: try /metrics, /healthz or /readyz\n", { status: 404 });
      }
    },
  });
}

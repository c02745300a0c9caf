/**
 * `tftpd metrics`: read a running server's metrics endpoint and print the headline figures,
 * one greppable line each; `--raw` the Prometheus text, `--json` the figures as JSON,
 * `--watch` refreshes them in place. `--cluster` reads every node's figures from the fleet's
 * heartbeats in Redis instead (a node's metrics endpoint listens on loopback by default).
 */
import { defineCommand } from "citty";
import { metricsJson, metricsLines, readFleet } from "../cluster/fleet.ts";
import { History, withSparklines } from "../ops/sparkline.ts";
import { parsePrometheus, summarize, summaryLines, type Sample, type Summary } from "../ops/summary.ts";
import { fail, unknownOption } from "./args.ts";
import { connectFleet, fleetArgs } from "./fleet-link.ts";
import { opsBase, opsGet } from "./ops-endpoint.ts";

const args = {
  url: { type: "string", description: "Metrics endpoint of the server (default: metrics.listen of the config)", valueHint: "URL" },
  raw: { type: "boolean", description: "Print the Prometheus text as served" },
  json: { type: "boolean", description: "Print the figures as one JSON object" },
  watch: { type: "boolean", description: "Refresh the figures every interval until interrupted" },
  interval: { type: "string", description: "Seconds between the two scrapes a rate is taken over (default 1)", valueHint: "S" },
  cluster: { type: "boolean", description: "Every node of the fleet and their sum, from the heartbeats in Redis" },
  redis: { ...fleetArgs.redis, description: `With --cluster: ${fleetArgs.redis.description}` },
  config: { ...fleetArgs.config, description: `${fleetArgs.config.description}: its metrics.listen, or with --cluster its Redis` },
} as const;

async function scrape(url: string): Promise<{ text: string; samples: Sample[] }> {
  const response = await opsGet("metrics", url, 5000, "is the server running with metrics enabled?");
  const text = await response.text();
  return { text, samples: parsePrometheus(text) };
}

/** The figure each summary line charts under --watch, in summaryLines' order. */
const WATCHED: ((s: Summary) => number | null)[] = [
  (s) => s.throughput_bits_per_second,
  (s) => s.latency_first_response_p99_ms,
  (s) => s.connections_active,
  (s) => s.retransmits_per_transfer,
  (s) => s.cache_hit_ratio,
  (s) => s.cpu_percent,
  (s) => s.memory_rss_bytes,
];

/** Values kept per figure: one sparkline character each. */
const WATCH_HISTORY = 30;

/** `--cluster`: the fleet's figures once, or every `seconds` under --watch. */
async function clusterMetrics(a: { redis?: string; config?: string; json?: boolean; watch?: boolean }, seconds: number): Promise<void> {
  const link = await connectFleet("metrics", a);
  if (a.watch) {
    const stop = (): void => void link.close().finally(() => process.exit(0));
    process.once("SIGINT", stop);
    process.once("SIGTERM", stop);
  }
  for (;;) {
    let block: string;
    try {
      const fleet = await readFleet(link);
      block = a.json ? JSON.stringify(metricsJson(fleet)) : metricsLines(fleet).join("\n");
    } catch (error) {
      const message = `reading the fleet from Redis at ${link.settings.nodes.join(",")}: ${(error as Error).message}`;
      if (!a.watch) {
        await link.close();
        fail("metrics", message);
      }
      block = `redis unavailable: ${message}`;
    }
    if (!a.watch) {
      console.log(block);
      await link.close();
      return;
    }
    if (process.stdout.isTTY && !a.json) process.stdout.write(`\x1b[H\x1b[2J${block}\n`);
    else process.stdout.write(`${block}\n${a.json ? "" : "\n"}`);
    await Bun.sleep(seconds * 1000);
  }
}

export default defineCommand({
  meta: { name: "metrics", description: "Show a running server's throughput, latency, connections, cache and CPU" },
  args,
  async run({ args: a, rawArgs }) {
    const unknown = unknownOption(args, rawArgs);
    if (unknown) fail("metrics", `unknown option ${unknown} (see tftpd metrics --help)`, 2);
    const seconds = a.interval === undefined ? 1 : Number(a.interval);
    if (!(seconds > 0 && seconds <= 3600)) fail("metrics", `--interval must be a number of seconds above 0, got ${a.interval}`, 2);
    if (a.cluster) {
      if (a.raw || a.url !== undefined) fail("metrics", "--cluster reads the fleet from Redis: --raw and --url do not apply", 2);
      await clusterMetrics(a, seconds);
      return;
    }
    if (a.redis !== undefined) fail("metrics", "--redis goes with --cluster", 2);
    if (a.url !== undefined && a.config !== undefined) fail("metrics", "--url and --config both name the endpoint: give one", 2);
    const base = opsBase("metrics", a.url, a.config);
    const url = base.endsWith("/metrics") ? base : `${base}/metrics`;

    if (a.raw) {
      process.stdout.write((await scrape(url)).text);
      return;
    }
    const history = new History(WATCH_HISTORY);
    if (a.watch) {
      // watching ends only by Ctrl-C (or a kill): that is the normal way out
      const stop = (): never => process.exit(0);
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
    }
    let earlier = (await scrape(url)).samples;
    for (;;) {
      await Bun.sleep(seconds * 1000);
      const now = (await scrape(url)).samples;
      const summary = summarize(now, earlier, seconds);
      earlier = now;
      if (a.json) {
        console.log(JSON.stringify(summary));
      } else {
        const lines = summaryLines(summary, seconds);
        if (!a.watch) {
          console.log(lines.join("\n"));
          return;
        }
        // each line followed by the recent history of its figure
        const sparks = WATCHED.map((figure, i) => {
          history.push(String(i), figure(summary));
          return history.sparkline(String(i));
        });
        const block = withSparklines(lines, sparks).join("\n");
        // on a terminal: clear and redraw in place; otherwise successive blocks, a blank line apart
        if (process.stdout.isTTY) process.stdout.write(`\x1b[H\x1b[2J${block}\n`);
        else process.stdout.write(`${block}\n\n`);
      }
      if (!a.watch) return;
    }
  },
});

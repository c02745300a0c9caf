/**
 * `tftpd metrics`: read a running server's metrics endpoint and print the headline figures,
 * one greppable line each; `--raw` the Prometheus text, `--json` the figures as JSON,
 * `--watch` refreshes them in place.
 */
import { defineCommand } from "citty";
import { parsePrometheus, summarize, summaryLines, type Sample } from "../ops/summary.ts";
import { fail, unknownOption } from "./args.ts";

const args = {
  url: { type: "string", description: "Metrics endpoint of the server (default http://127.0.0.1:9469)", valueHint: "URL" },
  raw: { type: "boolean", description: "Print the Prometheus text as served" },
  json: { type: "boolean", description: "Print the figures as one JSON object" },
  watch: { type: "boolean", description: "Refresh the figures every interval until interrupted" },
  interval: { type: "string", description: "Seconds between the two scrapes a rate is taken over (default 1)", valueHint: "S" },
} as const;

async function scrape(url: string): Promise<{ text: string; samples: Sample[] }> {
  let response: Response;
  try {
    response = await fetch(url, { signal: AbortSignal.timeout(5000) });
  } catch (error) {
    fail("metrics", `${url}: ${(error as Error).message} (is the server running with metrics enabled?)`);
  }
  if (!response.ok) fail("metrics", `${url}: HTTP ${response.status}`);
  const text = await response.text();
  return { text, samples: parsePrometheus(text) };
}

export default defineCommand({
  meta: { name: "metrics", description: "Show a running server's throughput, latency, connections, cache and CPU" },
  args,
  async run({ args: a, rawArgs }) {
    const unknown = unknownOption(args, rawArgs);
    if (unknown) fail("metrics", `unknown option ${unknown} (see tftpd metrics --help)`, 2);
    const base = (a.url ?? "http://127.0.0.1:9469").replace(/\/+$/, "");
    const url = base.endsWith("/metrics") ? base : `${base}/metrics`;
    const seconds = a.interval === undefined ? 1 : Number(a.interval);
    if (!(seconds > 0 && seconds <= 3600)) fail("metrics", `--interval must be a number of seconds above 0, got ${a.interval}`, 2);

    if (a.raw) {
      process.stdout.write((await scrape(url)).text);
      return;
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
        // --watch on a terminal: redraw in place
        if (a.watch && process.stdout.isTTY) process.stdout.write("\x1b[H\x1b[2J");
        console.log(lines.join("\n"));
      }
      if (!a.watch) return;
    }
  },
});

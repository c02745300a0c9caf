/**
 * `tftpd profile`: ask a running server (its loopback control endpoint) for a CPU sampling
 * profile of N seconds and print the hot spots; `--out` keeps the .cpuprofile (Chrome
 * DevTools, speedscope), `--heap` writes a heap snapshot instead.
 */
import { defineCommand } from "citty";
import type { CpuProfileReport } from "../ops/profiler.ts";
import { fail, unknownOption } from "./args.ts";
import { opsBase, opsGet } from "./ops-endpoint.ts";

const args = {
  seconds: { type: "string", description: "How long to sample (default 10)", valueHint: "N" },
  url: { type: "string", description: "Metrics/control endpoint of the server (default: metrics.listen of the config)", valueHint: "URL" },
  config: { type: "string", description: "Config file the server runs with (default /etc/tftpd/config.json when it exists): its metrics.listen", valueHint: "FILE" },
  out: { type: "string", description: "Write the profile as a .cpuprofile file", valueHint: "FILE" },
  heap: { type: "string", description: "Write a heap snapshot (.heapsnapshot) instead of profiling", valueHint: "FILE" },
  top: { type: "string", description: "How many functions to list (default 20)", valueHint: "N" },
} as const;

const get = (url: string, timeoutMs: number): Promise<Response> =>
  opsGet("profile", url, timeoutMs, "is the server running with metrics and metrics.control on?");

export default defineCommand({
  meta: { name: "profile", description: "Record a CPU profile (or a heap snapshot) of a running server" },
  args,
  async run({ args: a, rawArgs }) {
    const unknown = unknownOption(args, rawArgs);
    if (unknown) fail("profile", `unknown option ${unknown} (see tftpd profile --help)`, 2);
    if (a.url !== undefined && a.config !== undefined) fail("profile", "--url and --config both name the endpoint: give one", 2);
    const base = opsBase("profile", a.url, a.config);

    if (a.heap) {
      const response = await get(`${base}/debug/heap`, 120_000);
      const bytes = await Bun.write(a.heap, response);
      console.log(`heap snapshot: ${a.heap} (${(bytes / 1048576).toFixed(1)} MiB; open it in Chrome DevTools > Memory)`);
      return;
    }

    const seconds = a.seconds === undefined ? 10 : Number(a.seconds);
    if (!(seconds > 0 && seconds <= 300)) fail("profile", `--seconds must be above 0 and at most 300, got ${a.seconds}`, 2);
    const limit = a.top === undefined ? 20 : Number(a.top);
    if (!Number.isInteger(limit) || limit < 1) fail("profile", `--top must be a positive integer, got ${a.top}`, 2);

    const response = await get(`${base}/debug/profile?seconds=${seconds}`, (seconds + 60) * 1000);
    const report = (await response.json()) as CpuProfileReport;
    console.log(`cpu profile: ${report.samples} samples of the main thread over ${report.seconds} s (every ${report.intervalMs} ms)`);
    console.log("self %  samples  function (location)");
    for (const hot of report.top.slice(0, limit)) {
      const where = hot.url === "[native code]" ? "native" : `${hot.url}:${hot.line}`;
      console.log(`${hot.selfPercent.toFixed(1).padStart(6)}  ${String(hot.selfSamples).padStart(7)}  ${hot.name} (${where})`);
    }
    if (a.out) {
      await Bun.write(a.out, JSON.stringify(report.cpuprofile));
      console.log(`profile written to ${a.out} (open in Chrome DevTools > Performance, or speedscope)`);
    }
  },
});

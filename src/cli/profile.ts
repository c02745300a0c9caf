/**
 * `tftpd profile`: ask a running server (its loopback control endpoint) for a CPU sampling
 * profile of N seconds, of the main thread and, over the same seconds, of every transfer worker
 * (each samples its own thread), and print each thread's hot spots. `--out` keeps the profile:
 * a .cpuprofile per thread (Chrome DevTools, speedscope) or, with `--format folded`, the
 * folded stacks of every thread in one file (stdout without --out). `--heap` writes a heap
 * snapshot instead.
 */
import { defineCommand } from "citty";
import { parse, format as formatPath } from "node:path";
import { foldedStacks, withThreads, type CpuProfileReport, type ThreadReport } from "../ops/profiler.ts";
import { fail, unknownOption } from "./args.ts";
import { opsBase, opsGet } from "./ops-endpoint.ts";

const FORMATS = ["cpuprofile", "folded"] as const;
type ProfileFormat = (typeof FORMATS)[number];

const args = {
  seconds: {
    type: "string",
    description:
      "How long to sample (default 10): the main thread and, over the same seconds, each transfer worker, which samples its own thread (its own JS VM); a worker with no answer 5 s after the end, or gone, is listed with no profile",
    valueHint: "N",
  },
  url: { type: "string", description: "Metrics/control endpoint of the server (default: metrics.listen of the config)", valueHint: "URL" },
  config: { type: "string", description: "Config file the server runs with (default /etc/tftpd/config.json when it exists): its metrics.listen", valueHint: "FILE" },
  out: {
    type: "string",
    description: "Write the profile: with cpuprofile, FILE for the main thread and FILE with .worker-N before its extension for transfer worker N; with folded, every thread in FILE",
    valueHint: "FILE",
  },
  format: {
    type: "string",
    description:
      'cpuprofile (default): Chrome DevTools / speedscope, one file per thread; folded: one line per distinct stack, "main;outer;...;inner COUNT" with the thread ("main", "worker-0", ...) as the first frame (flamegraph.pl, speedscope), to --out or else stdout (the report then goes to stderr)',
    valueHint: "cpuprofile|folded",
  },
  heap: { type: "string", description: "Write a heap snapshot (.heapsnapshot) of the main thread instead of profiling", valueHint: "FILE" },
  top: { type: "string", description: "How many functions to list per thread (default 20)", valueHint: "N" },
} as const;

const get = (url: string, timeoutMs: number): Promise<Response> =>
  opsGet("profile", url, timeoutMs, "is the server running with metrics and metrics.control on?");

/** FILE for the main thread; FILE with `.worker-N` before its extension for worker N (p.cpuprofile → p.worker-0.cpuprofile). */
export function threadFile(file: string, worker: number | null): string {
  if (worker === null) return file;
  const { dir, name, ext } = parse(file);
  return formatPath({ dir, name: `${name}.worker-${worker}`, ext });
}

const threadLabel = (t: ThreadReport): string => (t.tid === null ? t.thread : `${t.thread} (tid ${t.tid})`);

function printReport(report: CpuProfileReport, limit: number, say: (line: string) => void): void {
  const workers = report.threads.length - 1;
  say(`cpu profile over ${report.seconds} s (every ${report.intervalMs} ms): the main thread and ${workers} transfer worker${workers === 1 ? "" : "s"}`);
  for (const thread of report.threads) {
    if (!thread.profile) {
      say(`${threadLabel(thread)}: no profile: ${thread.missing ?? "no reason given"}`);
      continue;
    }
    // the sampler records a thread only while it runs JavaScript: none is a thread that idled
    say(`${threadLabel(thread)}: ${thread.profile.samples} samples${thread.profile.samples === 0 ? " (it ran no JavaScript: idle)" : ""}`);
    if (thread.profile.top.length === 0) continue;
    say("self %  samples  function (location)");
    for (const hot of thread.profile.top.slice(0, limit)) {
      const where = hot.url === "[native code]" ? "native" : `${hot.url}:${hot.line}`;
      say(`${hot.selfPercent.toFixed(1).padStart(6)}  ${String(hot.selfSamples).padStart(7)}  ${hot.name} (${where})`);
    }
  }
}

export default defineCommand({
  meta: { name: "profile", description: "Record a CPU profile of a running server's main thread and transfer workers (or a heap snapshot)" },
  args,
  async run({ args: a, rawArgs }) {
    const unknown = unknownOption(args, rawArgs);
    if (unknown) fail("profile", `unknown option ${unknown} (see tftpd profile --help)`, 2);
    if (a.url !== undefined && a.config !== undefined) fail("profile", "--url and --config both name the endpoint: give one", 2);
    const format = (a.format ?? "cpuprofile") as ProfileFormat;
    if (!FORMATS.includes(format)) fail("profile", `--format must be ${FORMATS.join(" or ")}, got ${a.format}`, 2);
    if (a.heap && a.format !== undefined) fail("profile", "--format is for CPU profiles: --heap writes a heap snapshot", 2);
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

    // (the server answers within seconds + WORKER_PROFILE_MARGIN_MS, even with a worker held up)
    const response = await get(`${base}/debug/profile?seconds=${seconds}`, (seconds + 60) * 1000);
    const report = withThreads((await response.json()) as CpuProfileReport);
    // folded stacks on stdout stay alone there, to pipe into flamegraph.pl
    const foldedToStdout = format === "folded" && !a.out;
    printReport(report, limit, foldedToStdout ? console.error : console.log);

    if (format === "folded") {
      const folded = foldedStacks(report.threads);
      if (a.out) {
        await Bun.write(a.out, folded);
        console.log(`folded stacks of every thread written to ${a.out} (flamegraph.pl, speedscope)`);
      } else {
        process.stdout.write(folded);
      }
      return;
    }
    if (a.out) {
      for (const thread of report.threads) {
        if (!thread.profile) continue;
        const file = threadFile(a.out, thread.worker);
        await Bun.write(file, JSON.stringify(thread.profile.cpuprofile));
        console.log(`${thread.thread} profile written to ${file}`);
      }
      console.log("(open them in Chrome DevTools > Performance, or speedscope)");
    }
  },
});

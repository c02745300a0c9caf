/**
 * `tftpd bench [options] HOST[:PORT]`: the built-in load generator. N concurrent RRQ sessions
 * on the same client engine as `tftpd get`, closed loop or at a fixed arrival rate; prints
 * goodput, transfers/s, latency percentiles, failures by reason and its own CPU time.
 * Exit 0 when every transfer completed, 1 when any failed, 2 for bad arguments.
 *
 * `tftpd bench --amplification HOST[:PORT] FILE`: sends one request for FILE (plain, and with
 * the options that make the largest answer) from sockets that never answer, and two more that
 * also send the first ACK a forger would (to the transfer port learnt from a request of its
 * own), and reports what came back in --duration seconds (15 by default) as a factor of what
 * each sent.
 */
import { lookup } from "node:dns/promises";
import { writeSync } from "node:fs";
import { isIP } from "node:net";
import { type ArgsDef, defineCommand } from "citty";
import { formatHostPort, parseHostPort } from "../net/address.ts";
import { describeFsError } from "../client/sink.ts";
import { fdLimitProblem, FD_MARGIN, openFileLimit, parseBenchFlags, UsageError } from "../bench/options.ts";
import { formatAmplification, measureAmplification } from "../bench/amplification.ts";
import { Bench, sha256OfFile } from "../bench/run.ts";
import { keepHelperThreadsNice, LOWEST_NICE } from "../net/helper-threads.ts";
import { type BenchResult, formatHuman } from "../bench/tally.ts";
import { repeatedFlag, unknownOption } from "./args.ts";
import { transferArgs } from "./get.ts";

const PROGRESS_MS = 250;
/** How long --amplification listens: longer than any server's whole retransmission schedule. */
const AMPLIFICATION_SECONDS = 15;

const args = {
  server: { type: "positional", description: "HOST[:PORT] of the server under test; port 69 by default", required: false },
  concurrency: {
    type: "string",
    description: `Sessions in flight (default 10). Each holds one UDP socket: the open-file limit (ulimit -n / LimitNOFILE) must exceed N + ${FD_MARGIN}`,
    valueHint: "N",
  },
  total: { type: "string", description: "Transfers in all (default: concurrency × 10 unless --duration)", valueHint: "N" },
  duration: { type: "string", description: "Stop starting transfers after S seconds (with --total: whichever comes first)", valueHint: "S" },
  rate: { type: "string", description: "Open loop: start N transfers per second, --concurrency caps those in flight (default: closed loop)", valueHint: "N" },
  burst: { type: "boolean", description: "Closed loop: open all first-wave sockets, then send their requests at one instant" },
  file: { type: "string", description: "Remote file to fetch (repeatable; sessions take them round-robin)", valueHint: "NAME" },
  blksize: transferArgs.blksize,
  windowsize: transferArgs.windowsize,
  timeout: transferArgs.timeout,
  tsize: { type: "boolean", description: "Ask tsize 0 in every request, as PXE ROMs do" },
  retries: transferArgs.retries,
  backoff: {
    type: "boolean",
    default: true,
    description: "Double the wait after each retransmission (--no-backoff resends every timeout, as PXE ROMs with a fixed schedule do)",
  },
  verify: { type: "string", description: "Local copy to check every download's sha256 against (one, or one per --file)", valueHint: "LOCALFILE" },
  json: { type: "boolean", description: "Print one JSON object on stdout and nothing else" },
  quiet: { type: "boolean", description: "No report and no progress: only the exit status (and one line on stderr if any failed)" },
  amplification: {
    type: "boolean",
    description: `Instead of a load: HOST FILE (or --file): one request for FILE, plain and with blksize 65464, windowsize 16, tsize, from sockets that never answer, and two that also send a forged first ACK to the transfer port learnt from a request of their own; counts the datagrams and bytes that come back in --duration seconds (default ${AMPLIFICATION_SECONDS}) and prints bytes received / bytes sent`,
  },
} satisfies ArgsDef;

function usage(message: string): never {
  process.stderr.write(`tftpd bench: ${message}\n`);
  process.exit(2);
}

function writeAll(fd: number, text: string): void {
  const bytes = new TextEncoder().encode(text);
  let at = 0;
  while (at < bytes.length) {
    try {
      at += writeSync(fd, bytes, at, bytes.length - at);
    } catch (e) {
      if ((e as { code?: string }).code !== "EAGAIN") throw e;
      Bun.sleepSync(1);
    }
  }
}

async function resolveTarget(spec: string): Promise<{ host: string; port: number; target: string }> {
  let parsed;
  try {
    parsed = parseHostPort(spec);
  } catch (e) {
    usage((e as Error).message);
  }
  const target = formatHostPort(parsed.host, parsed.port);
  if (isIP(parsed.host) !== 0) return { host: parsed.host, port: parsed.port, target };
  try {
    const { address } = await lookup(parsed.host);
    return { host: address, port: parsed.port, target };
  } catch (e) {
    usage(`${target}: cannot resolve ${parsed.host}: ${(e as { code?: string }).code ?? (e as Error).message}`);
  }
}

/** --amplification: one request per probe, never answered; the report, and exit 0. */
async function amplification(serverSpec: string, file: string | undefined, duration: string | undefined, json: boolean): Promise<never> {
  if (file === undefined || file === "" || file.includes("\0")) usage("--amplification: name the FILE to ask for (HOST FILE, or --file)");
  let seconds = AMPLIFICATION_SECONDS;
  if (duration !== undefined) {
    seconds = Number(duration);
    if (!/^([0-9]+\.?[0-9]*|\.[0-9]+)$/.test(duration) || !(seconds > 0) || seconds > 3600) usage(`--duration must be more than 0 and at most 3600, got ${duration}`);
  }
  const server = await resolveTarget(serverSpec);
  const results = await measureAmplification(server.host, server.port, file, seconds);
  if (json) writeAll(1, `${JSON.stringify({ target: server.target, file, seconds, probes: results })}\n`);
  else writeAll(1, formatAmplification(server.target, file, seconds, results));
  process.exit(0);
}

function failureSummary(r: BenchResult): string {
  const reasons = Object.entries(r.failures).map(([reason, n]) => `${reason} ${n}`).join(", ");
  return `${r.failed} of ${r.requested} transfers failed (${reasons})`;
}

export default defineCommand({
  meta: { name: "bench", description: "Load-test a TFTP server: concurrent RRQ sessions, goodput, latency percentiles" },
  args,
  async run({ args: a, rawArgs }) {
    const bad = unknownOption(args, rawArgs);
    if (bad !== null) usage(`unknown option ${bad}`);
    if (a.server === undefined || a.server === "") usage("missing HOST[:PORT] of the server to load");
    if (a.amplification === true) await amplification(a.server, a._[1] ?? a.file, a.duration, a.json === true);

    let settings;
    try {
      settings = parseBenchFlags({ ...a, files: repeatedFlag(rawArgs, "file"), verify: repeatedFlag(rawArgs, "verify") });
    } catch (e) {
      if (e instanceof UsageError) usage(e.message);
      throw e;
    }
    const fdProblem = fdLimitProblem(settings.concurrency, openFileLimit());
    if (fdProblem !== null) usage(fdProblem);
    const server = await resolveTarget(a.server);

    let verify: Uint8Array[] | null = null;
    if (settings.verifyFiles.length > 0) {
      verify = [];
      for (const path of settings.verifyFiles) {
        try {
          verify.push(await sha256OfFile(path));
        } catch (e) {
          usage(`--verify: cannot read ${path}: ${describeFsError(e)}`);
        }
      }
    }

    const { verifyFiles: _, ...plan } = settings;
    const bench = new Bench({ ...plan, ...server, verify });
    const json = a.json === true;
    const quiet = a.quiet === true;

    const report = (result: BenchResult): void => {
      if (json) writeAll(1, `${JSON.stringify(result)}\n`);
      else if (!quiet) writeAll(1, formatHuman(result, bench.tally.examples));
      else if (result.failed > 0) writeAll(2, `tftpd bench: ${failureSummary(result)}\n`);
    };

    let progress: ReturnType<typeof setInterval> | null = null;
    const started = performance.now();
    const clearProgress = (): void => {
      if (progress === null) return;
      clearInterval(progress);
      progress = null;
      process.stderr.write("\r\x1b[2K");
    };
    if (process.stderr.isTTY && !json && !quiet) {
      progress = setInterval(() => {
        const s = bench.scheduler;
        const t = bench.tally;
        const secs = (performance.now() - started) / 1000;
        const goal = settings.total === null ? "" : `/${settings.total}`;
        process.stderr.write(
          `\r\x1b[2Kbench: ${s.started}${goal} started, ${s.inFlight} in flight, ${t.completed} completed, ${t.failed} failed, ${secs.toFixed(1)} s`,
        );
      }, PROGRESS_MS);
      progress.unref();
    }

    // Ctrl-C / SIGTERM: abort the transfers in flight (each sends its server an ERROR), report,
    // exit 130. A second one kills at once.
    let interrupted = false;
    const onSignal = (): void => {
      interrupted = true;
      bench.abort();
    };
    process.once("SIGINT", onSignal);
    process.once("SIGTERM", onSignal);

    // The runtime's compiler threads yield to the thread that reads the replies, as the server's
    // do (performance.cpu.runtime_threads_nice): a compile running here must not count in the
    // server's first response. Where that cannot be set, the bench runs as it would without.
    const helperThreads = keepHelperThreadsNice(LOWEST_NICE, () => {});
    const result = await bench.run();
    helperThreads.stop();
    clearProgress();
    report(result);
    if (interrupted) {
      process.stderr.write(`tftpd bench: interrupted after ${result.requested} transfers started\n`);
      process.exit(130);
    }
    process.exit(result.failed > 0 || result.completed < result.requested ? 1 : 0);
  },
});

/**
 * The long run of the version guarantee: a transfer serves one version of a file, whole, or
 * stops with an ERROR. Against a real server (`tftpd serve --no-tune` on 127.0.0.1, from
 * source or the binary given), for each file size: rounds of concurrent downloads held at
 * points spread over the file while it is rewritten in place, truncated, renamed over or
 * deleted (test/helpers/integrity.ts has the rounds, the client that can be held and the
 * verdicts), cold and warm cache, changed early or once all are held. Then a table per size
 * and kind of change: downloads that got the old version whole, the new one whole, an ERROR,
 * and CORRUPT ones (bytes of no single version); STALE counts requests made after the change
 * that got the old version.
 *
 *   bun build/integrity-run.ts [--binary dist/tftpd] [--sizes 40,256] [--rounds 50]
 *     [--concurrent 20] [--after 2] [--blksize 8192] [--windowsize 16] [--workers N]
 *     [--max-minutes 30] [--verbose]
 *
 * Exit status 1 when any download was CORRUPT or STALE, or the server logged `ok` for a
 * transfer whose client holds no whole version; 2 when the run could not be made. Loopback
 * only; no round starts after --max-minutes (the table then says how many ran).
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { removeDir, tempDir } from "../test/helpers/files.ts";
import {
  addTo,
  emptyTally,
  formatTable,
  MUTATIONS,
  roundPlans,
  runRound,
  versionPool,
  violation,
  type Tally,
} from "../test/helpers/integrity.ts";
import { spawnServer, type ChildServer } from "../test/helpers/server.ts";

const { values } = parseArgs({
  options: {
    binary: { type: "string" },
    sizes: { type: "string", default: "40,256" },
    rounds: { type: "string", default: "50" },
    concurrent: { type: "string", default: "20" },
    after: { type: "string", default: "2" },
    blksize: { type: "string", default: "8192" },
    windowsize: { type: "string", default: "16" },
    workers: { type: "string" },
    "max-minutes": { type: "string", default: "30" },
    verbose: { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});
if (values.help) {
  console.log(
    "usage: bun build/integrity-run.ts [--binary PATH] [--sizes MiB,MiB] [--rounds N] [--concurrent N] [--after N]\n" +
      "         [--blksize N] [--windowsize N] [--workers N] [--max-minutes M] [--verbose]",
  );
  process.exit(0);
}

function positive(name: string, text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) {
    console.error(`--${name} must be a positive integer, got "${text}"`);
    process.exit(2);
  }
  return n;
}
const sizesMiB = values.sizes.split(",").map((s) => positive("sizes", s.trim()));
const rounds = positive("rounds", values.rounds);
const concurrent = positive("concurrent", values.concurrent);
const after = Number(values.after);
const blksize = positive("blksize", values.blksize);
const windowsize = positive("windowsize", values.windowsize);
const deadline = performance.now() + Number(values["max-minutes"]) * 60_000;

const MiB = 1 << 20;
const work = tempDir("tftpd-integrity-run-");
const root = join(work, "root");
const configFile = join(work, "none.json");
writeFileSync(configFile, "{}"); // no config file of this machine's applies
mkdirSync(root);

let server: ChildServer | null = null;
let exit = 0;
const rows: [string, Tally][] = [];
const problems: string[] = [];
const startedAt = performance.now();
let roundsRun = 0;
try {
  server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--no-tune"], {
    binary: values.binary,
    env: {
      TFTPD_CONFIG: configFile,
      TFTPD_TFTP_BLKSIZE_MAX: String(Math.max(1468, blksize)),
      TFTPD_METRICS_ENABLED: "false",
      ...(values.workers ? { TFTPD_PERFORMANCE_CPU_WORKER_THREADS: values.workers } : {}),
    },
  });
  const logs = server.logs;
  // each client from an address of its own in 127.0.0.0/8, as PXE clients are: the server's
  // per-client and per-address limits stay at their defaults
  const bind = (i: number): string => `127.1.${i >> 8}.${(i & 255) + 1}`;
  /** log lines before this one belong to earlier rounds (whose client ports may recur) */
  let roundLogsFrom = 0;
  const serverResult = async (client: string, began: boolean): Promise<string | null> => {
    if (!began) return null; // refused at the request: there is no transfer to log
    const until = performance.now() + 5000;
    for (;;) {
      const line = logs.slice(roundLogsFrom).find((l) => l.msg === "transfer" && l.client === client);
      if (line || performance.now() >= until) return line ? String(line.result) : null;
      await Bun.sleep(20);
    }
  };
  console.log(
    `integrity run: ${values.binary ?? "bun src/main.ts"} serve, sizes ${sizesMiB.join(", ")} MiB, ${rounds} rounds each, ` +
      `${concurrent} held + ${after} later downloads per round, blksize ${blksize}, windowsize ${windowsize}`,
  );
  for (const sizeMiB of sizesMiB) {
    const size = sizeMiB * MiB;
    const pool = versionPool(size, 3);
    const bySize = new Map(MUTATIONS.map((k) => [k, emptyTally()]));
    const file = `boot-${sizeMiB}.img`;
    for (const [r, plan] of roundPlans(rounds, concurrent, after).entries()) {
      if (performance.now() > deadline) break;
      const began = performance.now();
      roundLogsFrom = logs.length;
      const outcomes = await runRound(
        // a held download waits for the change; 256 MiB at ~1 Gbit/s takes seconds
        { host: "127.0.0.1", port: server.port, root, file, blksize, windowsize, serverResult, bind, timeoutMs: 60_000 + size / 100_000 },
        plan,
        pool[r % pool.length]!,
        pool[(r + 1) % pool.length]!,
      );
      roundsRun++;
      const tally = addTo(emptyTally(), outcomes);
      addTo(bySize.get(plan.kind)!, outcomes);
      const label = `${sizeMiB} MiB round ${r + 1} ${plan.kind} ${plan.cache} ${plan.trigger}`;
      for (const o of outcomes) {
        const broken = violation(o);
        if (broken) problems.push(`${label}: ${o.asked} download held at ${o.pauseAt}: ${broken}`);
      }
      const summary = (Object.keys(tally) as (keyof Tally)[]).filter((k) => tally[k] > 0).map((k) => `${k} ${tally[k]}`).join(", ");
      console.error(`${label}: ${summary} (${((performance.now() - began) / 1000).toFixed(1)} s)`);
      if (values.verbose) for (const o of outcomes) if (o.verdict !== "old" && o.verdict !== "new") console.error(`  ${o.verdict} (${o.asked}, held at ${o.pauseAt}${o.wasPaused ? "" : " never held"}, ${o.bytes} bytes in, server: ${o.serverResult}): ${o.error ?? o.provenance}`);
    }
    for (const [kind, tally] of bySize) rows.push([`${sizeMiB} MiB ${kind}`, tally]);
  }
  const total = emptyTally();
  for (const [, t] of rows) for (const k of Object.keys(t) as (keyof Tally)[]) total[k] += t[k];
  rows.push(["total", total]);
  console.log(`\n${formatTable(rows, "size / change")}`);
  console.log(`\n${roundsRun} rounds in ${((performance.now() - startedAt) / 1000).toFixed(0)} s${performance.now() > deadline ? " (stopped at --max-minutes)" : ""}`);
  if (problems.length > 0) {
    exit = 1;
    console.log(`\n${problems.length} broken promises:`);
    for (const p of problems.slice(0, 40)) console.log(`  ${p}`);
    if (problems.length > 40) console.log(`  ... and ${problems.length - 40} more`);
  } else {
    console.log("every download got one version whole, or an ERROR");
  }
} catch (error) {
  console.error(`integrity run failed: ${(error as Error).stack ?? error}`);
  if (server) console.error(`server stderr: ${server.stderr()}`);
  exit = 2;
} finally {
  await server?.stop();
  removeDir(work);
}
process.exit(exit);

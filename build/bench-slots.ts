#!/usr/bin/env bun
/**
 * What transfer slots (connection_pool.*, performance.memory.connection_pool_size) buy: a storm
 * of windowed downloads (windowsize 4 and tsize, as UEFI firmware asks; each transfer on a port
 * of its own: tftp.transfer_sockets "per-transfer") against the real server on 127.0.0.1, with
 * the pool (the defaults) and without it (connection_pool.max_connections 0), and against --before BINARY when given, the runs
 * alternating within each round. Per run: the collections JavaScriptCore logged during the
 * storm (BUN_JSC_logGC, every thread of the server) and their time, the server's CPU seconds
 * (utime + stime from /proc), and the storm's wall time; with the pool, the slots allocated
 * during the storm (tftpd_transfer_slot_allocations_total).
 *
 *   bun build/bench-slots.ts [--binary PATH] [--before PATH] [--rounds N] [--transfers N]
 *                            [--concurrency N] [--file-bytes S]
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { parsePrometheus } from "../src/ops/summary.ts";
import type { BenchResult } from "../src/bench/tally.ts";
import { treeCpu } from "./proc.ts";
import { BUN, MAIN, run } from "../test/helpers/run.ts";
import { spawnServer, type ChildServer } from "../test/helpers/server.ts";

const { values: opts } = parseArgs({
  options: {
    binary: { type: "string" },
    before: { type: "string" },
    rounds: { type: "string", default: "3" },
    transfers: { type: "string", default: "4000" },
    concurrency: { type: "string", default: "100" },
    "file-bytes": { type: "string", default: "65536" },
  },
});
const ROUNDS = Number(opts.rounds);
const TRANSFERS = Number(opts.transfers);
const CONCURRENCY = Number(opts.concurrency);

interface Variant {
  label: string;
  binary?: string;
  env: Record<string, string>;
}

const variants: Variant[] = [
  { label: "pool (defaults)", binary: opts.binary, env: {} },
  { label: "no pool (max_connections 0)", binary: opts.binary, env: { TFTPD_CONNECTION_POOL_MAX_CONNECTIONS: "0" } },
];
if (opts.before) variants.push({ label: "before", binary: opts.before, env: {} });

interface Figures {
  collections: number;
  gcMs: number;
  cpuS: number;
  wallS: number;
  slotsAllocated: number | null;
}

const root = mkdtempSync(join(tmpdir(), "tftpd-bench-slots-"));
writeFileSync(join(root, "boot.efi"), new Uint8Array(Number(opts["file-bytes"])).map((_, i) => (i * 31) & 0xff));

async function metric(server: ChildServer, name: string): Promise<number | null> {
  const text = await (await fetch(`${server.metricsUrl}/metrics`)).text();
  return parsePrometheus(text).find((s) => s.name === name)?.value ?? null;
}

async function once(variant: Variant): Promise<Figures> {
  const server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0"], {
    binary: variant.binary,
    env: {
      BUN_JSC_logGC: "1",
      // slots are what a transfer's own port works through: every transfer on one here
      TFTPD_TFTP_TRANSFER_SOCKETS: "per-transfer",
      TFTPD_LIMITS_REQUESTS_PER_SECOND_PER_IP: "0",
      TFTPD_LIMITS_MAX_CONNECTIONS_PER_IP: "100000",
      TFTPD_LIMITS_MAX_CONNECTIONS_PER_CLIENT: "100000",
      ...variant.env,
    },
  });
  try {
    await Bun.sleep(500);
    const slotsBefore = await metric(server, "tftpd_transfer_slot_allocations_total");
    const logAt = server.stderr().length;
    const cpuBefore = treeCpu(server.proc.pid).total;
    // one client for every variant: the --binary one (or the source)
    const client = opts.binary;
    const cmd = client ? [client, "bench"] : [BUN, MAIN, "bench"];
    const args = ["--concurrency", String(CONCURRENCY), "--total", String(TRANSFERS), "--windowsize", "4", "--blksize", "1468", "--tsize", "--file", "boot.efi", "--json"];
    const bench = await run([...cmd, ...args, `127.0.0.1:${server.port}`], { timeoutMs: 300_000 });
    const cpuS = treeCpu(server.proc.pid).total - cpuBefore;
    const log = server.stderr().slice(logAt);
    const result = JSON.parse(bench.stdout) as BenchResult;
    if (result.completed !== TRANSFERS) throw new Error(`${variant.label}: ${result.completed} of ${TRANSFERS} transfers completed`);
    // the workers report once a second
    await Bun.sleep(1200);
    const slotsAfter = await metric(server, "tftpd_transfer_slot_allocations_total");
    return {
      collections: log.match(/GC<0x[0-9a-f]+>: START/g)?.length ?? 0,
      gcMs: [...log.matchAll(/cycle ([0-9.]+)ms END/g)].reduce((sum, m) => sum + Number(m[1]), 0),
      cpuS,
      wallS: result.wall_s,
      slotsAllocated: slotsBefore === null || slotsAfter === null ? null : slotsAfter - slotsBefore,
    };
  } finally {
    await server.stop();
  }
}

const results = new Map<string, Figures[]>(variants.map((v) => [v.label, []]));
try {
  for (let round = 1; round <= ROUNDS; round++) {
    for (const variant of variants) {
      const figures = await once(variant);
      results.get(variant.label)!.push(figures);
      console.log(
        `round ${round} ${variant.label}: ${figures.collections} collections, ${figures.gcMs.toFixed(1)} ms in GC, server CPU ${figures.cpuS.toFixed(2)} s, wall ${figures.wallS.toFixed(2)} s` +
          (figures.slotsAllocated === null ? "" : `, slots allocated ${figures.slotsAllocated}`),
      );
    }
  }
} finally {
  rmSync(root, { recursive: true, force: true });
}

const span = (values: number[], digits: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return `${sorted[0]!.toFixed(digits)}–${sorted[sorted.length - 1]!.toFixed(digits)}`;
};
console.log(`\n${TRANSFERS} downloads of ${opts["file-bytes"]} bytes, windowsize 4, concurrency ${CONCURRENCY}, ${ROUNDS} rounds (lowest–highest):`);
for (const [label, runs] of results) {
  console.log(
    `  ${label}: collections ${span(runs.map((r) => r.collections), 0)}, GC ms ${span(runs.map((r) => r.gcMs), 0)}, server CPU s ${span(runs.map((r) => r.cpuS), 2)}, wall s ${span(runs.map((r) => r.wallS), 2)}`,
  );
}

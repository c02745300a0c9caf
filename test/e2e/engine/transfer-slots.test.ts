/**
 * Transfer slots (connection_pool.*, performance.memory.connection_pool_size) in the real
 * server: a storm of windowed downloads (windowsize 4, as UEFI firmware asks; each on a port of
 * its own: tftp.transfer_sockets "per-transfer") with the pool and without it (max_connections
 * 0), side by side.
 *
 * - Allocations: with the pool, the storm runs on the slots made at start (the metrics show no
 *   slot allocated during it, and every transfer reusing one); without, every transfer allocates
 *   its socket's buffers.
 * - GC: JavaScriptCore's own log (BUN_JSC_logGC) counts the collections during the storm, of
 *   every thread of the server; with the pool there are fewer.
 * - min_connections: slots idle past idle_timeout are given up down to min_connections (the
 *   gauge says so), and the slots kept serve the next transfers.
 */
import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { parsePrometheus } from "../../../src/ops/summary.ts";
import { patternBytes, removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { BUN, MAIN, run } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";
import type { BenchResult } from "../../../src/bench/tally.ts";

setDefaultTimeout(120_000);

// enough that the collections the pool saves stand out of the run-to-run spread of both
// threads' collections (at 4000, 12–15 against 14–17; at 8000, 20–23 against 28–31)
const TRANSFERS = 8000;
const CONCURRENCY = 32;
const PREALLOCATED = 64;
let root = "";

beforeAll(() => {
  root = tempDir("tftpd-transfer-slots-");
  // 12 windows of 4 × 1468: more than a read run on the main thread (LOCAL_READ_WINDOWS)
  writeFile(root, "boot.efi", patternBytes(64 * 1024, 7));
});

afterAll(() => removeDir(root));

/** Polls `predicate` (it may ask the server) until it holds, or fails after `timeoutMs`. */
async function waitFor(predicate: () => Promise<boolean>, timeoutMs: number, what: () => string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await predicate())) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what()}`);
    await Bun.sleep(100);
  }
}

async function metric(server: ChildServer, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`${server.metricsUrl}/metrics`)).text();
  const sample = parsePrometheus(text).find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (!sample) throw new Error(`no ${name} in the metrics`);
  return sample.value;
}

/** collections JavaScriptCore logged (one "START" line each) and their cycle times, in `log` */
function collections(log: string): { count: number; ms: number } {
  const count = log.match(/GC<0x[0-9a-f]+>: START/g)?.length ?? 0;
  const ms = [...log.matchAll(/cycle ([0-9.]+)ms END/g)].reduce((sum, m) => sum + Number(m[1]), 0);
  return { count, ms };
}

interface StormRun {
  gc: { count: number; ms: number };
  allocatedBefore: number;
  allocatedAfter: number;
  reused: number;
  server: ChildServer;
}

async function storm(env: Record<string, string>): Promise<StormRun> {
  const server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0"], {
    env: {
      BUN_JSC_logGC: "1",
      TFTPD_PERFORMANCE_CPU_WORKER_THREADS: "1",
      // no file I/O threads: their heaps would add collections of their own to the log
      TFTPD_IO_ASYNC_IO: "false",
      TFTPD_PERFORMANCE_MEMORY_CONNECTION_POOL_SIZE: String(PREALLOCATED),
      // slots are what a transfer's own port works through (shared ports have buffers of their own)
      TFTPD_TFTP_TRANSFER_SOCKETS: "per-transfer",
      TFTPD_LIMITS_REQUESTS_PER_SECOND_PER_IP: "0",
      TFTPD_LIMITS_MAX_CONNECTIONS_PER_IP: "100000",
      TFTPD_LIMITS_MAX_CONNECTIONS_PER_CLIENT: "100000",
      ...env,
    },
  });
  try {
    return await stormOn(server, env);
  } catch (error) {
    // a failed run must not leave its server running
    await server.stop();
    throw error;
  }
}

async function stormOn(server: ChildServer, env: Record<string, string>): Promise<StormRun> {
  const allocatedBefore = await metric(server, "tftpd_transfer_slot_allocations_total");
  const logAt = server.stderr().length;
  const bench = await run(
    [BUN, MAIN, "bench", "--concurrency", String(CONCURRENCY), "--total", String(TRANSFERS), "--windowsize", "4", "--blksize", "1468", "--tsize", "--file", "boot.efi", "--json", `127.0.0.1:${server.port}`],
    { timeoutMs: 90_000 },
  );
  const gc = collections(server.stderr().slice(logAt));
  const result = JSON.parse(bench.stdout) as BenchResult;
  expect(result.completed).toBe(TRANSFERS);
  // the workers say what their pools hold once a second: wait until every transfer's socket
  // took a slot (one made for it, or an idle one); a few may still be running (a final ACK
  // lost in the storm leaves the server waiting for its retransmit timeout)
  let reused = 0;
  let taken = 0;
  await waitFor(
    async () => {
      reused = await metric(server, "tftpd_transfer_slot_reuses_total");
      taken = (await metric(server, "tftpd_transfer_slot_allocations_total")) - allocatedBefore + reused;
      return taken >= TRANSFERS;
    },
    5000,
    () => `the workers' slot report after the storm (slots taken so far: ${taken} of ${TRANSFERS})`,
  );
  const allocatedAfter = await metric(server, "tftpd_transfer_slot_allocations_total");
  return { gc, allocatedBefore, allocatedAfter, reused, server };
}

test("a storm of windowed transfers runs on the preallocated slots: no allocation per transfer, fewer collections", async () => {
  const pooled = await storm({});
  const unpooled = await storm({ TFTPD_CONNECTION_POOL_MAX_CONNECTIONS: "0" }).catch(async (error: unknown) => {
    await pooled.server.stop();
    throw error;
  });
  try {
    console.log(
      `storm of ${TRANSFERS} windowed downloads: with the pool ${pooled.gc.count} collections (${pooled.gc.ms.toFixed(1)} ms), slots allocated ${pooled.allocatedAfter - pooled.allocatedBefore}; ` +
        `without ${unpooled.gc.count} collections (${unpooled.gc.ms.toFixed(1)} ms), slots allocated ${unpooled.allocatedAfter - unpooled.allocatedBefore}`,
    );
    // with the pool: the slots made at start, and each transfer on one of them
    expect(pooled.allocatedBefore).toBe(PREALLOCATED);
    expect(pooled.allocatedAfter).toBe(PREALLOCATED);
    expect(pooled.reused).toBeGreaterThanOrEqual(TRANSFERS);
    // without: none made at start, one per transfer, none reused
    expect(unpooled.allocatedBefore).toBe(0);
    expect(unpooled.allocatedAfter).toBe(TRANSFERS);
    expect(unpooled.reused).toBe(0);
    expect(await metric(unpooled.server, "tftpd_transfer_slots", { state: "idle" })).toBe(0);
    // the collector's side of it
    expect(pooled.gc.count).toBeGreaterThan(0);
    expect(pooled.gc.count).toBeLessThan(unpooled.gc.count);
  } finally {
    await pooled.server.stop();
    await unpooled.server.stop();
  }
});

test("slots idle for idle_timeout are given up down to min_connections, and those kept serve the next transfers", async () => {
  const server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0"], {
    env: {
      TFTPD_PERFORMANCE_CPU_WORKER_THREADS: "1",
      TFTPD_PERFORMANCE_MEMORY_CONNECTION_POOL_SIZE: String(PREALLOCATED),
      // slots are what a transfer's own port works through (shared ports have buffers of their own)
      TFTPD_TFTP_TRANSFER_SOCKETS: "per-transfer",
      TFTPD_CONNECTION_POOL_MIN_CONNECTIONS: "8",
      TFTPD_CONNECTION_POOL_IDLE_TIMEOUT: "1",
    },
  });
  try {
    expect(await metric(server, "tftpd_transfer_slots", { state: "idle" })).toBe(PREALLOCATED);
    let idle = PREALLOCATED;
    await waitFor(
      async () => (idle = await metric(server, "tftpd_transfer_slots", { state: "idle" })) === 8,
      8000,
      () => `the idle slots trimmed to min_connections (idle: ${idle})`,
    );
    const bench = await run([BUN, MAIN, "bench", "--concurrency", "4", "--total", "40", "--windowsize", "4", "--blksize", "1468", "--file", "boot.efi", "--json", `127.0.0.1:${server.port}`], { timeoutMs: 30_000 });
    expect((JSON.parse(bench.stdout) as BenchResult).completed).toBe(40);
    let reused = 0;
    await waitFor(async () => (reused = await metric(server, "tftpd_transfer_slot_reuses_total")) >= 40, 5000, () => `40 transfers on kept slots (reused: ${reused})`);
    expect(await metric(server, "tftpd_transfer_slot_allocations_total")).toBe(PREALLOCATED);
  } finally {
    await server.stop();
  }
});

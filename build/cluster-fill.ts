/**
 * What a file fetched from the fleet's shared cache costs, measured end to end on loopback:
 * a real Redis Cluster (3 masters + 3 replicas), `tftpd cache put` of a 100 MiB file, and a
 * node with an empty root asked for it three ways:
 *
 *   cold   — the node must fill it from the cluster first (one fetch of every chunk)
 *   warm   — the node holds it in its local cache (one manifest lookup per transfer)
 *   local  — the same bytes in the node's own root (no Redis at all)
 *
 * Prints the time to the first DATA block (a plain RRQ, as from a ROM that asks no options),
 * the first response and total time of `tftpd bench` (blksize 1468, windowsize 64: its first
 * response is the OACK), and the Redis commands each transfer caused, from INFO commandstats
 * of the masters (heartbeats and config polls are paused so only transfer traffic is counted;
 * connection set-up is left out). Commands of one transfer go out pipelined or 8 at a time.
 *
 *   bun build/cluster-fill.ts [--binary dist/tftpd] [--size-mib 100] [--runs 3]
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { removeDir, tempDir } from "../test/helpers/files.ts";
import { startRedisCluster, type RedisClusterHandle } from "../test/helpers/redis-cluster.ts";
import { run } from "../test/helpers/run.ts";
import { spawnServer } from "../test/helpers/server.ts";

const { values } = parseArgs({
  options: {
    binary: { type: "string" },
    "size-mib": { type: "string", default: "100" },
    runs: { type: "string", default: "3" },
  },
});
const sizeMiB = Number(values["size-mib"]);
const runs = Number(values.runs);
const main = new URL("../src/main.ts", import.meta.url).pathname;
const tftpd = (args: string[]): string[] => (values.binary ? [values.binary, ...args] : [process.execPath, main, ...args]);

async function commandCalls(cluster: RedisClusterHandle): Promise<Map<string, number>> {
  const totals = new Map<string, number>();
  for (const m of cluster.members) {
    // replicas replay their master's writes: count what clients asked of the masters only
    if (m.pid === null || !(await cluster.cli(m.port, "INFO", "replication")).includes("role:master")) continue;
    for (const line of (await cluster.cli(m.port, "INFO", "commandstats")).split("\n")) {
      const hit = /^cmdstat_([^:|]+)[^:]*:calls=(\d+)/.exec(line.trim());
      // connection set-up (a node's first connection to a master) is not per transfer
      if (!hit || ["info", "ping", "cluster", "config", "command", "client", "hello", "replconf"].includes(hit[1]!)) continue;
      totals.set(hit[1]!, (totals.get(hit[1]!) ?? 0) + Number(hit[2]));
    }
  }
  return totals;
}

function delta(after: Map<string, number>, before: Map<string, number>): string {
  const parts: string[] = [];
  let total = 0;
  for (const [name, n] of after) {
    const d = n - (before.get(name) ?? 0);
    if (d > 0) {
      parts.push(`${name} ${d}`);
      total += d;
    }
  }
  return `${total} (${parts.join(", ") || "none"})`;
}

async function bench(port: number, file: string): Promise<{ firstMs: number; totalMs: number }> {
  const r = await run(tftpd(["bench", `127.0.0.1:${port}`, "--concurrency", "1", "--total", "1", "--blksize", "1468", "--windowsize", "64", "--file", file, "--json"]), { timeoutMs: 120_000 });
  if (r.exitCode !== 0) throw new Error(`bench failed: ${r.stderr}`);
  const report = JSON.parse(r.stdout) as { failed: number; first_response_ms: { p50: number }; transfer_ms: { p50: number } };
  if (report.failed > 0) throw new Error(`bench: transfer failed: ${r.stdout}`);
  return { firstMs: report.first_response_ms.p50, totalMs: report.transfer_ms.p50 };
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/**
 * Request → first DATA block, in ms: a plain RRQ without options (so no OACK comes first, as
 * from a ROM that asks for none), then an ERROR to end the transfer.
 */
async function firstDataMs(port: number, file: string): Promise<number> {
  const rrq = new Uint8Array([0, 1, ...new TextEncoder().encode(file), 0, ...new TextEncoder().encode("octet"), 0]);
  const { promise, resolve } = Promise.withResolvers<{ at: number; port: number }>();
  const socket = await Bun.udpSocket({
    hostname: "127.0.0.1",
    socket: {
      data(_s, data, from) {
        if (data[1] === 3) resolve({ at: performance.now(), port: from });
      },
    },
  });
  const sent = performance.now();
  socket.send(rrq, port, "127.0.0.1");
  const timeout = setTimeout(() => resolve({ at: Number.NaN, port: 0 }), 10_000);
  const got = await promise;
  clearTimeout(timeout);
  if (got.port) socket.send(new Uint8Array([0, 5, 0, 0, 0]), got.port, "127.0.0.1");
  socket.close();
  return got.at - sent;
}

const work = tempDir("tftpd-cluster-fill-");
const cluster = await startRedisCluster();
const nodes: { stop(): Promise<number> }[] = [];
try {
  const file = join(work, "initrd.img");
  const bytes = new Uint8Array(sizeMiB << 20);
  crypto.getRandomValues(bytes.subarray(0, 65536));
  for (let i = 65536; i < bytes.length; i += 65536) bytes.copyWithin(i, 0, 65536); // fast, incompressible-enough filler
  writeFileSync(file, bytes);
  const env = { ...process.env, TFTPD_CACHE_REDIS_KEY_PREFIX: "fill:", TFTPD_CONFIG: join(work, "none.json") };
  writeFileSync(env.TFTPD_CONFIG, "{}");

  const put = await run(tftpd(["cache", "put", file, "--redis", cluster.seeds, "--compression", "none", "--ttl", "0"]), { env, timeoutMs: 120_000 });
  if (put.exitCode !== 0) throw new Error(put.stderr);
  console.log(`cache put: ${put.stdout.trim()}`);

  const results: { name: string; firstMs: number; firstData: number; totalMs: number; redis: string }[] = [];
  for (let r = 0; r < runs; r++) {
    // a fresh node each run: empty local cache; its root holds a local copy under another name
    const root = join(work, `root${r}`);
    mkdirSync(root);
    writeFileSync(join(root, "local.img"), bytes);
    const node = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--redis", cluster.seeds, "--no-tune"], {
      binary: values.binary,
      env: { ...env, TFTPD_TEST_HEARTBEAT_MS: "3600000", TFTPD_TEST_CONFIG_POLL_MS: "3600000", TFTPD_LOG_LEVEL: "info" },
    });
    nodes.push(node);
    // a second fresh node, for the first DATA block of a cold fetch (the bench asks for
    // options, and its first response is the OACK, which does not wait for the bytes)
    const probeRoot = join(work, `probe${r}`);
    mkdirSync(probeRoot);
    const nodeEnv = { ...env, TFTPD_TEST_HEARTBEAT_MS: "3600000", TFTPD_TEST_CONFIG_POLL_MS: "3600000", TFTPD_LOG_LEVEL: "info" };
    const probe = await spawnServer(["--root", probeRoot, "--listen", "127.0.0.1:0", "--redis", cluster.seeds, "--no-tune"], { binary: values.binary, env: nodeEnv });
    nodes.push(probe);
    await probe.waitForLog((l) => l.msg === "redis up");
    await Bun.sleep(300);
    const coldFirstData = await firstDataMs(probe.port, "initrd.img");
    await probe.stop();
    await node.waitForLog((l) => l.msg === "redis up");
    await Bun.sleep(300); // the start-up heartbeat and config read are done
    for (const [name, target] of [["cold", "initrd.img"], ["warm", "initrd.img"], ["local", "local.img"]] as const) {
      const before = await commandCalls(cluster);
      const t = await bench(node.port, target);
      const after = await commandCalls(cluster);
      const firstData = name === "cold" ? coldFirstData : await firstDataMs(node.port, target);
      results.push({ name, ...t, firstData, redis: delta(after, before) });
    }
    await node.stop();
  }

  console.log(`\n${sizeMiB} MiB, blksize 1468, windowsize 64, loopback, ${runs} runs (medians); Redis commands of the last run`);
  console.log("| fetch | first DATA (RRQ without options) | first response (OACK) | total | Redis commands per transfer |");
  console.log("| --- | --- | --- | --- | --- |");
  for (const name of ["cold", "warm", "local"]) {
    const rows = results.filter((x) => x.name === name);
    console.log(
      `| ${name} | ${median(rows.map((x) => x.firstData)).toFixed(1)} ms | ${median(rows.map((x) => x.firstMs)).toFixed(1)} ms | ${median(rows.map((x) => x.totalMs)).toFixed(0)} ms | ${rows.at(-1)!.redis} |`,
    );
  }
} finally {
  for (const n of nodes) await n.stop().catch(() => 0);
  await cluster.stop();
  removeDir(work);
}

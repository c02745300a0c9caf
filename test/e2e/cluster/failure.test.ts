/**
 * Failure is normal: a Redis master killed during a storm of transfers, then the whole
 * cluster gone and back. A cluster of its own (these tests break it on purpose) and a real
 * `tftpd serve` process; load from `tftpd bench`, fetches with curl.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { sha256Hex } from "../../../src/cluster/content.ts";
import { patternBytes, removeDir, tempDir } from "../../helpers/files.ts";
import { startRedisCluster, type RedisClusterHandle } from "../../helpers/redis-cluster.ts";
import { run, tftpd } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

let cluster: RedisClusterHandle;
let work: string;
let node: ChildServer;
const prefix = `t-${crypto.randomUUID()}:`;
let env: Record<string, string>;
const fleetFile = patternBytes(600_000, 41);

function cli(args: string[]) {
  return tftpd(args, { env: { ...process.env, ...env }, timeoutMs: 30_000 });
}

async function curl(name: string): Promise<{ exitCode: number; bytes: Uint8Array | null; ms: number }> {
  const out = join(work, `got-${crypto.randomUUID()}`);
  const started = Date.now();
  const r = await run(["curl", "-s", "--tftp-blksize", "1468", "-o", out, `tftp://127.0.0.1:${node.port}/${name}`], { timeoutMs: 30_000 });
  return { exitCode: r.exitCode, bytes: r.exitCode === 0 ? readFileSync(out) : null, ms: Date.now() - started };
}

async function scrape(path: string): Promise<{ status: number; text: string }> {
  const response = await fetch(`${node.metricsUrl}${path}`);
  return { status: response.status, text: await response.text() };
}

beforeAll(async () => {
  cluster = await startRedisCluster({ nodeTimeoutMs: 2000 });
  work = tempDir("tftpd-cluster-failure-");
  env = { TFTPD_CACHE_REDIS_KEY_PREFIX: prefix, TFTPD_CONFIG: join(work, "none.json") };
  writeFileSync(env.TFTPD_CONFIG!, "{}");
  const root = join(work, "root");
  Bun.spawnSync(["mkdir", "-p", root]);
  writeFileSync(join(root, "local.bin"), patternBytes(300_000, 40));
  writeFileSync(join(work, "fleet.bin"), fleetFile);
  node = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--redis", cluster.seeds], {
    env: { ...env, TFTPD_LOG_LEVEL: "info", TFTPD_LIMITS_MAX_CONNECTIONS_PER_CLIENT: "1000" },
  });
  await node.waitForLog((l) => l.msg === "redis up");
  expect((await cli(["cache", "put", join(work, "fleet.bin"), "--redis", cluster.seeds])).exitCode).toBe(0);
  // the node fetches it once: from now on it holds a local copy
  expect(sha256Hex((await curl("fleet.bin")).bytes!)).toBe(sha256Hex(fleetFile));
}, 90_000);

afterAll(async () => {
  await node?.stop();
  await cluster?.stop();
  removeDir(work);
});

describe("Redis failures", () => {
  test("a master killed during a storm: failover, and zero failed transfers", async () => {
    const manifestMaster = await cluster.masterOf(`${prefix}{files}:manifest:fleet.bin`);
    const bench = tftpd(
      [
        "bench", `127.0.0.1:${node.port}`,
        "--file", "local.bin", "--file", "fleet.bin",
        "--concurrency", "20", "--rate", "60", "--total", "480",
        "--blksize", "1468", "--json",
      ],
      { timeoutMs: 60_000 },
    );
    await Bun.sleep(1500);
    cluster.kill(manifestMaster);
    const result = await bench;
    expect(result.exitCode).toBe(0);
    const report = JSON.parse(result.stdout) as { completed: number; failed: number; failures: Record<string, number> };
    expect(report.failures).toEqual({});
    expect(report.failed).toBe(0);
    expect(report.completed).toBe(480);

    // the replica took over the slot; the fleet's cache works again through it
    await cluster.waitHealthy(30_000);
    const newMaster = await cluster.masterOf(`${prefix}{files}:manifest:fleet.bin`);
    expect(newMaster).not.toBe(manifestMaster);
    writeFileSync(join(work, "after.bin"), patternBytes(200_000, 43));
    expect((await cli(["cache", "put", join(work, "after.bin"), "--redis", cluster.nodes.filter((n) => !n.endsWith(`:${manifestMaster}`)).join(",")])).exitCode).toBe(0);
    // The node's own client learns the new master in its own time (it refreshes its slot map
    // after the failover the cluster already reports done): until then a file only the fleet
    // holds is refused at once (ERROR 0, curl's 71), never served wrong or left hanging.
    const deadline = performance.now() + 15_000;
    let after = await curl("after.bin");
    while (after.exitCode !== 0 && performance.now() < deadline) {
      expect(after.exitCode).toBe(71);
      expect(after.ms).toBeLessThan(5000);
      await Bun.sleep(250);
      after = await curl("after.bin");
    }
    expect(after.exitCode).toBe(0);
    expect(sha256Hex(after.bytes!)).toBe(sha256Hex(patternBytes(200_000, 43)));
    await cluster.restart(manifestMaster); // back as a replica
  }, 90_000);

  test("the whole cluster gone: local files and local copies served, others refused at once; service recovers", async () => {
    await cluster.waitHealthy(30_000);
    for (const m of cluster.members) if (m.pid !== null) cluster.kill(m.port);
    await node.waitForLog((l) => l.msg === "redis unavailable: serving local files only", 15_000);

    const local = await curl("local.bin");
    expect(local.exitCode).toBe(0);
    const copy = await curl("fleet.bin");
    expect(copy.exitCode).toBe(0);
    expect(sha256Hex(copy.bytes!)).toBe(sha256Hex(fleetFile));
    const missing = await curl("only-in-the-fleet.bin");
    expect(missing.exitCode).not.toBe(0);
    expect(missing.ms).toBeLessThan(5000);
    const ready = await scrape("/readyz");
    expect(ready.status).toBe(200);
    expect(ready.text).toStartWith("ready, degraded: redis");
    const metrics = await scrape("/metrics");
    expect(metrics.text).toContain("tftpd_redis_up 0");
    expect(metrics.text).toMatch(/tftpd_cluster_unavailable_total [1-9]/);
    expect(metrics.text).toMatch(/tftpd_cluster_stale_serves_total [1-9]/);

    for (const m of cluster.members) await cluster.restart(m.port);
    await cluster.waitHealthy(30_000);
    // nothing was persisted: the fleet publishes again, and the node serves it
    await node.waitForLog((l) => l.msg === "redis up" && node.logs.indexOf(l) > node.logs.findIndex((x) => x.msg === "redis unavailable: serving local files only"), 30_000);
    writeFileSync(join(work, "again.bin"), patternBytes(100_000, 44));
    expect((await cli(["cache", "put", join(work, "again.bin"), "--redis", cluster.seeds])).exitCode).toBe(0);
    expect((await curl("again.bin")).exitCode).toBe(0);
    expect((await scrape("/readyz")).text).toBe("ready\n");
    expect((await scrape("/metrics")).text).toContain("tftpd_redis_up 1");
  }, 120_000);
});

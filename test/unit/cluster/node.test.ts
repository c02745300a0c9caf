/**
 * A node's start-up in the fleet (cluster/node.ts) without a reachable Redis: a config naming
 * no Redis gets a fleet of no parts; a config naming a Redis nobody answers at starts on its
 * own config after a bounded wait, says so, and still hands the server its fleet parts (they
 * fall back on their own while Redis is away). The way up, with a pushed config, is in
 * test/e2e/cluster/config-push.test.ts.
 */
import { RunningConfig } from "../../../src/ops/config-reload.ts";
import { expect, test } from "bun:test";
import pino from "pino";
import { joinFleet, usesFleet } from "../../../src/cluster/node.ts";
import { loadConfig } from "../../../src/config/load.ts";
import { configSchema, type ConfigInput } from "../../../src/config/schema.ts";
import { FileCache } from "../../../src/storage/cache.ts";
import { closedPort } from "../../helpers/ports.ts";

function capturingLogger() {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: "info", formatters: { level: (label) => ({ level: label }) } }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { log, lines };
}

const configOf = (input: ConfigInput) => configSchema.parse(input);
const noPush = () => loadConfig({ env: {}, defaultFile: "/nonexistent" });

test("usesFleet: a distributed cache, cluster-wide limits or a metadata cache need Redis; nothing else does", () => {
  const nodes = { redis: { nodes: ["127.0.0.1:7000"] } };
  expect(usesFleet(configOf({}))).toBe(false);
  expect(usesFleet(configOf({ cache: { ...nodes } }))).toBe(false);
  expect(usesFleet(configOf({ cache: { ...nodes, type: "distributed" } }))).toBe(true);
  expect(usesFleet(configOf({ cache: { ...nodes, type: "distributed", enabled: false } }))).toBe(false);
  expect(usesFleet(configOf({ cache: { ...nodes }, limits: { scope: "cluster" } }))).toBe(true);
  expect(usesFleet(configOf({ cache: { ...nodes, metadata_ttl: 5 } }))).toBe(true);
});

test("no Redis in the config: a fleet of no parts, at once, without a log line", async () => {
  const { log, lines } = capturingLogger();
  const config = configOf({});
  const started = performance.now();
  const fleet = await joinFleet({ config, log, load: noPush });
  expect(performance.now() - started).toBeLessThan(100);
  expect(fleet.config).toBe(config);
  expect(fleet.startedWith).toBeNull();
  expect(fleet.clusterStats).toBeUndefined();
  expect(fleet.serverDeps(new FileCache(0))).toEqual({ remoteFiles: null, metadata: null, sharedAdmission: null });
  expect(fleet.degraded()).toBeNull();
  const running = new RunningConfig(config, log, { reconfigure: () => {}, reloadGenerated: () => {} });
  fleet.serve({ addresses: [], activeTransfers: 0, cache: new FileCache(0) }, { metricsUrl: null, tally: { transfers: 0, failed: 0, bytesSent: 0, count() {} } }, running);
  expect(fleet.latestPushed()).toBeNull();
  await fleet.stop();
  expect(lines).toEqual([]);
});

test("Redis named but not answering: starts on its own config after the wait, degraded, with every fleet part", async () => {
  const { log, lines } = capturingLogger();
  const node = `127.0.0.1:${await closedPort()}`;
  const config = configOf({ cache: { type: "distributed", metadata_ttl: 5, redis: { nodes: [node], cluster_mode: false } }, limits: { scope: "cluster" } });
  const started = performance.now();
  const fleet = await joinFleet({ config, log, load: noPush });
  const waited = performance.now() - started;
  try {
    expect(waited).toBeGreaterThan(1500);
    expect(waited).toBeLessThan(5000);
    expect(fleet.config).toBe(config);
    expect(fleet.startedWith).toBeNull();
    expect(lines.find((l) => l.msg === "redis not reachable at start: starting with this node's own config")).toMatchObject({ level: "warn", nodes: [node] });

    const deps = fleet.serverDeps(new FileCache(1 << 20));
    expect(deps.remoteFiles).not.toBeNull();
    expect(deps.metadata).not.toBeNull();
    expect(deps.sharedAdmission).not.toBeNull();
    expect(fleet.degraded()).toMatch(/^redis (connecting|down).*: serving local files only$/);
    expect(fleet.clusterStats?.()).toEqual({ lookups: 0, fills: 0, fillFailures: 0, staleServes: 0, unavailable: 0, redisUp: false });
    // the fleet's file lookup answers, and quickly, while Redis is away
    const open = await deps.remoteFiles!.open("boot.img");
    expect(open.ok).toBe(false);
  } finally {
    await fleet.stop();
  }
}, 15_000);

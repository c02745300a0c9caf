/**
 * The fleet view against a real Redis Cluster: two real `tftpd serve` nodes beat into it,
 * `tftpd cluster status` lists both live with their addresses, `tftpd metrics --cluster` sums
 * what curl fetched from them, a SIGKILLed node turns dead once its heartbeat expires, a
 * stopped one at once. In-process: the heartbeat's hash, expiry and throughput, index pruning,
 * the shared cache in `cluster status`, and beats while Redis is unreachable.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { hostname } from "node:os";
import { join } from "node:path";
import { publish } from "../../../src/cluster/content.ts";
import { readFleet, type FleetStatus, type FleetTotals, type LiveNode, type NodeStatus } from "../../../src/cluster/fleet.ts";
import { BEATS_TO_LIVE, Heartbeat, type NodeFigures } from "../../../src/cluster/heartbeat.ts";
import { RedisLink, redisSettings, type RedisSettings } from "../../../src/cluster/redis.ts";
import { loadConfig } from "../../../src/config/load.ts";
import { patternBytes, removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { sharedRedisCluster, type RedisClusterHandle } from "../../helpers/redis-cluster.ts";
import { run, tftpd } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

setDefaultTimeout(30_000);

/** Heartbeat interval of the test nodes: a node is dead BEATS_TO_LIVE × this after its last beat. */
const BEAT_MS = 300;
const SIZE_A = 150_000;
const SIZE_B = 70_000;

let redis: RedisClusterHandle;
let prefix: string;
const roots: string[] = [];
const servers: ChildServer[] = [];
let a: ChildServer;
let b: ChildServer;

const fleetEnv = (): Record<string, string | undefined> => ({ ...process.env, TFTPD_CACHE_REDIS_KEY_PREFIX: prefix });

interface StatusJson extends FleetStatus {
  fleet: FleetTotals;
  cache: { files: unknown[]; size: number; stored: number } | null;
}

async function cli(args: string[]): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  return await tftpd(args, { env: fleetEnv(), timeoutMs: 20_000 });
}

async function statusJson(): Promise<StatusJson> {
  const r = await cli(["cluster", "status", "--redis", redis.seeds, "--json"]);
  expect(r.stderr).toBe("");
  expect(r.exitCode).toBe(0);
  return JSON.parse(r.stdout) as StatusJson;
}

/** Polls `probe` until it returns a value, for up to `timeoutMs`. */
async function until<T>(what: string, probe: () => Promise<T | null>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== null) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(100);
  }
}

const idOf = (s: ChildServer): string => `${hostname()}:${s.port}`;

async function node(s: ChildServer): Promise<NodeStatus | undefined> {
  return (await statusJson()).nodes.find((n) => n.id === idOf(s));
}

beforeAll(async () => {
  redis = await sharedRedisCluster();
  prefix = `t-${crypto.randomUUID()}:`;
  const start = async (size: number, seed: number): Promise<ChildServer> => {
    const root = tempDir("tftpd-fleet-root-");
    roots.push(root);
    writeFile(root, "f.bin", patternBytes(size, seed));
    const s = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--redis", redis.seeds], {
      env: { TFTPD_CACHE_REDIS_KEY_PREFIX: prefix, TFTPD_TEST_HEARTBEAT_MS: String(BEAT_MS) },
    });
    servers.push(s);
    return s;
  };
  [a, b] = await Promise.all([start(SIZE_A, 21), start(SIZE_B, 22)]);
}, 60_000);

afterAll(async () => {
  for (const s of servers) await s.stop("SIGKILL");
  for (const root of roots) removeDir(root);
});

describe("two serve nodes", () => {
  test("cluster status --json: both live, with their addresses, metrics endpoint, pid and version", async () => {
    const status = await until("both nodes live", async () => {
      const s = await statusJson();
      return s.nodes.filter((n) => n.state === "live").length === 2 ? s : null;
    });
    expect(status.nodes.map((n) => n.id).sort()).toEqual([idOf(a), idOf(b)].sort());
    for (const s of [a, b]) {
      const n = status.nodes.find((x) => x.id === idOf(s)) as LiveNode;
      expect(n.state).toBe("live");
      expect(n.addresses).toEqual(s.addresses);
      expect(n.metrics).toBe(s.metricsUrl);
      expect(n.pid).toBe(s.proc.pid);
      expect(n.hostname).toBe(hostname());
      expect(n.version).toMatch(/^\d+\.\d+\.\d+/);
      expect(n.last_seen_s_ago).toBeLessThanOrEqual(2);
    }
    expect(status.fleet.live).toBe(2);
    expect(status.fleet.dead).toBe(0);
    expect(status.cache).not.toBeNull();
  });

  test("cluster status: one greppable line per node and a fleet line", async () => {
    const r = await cli(["cluster", "status", "--redis", redis.seeds]);
    expect(r.exitCode).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    for (const s of [a, b]) {
      const line = lines.find((l) => l.startsWith(`node ${idOf(s)} `));
      expect(line).toMatch(
        new RegExp(
          `^node ${idOf(s)} live version \\S+ up \\S+ active 0 throughput \\S+ \\S+ transfers \\d+ failed 0 sent .+ cache .+ addresses ${s.addresses.join(",")} metrics ${s.metricsUrl} pid ${s.proc.pid}$`,
        ),
      );
    }
    expect(lines).toContainEqual(expect.stringMatching(/^fleet live 2 dead 0 active 0 throughput /));
    expect(lines).toContainEqual(expect.stringMatching(/^cache files \d+ size /));
  });

  test("metrics --cluster sums what curl fetched from each node", async () => {
    const out = tempDir("tftpd-fleet-out-");
    roots.push(out);
    for (const [s, name] of [[a, "a.bin"], [b, "b.bin"]] as const) {
      const r = await run(["curl", "-sS", "--max-time", "10", "-o", join(out, name), `tftp://127.0.0.1:${s.port}/f.bin`], { timeoutMs: 12_000 });
      expect(r.stderr).toBe("");
      expect(r.exitCode).toBe(0);
    }
    const figures = await until("both transfers in the heartbeats", async () => {
      const r = await cli(["metrics", "--cluster", "--redis", redis.seeds, "--json"]);
      expect(r.exitCode).toBe(0);
      const parsed = JSON.parse(r.stdout) as { nodes: (Partial<FleetTotals> & { id: string; state: string })[]; fleet: FleetTotals };
      return parsed.fleet.bytes_sent_total === SIZE_A + SIZE_B ? parsed : null;
    });
    expect(figures.fleet).toMatchObject({ live: 2, dead: 0, active: 0, transfers_total: 2, failed_total: 0 });
    expect(figures.nodes.find((n) => n.id === idOf(a))).toMatchObject({ state: "live", transfers_total: 1, bytes_sent_total: SIZE_A });
    expect(figures.nodes.find((n) => n.id === idOf(b))).toMatchObject({ state: "live", transfers_total: 1, bytes_sent_total: SIZE_B });
    // each node's local cache holds the file it served
    expect(figures.fleet.cache_bytes).toBeGreaterThanOrEqual(SIZE_A + SIZE_B);

    const r = await cli(["metrics", "--cluster", "--redis", redis.seeds]);
    expect(r.exitCode).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines).toContainEqual(
      expect.stringMatching(new RegExp(`^node ${idOf(a)} throughput \\S+ \\S+ active 0 transfers 1 failed 0 sent 146\\.5 KiB cache `)),
    );
    expect(lines).toContainEqual(
      expect.stringMatching(new RegExp(`^node ${idOf(b)} throughput \\S+ \\S+ active 0 transfers 1 failed 0 sent 68\\.4 KiB cache `)),
    );
    expect(lines).toContainEqual(expect.stringMatching(/^fleet live 2 dead 0 active 0 throughput \S+ \S+ transfers 2 failed 0 sent 214\.8 KiB cache /));
  });

  test("a node killed with SIGKILL shows dead once its heartbeat expires; the other stays live", async () => {
    const killedAt = Date.now();
    b.proc.kill("SIGKILL");
    await b.proc.exited;
    const dead = await until("the killed node dead", async () => {
      const n = await node(b);
      return n?.state === "dead" ? n : null;
    });
    // the hash lives BEATS_TO_LIVE intervals after the last beat
    expect(Date.now() - killedAt).toBeLessThan(BEATS_TO_LIVE * BEAT_MS + 5000);
    expect(dead.last_seen_ms).toBeLessThanOrEqual(killedAt + 50);
    expect((await node(a))?.state).toBe("live");

    const r = await cli(["cluster", "status", "--redis", redis.seeds]);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^node ${idOf(b)} dead last seen \\d+s ago$`)));
    expect(lines).toContainEqual(expect.stringMatching(/^fleet live 1 dead 1 /));
  });

  test("a node stopped with SIGTERM is dead at once (its hash deleted), last seen when it stopped", async () => {
    const stoppedAt = Date.now();
    expect(await a.stop("SIGTERM")).toBe(0);
    const n = await node(a);
    expect(n?.state).toBe("dead");
    expect(n!.last_seen_ms).toBeGreaterThanOrEqual(stoppedAt - 50);
  });
});

describe("in-process: the heartbeat, the reader, the shared cache listing", () => {
  let settings: RedisSettings;
  let link: RedisLink;
  const ownPrefix = `t-${crypto.randomUUID()}:`;

  beforeAll(async () => {
    const loaded = loadConfig({ env: { TFTPD_CACHE_REDIS_KEY_PREFIX: ownPrefix }, defaultFile: "/nonexistent" });
    if (!loaded.ok) throw new Error(loaded.errors.join("\n"));
    settings = redisSettings(loaded.config, redis.seeds);
    link = new RedisLink(settings);
    expect(await link.waitUp(10_000)).toBe(true);
  });
  afterAll(async () => {
    await link.close();
  });

  const figures: NodeFigures = {
    addresses: ["127.0.0.1:6969", "[::1]:6969"],
    metricsUrl: null,
    activeTransfers: 3,
    transfersTotal: 10,
    failedTotal: 1,
    bytesSentTotal: 0,
    cacheBytes: 4096,
  };

  test("a beat writes every field, expires after three intervals, and scores the index; throughput from the bytes sent", async () => {
    const hb = new Heartbeat(link, () => figures, { id: "n1:6969", intervalMs: 400, hostname: "n1" });
    await hb.beat();
    figures.bytesSentTotal += 1_000_000;
    await Bun.sleep(250);
    await hb.beat();
    expect(hb.beats).toBe(2);
    const hash = await link.client.hgetall(link.keys.node("n1:6969"));
    expect(Object.keys(hash).sort()).toEqual(
      [
        "active", "addresses", "bytes_sent_total", "cache_bytes", "failed_total", "hostname", "id", "metrics", "pid",
        "redis", "started_at", "throughput_bps", "transfers_total", "uptime_s", "version",
      ].sort(),
    );
    expect(hash).toMatchObject({ id: "n1:6969", hostname: "n1", pid: String(process.pid), addresses: "127.0.0.1:6969,[::1]:6969", metrics: "", active: "3", redis: "up" });
    // 1 MB over ~250 ms: about 32 Mbit/s
    const bps = Number(hash.throughput_bps);
    expect(bps).toBeGreaterThan(20e6);
    expect(bps).toBeLessThanOrEqual(32e6);
    const ttl = await link.client.pttl(link.keys.node("n1:6969"));
    expect(ttl).toBeGreaterThan(800);
    expect(ttl).toBeLessThanOrEqual(3 * 400);
    const score = Number(await link.client.zscore(link.keys.nodeIndex, "n1:6969"));
    expect(Math.abs(Date.now() - score)).toBeLessThan(2000);

    const fleet = await readFleet(link);
    const n = fleet.nodes.find((x) => x.id === "n1:6969") as LiveNode;
    expect(n).toMatchObject({ state: "live", addresses: ["127.0.0.1:6969", "[::1]:6969"], metrics: null, active: 3, transfers_total: 10, failed_total: 1 });

    await hb.stop();
    expect(await link.client.exists(link.keys.node("n1:6969"))).toBe(0);
    expect(await link.client.zscore(link.keys.nodeIndex, "n1:6969")).not.toBeNull();
    expect((await readFleet(link)).nodes.find((x) => x.id === "n1:6969")?.state).toBe("dead");
  });

  test("start() beats at once and then every interval; stop() ends the beats", async () => {
    const hb = new Heartbeat(link, () => figures, { id: "n2:6969", intervalMs: 100, hostname: "n2" });
    hb.start();
    await Bun.sleep(450);
    await hb.stop();
    const beats = hb.beats;
    expect(beats).toBeGreaterThanOrEqual(3);
    await Bun.sleep(300);
    expect(hb.beats).toBe(beats);
    expect(await link.client.exists(link.keys.node("n2:6969"))).toBe(0);
  });

  test("the default node id is the hostname and the first listen port", () => {
    const hb = new Heartbeat(link, () => figures, { hostname: "boot-7" });
    expect(hb.id).toBe("boot-7:6969");
  });

  test("readers prune index entries not seen for 24 h", async () => {
    const now = Date.now();
    await link.client.zadd(link.keys.nodeIndex, now - 25 * 3600 * 1000, "old:69", now - 3600 * 1000, "recent:69");
    const fleet = await readFleet(link, now);
    expect(fleet.pruned).toBe(1);
    expect(fleet.nodes.map((n) => n.id)).not.toContain("old:69");
    expect(fleet.nodes.find((n) => n.id === "recent:69")).toMatchObject({ state: "dead", last_seen_s_ago: 3600 });
    expect(await link.client.zscore(link.keys.nodeIndex, "old:69")).toBeNull();
  });

  test("cluster status lists the shared cache: a file line each and a cache line", async () => {
    const compression = { enabled: false, level: 6, minSize: 1024 };
    await publish(link, "boot/vmlinuz", patternBytes(300_000, 5), { chunkSize: 1 << 16, ttlS: 600, maxSizeBytes: 1 << 30, compression });
    const r = await tftpd(["cluster", "status", "--redis", redis.seeds], { env: { ...process.env, TFTPD_CACHE_REDIS_KEY_PREFIX: ownPrefix } });
    expect(r.exitCode).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines).toContainEqual(
      expect.stringMatching(/^file boot\/vmlinuz size 293\.0 KiB stored 293\.0 KiB compression \S+ sha256 [0-9a-f]{12} last-served never expires-in \S+$/),
    );
    expect(lines.at(-1)).toBe("cache files 1 size 293.0 KiB stored 293.0 KiB");
  });

  test("with Redis unreachable a beat fails quietly, the next one tries again, and stop() returns", async () => {
    const rejections: unknown[] = [];
    const onRejection = (reason: unknown): void => void rejections.push(reason);
    process.on("unhandledRejection", onRejection);
    const down = new RedisLink({ ...settings, nodes: ["127.0.0.1:1"] });
    try {
      const hb = new Heartbeat(down, () => figures, { id: "nowhere:69", intervalMs: 50 });
      hb.start();
      await Bun.sleep(400);
      await hb.beat();
      await hb.stop();
      expect(hb.beats).toBe(0);
      expect(rejections).toEqual([]);
    } finally {
      process.off("unhandledRejection", onRejection);
      await down.close();
    }
  });
});

describe("errors", () => {
  test("cluster status and metrics --cluster with Redis unreachable: one line on stderr naming the addresses, exit 1", async () => {
    const [status, metrics] = await Promise.all([
      cli(["cluster", "status", "--redis", "127.0.0.1:1,127.0.0.1:2"]),
      cli(["metrics", "--cluster", "--redis", "127.0.0.1:1"]),
    ]);
    expect(status.exitCode).toBe(1);
    expect(status.stdout).toBe("");
    expect(status.stderr).toMatch(/^tftpd cluster status: Redis at 127\.0\.0\.1:1,127\.0\.0\.1:2 not reachable[^\n]*\n$/);
    expect(metrics.exitCode).toBe(1);
    expect(metrics.stderr).toMatch(/^tftpd metrics: Redis at 127\.0\.0\.1:1 not reachable[^\n]*\n$/);
  });

  test("usage errors exit 2 with one line", async () => {
    const cases: [string[], RegExp][] = [
      [["cluster", "status", "--nope"], /^tftpd cluster status: unknown option --nope/],
      [["cluster", "status", "--redis", "nohost"], /^tftpd cluster status: --redis: nohost is not HOST:PORT/],
      [["metrics", "--redis", "127.0.0.1:6379"], /^tftpd metrics: --redis goes with --cluster/],
      [["metrics", "--cluster", "--raw", "--redis", "127.0.0.1:6379"], /^tftpd metrics: --cluster reads the fleet from Redis/],
    ];
    const results = await Promise.all(cases.map(([args]) => cli(args)));
    results.forEach((r, i) => {
      expect(r.stderr).toMatch(cases[i]![1]);
      expect(r.stderr.trimEnd().split("\n")).toHaveLength(1);
      expect(r.exitCode).toBe(2);
    });
  });
});

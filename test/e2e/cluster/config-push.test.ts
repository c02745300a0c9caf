/**
 * Fleet configuration end to end: `tftpd config push` stores a validated config in a real Redis
 * Cluster, and a running `tftpd serve` node applies what it can while running (limits, remap
 * rules, log level), reports what needs a restart, and rejects what it cannot use.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { rawPacket, RawPeer } from "../../helpers/raw.ts";
import { sharedRedisCluster, startRedisCluster, type RedisClusterHandle } from "../../helpers/redis-cluster.ts";
import { run, tftpd } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

setDefaultTimeout(30_000);

let cluster: RedisClusterHandle;
let prefix: string;
let dir: string;
let root: string;
let real: Uint8Array;
let node: ChildServer;
const running: ChildServer[] = [];

type Change = { key: string; from: unknown; to: unknown };
const keysOf = (line: Record<string, unknown>): string[] => (line.changes as Change[]).map((c) => c.key).sort();
const lines = (text: string): string[] => text.split("\n").filter((l) => l !== "");

function curl(args: string[]) {
  return run(["curl", "-sS", "--max-time", "10", ...args], { timeoutMs: 15_000 });
}

/** `tftpd config push ARGS` with no TFTPD_* variables from the outside world but the key prefix. */
function push(args: string[], keyPrefix = prefix) {
  const env: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("TFTPD_")) env[k] = v;
  env.TFTPD_CACHE_REDIS_KEY_PREFIX = keyPrefix;
  env.TFTPD_CONFIG = join(dir, "no-local-config.json");
  return tftpd(["config", "push", ...args], { env, timeoutMs: 20_000 });
}

/** A node of the fleet: its own config file, the fleet's Redis and key prefix from the env. */
async function startNode(seeds = cluster.seeds): Promise<ChildServer> {
  const s = await spawnServer(["--config", join(dir, "node.json")], {
    env: {
      TFTPD_CACHE_REDIS_NODES: seeds,
      TFTPD_CACHE_TYPE: "distributed",
      TFTPD_CACHE_REDIS_KEY_PREFIX: prefix,
      TFTPD_TEST_CONFIG_POLL_MS: "200",
    },
  });
  running.push(s);
  return s;
}

async function redisField(field: string): Promise<string> {
  return (await cluster.cli(cluster.members[0]!.port, "-c", "HGET", `${prefix}{fleet}:config`, field)).trim();
}

beforeAll(async () => {
  cluster = await sharedRedisCluster();
  prefix = `t-${crypto.randomUUID()}:`;
  dir = tempDir("tftpd-config-push-");
  root = join(dir, "root");
  real = patternBytes(70_001, 11);
  writeFile(root, "real.bin", real);
  writeFile(dir, "node.json", JSON.stringify({ tftp: { root, listen: ["127.0.0.1:0"] }, log: { level: "info" } }));
  writeFile(dir, "fleet/alias.remap", "# the fleet's names\nr ^alias$ real.bin\n");
  node = await startNode();
});

afterAll(async () => {
  for (const s of running) await s.stop("SIGKILL");
  removeDir(dir);
});

/** The fleet config of the tests: relative remap path, resolved against the file's directory. */
const fleetConfig = { limits: { max_connections_per_ip: 5 }, log: { level: "debug" }, tftp: { remap: "alias.remap" } };

describe("a running node applies a pushed config", () => {
  test("limits, log level and remap rules are reloaded and logged once as `config reloaded`", async () => {
    const before = await curl(["-o", join(dir, "before.bin"), `tftp://127.0.0.1:${node.port}/alias`]);
    expect(before.exitCode).not.toBe(0);

    const file = writeFile(dir, "fleet/v1.json", JSON.stringify(fleetConfig));
    const r = await push([file, "--redis", cluster.seeds]);
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toBe(`pushed config version 1 to ${cluster.seeds}\n`);
    expect(await redisField("pushed_by")).not.toBe("");
    expect(JSON.parse(await redisField("json"))).toEqual({ ...fleetConfig, tftp: { remap: join(dir, "fleet/alias.remap") } });

    const reloaded = await node.waitForLog((l) => l.msg === "config reloaded" && l.version === 1);
    expect(reloaded.level).toBe("info");
    expect(keysOf(reloaded)).toEqual(["limits.max_connections_per_ip", "log.level", "tftp.remap"]);
    expect(reloaded.changes).toContainEqual({ key: "limits.max_connections_per_ip", from: 100, to: 5 });
    expect(reloaded.changes).toContainEqual({ key: "log.level", from: "info", to: "debug" });
    expect(reloaded.changes).toContainEqual({ key: "tftp.remap", from: null, to: join(dir, "fleet/alias.remap") });
    expect(node.logs.filter((l) => l.msg === "config change needs a restart")).toEqual([]);

    // the pushed rule maps alias to real.bin
    const dest = join(dir, "alias.bin");
    const fetched = await curl(["-o", dest, `tftp://127.0.0.1:${node.port}/alias`]);
    expect(fetched.stderr).toBe("");
    expect(fetched.exitCode).toBe(0);
    expect(sha256(readFileSync(dest))).toBe(sha256(real));

    // the new level is in effect: a datagram that is no request is logged at debug
    const peer = await RawPeer.open();
    try {
      peer.send(rawPacket(9, "x"), node.port, "127.0.0.1");
      await node.waitForLog((l) => l.level === "debug" && l.msg === "datagram refused");
    } finally {
      peer.close();
    }
  });

  test("a changed key that needs a restart is reported once and not applied", async () => {
    const file = writeFile(dir, "fleet/v2.json", JSON.stringify({ ...fleetConfig, tftp: { ...fleetConfig.tftp, blksize_max: 8192 } }));
    const r = await push([file, "--redis", cluster.seeds]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toStartWith("pushed config version 2 to ");

    const warned = await node.waitForLog((l) => l.msg === "config change needs a restart" && l.version === 2);
    expect(warned.level).toBe("warn");
    expect(warned.changes).toEqual([{ key: "tftp.blksize_max", from: 1468, to: 8192 }]);
    expect(node.logs.filter((l) => l.msg === "config reloaded" && l.version === 2)).toEqual([]);

    // still the start-up blksize_max: 8192 is not granted
    const from = node.logs.length;
    const fetched = await curl(["--tftp-blksize", "8192", "-o", join(dir, "big.bin"), `tftp://127.0.0.1:${node.port}/real.bin`]);
    expect(fetched.exitCode).toBe(0);
    const transfer = await node.waitForLog((l) => l.msg === "transfer" && node.logs.indexOf(l) >= from);
    expect(transfer.blksize).toBe(1468);
    await Bun.sleep(600); // a few polls: the warning is not repeated
    expect(node.logs.filter((l) => l.msg === "config change needs a restart")).toHaveLength(1);
  });

  test("a pushed config this node cannot use is logged as an error naming the key; nothing is applied", async () => {
    // written straight into Redis: a rule `config push` would have refused
    const key = `${prefix}{fleet}:config`;
    const port = cluster.members[0]!.port;
    await cluster.cli(port, "-c", "HSET", key, "json", JSON.stringify({ limits: { max_connections_per_ip: 3 }, tftp: { remap: "/fleet/bad.remap" } }), "remap", "Q ^alias$ real.bin");
    await cluster.cli(port, "-c", "HINCRBY", key, "version", "1");

    const rejected = await node.waitForLog((l) => l.msg === "pushed config rejected" && l.version === 3);
    expect(rejected.level).toBe("error");
    expect(rejected.errors).toEqual(["pushed config version 3: tftp.remap: /fleet/bad.remap:1: bad flag letter 'Q'"]);
    expect(node.logs.filter((l) => l.version === 3 && l.msg !== "pushed config rejected")).toEqual([]);

    // the rules of version 1 still serve alias
    const dest = join(dir, "alias-again.bin");
    expect((await curl(["-o", dest, `tftp://127.0.0.1:${node.port}/alias`])).exitCode).toBe(0);
    expect(sha256(readFileSync(dest))).toBe(sha256(real));
  });

  test("the next valid push is applied; a node that starts later applies the latest version at start", async () => {
    const r = await push([join(dir, "fleet/v1.json"), "--redis", cluster.seeds]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toStartWith("pushed config version 4 to ");
    // the running node already runs with these settings
    await node.waitForLog((l) => l.msg === "config up to date" && l.version === 4);

    const late = await startNode();
    const started = await late.waitForLog((l) => l.msg === "started with the config pushed to the fleet");
    expect(started.version).toBe(4);
    await Bun.sleep(600); // a few polls: version 4 is in effect already, nothing is applied again
    expect(late.logs.filter((l) => l.msg === "config reloaded" || l.msg === "config change needs a restart")).toEqual([]);
    const dest = join(dir, "alias-late.bin");
    expect((await curl(["-o", dest, `tftp://127.0.0.1:${late.port}/alias`])).exitCode).toBe(0);
    expect(sha256(readFileSync(dest))).toBe(sha256(real));
  });

  test("a key that needs a restart takes effect on a node started after the push", async () => {
    const r = await push([join(dir, "fleet/v2.json"), "--redis", cluster.seeds]);
    expect(r.exitCode).toBe(0);
    await node.waitForLog((l) => l.msg === "config change needs a restart" && l.version === 5);
    const restarted = await startNode();
    const started = await restarted.waitForLog((l) => l.msg === "started with the config pushed to the fleet");
    expect(started.version).toBe(5);
    const fetched = await curl(["--tftp-blksize", "8192", "-o", join(dir, "big-late.bin"), `tftp://127.0.0.1:${restarted.port}/real.bin`]);
    expect(fetched.exitCode).toBe(0);
    const transfer = await restarted.waitForLog((l) => l.msg === "transfer" && l.file === "real.bin");
    expect(transfer.blksize).toBe(8192);
  });
});

describe("config push refuses", () => {
  test("an invalid file: exit 1, one line naming the key, nothing pushed", async () => {
    const version = await redisField("version");
    const file = writeFile(dir, "fleet/bad.json", JSON.stringify({ limits: { max_connections_per_ip: 0 } }));
    const r = await push([file, "--redis", cluster.seeds]);
    expect(r.exitCode).toBe(1);
    expect(r.stdout).toBe("");
    expect(lines(r.stderr)).toHaveLength(1);
    expect(r.stderr).toContain("limits.max_connections_per_ip");
    expect(await redisField("version")).toBe(version);
  });

  test("a bad remap rule file: exit 1 naming tftp.remap and the rule's line, nothing pushed", async () => {
    const version = await redisField("version");
    writeFile(dir, "fleet/bad.remap", "r ^a$ b\nQ ^x$ y\n");
    const file = writeFile(dir, "fleet/bad-remap.json", JSON.stringify({ tftp: { remap: "bad.remap" } }));
    const r = await push([file, "--redis", cluster.seeds]);
    expect(r.exitCode).toBe(1);
    expect(lines(r.stderr)).toEqual([`tftpd config push: ${file}: tftp.remap: ${join(dir, "fleet/bad.remap")}:2: bad flag letter 'Q'`]);
    expect(await redisField("version")).toBe(version);
  });

  test("an unreachable Redis: exit 1, one line naming the address", async () => {
    const r = await push([join(dir, "fleet/v1.json"), "--redis", "127.0.0.1:1"]);
    expect(r.exitCode).toBe(1);
    expect(r.stdout).toBe("");
    expect(lines(r.stderr)).toHaveLength(1);
    expect(r.stderr).toContain("127.0.0.1:1");
  });

  test("no Redis named anywhere: a usage error saying how to name one", async () => {
    const r = await push([join(dir, "fleet/v1.json")]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain("--redis");
  });
});

describe("Redis down", () => {
  test("a node polls quietly while Redis is down and applies the latest version once it is back", async () => {
    const own = await startRedisCluster();
    try {
      const r = await push([join(dir, "fleet/v1.json"), "--redis", own.seeds]);
      expect(r.exitCode).toBe(0);
      // keep the pushed config across the restart below (the test nodes do not save by themselves)
      for (const m of own.members) expect(await own.cli(m.port, "SAVE")).toContain("OK");
      for (const m of own.members) own.kill(m.port);

      const s = await startNode(own.seeds);
      await Bun.sleep(1000); // several polls against a dead Redis
      const quiet = s.logs.filter((l) => typeof l.msg === "string" && (l.msg.startsWith("config") || l.msg.startsWith("pushed") || l.msg.startsWith("applying")));
      expect(quiet).toEqual([]);

      for (const m of own.members) await own.restart(m.port);
      await own.waitHealthy();
      const reloaded = await s.waitForLog((l) => l.msg === "config reloaded", 20_000);
      expect(reloaded.version).toBe(1);
      expect(keysOf(reloaded)).toEqual(["limits.max_connections_per_ip", "log.level", "tftp.remap"]);
    } finally {
      await own.stop();
    }
  }, 50_000);
});

/**
 * A real Redis Cluster on loopback for the tests: Debian's redis-server, N masters with one
 * replica each, joined by `redis-cli --cluster create`. `sharedRedisCluster()` starts one per
 * test run (the preload stops it after the last test); tests that break a cluster on purpose
 * (kill a master, stop everything) start their own with `startRedisCluster()`.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { portFree } from "./ports.ts";
import { run } from "./run.ts";

export interface RedisNode {
  port: number;
  dir: string;
  pid: number | null;
}

export interface RedisClusterHandle {
  /** "127.0.0.1:PORT" of every node, masters first */
  nodes: string[];
  /** the seed list a tftpd node is given */
  seeds: string;
  members: RedisNode[];
  /** SIGKILLs one node (by port); returns its pid */
  kill(port: number): number;
  /** starts a stopped node again from its own directory (it rejoins with its nodes.conf) */
  restart(port: number): Promise<void>;
  /** the port of the node serving `key`'s slot as master */
  masterOf(key: string): Promise<number>;
  /** polls until every slot is served and every live replica is linked */
  waitHealthy(timeoutMs?: number): Promise<void>;
  /** runs redis-cli against one node */
  cli(port: number, ...args: string[]): Promise<string>;
  stop(): Promise<void>;
}

const REDIS_SERVER = "/usr/bin/redis-server";
const REDIS_CLI = "/usr/bin/redis-cli";


/** Ports whose cluster bus port (port + 10000) is free as well. */
async function freePorts(count: number): Promise<number[]> {
  const ports: number[] = [];
  let candidate = 17000 + Math.floor(Math.random() * 2500);
  while (ports.length < count) {
    candidate++;
    if ((await portFree(candidate)) && (await portFree(candidate + 10000))) ports.push(candidate);
  }
  return ports;
}

async function cli(port: number, ...args: string[]): Promise<string> {
  const r = await run([REDIS_CLI, "-h", "127.0.0.1", "-p", String(port), ...args], { timeoutMs: 10_000 });
  return r.stdout + r.stderr;
}

async function startNode(node: RedisNode, nodeTimeoutMs: number): Promise<void> {
  const pidfile = join(node.dir, "redis.pid");
  const r = await run(
    [
      REDIS_SERVER,
      "--port", String(node.port),
      "--bind", "127.0.0.1",
      "--cluster-enabled", "yes",
      "--cluster-config-file", "nodes.conf",
      "--cluster-node-timeout", String(nodeTimeoutMs),
      "--appendonly", "no",
      "--save", "",
      "--daemonize", "yes",
      "--pidfile", pidfile,
      "--logfile", join(node.dir, "redis.log"),
      "--dir", node.dir,
    ],
    { timeoutMs: 10_000 },
  );
  if (r.exitCode !== 0) throw new Error(`redis-server on ${node.port}: ${r.stderr || r.stdout}`);
  const deadline = Date.now() + 10_000;
  while (!(await cli(node.port, "PING")).includes("PONG")) {
    if (Date.now() > deadline) throw new Error(`redis-server on ${node.port} did not answer PING`);
    await Bun.sleep(50);
  }
  // Redis deletes its pidfile on shutdown: read it while it is there.
  node.pid = Number(readFileSync(pidfile, "utf8").trim());
}

export async function startRedisCluster(opts: { masters?: number; nodeTimeoutMs?: number } = {}): Promise<RedisClusterHandle> {
  const masters = opts.masters ?? 3;
  const nodeTimeoutMs = opts.nodeTimeoutMs ?? 2000;
  const base = mkdtempSync(join(tmpdir(), "tftpd-redis-"));
  const ports = await freePorts(masters * 2);
  const members: RedisNode[] = ports.map((port) => {
    const dir = join(base, String(port));
    mkdirSync(dir);
    return { port, dir, pid: null };
  });
  const nodes = ports.map((p) => `127.0.0.1:${p}`);

  const handle: RedisClusterHandle = {
    nodes,
    seeds: nodes.slice(0, masters).join(","),
    members,
    kill(port) {
      const node = members.find((m) => m.port === port);
      if (!node?.pid) throw new Error(`no running redis on ${port}`);
      const pid = node.pid;
      process.kill(pid, "SIGKILL");
      node.pid = null;
      return pid;
    },
    async restart(port) {
      const node = members.find((m) => m.port === port);
      if (!node) throw new Error(`no redis node on ${port}`);
      await startNode(node, nodeTimeoutMs);
    },
    async masterOf(key) {
      const live = members.find((m) => m.pid !== null)!;
      const slot = (await cli(live.port, "CLUSTER", "KEYSLOT", key)).trim();
      // CLUSTER NODES: "<id> <ip:port@bus> <flags> <master> ... <slot ranges>"
      for (const line of (await cli(live.port, "CLUSTER", "NODES")).split("\n")) {
        const fields = line.trim().split(/\s+/);
        if (fields.length < 9 || !fields[2]!.includes("master") || fields[2]!.includes("fail")) continue;
        for (const range of fields.slice(8)) {
          const [lo, hi = lo] = range.split("-").map(Number);
          if (Number(slot) >= lo! && Number(slot) <= hi!) return Number(fields[1]!.split("@")[0]!.split(":")[1]);
        }
      }
      throw new Error(`no master serves slot ${slot}`);
    },
    async waitHealthy(timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const live = members.filter((m) => m.pid !== null);
        const infos = await Promise.all(live.map((m) => cli(m.port, "CLUSTER", "INFO")));
        const replication = await Promise.all(live.map((m) => cli(m.port, "INFO", "replication")));
        const ok = infos.every((i) => i.includes("cluster_state:ok"));
        const linked = replication.every((r) => !r.includes("role:slave") || r.includes("master_link_status:up"));
        if (ok && linked) return;
        if (Date.now() > deadline) throw new Error(`redis cluster not healthy after ${timeoutMs} ms:\n${infos.join("\n")}`);
        await Bun.sleep(100);
      }
    },
    cli,
    async stop() {
      for (const m of members) {
        if (m.pid === null) continue;
        try {
          process.kill(m.pid, "SIGKILL");
        } catch {
          // already gone
        }
        m.pid = null;
      }
      rmSync(base, { recursive: true, force: true });
    },
  };

  try {
    await Promise.all(members.map((m) => startNode(m, nodeTimeoutMs)));
    const created = await run([REDIS_CLI, "--cluster", "create", ...nodes, "--cluster-replicas", "1", "--cluster-yes"], { timeoutMs: 30_000 });
    if (created.exitCode !== 0) throw new Error(`redis-cli --cluster create: ${created.stdout}${created.stderr}`);
    await handle.waitHealthy();
  } catch (error) {
    await handle.stop();
    throw error;
  }
  started.add(handle);
  return handle;
}

const started = new Set<RedisClusterHandle>();
let shared: Promise<RedisClusterHandle> | null = null;

/** One cluster for every test of the run that only reads and writes keys. */
export function sharedRedisCluster(): Promise<RedisClusterHandle> {
  shared ??= startRedisCluster();
  return shared;
}

/** Stops every cluster this process started (the preload calls it after the last test). */
export async function stopAllRedisClusters(): Promise<void> {
  await Promise.all([...started].map((c) => c.stop()));
  started.clear();
  shared = null;
}

// A test run that dies must not leave redis-server daemons behind.
process.on("exit", () => {
  for (const c of started) for (const m of c.members) if (m.pid !== null) {
    try {
      process.kill(m.pid, "SIGKILL");
    } catch {
      // gone
    }
  }
});

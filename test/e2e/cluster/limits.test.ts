/**
 * `limits.scope: cluster` end to end: two `tftpd serve` processes share a Redis Cluster and a
 * per-IP limit of 1. A transfer held open on node A (a client that never ACKs DATA 1) makes
 * a request from the same address to node B get ERROR 0 "busy: per-ip …", counted by B's
 * metrics; once the held transfer ends, B serves. A node whose Redis is out of reach keeps
 * serving on its own limits and says so in its log.
 */
import { afterAll, afterEach, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { ClusterLeases, leaseAdmission } from "../../../src/cluster/leases.ts";
import { RedisLink } from "../../../src/cluster/redis.ts";
import { Opcode } from "../../../src/protocol/packet.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { download, error, peerTracker, recordWhere, rrq, within } from "../../helpers/raw.ts";
import { sharedRedisCluster, type RedisClusterHandle } from "../../helpers/redis-cluster.ts";
import { spawnServer, startServer, type ChildServer, type InProcessServer } from "../../helpers/server.ts";
import { closedPort } from "../../helpers/ports.ts";

setDefaultTimeout(30_000);

const peers = peerTracker();
const running: ChildServer[] = [];
const cleanups: (() => Promise<unknown> | void)[] = [];
let cluster: RedisClusterHandle;
let root = "";
const image = patternBytes(40_000, 11);

beforeAll(async () => {
  cluster = await sharedRedisCluster();
  root = tempDir("tftpd-cluster-limits-");
  writeFile(root, "boot.img", image);
}, 60_000);

afterEach(async () => {
  peers.closeAll();
  await Promise.all(running.splice(0).map((s) => s.stop("SIGKILL")));
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

afterAll(() => {
  if (root) removeDir(root);
});

/** A node in cluster scope: per-IP limit 1, "busy" over it, on the Redis given. */
async function node(redisNodes: string, keyPrefix: string): Promise<ChildServer> {
  const s = await spawnServer(["--root", root, "--listen", "127.0.0.1:0"], {
    env: {
      TFTPD_LIMITS_SCOPE: "cluster",
      TFTPD_LIMITS_MAX_CONNECTIONS_PER_IP: "1",
      TFTPD_LIMITS_ON_LIMIT: "busy",
      TFTPD_CACHE_REDIS_NODES: redisNodes,
      TFTPD_CACHE_REDIS_KEY_PREFIX: keyPrefix,
    },
  });
  running.push(s);
  return s;
}

async function metric(s: ChildServer, name: string): Promise<string> {
  const response = await fetch(`${s.metricsUrl}/metrics`, { signal: AbortSignal.timeout(3000) });
  return (await response.text()).split("\n").filter((l) => l.startsWith(name)).join("\n");
}

test("a transfer held on node A makes node B answer busy to the same address; once it ends, B serves", async () => {
  const prefix = `t-${crypto.randomUUID()}:`;
  const [a, b] = await Promise.all([node(cluster.seeds, prefix), node(cluster.seeds, prefix)]);
  await Promise.all([a, b].map((s) => s.waitForLog((l) => l.msg === "redis up", 10_000)));

  // node A: DATA 1 arrives and is never acknowledged, so the transfer stays open
  const held = await peers.open();
  held.send(rrq("boot.img"), a.port, "127.0.0.1");
  const first = await held.nextData(1);

  const second = await peers.open();
  second.send(rrq("boot.img"), b.port, "127.0.0.1");
  const refused = await second.nextError(0);
  expect(refused.packet.message).toContain("busy");
  expect(refused.packet.message).toContain("per-ip");
  expect(refused.packet.message).toContain("across the cluster");
  expect(refused.port).toBe(b.port); // from B's listener: no transfer started
  expect(await metric(b, "tftpd_admission_refusals_total")).toContain('limit="per-ip"');

  // the held client gives up: A ends the transfer and gives its lease back
  held.send(error(0, "user aborted"), first.port, first.address);
  await a.waitForLog((l) => l.msg === "transfer" && l.result === "client-error", 5000);

  const deadline = performance.now() + 5000;
  for (;;) {
    const client = await peers.open();
    try {
      const r = await download(client, b.port, "boot.img", { host: "127.0.0.1" });
      expect(sha256(r.bytes)).toBe(sha256(image));
      break;
    } catch (failure) {
      // the release may trail the transfer's end by a Redis round trip
      if (performance.now() > deadline) throw failure;
      await Bun.sleep(100);
    }
  }
  await b.waitForLog((l) => l.msg === "transfer" && l.result === "ok", 3000);
});

test("Redis out of reach: the node serves on its own limits and logs that cluster limits are unavailable", async () => {
  const deadPort = await closedPort();
  const s = await node(`127.0.0.1:${deadPort}`, `t-${crypto.randomUUID()}:`);

  const client = await peers.open();
  const r = await within(download(client, s.port, "boot.img", { host: "127.0.0.1" }), 5000, "download");
  expect(sha256(r.bytes)).toBe(sha256(image));
  const warned = await s.waitForLog((l) => l.msg === "cluster limits unavailable: admitting on this node's limits alone", 3000);
  expect(typeof warned.error).toBe("string");
  // the transfer's slot is free once its end is recorded (a worker reports it to the main thread)
  await s.waitForLog((l) => l.msg === "transfer" && l.result === "ok", 3000);

  // the node's own per-IP limit of 1 still holds
  const held = await peers.open();
  held.send(rrq("boot.img"), s.port, "127.0.0.1");
  const first = await held.nextData(1);
  expect(first.packet.op).toBe(Opcode.DATA);
  const second = await peers.open();
  second.send(rrq("boot.img"), s.port, "127.0.0.1");
  expect((await second.nextError(0)).packet.message).toContain("per-ip");
  // reported once per outage, not once per request
  expect(s.logs.filter((l) => l.msg === "cluster limits unavailable: admitting on this node's limits alone").length).toBe(1);
});

/** An in-process server whose limits count across the fleet through leases of its own link. */
async function inProcessNode(keyPrefix: string, nodeId: string): Promise<{ s: InProcessServer; leases: ClusterLeases }> {
  const link = new RedisLink({
    nodes: cluster.nodes,
    clusterMode: true,
    password: null,
    tls: false,
    keyPrefix,
    noDelay: true,
    keepAlive: false,
    commandTimeoutMs: 2000,
  });
  cleanups.push(() => link.client.disconnect());
  expect(await link.waitUp(10_000)).toBe(true);
  const leases = new ClusterLeases(link, { nodeId });
  cleanups.push(() => leases.stop());
  const s = await startServer(
    root,
    { timeoutMs: 1000, retries: 5, limits: { maxTotal: 100, maxPerIp: 1, maxPerClient: 100, onLimit: "drop" } },
    { sharedAdmission: leaseAdmission(leases) },
  );
  cleanups.push(() => s.stop());
  return { s, leases };
}

test('in process, "drop": node B ignores the held address; refusals after a lease (missing files) give it back', async () => {
  const prefix = `t-${crypto.randomUUID()}:`;
  const a = await inProcessNode(prefix, "node-a");
  const b = await inProcessNode(prefix, "node-b");

  const held = await peers.open();
  held.send(rrq("boot.img"), a.s.port, a.s.host);
  const first = await held.nextData(1);
  expect(a.leases.held).toBe(1);

  const dropped = await peers.open();
  dropped.send(rrq("boot.img"), b.s.port, b.s.host);
  await dropped.expectNothing(300);
  expect(b.leases.held).toBe(0);

  // another address is served by B meanwhile; a missing file is refused after its lease
  const other = await peers.open("127.0.0.2");
  const r = await download(other, b.s.port, "boot.img", { host: b.s.host });
  expect(sha256(r.bytes)).toBe(sha256(image));
  for (let i = 0; i < 5; i++) {
    const missing = await peers.open("127.0.0.2");
    missing.send(rrq(`missing-${i}.img`), b.s.port, b.s.host);
    await missing.nextError(1);
  }
  await recordWhere(b.s, (t) => t.result === "ok");
  expect(b.leases.held).toBe(0);

  held.send(error(0, "user aborted"), first.port, first.address);
  await recordWhere(a.s, (t) => t.result === "client-error");
  expect(a.leases.held).toBe(0);
  const deadline = performance.now() + 5000;
  for (;;) {
    try {
      const again = await download(await peers.open(), b.s.port, "boot.img", { host: b.s.host, timeoutMs: 500 });
      expect(sha256(again.bytes)).toBe(sha256(image));
      break;
    } catch (failure) {
      if (performance.now() > deadline) throw failure;
    }
  }
});

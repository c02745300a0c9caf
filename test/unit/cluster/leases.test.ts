/**
 * Fleet-wide transfer leases against a real Redis Cluster: two ClusterLeases with different
 * node ids on one key prefix stand for two tftpd nodes. They share the per-address and total
 * limits whichever node asks; a released lease frees its slot at once; a node that dies (its
 * link cut, so it neither renews nor releases) stops counting once its leases expire; renewal
 * keeps a long transfer counted past the lease length; and a Redis that is out of reach or
 * stalled answers "unavailable" within the command timeout.
 */
import { afterEach, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { ClusterLeases, type LeaseOptions } from "../../../src/cluster/leases.ts";
import { RedisLink, type RedisSettings } from "../../../src/cluster/redis.ts";
import { sharedRedisCluster, type RedisClusterHandle } from "../../helpers/redis-cluster.ts";
import { closedPort } from "../../helpers/ports.ts";

setDefaultTimeout(20_000);

const IP = "10.1.2.3";
const OTHER_IP = "10.1.2.4";
const WIDE = { maxPerIp: 1000, maxTotal: 1000 };

let cluster: RedisClusterHandle;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  cluster = await sharedRedisCluster();
}, 60_000);

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function settings(nodes: string[], keyPrefix: string, overrides: Partial<RedisSettings> = {}): RedisSettings {
  return { nodes, clusterMode: true, password: null, tls: false, keyPrefix, noDelay: true, keepAlive: false, commandTimeoutMs: 2000, ...overrides };
}

/** A link that is up, closed after the test. */
async function connect(s: RedisSettings): Promise<RedisLink> {
  const link = new RedisLink(s);
  cleanups.push(() => link.client.disconnect());
  expect(await link.waitUp(10_000)).toBe(true);
  return link;
}

/** One tftpd node's leases, on a link of its own; stopped after the test. */
async function node(prefix: string, options: LeaseOptions): Promise<{ leases: ClusterLeases; link: RedisLink }> {
  const link = await connect(settings(cluster.nodes, prefix));
  const leases = new ClusterLeases(link, options);
  cleanups.push(() => leases.stop());
  return { leases, link };
}

const uniquePrefix = (): string => `t-${crypto.randomUUID()}:`;

async function acquired(leases: ClusterLeases, address: string, limits: { maxPerIp: number; maxTotal: number }): Promise<string> {
  const r = await leases.acquire(address, limits);
  if (!r.ok) throw new Error(`expected a lease, got refusal ${r.refusal}`);
  return r.lease;
}

describe("shared limits", () => {
  test("per-IP limit 2 across two nodes: the third lease is refused whichever node asks", async () => {
    const prefix = uniquePrefix();
    const a = await node(prefix, { nodeId: "node-a" });
    const b = await node(prefix, { nodeId: "node-b" });
    const limits = { maxPerIp: 2, maxTotal: 1000 };

    const first = await acquired(a.leases, IP, limits);
    const second = await acquired(b.leases, IP, limits);
    expect(first).toBe("node-a:1");
    expect(second).toBe("node-b:1");
    expect(await a.leases.acquire(IP, limits)).toEqual({ ok: false, refusal: "per-ip" });
    expect(await b.leases.acquire(IP, limits)).toEqual({ ok: false, refusal: "per-ip" });
    await acquired(b.leases, OTHER_IP, limits); // the limit is per address

    const ipKey = a.link.keys.leasesOfIp(IP);
    expect((await a.link.client.zrange(ipKey, 0, "-1")).sort()).toEqual(["node-a:1", "node-b:1"]);
    expect(await a.link.client.zcard(a.link.keys.leasesTotal)).toBe(3);
    // the key itself expires with its last lease: a dead address leaves nothing behind
    const pttl = await a.link.client.pttl(ipKey);
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(30_000);
    expect(a.leases.held).toBe(1);
    expect(b.leases.held).toBe(2);
  });

  test("total limit across nodes; a refusal by the total gives the per-IP lease back", async () => {
    const prefix = uniquePrefix();
    const a = await node(prefix, { nodeId: "node-a" });
    const b = await node(prefix, { nodeId: "node-b" });
    const limits = { maxPerIp: 10, maxTotal: 3 };

    await acquired(a.leases, "10.0.0.1", limits);
    await acquired(b.leases, "10.0.0.2", limits);
    await acquired(a.leases, "10.0.0.3", limits);
    expect(await b.leases.acquire("10.0.0.4", limits)).toEqual({ ok: false, refusal: "total" });
    expect(await a.leases.acquire("10.0.0.1", limits)).toEqual({ ok: false, refusal: "total" });
    expect(await a.link.client.zcard(a.link.keys.leasesOfIp("10.0.0.4"))).toBe(0);
    expect(await a.link.client.zcard(a.link.keys.leasesOfIp("10.0.0.1"))).toBe(1);
    expect(await a.link.client.zcard(a.link.keys.leasesTotal)).toBe(3);
    expect(a.leases.held + b.leases.held).toBe(3);
  });

  test("a release frees the slot at once, for any node", async () => {
    const prefix = uniquePrefix();
    const a = await node(prefix, { nodeId: "node-a" });
    const b = await node(prefix, { nodeId: "node-b" });
    const limits = { maxPerIp: 2, maxTotal: 2 };

    await acquired(a.leases, IP, limits);
    const lease = await acquired(b.leases, IP, limits);
    expect((await a.leases.acquire(IP, limits)).ok).toBe(false);
    await b.leases.release(lease, IP);
    expect(b.leases.held).toBe(0);
    await acquired(a.leases, IP, limits);
    expect(a.leases.held).toBe(2);
    expect((await b.leases.acquire(OTHER_IP, limits)).ok).toBe(false); // total 2 reached again
  });

  test("stop() gives back every lease the node holds", async () => {
    const prefix = uniquePrefix();
    const a = await node(prefix, { nodeId: "node-a" });
    const b = await node(prefix, { nodeId: "node-b" });
    const limits = { maxPerIp: 2, maxTotal: 1000 };

    await acquired(a.leases, IP, limits);
    await acquired(a.leases, IP, limits);
    expect((await b.leases.acquire(IP, limits)).ok).toBe(false);
    await a.leases.stop();
    expect(a.leases.held).toBe(0);
    await acquired(b.leases, IP, limits);
    await acquired(b.leases, IP, limits);
    expect(await a.leases.acquire(IP, WIDE)).toMatchObject({ ok: false, refusal: "unavailable" });
  });
});

describe("expiry and renewal", () => {
  test("a node that dies without releasing stops counting once its leases expire (leaseMs 1500)", async () => {
    const prefix = uniquePrefix();
    const dying = await node(prefix, { nodeId: "node-dying", leaseMs: 1500, renewMs: 500 });
    const b = await node(prefix, { nodeId: "node-b", leaseMs: 1500, renewMs: 500 });
    const limits = { maxPerIp: 2, maxTotal: 2 };

    await acquired(dying.leases, IP, limits);
    await acquired(dying.leases, IP, limits);
    const died = performance.now();
    dying.link.client.disconnect(); // a crash: no renewal reaches Redis, no release either
    expect(await b.leases.acquire(IP, limits)).toEqual({ ok: false, refusal: "per-ip" });

    let lease: string | null = null;
    while (lease === null && performance.now() - died < 5000) {
      const r = await b.leases.acquire(IP, limits);
      if (r.ok) lease = r.lease;
      else await Bun.sleep(100);
    }
    const after = performance.now() - died;
    expect(lease).not.toBeNull();
    expect(after).toBeGreaterThan(1000);
    expect(after).toBeLessThan(3000);
    await acquired(b.leases, IP, limits); // both dead leases are gone
  });

  test("renewal keeps a long transfer's lease alive well past leaseMs", async () => {
    const prefix = uniquePrefix();
    const a = await node(prefix, { nodeId: "node-a", leaseMs: 1500, renewMs: 400 });
    const b = await node(prefix, { nodeId: "node-b", leaseMs: 1500, renewMs: 400 });
    const limits = { maxPerIp: 1, maxTotal: 1000 };

    const lease = await acquired(a.leases, IP, limits);
    for (let i = 0; i < 8; i++) {
      await Bun.sleep(500);
      expect(await b.leases.acquire(IP, limits)).toEqual({ ok: false, refusal: "per-ip" });
    }
    const expiry = Number(await a.link.client.zscore(a.link.keys.leasesTotal, lease));
    const [seconds = 0, micros = 0] = (await a.link.client.time()).map(Number);
    const serverNow = seconds * 1000 + Math.floor(micros / 1000);
    expect(expiry - serverNow).toBeGreaterThan(0);
    expect(expiry - serverNow).toBeLessThanOrEqual(1500);

    await a.leases.release(lease, IP);
    await acquired(b.leases, IP, limits);
  });
});

describe("Redis out of reach", () => {
  test("a link to an address where nothing listens answers unavailable at once", async () => {
    const port = await closedPort();
    const link = new RedisLink(settings([`127.0.0.1:${port}`], uniquePrefix()));
    cleanups.push(() => link.client.disconnect());
    const leases = new ClusterLeases(link, { nodeId: "node-a" });
    cleanups.push(() => leases.stop());

    for (let i = 0; i < 3; i++) {
      const started = performance.now();
      const r = await leases.acquire(IP, WIDE);
      expect(r).toMatchObject({ ok: false, refusal: "unavailable" });
      expect(performance.now() - started).toBeLessThan(2500);
      await Bun.sleep(200);
    }
    expect(leases.held).toBe(0);
  });

  test("a Redis that stops answering: unavailable within the command timeout, served again once it resumes", async () => {
    const port = await closedPort();
    const proc = Bun.spawn(
      ["/usr/bin/redis-server", "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
      { stdout: "ignore", stderr: "ignore" },
    );
    cleanups.push(async () => {
      proc.kill("SIGCONT");
      proc.kill("SIGKILL");
      await proc.exited;
    });
    const link = await connect(settings([`127.0.0.1:${port}`], uniquePrefix(), { clusterMode: false, commandTimeoutMs: 500 }));
    const leases = new ClusterLeases(link, { nodeId: "node-a" });
    cleanups.push(() => leases.stop());

    const lease = await acquired(leases, IP, { maxPerIp: 1, maxTotal: 10 });
    proc.kill("SIGSTOP");
    const started = performance.now();
    const r = await leases.acquire(OTHER_IP, WIDE);
    const took = performance.now() - started;
    expect(r).toMatchObject({ ok: false, refusal: "unavailable" });
    expect(took).toBeGreaterThan(300);
    expect(took).toBeLessThan(1500);

    proc.kill("SIGCONT");
    await leases.release(lease, IP);
    let again = await leases.acquire(IP, { maxPerIp: 1, maxTotal: 10 });
    for (let i = 0; i < 20 && !again.ok; i++) {
      await Bun.sleep(100);
      again = await leases.acquire(IP, { maxPerIp: 1, maxTotal: 10 });
    }
    expect(again.ok).toBe(true);
  });
});

/**
 * The fleet's shared cache end to end: a real Redis Cluster, two real `tftpd serve` processes
 * with separate empty roots, `tftpd cache put/ls/rm` from the CLI, and curl fetching.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { connectOrFail } from "../../../src/cluster/redis.ts";
import { sha256Hex } from "../../../src/cluster/content.ts";
import { patternBytes, removeDir, tempDir } from "../../helpers/files.ts";
import { sharedRedisCluster, type RedisClusterHandle } from "../../helpers/redis-cluster.ts";
import { run, tftpd } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

let cluster: RedisClusterHandle;
let work: string;
let nodeA: ChildServer;
let nodeB: ChildServer;
const prefix = `t-${crypto.randomUUID()}:`;
let env: Record<string, string>;

function cli(args: string[], extraEnv: Record<string, string> = {}) {
  return tftpd(args, { env: { ...process.env, ...env, ...extraEnv }, timeoutMs: 30_000 });
}

async function fetch(node: ChildServer, name: string): Promise<{ exitCode: number; bytes: Uint8Array | null }> {
  const out = join(work, `got-${crypto.randomUUID()}`);
  const r = await run(["curl", "-s", "--tftp-blksize", "1468", "-o", out, `tftp://127.0.0.1:${node.port}/${name}`], { timeoutMs: 30_000 });
  let bytes: Uint8Array | null = null;
  try {
    bytes = readFileSync(out);
  } catch {
    // nothing written
  }
  return { exitCode: r.exitCode, bytes: r.exitCode === 0 ? bytes : null };
}

function put(file: string, ...flags: string[]) {
  return cli(["cache", "put", file, "--redis", cluster.seeds, ...flags]);
}

beforeAll(async () => {
  cluster = await sharedRedisCluster();
  work = tempDir("tftpd-cluster-cache-");
  env = { TFTPD_CACHE_REDIS_KEY_PREFIX: prefix, TFTPD_CONFIG: join(work, "none.json") };
  writeFileSync(env.TFTPD_CONFIG!, "{}");
  const serverEnv = { ...env, TFTPD_CACHE_REDIS_NODES: cluster.seeds, TFTPD_CACHE_TYPE: "distributed", TFTPD_LOG_LEVEL: "info" };
  for (const name of ["rootA", "rootB"]) Bun.spawnSync(["mkdir", "-p", join(work, name)]);
  [nodeA, nodeB] = await Promise.all([
    spawnServer(["--root", join(work, "rootA"), "--listen", "127.0.0.1:0"], { env: serverEnv }),
    // node B serves its root over HTTP too: what only the fleet holds must come out there as well
    spawnServer(["--root", join(work, "rootB"), "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"], { env: serverEnv }),
  ]);
  await Promise.all([nodeA, nodeB].map((n) => n.waitForLog((l) => l.msg === "redis up")));
}, 60_000);

afterAll(async () => {
  await Promise.all([nodeA?.stop(), nodeB?.stop()]);
  removeDir(work);
});

describe("cache put on one node, fetch from another", () => {
  test("byte-exact, uncompressed and gzip-compressed", async () => {
    const random = patternBytes(2_500_000, 7); // incompressible, three chunks
    const text = new TextEncoder().encode("label linux\n  kernel vmlinuz\n".repeat(20_000)); // compresses well
    writeFileSync(join(work, "random.bin"), random);
    writeFileSync(join(work, "menu.cfg"), text);

    const plain = await put(join(work, "random.bin"), "--name", "boot/random.bin", "--compression", "none");
    expect(plain.stderr).toBe("");
    expect(plain.stdout).toContain("published boot/random.bin size 2.4 MiB stored 2.4 MiB chunks 3 compression none");
    const zipped = await put(join(work, "menu.cfg"), "--name", "pxelinux.cfg/default", "--compression", "gzip");
    expect(zipped.exitCode).toBe(0);
    const stored = /stored (\S+) (\S+)/.exec(zipped.stdout)!;
    expect(stored[2]).toBe("KiB"); // 580 KiB of text stored in a few KiB
    expect(Number(stored[1])).toBeLessThan(50);

    const [a, b] = await Promise.all([fetch(nodeB, "boot/random.bin"), fetch(nodeB, "pxelinux.cfg/default")]);
    expect(a.exitCode).toBe(0);
    expect(sha256Hex(a.bytes!)).toBe(sha256Hex(random));
    expect(b.exitCode).toBe(0);
    expect(Buffer.from(b.bytes!).equals(Buffer.from(text))).toBe(true);
    await nodeB.waitForLog((l) => l.msg === "fetched from the cluster cache" && l.file === "boot/random.bin");

    const ls = await cli(["cache", "ls", "--redis", cluster.seeds, "--json"]);
    const listed = JSON.parse(ls.stdout).files as { name: string; compression: string; lastServedMs: number | null }[];
    expect(listed.find((f) => f.name === "boot/random.bin")?.compression).toBe("none");
    expect(listed.find((f) => f.name === "pxelinux.cfg/default")?.compression).toBe("gzip");
    expect(listed.find((f) => f.name === "boot/random.bin")?.lastServedMs).not.toBeNull();
  }, 60_000);

  test("a file only the fleet holds is served over HTTP too, whole, from a node that never had it", async () => {
    const kernel = patternBytes(3_100_000, 17);
    writeFileSync(join(work, "kernel.bin"), kernel);
    expect((await put(join(work, "kernel.bin"), "--name", "http/kernel.bin", "--compression", "gzip")).exitCode).toBe(0);
    const base = `http://${nodeB.logs.find((l) => l.msg === "http listening")!.address}`;
    const r = await globalThis.fetch(`${base}/http/kernel.bin`);
    expect(r.status).toBe(200);
    expect(r.headers.get("content-length")).toBe(String(kernel.length));
    expect(sha256Hex(new Uint8Array(await r.arrayBuffer()))).toBe(sha256Hex(kernel));
    const part = await globalThis.fetch(`${base}/http/kernel.bin`, { headers: { range: "bytes=3000000-" } });
    expect(part.status).toBe(206);
    expect(sha256Hex(new Uint8Array(await part.arrayBuffer()))).toBe(sha256Hex(kernel.subarray(3_000_000)));
    expect((await globalThis.fetch(`${base}/http/not-published.bin`)).status).toBe(404);
  }, 60_000);

  test("the local root comes first", async () => {
    writeFileSync(join(work, "rootA", "shared.bin"), "local copy on A\n");
    writeFileSync(join(work, "shared.bin"), "fleet copy\n");
    expect((await put(join(work, "shared.bin"))).exitCode).toBe(0);
    const [fromA, fromB] = await Promise.all([fetch(nodeA, "shared.bin"), fetch(nodeB, "shared.bin")]);
    expect(new TextDecoder().decode(fromA.bytes!)).toBe("local copy on A\n");
    expect(new TextDecoder().decode(fromB.bytes!)).toBe("fleet copy\n");
  }, 30_000);

  test("concurrent requests for a file share one fetch", async () => {
    const bytes = patternBytes(3_000_000, 11);
    writeFileSync(join(work, "initrd.img"), bytes);
    expect((await put(join(work, "initrd.img"))).exitCode).toBe(0);
    const results = await Promise.all(Array.from({ length: 10 }, () => fetch(nodeA, "initrd.img")));
    for (const r of results) expect(sha256Hex(r.bytes!)).toBe(sha256Hex(bytes));
    const fills = nodeA.logs.filter((l) => l.msg === "fetched from the cluster cache" && l.file === "initrd.img");
    expect(fills.length).toBe(1);
  }, 60_000);

  test("a file not on disk and not published is not found", async () => {
    const r = await fetch(nodeB, "nowhere.bin");
    expect(r.exitCode).toBe(68); // curl: TFTP file not found
  }, 30_000);
});

describe("lifetime of published files", () => {
  test("ttl: a file expires from the cache, and nodes stop serving it", async () => {
    writeFileSync(join(work, "short.bin"), patternBytes(10_000, 3));
    const r = await put(join(work, "short.bin"), "--ttl", "1");
    expect(r.stdout).toContain("ttl 1s");
    expect((await fetch(nodeB, "short.bin")).exitCode).toBe(0);
    await Bun.sleep(2200);
    expect((await fetch(nodeB, "short.bin")).exitCode).toBe(68);
    const ls = await cli(["cache", "ls", "--redis", cluster.seeds]);
    expect(ls.stdout).not.toContain("file short.bin ");
  }, 30_000);

  test("max_size: publishing past it evicts the least recently served file", async () => {
    const own = { TFTPD_CACHE_REDIS_KEY_PREFIX: `${prefix}evict:`, TFTPD_CACHE_MAX_SIZE: "3Mi" };
    const serverEnv = { ...env, ...own, TFTPD_CACHE_REDIS_NODES: cluster.seeds, TFTPD_CACHE_TYPE: "distributed" };
    const root = join(work, "rootC");
    Bun.spawnSync(["mkdir", "-p", root]);
    const node = await spawnServer(["--root", root, "--listen", "127.0.0.1:0"], { env: serverEnv });
    try {
      for (const [i, name] of ["one", "two", "three"].entries()) writeFileSync(join(work, name), patternBytes(1_200_000, 20 + i));
      expect((await cli(["cache", "put", join(work, "one"), "--redis", cluster.seeds], own)).exitCode).toBe(0);
      expect((await cli(["cache", "put", join(work, "two"), "--redis", cluster.seeds], own)).exitCode).toBe(0);
      await node.waitForLog((l) => l.msg === "redis up");
      expect((await fetch(node, "one")).exitCode).toBe(0); // "one" is now served more recently than "two"
      const third = await cli(["cache", "put", join(work, "three"), "--redis", cluster.seeds], own);
      expect(third.exitCode).toBe(0);
      expect(third.stdout).toContain("evicted two (least recently served)");
      const ls = await cli(["cache", "ls", "--redis", cluster.seeds, "--json"], own);
      expect((JSON.parse(ls.stdout).files as { name: string }[]).map((f) => f.name).sort()).toEqual(["one", "three"]);
      const tooBig = join(work, "huge");
      writeFileSync(tooBig, patternBytes(4 << 20, 9));
      const refused = await cli(["cache", "put", tooBig, "--redis", cluster.seeds], own);
      expect(refused.exitCode).toBe(1);
      expect(refused.stderr).toContain("exceed cache.max_size");
    } finally {
      await node.stop();
    }
  }, 60_000);

  test("cache rm removes a file; removing it again says so", async () => {
    writeFileSync(join(work, "gone.bin"), "x".repeat(5000));
    expect((await put(join(work, "gone.bin"))).exitCode).toBe(0);
    const rm = await cli(["cache", "rm", "gone.bin", "--redis", cluster.seeds]);
    expect(rm.stdout).toBe("removed gone.bin\n");
    expect((await fetch(nodeB, "gone.bin")).exitCode).toBe(68);
    const again = await cli(["cache", "rm", "gone.bin", "--redis", cluster.seeds]);
    expect(again.exitCode).toBe(1);
    expect(again.stderr).toBe("tftpd cache rm: gone.bin is not in the shared cache\n");
  }, 30_000);
});

describe("damage and bad input", () => {
  test("a tampered chunk is never served, not even after the chunks before it; publishing again repairs it", async () => {
    const bytes = patternBytes(2_500_000, 5);
    writeFileSync(join(work, "kernel"), bytes);
    expect((await put(join(work, "kernel"), "--compression", "none")).exitCode).toBe(0);
    const link = await connectOrFail({ nodes: cluster.nodes, clusterMode: true, password: null, tls: false, keyPrefix: prefix, noDelay: true, keepAlive: true, commandTimeoutMs: 2000 });
    try {
      // the second chunk: the transfer has started on the first one when the damage shows
      const key = link.keys.chunk(sha256Hex(bytes.subarray(1 << 20, 2 << 20)), "raw");
      const stored = (await link.client.getBuffer(key))!;
      stored[1000] = stored[1000]! ^ 0xff;
      await link.client.set(key, stored);
    } finally {
      await link.close();
    }
    const refused = await fetch(nodeB, "kernel");
    expect(refused.exitCode).not.toBe(0);
    expect(refused.bytes).toBeNull();
    const logged = await nodeB.waitForLog((l) => l.msg === "cluster cache fetch failed: not served" && l.file === "kernel");
    expect(String(logged.error)).toContain("does not match its sha256");

    expect((await put(join(work, "kernel"), "--compression", "none")).exitCode).toBe(0);
    const repaired = await fetch(nodeB, "kernel");
    expect(sha256Hex(repaired.bytes!)).toBe(sha256Hex(bytes));
  }, 30_000);

  test("cache put names the file or the address at fault", async () => {
    const missing = await put(join(work, "no-such-file"));
    expect(missing.exitCode).toBe(1);
    expect(missing.stderr).toBe(`tftpd cache put: ${join(work, "no-such-file")}: no such file\n`);
    const badName = await put(join(work, "random.bin"), "--name", "../etc/passwd");
    expect(badName.exitCode).toBe(2);
    expect(badName.stderr).toContain("--name ../etc/passwd");
    const started = Date.now();
    const down = await cli(["cache", "ls", "--redis", "127.0.0.1:1"]);
    expect(down.exitCode).toBe(1);
    expect(down.stderr).toContain("Redis at 127.0.0.1:1 not reachable");
    expect(Date.now() - started).toBeLessThan(15_000);
    const noNodes = await cli(["cache", "ls"]);
    expect(noNodes.exitCode).toBe(2);
    expect(noNodes.stderr).toContain("no Redis nodes");
  }, 30_000);
});

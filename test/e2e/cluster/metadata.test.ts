/**
 * The metadata cache in Redis (cache.metadata_ttl): within the ttl a request is answered from
 * what the cache knows — proven by changing the disk behind it — and after the ttl the disk
 * is asked again. A real Redis Cluster, a real server, curl.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { RedisMetadataCache, decide } from "../../../src/cluster/metadata.ts";
import { RedisLink, connectOrFail, type RedisSettings } from "../../../src/cluster/redis.ts";
import { removeDir, tempDir } from "../../helpers/files.ts";
import { sharedRedisCluster } from "../../helpers/redis-cluster.ts";
import { run } from "../../helpers/run.ts";
import { startServer, type InProcessServer } from "../../helpers/server.ts";

const TTL_S = 2;
let work: string;
let root: string;
let link: RedisLink;
let server: InProcessServer;
let settings: RedisSettings;

async function curl(name: string): Promise<string | null> {
  const out = join(work, `got-${crypto.randomUUID()}`);
  const r = await run(["curl", "-s", "-o", out, `tftp://127.0.0.1:${server.port}/${name}`], { timeoutMs: 20_000 });
  return r.exitCode === 0 ? readFileSync(out, "utf8") : null;
}

beforeAll(async () => {
  const cluster = await sharedRedisCluster();
  work = tempDir("tftpd-metadata-");
  root = join(work, "root");
  mkdirSync(join(root, "pxelinux.cfg"), { recursive: true });
  settings = { nodes: cluster.nodes, clusterMode: true, password: null, tls: false, keyPrefix: `t-${crypto.randomUUID()}:`, noDelay: true, keepAlive: true, commandTimeoutMs: 2000 };
  link = await connectOrFail(settings);
  server = await startServer(root, {}, { metadata: new RedisMetadataCache(link, root, TTL_S, "node") });
}, 60_000);

afterAll(async () => {
  await server?.stop();
  await link?.close();
  removeDir(work);
});

describe("metadata cache", () => {
  test("a known file is served from memory without the disk until the ttl ends", async () => {
    writeFileSync(join(root, "pxelinux.0"), "boot loader v1\n");
    expect(await curl("pxelinux.0")).toBe("boot loader v1\n");
    // the disk loses the file; within the ttl the cache still knows it, and memory holds it
    rmSync(join(root, "pxelinux.0"));
    expect(await curl("pxelinux.0")).toBe("boot loader v1\n");
    await Bun.sleep(TTL_S * 1000 + 300);
    expect(await curl("pxelinux.0")).toBeNull();
  }, 30_000);

  test("missing names are answered from the directory listing until the ttl ends", async () => {
    expect(await curl("pxelinux.cfg/01-52-54-00-12-34-56")).toBeNull();
    const listingKey = link.keys.listing(`${(await import("node:os")).hostname()}:${root}`, "pxelinux.cfg");
    expect(JSON.parse((await link.client.get(listingKey))!)).toEqual([]);
    // another probe in the same directory: no disk needed, still missing
    writeFileSync(join(root, "pxelinux.cfg", "C0A80101"), "label local\n");
    expect(await curl("pxelinux.cfg/C0A80101")).toBeNull();
    await Bun.sleep(TTL_S * 1000 + 300);
    expect(await curl("pxelinux.cfg/C0A80101")).toBe("label local\n");
  }, 30_000);

  test("a changed file is served in its new version once the entry expires", async () => {
    writeFileSync(join(root, "menu.cfg"), "old\n");
    expect(await curl("menu.cfg")).toBe("old\n");
    writeFileSync(join(root, "menu.cfg"), "new!\n");
    await Bun.sleep(TTL_S * 1000 + 300);
    expect(await curl("menu.cfg")).toBe("new!\n");
  }, 30_000);

  test("Redis unreachable: the disk answers, nothing waits", async () => {
    const dead = new RedisLink({ ...settings, nodes: ["127.0.0.1:1"] });
    const other = await startServer(root, {}, { metadata: new RedisMetadataCache(dead, root, TTL_S, "node") });
    try {
      writeFileSync(join(root, "plain.bin"), "from disk\n");
      const out = join(work, "plain");
      const r = await run(["curl", "-s", "-o", out, `tftp://127.0.0.1:${other.port}/plain.bin`], { timeoutMs: 10_000 });
      expect(r.exitCode).toBe(0);
      expect(readFileSync(out, "utf8")).toBe("from disk\n");
    } finally {
      await other.stop();
      await dead.close();
    }
  }, 30_000);

  test("decide: entry first, then the listing", () => {
    expect(decide(JSON.stringify({ kind: "file", size: 3, mtimeMs: 1, ctimeMs: 2 }), null, "a")).toEqual({ kind: "file", size: 3, mtimeMs: 1, ctimeMs: 2 });
    expect(decide(null, JSON.stringify(["a", "b"]), "c")).toEqual({ kind: "missing" });
    expect(decide(null, JSON.stringify(["a", "b"]), "a")).toBeNull();
    expect(decide("not json", "also not", "a")).toBeNull();
    expect(decide(null, null, "a")).toBeNull();
  });
});

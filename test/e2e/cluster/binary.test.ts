/**
 * Cluster mode in the compiled binary (ioredis bundled into it): the binary publishes a file
 * to a real Redis Cluster, a binary node with an empty root serves it, and reports itself in
 * `cluster status`.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { sha256Hex } from "../../../src/cluster/content.ts";
import { compiledBinary } from "../../helpers/binary.ts";
import { patternBytes, removeDir, tempDir } from "../../helpers/files.ts";
import { sharedRedisCluster, type RedisClusterHandle } from "../../helpers/redis-cluster.ts";
import { run } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

let binary: string;
let cluster: RedisClusterHandle;
let work: string;
let node: ChildServer | null = null;
const env = { ...process.env, TFTPD_CACHE_REDIS_KEY_PREFIX: `t-${crypto.randomUUID()}:` };

beforeAll(async () => {
  [binary, cluster] = await Promise.all([compiledBinary(), sharedRedisCluster()]);
  work = tempDir("tftpd-cluster-binary-");
}, 180_000);

afterAll(async () => {
  await node?.stop();
  removeDir(work);
});

test("the binary publishes to the cluster, serves from it and shows in cluster status", async () => {
  const bytes = patternBytes(1_500_000, 77);
  writeFileSync(join(work, "grubx64.efi"), bytes);
  const put = await run([binary, "cache", "put", join(work, "grubx64.efi"), "--name", "efi/grubx64.efi", "--redis", cluster.seeds], { env, timeoutMs: 30_000 });
  expect(put.stderr).toBe("");
  expect(put.stdout).toStartWith("published efi/grubx64.efi ");

  const root = join(work, "root");
  mkdirSync(root);
  node = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--redis", cluster.seeds, "--no-tune"], { binary, env });
  const out = join(work, "got.efi");
  const r = await run(["curl", "-s", "-o", out, `tftp://127.0.0.1:${node.port}/efi/grubx64.efi`], { timeoutMs: 30_000 });
  expect(r.exitCode).toBe(0);
  expect(sha256Hex(readFileSync(out))).toBe(sha256Hex(bytes));

  const status = await run([binary, "cluster", "status", "--redis", cluster.seeds, "--json"], { env, timeoutMs: 30_000 });
  expect(status.exitCode).toBe(0);
  const fleet = JSON.parse(status.stdout) as { nodes: { state: string; addresses?: string[] }[] };
  expect(fleet.nodes.some((n) => n.state === "live" && n.addresses?.includes(`127.0.0.1:${node!.port}`))).toBe(true);
}, 120_000);

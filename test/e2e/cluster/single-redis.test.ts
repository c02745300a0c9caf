/**
 * cache.redis.cluster_mode false: the fleet on one plain Redis server (no cluster), from
 * publishing to serving and the fleet view.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { patternBytes, removeDir, tempDir } from "../../helpers/files.ts";
import { run, tftpd } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

let work: string;
let port: number;
let pid: number | null = null;
let node: ChildServer | null = null;

beforeAll(async () => {
  work = tempDir("tftpd-single-redis-");
  port = 16000 + Math.floor(Math.random() * 900);
  const r = await run(
    ["/usr/bin/redis-server", "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "yes", "--dir", work, "--pidfile", join(work, "redis.pid")],
    { timeoutMs: 10_000 },
  );
  expect(r.exitCode).toBe(0);
  for (let i = 0; i < 100 && pid === null; i++) {
    try {
      pid = Number(readFileSync(join(work, "redis.pid"), "utf8"));
    } catch {
      await Bun.sleep(20);
    }
  }
});

afterAll(async () => {
  await node?.stop();
  if (pid) process.kill(pid, "SIGKILL");
  removeDir(work);
});

test("one Redis server: publish, fetch from a node with an empty root, see it in cluster status", async () => {
  const env = { ...process.env, TFTPD_CACHE_REDIS_CLUSTER_MODE: "false", TFTPD_CACHE_REDIS_KEY_PREFIX: "single:" };
  const bytes = patternBytes(2_200_000, 61);
  writeFileSync(join(work, "vmlinuz"), bytes);
  const put = await tftpd(["cache", "put", join(work, "vmlinuz"), "--redis", `127.0.0.1:${port}`], { env, timeoutMs: 20_000 });
  expect(put.stderr).toBe("");
  expect(put.stdout).toContain("published vmlinuz size 2.1 MiB stored 2.1 MiB chunks 3");

  const root = join(work, "root");
  mkdirSync(root);
  node = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--redis", `127.0.0.1:${port}`], { env });
  const out = join(work, "got");
  const fetched = await run(["curl", "-s", "-o", out, `tftp://127.0.0.1:${node.port}/vmlinuz`], { timeoutMs: 20_000 });
  expect(fetched.exitCode).toBe(0);
  expect(Buffer.from(readFileSync(out)).equals(Buffer.from(bytes))).toBe(true);

  const status = await tftpd(["cluster", "status", "--redis", `127.0.0.1:${port}`, "--json"], { env, timeoutMs: 20_000 });
  const fleet = JSON.parse(status.stdout) as { nodes: { state: string }[]; cache: { files: number } };
  expect(fleet.nodes.filter((n) => n.state === "live").length).toBe(1);
  expect(fleet.cache.files).toBe(1);
}, 60_000);

test("one Redis server while the config asks for a cluster: one line saying so and what to set, not a timeout", async () => {
  const env = { ...process.env, TFTPD_CACHE_REDIS_CLUSTER_MODE: undefined };
  writeFileSync(join(work, "initrd"), patternBytes(1000, 62));
  const put = await tftpd(["cache", "put", join(work, "initrd"), "--redis", `127.0.0.1:${port}`], { env, timeoutMs: 30_000 });
  expect(put.exitCode).toBe(1);
  expect(put.stderr).toBe(
    `tftpd cache put: Redis at 127.0.0.1:${port} answers but is not a cluster (cluster support disabled): set cache.redis.cluster_mode false (TFTPD_CACHE_REDIS_CLUSTER_MODE=false)\n`,
  );
}, 60_000);

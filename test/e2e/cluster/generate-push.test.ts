/**
 * Generated files and the fleet's config, end to end: a `tftpd serve` node of a fleet (a real
 * Redis Cluster) renders a machine's iPXE script from its inventory and templates over HTTP;
 * `tftpd config push` of a config that names another inventory and another generated file is
 * applied while it runs (the new rendering served, the old one gone); a pushed inventory the
 * node cannot load (bad JSON, a machine naming no profile, no such file) is rejected in one
 * line naming the file, as SIGHUP rejects it, and the last good rendering is served on.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import { removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { sharedRedisCluster, type RedisClusterHandle } from "../../helpers/redis-cluster.ts";
import { run, tftpd } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

setDefaultTimeout(45_000);

const MAC = "52:54:00:12:34:56";
const MAC_PATH = "52-54-00-12-34-56";

let cluster: RedisClusterHandle;
let prefix: string;
let dir: string;
let node: ChildServer | null = null;
let base: string;

const inventory = (role: string) =>
  JSON.stringify({
    profiles: { debian: { kernel: "debian/vmlinuz", args: "console=ttyS0" } },
    machines: [{ name: "web-1", match: { mac: MAC }, profile: "debian", vars: { role } }],
  });

const script = (role: string) => `#!ipxe\n# web-1 (${role}) ${MAC}\nkernel /debian/vmlinuz console=ttyS0\nboot\n`;
const menu = (role: string) => `#!ipxe\nmenu web-1 is ${role}\n`;

/** `GET PATH` from the node's HTTP listener with curl: the status and the body. */
async function get(path: string): Promise<{ status: number; text: string }> {
  const r = await run(["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", `${base}${path}`], { timeoutMs: 15_000 });
  expect(r.stderr).toBe("");
  const cut = r.stdout.lastIndexOf("\n");
  return { status: Number(r.stdout.slice(cut + 1)), text: r.stdout.slice(0, cut) };
}

/** Polls `GET PATH` until its body is `text` (or fails with the last answer after `timeoutMs`). */
async function servedAs(path: string, text: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await get(path);
    if (r.status === 200 && r.text === text) return;
    if (Date.now() > deadline) throw new Error(`GET ${path}: still ${r.status} ${JSON.stringify(r.text)} after ${timeoutMs} ms`);
    await Bun.sleep(100);
  }
}

/** `tftpd config push FILE --redis SEEDS` with no TFTPD_* variables from the outside world but the key prefix. */
async function push(file: string): Promise<number> {
  const env: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("TFTPD_")) env[k] = v;
  env.TFTPD_CACHE_REDIS_KEY_PREFIX = prefix;
  env.TFTPD_CONFIG = join(dir, "no-local-config.json");
  const r = await tftpd(["config", "push", file, "--redis", cluster.seeds], { env, timeoutMs: 20_000 });
  expect(r.stderr).toBe("");
  expect(r.exitCode).toBe(0);
  const pushed = /^pushed config version (\d+) to /.exec(r.stdout);
  expect(pushed).not.toBeNull();
  return Number(pushed![1]);
}

/** The fleet's config file FILE (below fleet/, relative paths resolve there). */
const fleetFile = (name: string, generate: Record<string, unknown>) => writeFile(dir, `fleet/${name}`, JSON.stringify({ generate }));

const BOTH_FILES = [
  { path: "ipxe/{mac}.ipxe", template: "machine.ipxe.liquid" },
  { path: "menu/{mac}.ipxe", template: "menu.ipxe.liquid" },
];

beforeAll(async () => {
  cluster = await sharedRedisCluster();
  prefix = `t-${crypto.randomUUID()}:`;
  dir = tempDir("tftpd-generate-push-");
  writeFile(dir, "node/root/README", "the root\n");
  writeFile(dir, "node/inventory.json", inventory("web"));
  writeFile(dir, "node/templates/machine.ipxe.liquid", "#!ipxe\n# {{ machine.name }} ({{ machine.role }}) {{ client.mac }}\nkernel /{{ profile.kernel }} {{ profile.args }}\nboot\n");
  writeFile(dir, "node/templates/menu.ipxe.liquid", "#!ipxe\nmenu {{ machine.name }} is {{ machine.role }}\n");
  writeFile(
    dir,
    "node/node.json",
    JSON.stringify({
      tftp: { root: "root", listen: ["127.0.0.1:0"] },
      http: { enabled: true, listen: ["127.0.0.1:0"] },
      generate: { inventory: "inventory.json", templates: "templates", files: [BOTH_FILES[0]] },
      log: { level: "info" },
    }),
  );
  writeFile(dir, "fleet/inventory-2.json", inventory("database"));
  node = await spawnServer(["--config", join(dir, "node/node.json")], {
    env: {
      TFTPD_CACHE_REDIS_NODES: cluster.seeds,
      TFTPD_CACHE_TYPE: "distributed",
      TFTPD_CACHE_REDIS_KEY_PREFIX: prefix,
      TFTPD_TEST_CONFIG_POLL_MS: "200",
    },
  });
  base = `http://${node.logs.find((l) => l.msg === "http listening")!.address}`;
});

afterAll(async () => {
  await node?.stop("SIGKILL");
  if (dir) removeDir(dir);
});

describe("generated files follow a pushed config", () => {
  test("the node renders the machine's script from its own inventory", async () => {
    expect(await get(`/ipxe/${MAC_PATH}.ipxe`)).toEqual({ status: 200, text: script("web") });
    // not a generated file here yet, and not in the root
    expect((await get(`/menu/${MAC_PATH}.ipxe`)).status).toBe(404);
  });

  test("a pushed config naming another inventory and another file is applied while serving", async () => {
    const version = await push(fleetFile("v1.json", { inventory: "inventory-2.json", files: BOTH_FILES }));
    await servedAs(`/ipxe/${MAC_PATH}.ipxe`, script("database"));
    expect(await get(`/menu/${MAC_PATH}.ipxe`)).toEqual({ status: 200, text: menu("database") });
    // the old rendering is gone
    expect((await get(`/ipxe/${MAC_PATH}.ipxe`)).text).not.toContain("(web)");

    const reloaded = await node!.waitForLog((l) => l.msg === "config reloaded" && l.version === version);
    expect(reloaded.changes).toEqual([
      { key: "generate.inventory", from: join(dir, "node/inventory.json"), to: join(dir, "fleet/inventory-2.json") },
      { key: "generate.files", from: [BOTH_FILES[0]], to: BOTH_FILES },
    ]);
    expect(node!.logs.filter((l) => l.msg === "config change needs a restart" || l.msg === "pushed config rejected")).toEqual([]);
  });

  // what the node logs for each: SIGHUP's "config file rejected" carries the same line
  const invalid: [string, string | null, (file: string) => string][] = [
    ["bad JSON", "{ broken", (file) => `${file}:1:`],
    ["a machine naming no profile", JSON.stringify({ machines: [{ match: { mac: MAC }, profile: "nope" }] }), (file) => `${file}: machines.0.profile: no profile named "nope"`],
    ["no such file", null, (file) => `generate.inventory ${file}: ENOENT`],
  ];
  test.each(invalid)("a pushed inventory with %s is rejected in one line naming the file; the last good rendering is served", async (what, text, line) => {
    const name = `bad-${what.replace(/\W+/g, "-")}.json`;
    const file = join(dir, "fleet", name);
    if (text !== null) writeFile(dir, `fleet/${name}`, text);
    // the pusher does not read the nodes' inventories: each node reads its own
    const version = await push(fleetFile(`v-${name}`, { inventory: name, files: BOTH_FILES }));

    const rejected = await node!.waitForLog((l) => l.msg === "pushed config rejected" && l.version === version);
    expect(rejected.level).toBe("error");
    const errors = rejected.errors as string[];
    expect(errors).toHaveLength(1);
    expect(errors[0]).toStartWith(line(file));
    expect(errors[0]).not.toContain("\n");

    expect(await get(`/ipxe/${MAC_PATH}.ipxe`)).toEqual({ status: 200, text: script("database") });
    expect(await get(`/menu/${MAC_PATH}.ipxe`)).toEqual({ status: 200, text: menu("database") });
    await Bun.sleep(600); // a few polls: the version is reported once, nothing of it applied
    expect(node!.logs.filter((l) => l.version === version)).toEqual([rejected]);
  });

  test("the next good push is applied after a rejected one", async () => {
    const version = await push(fleetFile("v2.json", { inventory: "../node/inventory.json", files: BOTH_FILES }));
    await servedAs(`/menu/${MAC_PATH}.ipxe`, menu("web"));
    expect(await get(`/ipxe/${MAC_PATH}.ipxe`)).toEqual({ status: 200, text: script("web") });
    const reloaded = await node!.waitForLog((l) => l.msg === "config reloaded" && l.version === version);
    expect(reloaded.changes).toEqual([{ key: "generate.inventory", from: join(dir, "fleet/inventory-2.json"), to: join(dir, "node/inventory.json") }]);
  });
});

import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { checkConfigFile } from "../../src/cli/config.ts";
import { formatByteSize, parseByteSize } from "../../src/config/bytes.ts";
import { BEGIN_MARK, END_MARK, renderConfigReference } from "../../src/config/docs.ts";
import { findJsonError, parseJson } from "../../src/config/json.ts";
import { coerceText, loadConfig, type LoadOptions, type LoadResult } from "../../src/config/load.ts";
import { parseListenAddress, safeParseCidr, safeParseListenAddress } from "../../src/net/address.ts";
import { CONFIG_KEYS, KEYS_BY_ENV, REMOVED_KEYS, configSchema, defaultConfig, type Config } from "../../src/config/schema.ts";
import { createLogger } from "../../src/log.ts";

const tmp = mkdtempSync(join(tmpdir(), "tftpd-config-test-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let counter = 0;

/** Write `content` (object → JSON, string → as is) to a fresh temp dir; return the file path. */
function writeConfig(content: unknown, name = "config.json"): string {
  const dir = join(tmp, `c${counter++}`);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, name);
  writeFileSync(file, typeof content === "string" ? content : JSON.stringify(content, null, 2));
  return file;
}

const NO_DEFAULT_FILE = join(tmp, "does-not-exist.json");

function load(opts: LoadOptions): LoadResult {
  return loadConfig({ env: {}, defaultFile: NO_DEFAULT_FILE, ...opts });
}

function ok(r: LoadResult): Config {
  if (!r.ok) throw new Error(`expected success, got:\n${r.errors.join("\n")}`);
  return r.config;
}

function errors(r: LoadResult): string[] {
  if (r.ok) throw new Error("expected errors, got a config");
  return r.errors;
}

/**
 * Every JSON block of the seed datacenter performance guide, merged, but for
 * performance.memory.buffer_size: a removed key, refused with what to set instead.
 */
const SEED_GUIDE = {
  performance: {
    cpu: { affinity: "auto", thread_pool_size: 256, worker_threads: 16 },
    memory: { cache_size: "32Gi", connection_pool_size: 10000 },
    network: { tcp_nodelay: true, tcp_keepalive: true, receive_buffer_size: 1048576, send_buffer_size: 1048576 },
  },
  cache: {
    enabled: true,
    type: "distributed",
    backend: "redis",
    redis: { cluster_mode: true, nodes: ["redis-1:6379", "redis-2:6379", "redis-3:6379"] },
    ttl: 3600,
    max_size: "32Gi",
  },
  load_balancing: { algorithm: "consistent_hashing", hash_key: "client_ip" },
  connection_pool: { max_connections: 50000, min_connections: 1000, idle_timeout: 300, max_lifetime: 3600, connection_timeout: 30 },
  limits: { max_connections_per_client: 10, max_connections_per_ip: 100, max_total_connections: 50000 },
  io: { async_io: true, direct_io: false, read_ahead: 1048576, write_behind: true, io_threads: 8 },
  network: { epoll: true, io_uring: true, zero_copy: true },
  compression: { enabled: true, algorithm: "gzip", level: 6, min_size: 1024 },
  batch: { enabled: true, batch_size: 100, batch_timeout: 100 },
};

// -------------------------------------------------------------------------------------------

describe("defaults", () => {
  test("configSchema.parse({}) is the full default config", () => {
    const c = configSchema.parse({});
    expect(c.tftp).toEqual({
      root: "/srv/tftp",
      listen: ["0.0.0.0:69", "[::]:69"],
      user: null,
      port_range: null,
      write: "off",
      max_upload_size: 4 * 1024 ** 3,
      remap: null,
      blksize_max: 1468,
      windowsize_max: 64,
      transfer_sockets: "shared",
      window_bytes_max: 4 * 1024 ** 2,
      timeout: 1,
      retries: 5,
      allow: [],
      deny: [],
      unique_root: "off",
      rules: [],
      single_port: false,
    });
    expect(c.metrics).toEqual({ enabled: true, listen: "127.0.0.1:9469", control: true });
    expect(c.log.level).toBe("info");
    expect(c.tune.enabled).toBe(true);
    expect(c.performance.cpu.worker_threads).toBe("auto");
    expect(c.performance.memory.cache_size).toBe(1024 ** 3);
    expect(c.performance.network.receive_buffer_size).toBe(32 * 1024 ** 2);
    expect(c.cache.redis.key_prefix).toBe("tftpd:");
    expect(defaultConfig()).toEqual(c);
  });

  test("no file and no default file: defaults, source null", () => {
    const r = load({});
    expect(ok(r)).toEqual(defaultConfig());
    expect(r.ok && r.source).toBeNull();
  });

  test("the default file is read when it exists", () => {
    const file = writeConfig({ log: { level: "debug" } });
    const r = loadConfig({ env: {}, defaultFile: file });
    expect(ok(r).log.level).toBe("debug");
    expect(r.ok && r.source).toBe(file);
  });

  test("the effective config is itself valid input (round trip)", () => {
    const file = writeConfig({ ...SEED_GUIDE, tftp: { port_range: "1000:2000", allow: ["10.0.0.1"] } });
    const c = ok(load({ file }));
    expect(configSchema.parse(JSON.parse(JSON.stringify(c)))).toEqual(c);
  });

  test("every leaf key has a default and a unique env name derived from its path", () => {
    const names = new Set<string>();
    for (const k of CONFIG_KEYS) {
      expect(k.env).toBe(`TFTPD_${k.path.join("_").toUpperCase()}`);
      expect(names.has(k.env)).toBe(false);
      names.add(k.env);
      expect(k.default).not.toBeUndefined();
      expect(k.description.length).toBeGreaterThan(0);
    }
    expect(KEYS_BY_ENV.get("TFTPD_LIMITS_MAX_TOTAL_CONNECTIONS")?.dotted).toBe("limits.max_total_connections");
    expect(KEYS_BY_ENV.get("TFTPD_PERFORMANCE_MEMORY_CACHE_SIZE")?.dotted).toBe("performance.memory.cache_size");
  });
});

describe("seed guide", () => {
  test("a file with every seed-guide block validates", () => {
    const c = ok(load({ file: writeConfig(SEED_GUIDE) }));
    expect(c.performance.cpu).toEqual({ affinity: "auto", runtime_threads_nice: 19, thread_pool_size: 256, worker_threads: 16 });
    expect(c.performance.memory.cache_size).toBe(32 * 1024 ** 3);
    expect(c.cache.type).toBe("distributed");
    expect(c.cache.redis.nodes).toEqual(["redis-1:6379", "redis-2:6379", "redis-3:6379"]);
    expect(c.cache.max_size).toBe(32 * 1024 ** 3);
    expect(c.load_balancing).toEqual({ algorithm: "consistent_hashing", hash_key: "client_ip" });
    expect(c.connection_pool.min_connections).toBe(1000);
    expect(c.limits.max_total_connections).toBe(50000);
    expect(c.io.io_threads).toBe(8);
    expect(c.network.io_uring).toBe(true);
    expect(c.compression.level).toBe(6);
    expect(c.batch).toEqual({ enabled: true, batch_size: 100, batch_timeout: 100 });
  });

  test("each load_balancing algorithm of the guide is accepted", () => {
    for (const algorithm of ["round_robin", "least_connections", "consistent_hashing"]) {
      expect(ok(load({ file: writeConfig({ load_balancing: { algorithm } }) })).load_balancing.algorithm).toBe(algorithm as never);
    }
  });
});

describe("errors name the source and key path", () => {
  test("unknown key at depth", () => {
    const file = writeConfig({ performance: { memory: { cache_size: "1Gi", bogus: 1 } } });
    expect(errors(load({ file }))).toEqual([`${file}: performance.memory.bogus: unknown key`]);
  });

  test("one line per unknown key, with a suggestion when close", () => {
    const file = writeConfig({ tftp: { blocksize_max: 8192, zzz: true }, colour: "blue" });
    const errs = errors(load({ file }));
    expect(errs).toContain(`${file}: tftp.blocksize_max: unknown key (did you mean "blksize_max"?)`);
    expect(errs).toContain(`${file}: tftp.zzz: unknown key`);
    expect(errs).toContain(`${file}: colour: unknown key`);
    expect(errs).toHaveLength(3);
  });

  test("bad values", () => {
    const file = writeConfig({
      limits: { max_total_connections: "lots" },
      tftp: { write: "sometimes", blksize_max: 7, timeout: 0, retries: 2.5 },
      log: { level: "loud" },
      cache: { redis: { cluster_mode: "yes" } },
    });
    const errs = errors(load({ file }));
    expect(errs).toContain(`${file}: limits.max_total_connections: expected a positive integer, got "lots"`);
    expect(errs).toContain(`${file}: tftp.write: expected one of "off", "create", "overwrite", got "sometimes"`);
    expect(errs).toContain(`${file}: tftp.blksize_max: expected an integer from 8 to 65464, got 7`);
    expect(errs).toContain(`${file}: tftp.timeout: expected a number > 0 and <= 255, got 0`);
    expect(errs).toContain(`${file}: tftp.retries: expected an integer from 1 to 100, got 2.5`);
    expect(errs.some((e) => e.startsWith(`${file}: log.level: expected one of "fatal", "error"`))).toBe(true);
    expect(errs).toContain(`${file}: cache.redis.cluster_mode: expected true or false, got "yes"`);
    for (const e of errs) expect(e).not.toContain("\n");
  });

  test("a section of the wrong type", () => {
    const file = writeConfig({ tftp: 5, batch: [] });
    expect(errors(load({ file }))).toEqual([`${file}: tftp: expected an object, got 5`, `${file}: batch: expected an object, got an array`]);
  });

  test("top level must be an object", () => {
    const file = writeConfig("[1, 2]");
    expect(errors(load({ file }))).toEqual([`${file}: the config must be a JSON object, got an array`]);
  });

  test("performance.memory.buffer_size was removed: refused from a file, the environment or a flag, naming tftp.blksize_max", () => {
    const file = writeConfig({ performance: { memory: { cache_size: "32Gi", connection_pool_size: 10000, buffer_size: 65536 } } });
    const removed = errors(load({ file }));
    expect(removed).toHaveLength(1);
    expect(removed[0]).toStartWith(`${file}: performance.memory.buffer_size: removed: no buffer is sized by it;`);
    expect(removed[0]).toContain("set tftp.blksize_max");
    expect(errors(load({ env: { TFTPD_PERFORMANCE_MEMORY_BUFFER_SIZE: "64Ki" } }))).toEqual([
      `TFTPD_PERFORMANCE_MEMORY_BUFFER_SIZE: performance.memory.buffer_size: ${REMOVED_KEYS.get("performance.memory.buffer_size")}`,
    ]);
    expect(errors(load({ overrides: { "performance.memory.buffer_size": 65536 } }))).toEqual([
      `override: performance.memory.buffer_size: ${REMOVED_KEYS.get("performance.memory.buffer_size")}`,
    ]);
    // a key that never was one is still "unknown", with a guess
    expect(errors(load({ file: writeConfig({ performance: { memory: { buffer_sise: 1 } } }) }))[0]).toEndWith("performance.memory.buffer_sise: unknown key");
  });

  test("cross-field: blksize_max and window_bytes_max", () => {
    expect(ok(load({ env: { TFTPD_TFTP_BLKSIZE_MAX: "65464" } })).tftp.blksize_max).toBe(65464);
    // Blame goes to whoever set the related key when the reported key is a default.
    expect(errors(load({ env: { TFTPD_TFTP_BLKSIZE_MAX: "2000", TFTPD_TFTP_WINDOW_BYTES_MAX: "1000" } }))).toEqual([
      "TFTPD_TFTP_WINDOW_BYTES_MAX: tftp.window_bytes_max: must be at least tftp.blksize_max (2000) bytes, got 1000",
    ]);
    expect(errors(load({ env: { TFTPD_CACHE_TYPE: "distributed" } }))).toEqual([
      'TFTPD_CACHE_TYPE: cache.redis.nodes: needs at least one "HOST:PORT" when cache.type is "distributed"',
    ]);
    const r3 = load({ overrides: { "tftp.blksize_max": 9000, "tftp.window_bytes_max": "8Ki" } });
    expect(errors(r3)).toEqual(["override: tftp.window_bytes_max: must be at least tftp.blksize_max (9000) bytes, got 8192"]);
  });

  test("cross-field: min_connections <= max_connections; distributed cache needs nodes", () => {
    const file = writeConfig({ connection_pool: { max_connections: 10, min_connections: 20 }, cache: { type: "distributed" } });
    expect(errors(load({ file }))).toEqual([
      `${file}: connection_pool.min_connections: must be <= connection_pool.max_connections (10), got 20`,
      `${file}: cache.redis.nodes: needs at least one "HOST:PORT" when cache.type is "distributed"`,
    ]);
  });

  test("missing file names it", () => {
    const file = join(tmp, "nope", "config.json");
    expect(errors(load({ file }))).toEqual([`${file}: no such file`]);
  });

  test("JSON syntax error names the file, line and column", () => {
    // (a trailing comma is allowed: config files are JSONC; a missing one is not)
    const file = writeConfig('{\n  "tftp": {\n    "root": "/srv"\n    "write": "off"\n  }\n}\n');
    expect(errors(load({ file }))[0]).toStartWith(`${file}:4:5: invalid JSON: `);
    const file2 = writeConfig('{\n  "log": { "level": debug }\n}');
    expect(errors(load({ file: file2 }))).toEqual([`${file2}:2:21: invalid JSON: unexpected "d"`]);
    const file3 = writeConfig("");
    expect(errors(load({ file: file3 }))).toEqual([`${file3}:1:1: invalid JSON: unexpected end of input`]);
  });
});

describe("byte sizes", () => {
  test("parseByteSize", () => {
    const cases: [unknown, number][] = [
      [0, 0],
      [512, 512],
      ["512", 512],
      ["512B", 512],
      ["64Ki", 65536],
      ["64KiB", 65536],
      ["64k", 64000],
      ["32Gi", 32 * 1024 ** 3],
      ["1M", 1_000_000],
      ["10MB", 10_000_000],
      ["10 MB", 10_000_000],
      ["1.5Ki", 1536],
      ["1.1K", 1100],
      ["2T", 2e12],
      ["1Ti", 1024 ** 4],
    ];
    for (const [input, bytes] of cases) expect(parseByteSize(input)).toEqual({ ok: true, bytes });
    for (const bad of ["", "lots", "-1", "1.5", "1 Kx", "Ki", "5i", "1e3", -1, 1.5, true, null, [], {}]) {
      const r = parseByteSize(bad);
      expect(r.ok).toBe(false);
    }
    expect(parseByteSize("lots")).toEqual({
      ok: false,
      error: 'expected a byte size (an integer, or a string like "512", "64Ki", "32Gi", "10MB"), got "lots"',
    });
  });

  test("formatByteSize", () => {
    expect(formatByteSize(4 * 1024 ** 3)).toBe("4Gi");
    expect(formatByteSize(1536)).toBe("1536");
    expect(formatByteSize(65536)).toBe("64Ki");
    expect(formatByteSize(0)).toBe("0");
  });

  test("byte-size keys parse to bytes and reject junk by path", () => {
    const c = ok(load({ file: writeConfig({ tftp: { max_upload_size: "10MB" }, io: { read_ahead: "64Ki" } }) }));
    expect(c.tftp.max_upload_size).toBe(10_000_000);
    expect(c.io.read_ahead).toBe(65536);
    const file = writeConfig({ performance: { memory: { cache_size: "huge" } } });
    expect(errors(load({ file }))[0]).toStartWith(`${file}: performance.memory.cache_size: expected a byte size`);
    const file2 = writeConfig({ limits: { max_transfer_memory: 100 } });
    expect(errors(load({ file: file2 }))[0]).toBe(
      `${file2}: limits.max_transfer_memory: expected a byte size (an integer, or a string like "512", "64Ki", "32Gi", "10MB") >= 64Ki, got 100`,
    );
  });

  test("limits.max_transfer_memory: 1Gi by default, from a file or TFTPD_LIMITS_MAX_TRANSFER_MEMORY, at least 64Ki", () => {
    expect(ok(load({})).limits.max_transfer_memory).toBe(1024 ** 3);
    expect(ok(load({ file: writeConfig({ limits: { max_transfer_memory: "256MB" } }) })).limits.max_transfer_memory).toBe(256_000_000);
    expect(ok(load({ env: { TFTPD_LIMITS_MAX_TRANSFER_MEMORY: "64Ki" } })).limits.max_transfer_memory).toBe(65536);
    expect(errors(load({ env: { TFTPD_LIMITS_MAX_TRANSFER_MEMORY: "4Ki" } }))).toEqual([
      'TFTPD_LIMITS_MAX_TRANSFER_MEMORY: limits.max_transfer_memory: expected a byte size (an integer, or a string like "512", "64Ki", "32Gi", "10MB") >= 64Ki, got "4Ki"',
    ]);
  });
});

describe("environment and overrides", () => {
  test("env overrides the file; overrides beat env", () => {
    const file = writeConfig({ tftp: { root: "/from-file", blksize_max: 1000, retries: 3 }, log: { level: "warn" } });
    const env = { TFTPD_TFTP_ROOT: "/from-env", TFTPD_TFTP_BLKSIZE_MAX: "2000", TFTPD_LOG_LEVEL: "debug" };
    const c = ok(load({ file, env, overrides: { "tftp.blksize_max": 8192 } }));
    expect(c.tftp.root).toBe("/from-env");
    expect(c.tftp.blksize_max).toBe(8192);
    expect(c.tftp.retries).toBe(3);
    expect(c.log.level).toBe("debug");
  });

  test("env values: JSON when it parses, else strings; arrays also comma-separated", () => {
    const env = {
      TFTPD_LIMITS_MAX_TOTAL_CONNECTIONS: "500",
      TFTPD_TFTP_SINGLE_PORT: "true",
      TFTPD_TFTP_LISTEN: "127.0.0.1:69, [::1]:69",
      TFTPD_TFTP_ALLOW: '["10.0.0.0/8"]',
      TFTPD_TFTP_PORT_RANGE: "30000:30100",
      TFTPD_TFTP_MAX_UPLOAD_SIZE: "1Gi",
      TFTPD_PERFORMANCE_CPU_AFFINITY: "0-2,5",
      TFTPD_CACHE_REDIS_PASSWORD: "12345",
      TFTPD_TFTP_REMAP: "/etc/tftpd/remap",
    };
    const c = ok(load({ env }));
    expect(c.limits.max_total_connections).toBe(500);
    expect(c.tftp.single_port).toBe(true);
    expect(c.tftp.listen).toEqual(["127.0.0.1:69", "[::1]:69"]);
    expect(c.tftp.allow).toEqual(["10.0.0.0/8"]);
    expect(c.tftp.port_range).toEqual({ low: 30000, high: 30100 });
    expect(c.tftp.max_upload_size).toBe(1024 ** 3);
    expect(c.performance.cpu.affinity).toEqual([0, 1, 2, 5]);
    expect(c.cache.redis.password).toBe("12345");
    expect(c.tftp.remap).toBe("/etc/tftpd/remap");
    expect(ok(load({ env: { TFTPD_TFTP_REMAP: "null", TFTPD_TFTP_PORT_RANGE: "null" } })).tftp.remap).toBeNull();
    expect(ok(load({ env: { TFTPD_TFTP_DENY: "" } })).tftp.deny).toEqual([]);
  });

  test("a bad env value names the variable and the key", () => {
    expect(errors(load({ env: { TFTPD_LIMITS_MAX_TOTAL_CONNECTIONS: "lots" } }))).toEqual([
      'TFTPD_LIMITS_MAX_TOTAL_CONNECTIONS: limits.max_total_connections: expected a positive integer, got "lots"',
    ]);
    expect(errors(load({ env: { TFTPD_TFTP_LISTEN: "127.0.0.1:69,[::1]:65536" } }))).toEqual([
      'TFTPD_TFTP_LISTEN: tftp.listen[1]: port must be an integer from 0 to 65535, got "65536" in "[::1]:65536"',
    ]);
  });

  test("unknown TFTPD_ variables are errors; TFTPD_CONFIG and TFTPD_TEST_* are not", () => {
    expect(errors(load({ env: { TFTPD_BOGUS: "1", TFTPD_TFTP_LISTN: "x", PATH: "/bin" } }))).toEqual([
      "TFTPD_BOGUS: unknown environment variable",
      "TFTPD_TFTP_LISTN: unknown environment variable (did you mean TFTPD_TFTP_LISTEN?)",
    ]);
    expect(ok(load({ env: { TFTPD_TEST_DROP: "1,2", TFTPD_TEST_ANYTHING: "x" } }))).toEqual(defaultConfig());
  });

  test("TFTPD_CONFIG names the file when none is passed", () => {
    const file = writeConfig({ tftp: { retries: 9 } });
    const r = load({ env: { TFTPD_CONFIG: file } });
    expect(ok(r).tftp.retries).toBe(9);
    expect(r.ok && r.source).toBe(file);
    const other = writeConfig({ tftp: { retries: 7 } });
    expect(ok(load({ file: other, env: { TFTPD_CONFIG: file } })).tftp.retries).toBe(7);
    const missing = join(tmp, "missing.json");
    expect(errors(load({ env: { TFTPD_CONFIG: missing } }))).toEqual([`${missing}: no such file`]);
  });

  test("overrides: dotted paths, strings read like env values, labelled sources", () => {
    const c = ok(
      load({
        overrides: {
          "tftp.root": "/x",
          "tftp.listen": ["127.0.0.1:6969"],
          "tftp.blksize_max": 8192,
          "tftp.windowsize_max": "16",
          "tftp.port_range": "1000:1010",
          "log.level": undefined,
        },
      }),
    );
    expect(c.tftp.root).toBe("/x");
    expect(c.tftp.listen).toEqual(["127.0.0.1:6969"]);
    expect(c.tftp.blksize_max).toBe(8192);
    expect(c.tftp.windowsize_max).toBe(16);
    expect(c.tftp.port_range).toEqual({ low: 1000, high: 1010 });
    expect(c.log.level).toBe("info");
    expect(
      errors(load({ overrides: { "tftp.write": "yes", "tftp.rot": "/x" }, overrideSources: { "tftp.write": "--write" } })),
    ).toEqual([
      'override: tftp.rot: unknown key (did you mean "root"?)',
      '--write: tftp.write: expected one of "off", "create", "overwrite", got "yes"',
    ]);
  });

  test("applied settings are reported", () => {
    const r = load({ env: { TFTPD_LOG_LEVEL: "warn" }, overrides: { "tftp.retries": 3 } });
    expect(r.ok && r.applied).toEqual([
      { source: "TFTPD_LOG_LEVEL", key: "log.level" },
      { source: "override", key: "tftp.retries" },
    ]);
  });

  test("coerceText", () => {
    expect(coerceText({ kind: "other", nullable: false }, "12")).toBe(12);
    expect(coerceText({ kind: "other", nullable: false }, "false")).toBe(false);
    expect(coerceText({ kind: "other", nullable: false }, "4Gi")).toBe("4Gi");
    expect(coerceText({ kind: "string", nullable: false }, "123")).toBe("123");
    expect(coerceText({ kind: "array", nullable: false }, "a,b")).toEqual(["a", "b"]);
    expect(coerceText({ kind: "array", nullable: false }, "[1,2]")).toEqual([1, 2]);
  });
});

describe("paths", () => {
  test("relative root and remap resolve against the config file's directory", () => {
    const file = writeConfig({ tftp: { root: "boot", remap: "../rules/remap.txt" } });
    const dir = file.slice(0, file.lastIndexOf("/"));
    const c = ok(load({ file }));
    expect(c.tftp.root).toBe(join(dir, "boot"));
    expect(c.tftp.remap).toBe(join(dir, "..", "rules", "remap.txt"));
  });

  test("relative paths from env and overrides resolve against cwd", () => {
    const file = writeConfig({ tftp: { root: "from-file" } });
    expect(ok(load({ file, env: { TFTPD_TFTP_ROOT: "env-root" }, cwd: "/work" })).tftp.root).toBe("/work/env-root");
    expect(ok(load({ overrides: { "tftp.root": "./flag" }, cwd: "/opt" })).tftp.root).toBe("/opt/flag");
  });

  test("empty root is rejected", () => {
    const file = writeConfig({ tftp: { root: "" } });
    expect(errors(load({ file }))).toEqual([`${file}: tftp.root: expected a path, got ""`]);
  });
});

describe("addresses", () => {
  test("parseListenAddress", () => {
    expect(parseListenAddress("[::1]:6969")).toEqual({ host: "::1", port: 6969, family: 6 });
    expect(parseListenAddress("0.0.0.0:69")).toEqual({ host: "0.0.0.0", port: 69, family: 4 });
    expect(parseListenAddress("[::]:69")).toEqual({ host: "::", port: 69, family: 6 });
    expect(parseListenAddress("127.0.0.1:65535").port).toBe(65535);
    expect(parseListenAddress("10.0.0.1", { defaultPort: 69 })).toEqual({ host: "10.0.0.1", port: 69, family: 4 });
    expect(parseListenAddress("::1", { defaultPort: 69 })).toEqual({ host: "::1", port: 69, family: 6 });
  });

  test("bad listen addresses", () => {
    const bad = ["127.0.0.1:-1", "127.0.0.1:65536", "127.0.0.1:abc", "127.0.0.1", "::1:69", "[::1]69", "[::1", "localhost:69", "256.0.0.1:69", "[1.2.3.4]:69", ""];
    for (const text of bad) expect(safeParseListenAddress(text).ok).toBe(false);
    expect(() => parseListenAddress("127.0.0.1:99999")).toThrow('port must be an integer from 0 to 65535, got "99999" in "127.0.0.1:99999"');
    // port 0: a listener takes any free port and logs it
    expect(parseListenAddress("127.0.0.1:0")).toEqual({ host: "127.0.0.1", port: 0, family: 4 });
    expect(safeParseListenAddress("::1:69")).toEqual({
      ok: false,
      error: 'expected "ADDR:PORT" with an IPv4 or IPv6 address (IPv6 in brackets, e.g. "[::1]:69"), got "::1:69" (put IPv6 addresses in brackets)',
    });
  });

  test("listen in the schema: non-empty, unique, each validated", () => {
    const file = writeConfig({ tftp: { listen: ["127.0.0.1:69", "[::1]:70000", "127.0.0.1:69"] }, metrics: { listen: "nope" } });
    const errs = errors(load({ file }));
    expect(errs).toContain(`${file}: tftp.listen[1]: port must be an integer from 0 to 65535, got "70000" in "[::1]:70000"`);
    expect(errs).toContain(`${file}: metrics.listen: expected "ADDR:PORT" with an IPv4 or IPv6 address (IPv6 in brackets, e.g. "[::1]:69"), got "nope" (no port)`);
    const dup = writeConfig({ tftp: { listen: ["127.0.0.1:69", "127.0.0.1:69"] } });
    expect(errors(load({ file: dup }))).toEqual([`${dup}: tftp.listen[1]: duplicate of entry 0: "127.0.0.1:69"`]);
    const empty = writeConfig({ tftp: { listen: [] } });
    expect(errors(load({ file: empty }))).toEqual([`${empty}: tftp.listen: expected at least 1 "ADDR:PORT" addresses`]);
  });

  test("port_range", () => {
    expect(ok(load({ file: writeConfig({ tftp: { port_range: "1000:2000" } }) })).tftp.port_range).toEqual({ low: 1000, high: 2000 });
    expect(ok(load({ file: writeConfig({ tftp: { port_range: "5000:5000" } }) })).tftp.port_range).toEqual({ low: 5000, high: 5000 });
    expect(ok(load({ file: writeConfig({ tftp: { port_range: { low: 1, high: 65535 } } }) })).tftp.port_range).toEqual({ low: 1, high: 65535 });
    for (const bad of ["2000:1000", "0:100", "1000:70000", "1000", 1000, "a:b"]) {
      const file = writeConfig({ tftp: { port_range: bad } });
      expect(errors(load({ file }))[0]).toStartWith(`${file}: tftp.port_range: expected "LOW:HIGH" with 1 <= LOW <= HIGH <= 65535, or null, got`);
    }
  });

  test("CIDRs", () => {
    const c = ok(load({ file: writeConfig({ tftp: { allow: ["10.0.0.0/8", "2001:db8::/32", "192.168.1.7"], deny: ["::1"] } }) }));
    expect(c.tftp.allow).toEqual(["10.0.0.0/8", "2001:db8::/32", "192.168.1.7/32"]);
    expect(c.tftp.deny).toEqual(["::1/128"]);
    expect(safeParseCidr("10.0.0.0/33").ok).toBe(false);
    expect(safeParseCidr("2001:db8::/129").ok).toBe(false);
    expect(safeParseCidr("10.0.0/8").ok).toBe(false);
    expect(safeParseCidr("10.0.0.0/").ok).toBe(false);
    const file = writeConfig({ tftp: { deny: ["10.0.0.0/8", "bogus"] } });
    expect(errors(load({ file }))[0]).toStartWith(`${file}: tftp.deny[1]: expected a CIDR`);
  });

  test("redis nodes accept host names", () => {
    const file = writeConfig({ cache: { redis: { nodes: ["redis-1:6379", "10.0.0.5:7000", "[fd00::5]:7001"] } } });
    expect(ok(load({ file })).cache.redis.nodes).toHaveLength(3);
    const bad = writeConfig({ cache: { redis: { nodes: ["redis-1"] } } });
    expect(errors(load({ file: bad }))[0]).toStartWith(`${bad}: cache.redis.nodes[0]: expected "HOST:PORT"`);
  });
});

describe("json", () => {
  test("parseJson reports line and column", () => {
    expect(parseJson('{"a": 1}')).toEqual({ ok: true, value: { a: 1 } });
    expect(parseJson('\ufeff{"a": 1}')).toEqual({ ok: true, value: { a: 1 } });
    expect(parseJson('{"a": 1,\n "b": \'x\'}')).toEqual({ ok: false, line: 2, column: 7, message: "strings must use double quotes" });
    expect(parseJson('{"a": 1} x')).toMatchObject({ ok: false, line: 1, column: 10 });
    expect(parseJson('{"a": "x')).toMatchObject({ ok: false, message: "unterminated string" });
  });

  test("findJsonError agrees with JSON.parse on valid input", () => {
    for (const text of ['{"a":[1,2,{"b":null}],"c":"\\u00e9\\n","d":-1.5e3}', "[]", '"x"', "0", " true "]) {
      expect(findJsonError(text)).toBeNull();
    }
  });
});

describe("config check", () => {
  /** a config whose root exists (the directory of the file), as `serve` needs it */
  const servable = (content: Record<string, unknown> = {}) => writeConfig({ ...content, tftp: { root: ".", ...(content.tftp as object | undefined) } });

  test("success prints the effective config and exits 0", () => {
    const file = writeConfig({ tftp: { root: "boot", max_upload_size: "1Mi" } });
    mkdirSync(join(file.slice(0, file.lastIndexOf("/")), "boot"));
    const r = checkConfigFile(file, {});
    expect(r.exitCode).toBe(0);
    expect(r.stderr).toBe("");
    const printed = JSON.parse(r.stdout) as Config;
    expect(printed.tftp.root).toBe(join(file.slice(0, file.lastIndexOf("/")), "boot"));
    expect(printed.tftp.max_upload_size).toBe(1048576);
    expect(printed.performance.memory.cache_size).toBe(1073741824);
    expect(r.stdout.endsWith("}\n")).toBe(true);
  });

  test("env settings are applied and noted", () => {
    const file = servable();
    const r = checkConfigFile(file, { TFTPD_LOG_LEVEL: "error" });
    expect(r.exitCode).toBe(0);
    expect((JSON.parse(r.stdout) as Config).log.level).toBe("error");
    expect(r.stderr).toBe("tftpd config check: note: log.level is set by TFTPD_LOG_LEVEL\n");
  });

  test("network.io_uring true: accepted, and one line says it is not honoured and what serves instead", () => {
    const file = servable({ network: { io_uring: true } });
    const r = checkConfigFile(file, {});
    expect(r.exitCode).toBe(0);
    expect(r.stderr).toBe(
      "tftpd config check: note: network.io_uring is true, but this build has no io_uring loop (Bun offers none, and none is driven through libc): transfers use the epoll loop (network.epoll)\n",
    );
    const off = checkConfigFile(servable({ network: { io_uring: true, epoll: false } }), {});
    expect(off.stderr).toContain("transfers use Bun's sockets (network.epoll is false)");
    expect(checkConfigFile(servable({ network: { epoll: false } }), {}).stderr).toBe("");
  });

  test("transfer slots set with network.epoll false: one line says Bun's sockets keep buffers of their own", () => {
    const note =
      "tftpd config check: note: connection_pool.max_connections / min_connections and performance.memory.connection_pool_size set transfer slots, the buffers of network.epoll's transfer sockets; network.epoll is false, and Bun's sockets allocate buffers of their own: no slots are kept\n";
    expect(checkConfigFile(servable({ network: { epoll: false }, connection_pool: { min_connections: 1000 } }), {}).stderr).toBe(note);
    expect(checkConfigFile(servable({ network: { epoll: false }, performance: { memory: { connection_pool_size: 10000 } } }), {}).stderr).toBe(note);
    // on the epoll loop the same settings are honoured
    expect(checkConfigFile(servable({ connection_pool: { max_connections: 50000, min_connections: 1000 } }), {}).stderr).toBe("");
  });

  test("a root or a rule's root that serve could not serve, and a remap file it could not read: exit 1, one line each", () => {
    const file = writeConfig({ tftp: { root: "missing", remap: "rules.map", rules: [{ clients: "10.0.0.0/8", root: "lab" }] } });
    const r = checkConfigFile(file, {});
    expect(r.exitCode).toBe(1);
    expect(r.stdout).toBe("");
    const dir = file.slice(0, file.lastIndexOf("/"));
    expect(r.stderr.split("\n").filter(Boolean)).toEqual([
      `tftpd config check: ${file}: tftp.root: root ${join(dir, "missing")} not found (ENOENT)`,
      `tftpd config check: ${file}: tftp.rules[0].root: root ${join(dir, "lab")} not found (ENOENT)`,
      `tftpd config check: ${file}: tftp.remap: ${join(dir, "rules.map")}: cannot read remap file: ENOENT: no such file or directory, open '${join(dir, "rules.map")}'`,
    ]);
    // a remap file with a bad rule names its line
    mkdirSync(join(dir, "missing"));
    mkdirSync(join(dir, "lab"));
    writeFileSync(join(dir, "rules.map"), "r ^a b\nbogus\n");
    const bad = checkConfigFile(file, {});
    expect(bad.exitCode).toBe(1);
    expect(bad.stderr).toStartWith(`tftpd config check: ${file}: tftp.remap: ${join(dir, "rules.map")}:2`);
    writeFileSync(join(dir, "rules.map"), "r ^a b\n");
    expect(checkConfigFile(file, {}).exitCode).toBe(0);
    // the environment names the root: the line says so
    expect(checkConfigFile(servable(), { TFTPD_TFTP_ROOT: join(dir, "nowhere") }).stderr).toStartWith(`tftpd config check: TFTPD_TFTP_ROOT: tftp.root: root ${join(dir, "nowhere")} not found`);
  });

  test("failure prints one line per error to stderr and exits 1", () => {
    const file = writeConfig({ tftp: { bogus: 1, retries: 0 } });
    const r = checkConfigFile(file, {});
    expect(r.exitCode).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr.trimEnd().split("\n").sort()).toEqual(
      [
        `tftpd config check: ${file}: tftp.bogus: unknown key`,
        `tftpd config check: ${file}: tftp.retries: expected an integer from 1 to 100, got 0`,
      ].sort(),
    );
  });

  test("missing file", () => {
    const file = join(tmp, "absent.json");
    expect(checkConfigFile(file, {})).toEqual({ exitCode: 1, stdout: "", stderr: `tftpd config check: ${file}: no such file\n` });
  });
});

describe("docs", () => {
  test("docs/configuration.md reference matches the schema (regenerate: bun src/config/docs.ts)", () => {
    const md = readFileSync(new URL("../../docs/configuration.md", import.meta.url), "utf8");
    const begin = md.indexOf(BEGIN_MARK);
    const end = md.indexOf(END_MARK);
    expect(begin).toBeGreaterThan(0);
    expect(md.slice(begin + BEGIN_MARK.length, end).trim()).toBe(renderConfigReference().trim());
    for (const k of CONFIG_KEYS) expect(md).toContain(`\`${k.env}\``);
  });

  test("the example in docs/configuration.md is valid", () => {
    const md = readFileSync(new URL("../../docs/configuration.md", import.meta.url), "utf8");
    const example = /```json\n([\s\S]*?)```/.exec(md)?.[1];
    expect(example).toBeDefined();
    const file = writeConfig(example ?? "");
    const c = ok(load({ file }));
    expect(c.tftp.root).toBe(join(file.slice(0, file.lastIndexOf("/")), "boot"));
    expect(c.tftp.rules.map((rule) => rule.root)).toEqual([null, join(file.slice(0, file.lastIndexOf("/")), "lab")]);
  });
});

describe("log", () => {
  test("createLogger honours the level", () => {
    const log = createLogger("silent");
    expect(log.level).toBe("silent");
    expect(createLogger("debug").isLevelEnabled("debug")).toBe(true);
    expect(createLogger("warn").isLevelEnabled("info")).toBe(false);
  });
});

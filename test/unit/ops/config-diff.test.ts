/**
 * diffConfig: what changed between two effective configs, by key path; isReloadable: which of
 * those changes a running node applies, and which need a restart. The loader's pushed layer:
 * defaults < file < pushed < env < flags.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { diffConfig, isReloadable } from "../../../src/ops/config-reload.ts";
import { loadConfig } from "../../../src/config/load.ts";
import { defaultConfig, type Config } from "../../../src/config/schema.ts";
import { removeDir, tempDir, writeFile } from "../../helpers/files.ts";

function edited(change: (c: Config) => void): Config {
  const c = defaultConfig();
  change(c);
  return c;
}

describe("diffConfig", () => {
  test("equal configs: no changes", () => {
    expect(diffConfig(defaultConfig(), defaultConfig())).toEqual([]);
  });

  test("each changed leaf by its dotted path, with from and to, in schema order", () => {
    const b = edited((c) => {
      c.log.level = "debug";
      c.limits.max_connections_per_ip = 5;
      c.tftp.blksize_max = 8192;
    });
    expect(diffConfig(defaultConfig(), b)).toEqual([
      { key: "tftp.blksize_max", from: 1468, to: 8192 },
      { key: "log.level", from: "info", to: "debug" },
      { key: "limits.max_connections_per_ip", from: 100, to: 5 },
    ]);
  });

  test("arrays are compared as a whole: a reordered list is a change, an equal copy is not", () => {
    const a = edited((c) => (c.tftp.listen = ["127.0.0.1:69", "[::1]:69"]));
    expect(diffConfig(a, edited((c) => (c.tftp.listen = ["127.0.0.1:69", "[::1]:69"])))).toEqual([]);
    expect(diffConfig(a, edited((c) => (c.tftp.listen = ["[::1]:69", "127.0.0.1:69"])))).toEqual([
      { key: "tftp.listen", from: ["127.0.0.1:69", "[::1]:69"], to: ["[::1]:69", "127.0.0.1:69"] },
    ]);
  });

  test("a leaf that parses to an object (tftp.port_range) is one key, null or not", () => {
    const a = edited((c) => (c.tftp.port_range = { low: 5000, high: 6000 }));
    expect(diffConfig(defaultConfig(), a)).toEqual([{ key: "tftp.port_range", from: null, to: { low: 5000, high: 6000 } }]);
    const b = edited((c) => (c.tftp.port_range = { low: 5000, high: 7000 }));
    expect(diffConfig(a, b)).toEqual([
      { key: "tftp.port_range", from: { low: 5000, high: 6000 }, to: { low: 5000, high: 7000 } },
    ]);
  });

  test("nested sections: the full path of the leaf", () => {
    const b = edited((c) => (c.performance.memory.cache_size = 1 << 20));
    expect(diffConfig(defaultConfig(), b)).toEqual([
      { key: "performance.memory.cache_size", from: 1 << 30, to: 1 << 20 },
    ]);
  });

  test("tftp.remap from null to a path", () => {
    const b = edited((c) => (c.tftp.remap = "/etc/tftpd/remap"));
    expect(diffConfig(defaultConfig(), b)).toEqual([{ key: "tftp.remap", from: null, to: "/etc/tftpd/remap" }]);
  });
});

describe("isReloadable", () => {
  test("limits (but scope), tftp.remap and log.level apply while running", () => {
    for (const key of [
      "limits.max_connections_per_ip",
      "limits.max_connections_per_client",
      "limits.max_total_connections",
      "limits.on_limit",
      "tftp.remap",
      "log.level",
    ]) {
      expect([key, isReloadable(key)]).toEqual([key, true]);
    }
  });

  test("every other key needs a restart", () => {
    for (const key of [
      "limits.scope",
      "tftp.blksize_max",
      "tftp.root",
      "tftp.listen",
      "cache.redis.nodes",
      "cache.redis.key_prefix",
      "metrics.listen",
      "performance.memory.cache_size",
      "log",
    ]) {
      expect([key, isReloadable(key)]).toEqual([key, false]);
    }
  });

  test("a mixed diff splits into the two groups", () => {
    const b = edited((c) => {
      c.limits.max_connections_per_ip = 5;
      c.tftp.blksize_max = 8192;
      c.log.level = "warn";
    });
    const changes = diffConfig(defaultConfig(), b);
    expect(changes.filter((c) => isReloadable(c.key)).map((c) => c.key)).toEqual(["log.level", "limits.max_connections_per_ip"]);
    expect(changes.filter((c) => !isReloadable(c.key)).map((c) => c.key)).toEqual(["tftp.blksize_max"]);
  });
});

describe("loadConfig with a pushed config", () => {
  let dir: string;
  beforeAll(() => {
    dir = tempDir("tftpd-pushed-");
  });
  afterAll(() => removeDir(dir));

  test("defaults < file < pushed < env < flags; the file fills what the push leaves out", () => {
    const file = writeFile(dir, "node.json", JSON.stringify({
      tftp: { root: "/srv/node", blksize_max: 1024 },
      limits: { max_connections_per_ip: 7, max_total_connections: 70 },
    }));
    const r = loadConfig({
      file,
      env: { TFTPD_LIMITS_MAX_TOTAL_CONNECTIONS: "99" },
      pushed: { content: { limits: { max_connections_per_ip: 5, max_total_connections: 50 }, log: { level: "debug" } }, source: "pushed config version 3" },
      overrides: { "log.level": "warn" },
    });
    if (!r.ok) throw new Error(r.errors.join("\n"));
    expect(r.config.tftp.root).toBe("/srv/node"); // file
    expect(r.config.tftp.blksize_max).toBe(1024); // file
    expect(r.config.limits.max_connections_per_ip).toBe(5); // pushed over the file
    expect(r.config.limits.max_total_connections).toBe(99); // env over pushed
    expect(r.config.log.level).toBe("warn"); // flag over pushed
    expect(r.applied.map((a) => a.key).sort()).toEqual(["limits.max_total_connections", "log.level"]);
  });

  test("errors in the pushed layer name it and the key path", () => {
    const r = loadConfig({ env: {}, defaultFile: "/nonexistent", pushed: { content: { limits: { max_connections_per_ip: 0 } }, source: "pushed config version 4" } });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.errors).toHaveLength(1);
    expect(r.errors[0]).toStartWith("pushed config version 4: limits.max_connections_per_ip:");
  });

  test("a pushed config that is not an object is an error", () => {
    const r = loadConfig({ env: {}, defaultFile: "/nonexistent", pushed: { content: [1], source: "pushed config version 5" } });
    expect(r).toEqual({ ok: false, errors: ["pushed config version 5: the config must be a JSON object, got an array"] });
  });

  test("the pushed content is not modified", () => {
    const content = { tftp: { root: "rel" } };
    const r = loadConfig({ env: {}, defaultFile: "/nonexistent", cwd: "/base", pushed: { content, source: "pushed" } });
    expect(r.ok && r.config.tftp.root).toBe("/base/rel");
    expect(content).toEqual({ tftp: { root: "rel" } });
  });
});

/**
 * Kernel tuning against a real sysctl tree in a temporary directory (realistic stock values):
 * recommendations that follow the config, apply that rewrites files, never lowering a higher
 * value (element-wise for udp_mem), failures reported without stopping the rest, and a read of the
 * real /proc/sys (no writes).
 */
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { loadConfig, type Config } from "../../../src/config/load.ts";
import { runTune } from "../../../src/cli/tune.ts";
import {
  apply,
  applyExitCode,
  autoTune,
  computeTargets,
  plan,
  readNofile,
  readSysctl,
  sysctlPath,
  toRows,
  TUNE_KEYS,
  type Machine,
  type Target,
} from "../../../src/ops/tune.ts";
import { removeDir, tempDir } from "../../helpers/files.ts";

const GiB = 1024 ** 3;
const MACHINE: Machine = { totalMemory: 16 * GiB, cpus: 4 };

/** Stock values of a 16 GiB Debian host. */
const STOCK: Record<string, string> = {
  "net.core.rmem_max": "212992",
  "net.core.wmem_max": "212992",
  "net.core.rmem_default": "212992",
  "net.core.wmem_default": "212992",
  "net.core.netdev_max_backlog": "1000",
  "net.core.somaxconn": "4096",
  "net.ipv4.udp_mem": "381354\t508475\t762708",
  "net.ipv4.udp_rmem_min": "4096",
  "net.ipv4.ip_local_port_range": "32768\t60999",
  "net.ipv4.tcp_max_syn_backlog": "1024",
  "fs.file-max": "9223372036854775807",
};

function cfg(overrides: Record<string, unknown> = {}): Config {
  const r = loadConfig({ env: {}, defaultFile: "/nonexistent/tftpd.json", overrides });
  if (!r.ok) throw new Error(r.errors.join("\n"));
  return r.config;
}

let root: string;
let limits: string;

function put(key: string, value: string): void {
  const p = sysctlPath(root, key);
  mkdirSync(dirname(p), { recursive: true });
  writeFileSync(p, `${value}\n`);
}
const read = (key: string): string => readFileSync(sysctlPath(root, key), "utf8").trim().split(/\s+/).join(" ");
const target = (targets: Target[], key: string): Target => {
  const t = targets.find((x) => x.key === key);
  if (!t) throw new Error(`no ${key}`);
  return t;
};

beforeEach(() => {
  root = tempDir("tftpd-tune-");
  for (const [k, v] of Object.entries(STOCK)) put(k, v);
  limits = join(root, "limits");
  writeFileSync(limits, "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            1024                 524288               files     \n");
});
afterEach(() => removeDir(root));

describe("compute", () => {
  test("every setting has a recommendation and a reason", () => {
    const targets = computeTargets(cfg(), MACHINE);
    expect(targets.map((t) => t.key)).toEqual([...TUNE_KEYS]);
    for (const t of targets) {
      expect(t.reason.length).toBeGreaterThan(10);
      expect(t.values.every((n) => Number.isInteger(n) && n > 0)).toBe(true);
    }
    expect(target(targets, "net.ipv4.udp_mem").values).toHaveLength(3);
    expect(target(targets, "net.ipv4.ip_local_port_range").values).toEqual([10000, 65535]);
  });

  test("rmem_max/wmem_max follow the socket buffer sizes; doubling raises the recommendation", () => {
    const a = computeTargets(cfg({ "performance.network.receive_buffer_size": "32Mi" }), MACHINE);
    const b = computeTargets(cfg({ "performance.network.receive_buffer_size": "64Mi", "performance.network.send_buffer_size": "8Mi" }), MACHINE);
    expect(target(a, "net.core.rmem_max").values).toEqual([32 * 1024 ** 2]);
    expect(target(b, "net.core.rmem_max").values).toEqual([64 * 1024 ** 2]);
    expect(target(b, "net.core.wmem_max").values).toEqual([8 * 1024 ** 2]);
    expect(target(b, "net.core.rmem_max").reason).toContain("64 MiB");
    // More buffer = bigger bursts = a deeper backlog; never below 16384.
    expect(target(b, "net.core.netdev_max_backlog").values[0]).toBeGreaterThanOrEqual(target(a, "net.core.netdev_max_backlog").values[0] ?? 0);
    const small = computeTargets(cfg({ "performance.network.receive_buffer_size": "1Mi" }), MACHINE);
    expect(target(small, "net.core.netdev_max_backlog").values[0]).toBe(16384);
    // rmem_default is raised, but never past what the server asks for.
    expect(target(small, "net.core.rmem_default").values[0]).toBeLessThanOrEqual(1024 ** 2);
    expect(target(a, "net.core.rmem_default").values[0]).toBeGreaterThan(212992);
  });

  test("udp_mem, file-max and RLIMIT_NOFILE follow max_total_connections and RAM", () => {
    const few = computeTargets(cfg({ "limits.max_total_connections": 1000 }), MACHINE);
    const many = computeTargets(cfg({ "limits.max_total_connections": 200000 }), MACHINE);
    const pages = 16 * GiB / 4096;
    const [min, pressure, max] = target(few, "net.ipv4.udp_mem").values;
    expect(min).toBe(pages / 16);
    expect(pressure).toBe(pages / 8);
    expect(max).toBe(pages / 4);
    const m = target(many, "net.ipv4.udp_mem").values;
    expect(m[1]).toBeGreaterThan(pages / 8); // 200k windows do not fit in RAM/8: pressure follows the need
    expect(m[1]! * 4096).toBeGreaterThanOrEqual(200000 * 64 * 1472);
    expect(m[2]).toBeGreaterThan(m[1]!);
    expect(target(many, "net.ipv4.udp_mem").reason).toContain("more than half the RAM");
    expect(target(many, "RLIMIT_NOFILE").values[0]).toBeGreaterThanOrEqual(400000);
    expect(target(few, "RLIMIT_NOFILE").values[0]).toBeGreaterThanOrEqual(2000);
    expect(target(many, "fs.file-max").values[0]).toBeGreaterThanOrEqual(target(many, "RLIMIT_NOFILE").values[0]!);
    // Bigger RAM, bigger udp_mem.
    const big = computeTargets(cfg({ "limits.max_total_connections": 1000 }), { totalMemory: 64 * GiB, cpus: 4 });
    expect(target(big, "net.ipv4.udp_mem").values[2]).toBe((4 * pages) / 4);
  });

  test("TCP queues: the seed's 65535 on big machines, scaled down on small ones", () => {
    expect(target(computeTargets(cfg(), MACHINE), "net.core.somaxconn").values).toEqual([65535]);
    const tiny = computeTargets(cfg(), { totalMemory: 1 * GiB, cpus: 1 });
    expect(target(tiny, "net.core.somaxconn").values[0]).toBe(4096);
    expect(target(tiny, "net.ipv4.tcp_max_syn_backlog").values[0]).toBe(4096);
  });

  test("a configured tftp.port_range is kept out of the ephemeral range", () => {
    const c = cfg({ "tftp.port_range": "40000:50000" });
    const t = target(computeTargets(c, MACHINE, [32768, 60999]), "net.ipv4.ip_local_port_range");
    expect(t.values).toEqual([10000, 39999]);
    expect(t.reason).toContain("tftp.port_range 40000-50000");
    // An ephemeral range already above the configured one stays above.
    const above = target(computeTargets(c, MACHINE, [55000, 60999]), "net.ipv4.ip_local_port_range");
    expect(above.values).toEqual([50001, 65535]);
    // A high configured range: the ephemeral range goes below it.
    const high = target(computeTargets(cfg({ "tftp.port_range": "60000:65535" }), MACHINE, [32768, 60999]), "net.ipv4.ip_local_port_range");
    expect(high.values).toEqual([10000, 59999]);
    // Every port taken: nothing would do, and it says so.
    const all = target(computeTargets(cfg({ "tftp.port_range": "1:65535" }), MACHINE, [32768, 60999]), "net.ipv4.ip_local_port_range");
    expect(all.impossible).toContain("no room");
  });

  test("plan reads the tree and the limits file; ok only when current meets the recommendation", () => {
    put("net.core.somaxconn", "65535");
    const rows = toRows(plan(cfg(), { sysctlRoot: root, limitsFile: limits, machine: MACHINE }));
    const row = (k: string) => rows.find((r) => r.key === k)!;
    expect(row("net.core.somaxconn")).toMatchObject({ current: "65535", ok: true });
    expect(row("net.core.rmem_max")).toMatchObject({ current: "212992", recommended: String(32 * 1024 ** 2), ok: false });
    expect(row("fs.file-max").ok).toBe(true);
    expect(row("RLIMIT_NOFILE")).toMatchObject({ current: "1024", ok: false });
    expect(readNofile(limits)).toEqual({ values: [1024], hard: 524288 });
  });
});

describe("apply", () => {
  test("raises every setting that is too low to the recommended value", () => {
    const c = cfg();
    const items = plan(c, { sysctlRoot: root, limitsFile: limits, machine: MACHINE });
    const r = apply(items, { sysctlRoot: root });
    const targets = computeTargets(c, MACHINE, [32768, 60999]);
    expect(read("net.core.rmem_max")).toBe(String(32 * 1024 ** 2));
    expect(read("net.core.wmem_max")).toBe(String(4 * 1024 ** 2));
    expect(read("net.core.netdev_max_backlog")).toBe(String(target(targets, "net.core.netdev_max_backlog").values[0]));
    expect(read("net.core.somaxconn")).toBe("65535");
    expect(read("net.ipv4.ip_local_port_range")).toBe("10000 65535");
    // udp_mem: the stock min (381354) is above RAM/16 and stays; pressure and max are raised.
    const udp = target(targets, "net.ipv4.udp_mem").values;
    expect(read("net.ipv4.udp_mem")).toBe(`381354 ${udp[1]} ${udp[2]}`);
    expect(read("fs.file-max")).toBe("9223372036854775807"); // already higher: untouched
    expect(r.changed.map((x) => x.key)).toContain("net.core.rmem_max");
    expect(r.changed.find((x) => x.key === "net.core.rmem_max")).toEqual({ key: "net.core.rmem_max", from: "212992", to: "33554432" });
    expect(r.unchanged).toContain("fs.file-max");
    // RLIMIT_NOFILE: no API in Bun, advice only, not a failure of the run.
    expect(r.failed).toEqual([{ key: "RLIMIT_NOFILE", reason: expect.stringContaining("LimitNOFILE=") }]);
    expect(applyExitCode(r)).toBe(0);
    // A second run finds everything done.
    const again = apply(plan(c, { sysctlRoot: root, limitsFile: limits, machine: MACHINE }), { sysctlRoot: root });
    expect(again.changed).toEqual([]);
  });

  test("never lowers a higher value; udp_mem and the port range element by element", () => {
    put("net.core.rmem_max", String(256 * 1024 ** 2));
    put("net.ipv4.udp_mem", "100 99999999 200");
    put("net.ipv4.ip_local_port_range", "2000 40000");
    const c = cfg({ "limits.max_total_connections": 1000 });
    const r = apply(plan(c, { sysctlRoot: root, limitsFile: limits, machine: MACHINE }), { sysctlRoot: root });
    expect(read("net.core.rmem_max")).toBe(String(256 * 1024 ** 2));
    expect(r.unchanged).toContain("net.core.rmem_max");
    const pages = 16 * GiB / 4096;
    expect(read("net.ipv4.udp_mem")).toBe(`${pages / 16} 99999999 ${pages / 4}`);
    // The low end only goes down, the high end only up: the range only widens.
    expect(read("net.ipv4.ip_local_port_range")).toBe("2000 65535");
  });

  test("a configured port_range moves an overlapping ephemeral range clear of it", () => {
    const c = cfg({ "tftp.port_range": "40000:50000" });
    const r = apply(plan(c, { sysctlRoot: root, limitsFile: limits, machine: MACHINE }), { sysctlRoot: root });
    expect(read("net.ipv4.ip_local_port_range")).toBe("10000 39999");
    expect(r.changed.find((x) => x.key === "net.ipv4.ip_local_port_range")).toMatchObject({ from: "32768 60999", to: "10000 39999" });
  });

  test("settings that cannot be written are reported, the rest still applied, exit 1", () => {
    // A setting this kernel lacks, and one that is not a file (as good as read-only, even for root).
    rmSync(sysctlPath(root, "net.core.somaxconn"));
    rmSync(sysctlPath(root, "net.ipv4.udp_rmem_min"));
    mkdirSync(sysctlPath(root, "net.ipv4.udp_rmem_min"));
    const r = apply(plan(cfg(), { sysctlRoot: root, limitsFile: limits, machine: MACHINE }), { sysctlRoot: root });
    const failed = Object.fromEntries(r.failed.map((f) => [f.key, f.reason]));
    expect(failed["net.core.somaxconn"]).toContain("ENOENT");
    expect(failed["net.ipv4.udp_rmem_min"]).toContain("EISDIR");
    expect(existsSync(sysctlPath(root, "net.core.somaxconn"))).toBe(false); // never created
    expect(read("net.core.rmem_max")).toBe(String(32 * 1024 ** 2));
    expect(read("net.ipv4.tcp_max_syn_backlog")).toBe("65535");
    expect(applyExitCode(r)).toBe(1);

    const cli = runTune({ apply: true, sysctlRoot: root, limitsFile: limits, machine: MACHINE, env: {}, config: undefined });
    expect(cli.exitCode).toBe(1);
    const last = cli.stdout.trimEnd().split("\n").at(-1);
    expect(last).toBe("tune: 2 needed settings could not be applied (0 changed)");
    expect(cli.stdout).toContain("not set    net.core.somaxconn: no such setting (ENOENT)");
  });

  test("autoTune: changes and failures, never throws", async () => {
    rmSync(sysctlPath(root, "net.core.somaxconn"));
    const r = await autoTune(cfg(), { sysctlRoot: root });
    expect(r.changed.map((c) => c.key)).toContain("net.core.rmem_max");
    expect(r.failed.map((f) => f.key)).toContain("net.core.somaxconn");
    const none = await autoTune(cfg(), { sysctlRoot: join(root, "missing") });
    expect(none.changed).toEqual([]);
    expect(none.failed.length).toBeGreaterThan(5);
  });
});

describe("the real /proc/sys", () => {
  test("every setting reads as numbers (read only)", () => {
    if (!existsSync("/proc/sys/net/core/rmem_max")) return;
    for (const key of TUNE_KEYS) {
      if (key === "RLIMIT_NOFILE") continue;
      const r = readSysctl("/proc/sys", key);
      if (r.values === null && r.error?.includes("ENOENT")) continue; // not on this kernel
      expect(r.values).not.toBeNull();
      expect(r.values!.every((n) => Number.isFinite(n) && n >= 0)).toBe(true);
    }
    expect(readSysctl("/proc/sys", "net.ipv4.udp_mem").values).toHaveLength(3);
    expect(readSysctl("/proc/sys", "net.ipv4.ip_local_port_range").values).toHaveLength(2);
    expect(readNofile().values?.[0]).toBeGreaterThan(0);
    const rows = toRows(plan(cfg(), {}));
    expect(rows).toHaveLength(TUNE_KEYS.length);
  });
});

/**
 * Kernel tuning against a real sysctl tree in a temporary directory (realistic stock values):
 * recommendations that follow the config (and only the settings it needs), apply that rewrites
 * files, never lowering a higher value (element-wise for udp_mem), failures reported without
 * stopping the rest, tune.enabled false honoured by --apply, a sysctl.d file instead of applying,
 * and a read of the real /proc/sys (no writes).
 */
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { loadConfig, type Config } from "../../../src/config/load.ts";
import { runTune } from "../../../src/cli/tune.ts";
import {
  apply,
  applyExitCode,
  autoTune,
  computeTargets,
  meets,
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
/** Every file of the tree and its content: to show a run wrote nothing. */
function snapshot(): Record<string, string> {
  const files: Record<string, string> = {};
  for (const name of readdirSync(root, { recursive: true, withFileTypes: true })) {
    if (name.isFile()) files[join(name.parentPath, name.name)] = readFileSync(join(name.parentPath, name.name), "utf8");
  }
  return files;
}
/** The settings the default config needs: no TCP queue, no port range (it sets no tftp.port_range). */
const DEFAULT_KEYS = TUNE_KEYS.filter((k) => k !== "net.ipv4.ip_local_port_range");
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
  test("every setting the default config needs has a recommendation and a reason", () => {
    const targets = computeTargets(cfg(), MACHINE);
    expect(targets.map((t) => t.key)).toEqual(DEFAULT_KEYS);
    for (const t of targets) {
      expect(t.reason.length).toBeGreaterThan(10);
      expect(t.values.every((n) => Number.isInteger(n) && n > 0)).toBe(true);
    }
    expect(target(targets, "net.ipv4.udp_mem").values).toHaveLength(3);
  });

  test("only what the config needs: no TCP queues, no port range without tftp.port_range", () => {
    // The only TCP listener is the metrics endpoint; Redis links are outbound.
    expect(TUNE_KEYS as readonly string[]).not.toContain("net.core.somaxconn");
    expect(TUNE_KEYS as readonly string[]).not.toContain("net.ipv4.tcp_max_syn_backlog");
    for (const c of [cfg(), cfg({ "tftp.transfer_sockets": "per-transfer" }), cfg({ "limits.max_total_connections": 200000 })]) {
      const targets = computeTargets(c, MACHINE, [32768, 60999]);
      expect(targets.map((t) => t.key)).not.toContain("net.ipv4.ip_local_port_range");
      for (const t of targets) expect(t.reason).not.toContain("Redis");
    }
    // The kernel's default buffer sizes matter only to transfers on a port of their own.
    const keys = (o: Record<string, unknown>) => computeTargets(cfg(o), MACHINE).map((t) => t.key);
    expect(keys({ "tftp.single_port": true })).not.toContain("net.core.rmem_default");
    expect(keys({ "tftp.windowsize_max": 1 })).not.toContain("net.core.wmem_default");
    expect(keys({ "tftp.windowsize_max": 1, "tftp.transfer_sockets": "per-transfer" })).toContain("net.core.rmem_default");
    expect(keys({ "tftp.windowsize_max": 1, "tftp.rules": [{ clients: "10.0.0.0/8", windowsize_max: 8 }] })).toContain("net.core.wmem_default");
    expect(target(computeTargets(cfg(), MACHINE), "net.core.rmem_default").reason).toContain("windowed transfers");
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
    // A small buffer holds a small burst: the backlog follows it (no floor of its own).
    const small = computeTargets(cfg({ "performance.network.receive_buffer_size": "1Mi" }), MACHINE);
    expect(target(small, "net.core.netdev_max_backlog").values[0]).toBe(2048);
    // rmem_default is raised, but never past what the server asks for.
    expect(target(small, "net.core.rmem_default").values[0]).toBeLessThanOrEqual(1024 ** 2);
    expect(target(a, "net.core.rmem_default").values[0]).toBeGreaterThan(212992);
  });

  test("udp_mem, file-max and RLIMIT_NOFILE follow max_total_connections, not fractions of RAM", () => {
    const few = computeTargets(cfg({ "limits.max_total_connections": 1000 }), MACHINE);
    const many = computeTargets(cfg({ "limits.max_total_connections": 200000 }), MACHINE);
    const pages = 16 * GiB / 4096;
    const [min, pressure, max] = target(few, "net.ipv4.udp_mem").values;
    // 1,000 windows of 133.8 KiB plus the engines' receive buffers: far below RAM/8.
    expect(pressure! * 4096).toBeGreaterThanOrEqual(1000 * 136960);
    expect(pressure).toBeLessThan(pages / 8);
    expect(max).toBe(Math.ceil(pressure! * 1.5));
    expect(min).toBeLessThanOrEqual(pages / 16);
    // ...which the stock values already allow: nothing to change for a small config.
    const stock = [381354, 508475, 762708];
    const udp = plan(cfg({ "limits.max_total_connections": 1000 }), { sysctlRoot: root, limitsFile: limits, machine: MACHINE }).find((i) => i.target.key === "net.ipv4.udp_mem")!;
    expect(udp.current.values).toEqual(stock);
    expect(udp.ok).toBe(true);
    const m = target(many, "net.ipv4.udp_mem").values;
    expect(m[1]! * 4096).toBeGreaterThanOrEqual(200000 * 64 * 1472);
    expect(m[2]).toBeGreaterThan(m[1]!);
    expect(target(many, "net.ipv4.udp_mem").reason).toContain("more than half the RAM");
    expect(target(many, "RLIMIT_NOFILE").values[0]).toBeGreaterThanOrEqual(400000);
    expect(target(few, "RLIMIT_NOFILE").values[0]).toBeGreaterThanOrEqual(2000);
    expect(target(many, "fs.file-max").values[0]).toBe(4 * target(many, "RLIMIT_NOFILE").values[0]!);
    expect(target(few, "fs.file-max").values[0]).toBe(4 * target(few, "RLIMIT_NOFILE").values[0]!);
  });

  test("a configured tftp.port_range: the ephemeral range is cut back to one side of it, never widened", () => {
    const range = (portRange: string, current: number[] | null) =>
      target(computeTargets(cfg({ "tftp.port_range": portRange }), MACHINE, current), "net.ipv4.ip_local_port_range");
    // Overlapping: the side that keeps more of the current range's ports.
    const t = range("40000:50000", [32768, 60999]);
    expect(t.values).toEqual([50001, 60999]);
    expect(t.reason).toContain("tftp.port_range 40000-50000");
    expect(t.reason).toContain("10,999 ephemeral ports");
    expect(range("60000:65535", [32768, 60999]).values).toEqual([32768, 59999]);
    // Already clear of it: the current range is what it should be.
    const clear = range("61000:65000", [32768, 60999]);
    expect(clear.values).toEqual([32768, 60999]);
    expect(meets([32768, 60999], clear)).toBe(true);
    expect(clear.reason).toContain("must stay clear of tftp.port_range 61000-65000");
    // The current range inside the configured one: moved next to it by the fewest ports (1,024).
    expect(range("30000:62000", [32768, 60999]).values).toEqual([28976, 29999]);
    // Too little left on one side: topped up to 1,024 ports.
    expect(range("33000:65535", [32768, 60999]).values).toEqual([31976, 32999]);
    // Unreadable: the kernel's default range is assumed.
    expect(range("40000:50000", null).values).toEqual([50001, 60999]);
    // Every port taken: nothing would do, and it says so.
    expect(range("1:65535", [32768, 60999]).impossible).toContain("no room");
  });

  test("plan reads the tree and the limits file; ok only when current meets the recommendation", () => {
    put("net.core.wmem_max", String(8 * 1024 ** 2));
    const rows = toRows(plan(cfg(), { sysctlRoot: root, limitsFile: limits, machine: MACHINE }));
    expect(rows.map((r) => r.key)).toEqual(DEFAULT_KEYS);
    const row = (k: string) => rows.find((r) => r.key === k)!;
    expect(row("net.core.wmem_max")).toMatchObject({ current: String(8 * 1024 ** 2), recommended: String(8 * 1024 ** 2), ok: true });
    expect(row("net.core.rmem_max")).toMatchObject({ current: "212992", recommended: String(32 * 1024 ** 2), ok: false });
    // 2^63-1 as read, not as the nearest JavaScript number (9223372036854776000, which the kernel refuses)
    expect(row("fs.file-max")).toMatchObject({ current: "9223372036854775807", recommended: "9223372036854775807", ok: true });
    expect(row("RLIMIT_NOFILE")).toMatchObject({ current: "1024", ok: false });
    expect(readNofile(limits)).toEqual({ values: [1024], words: ["1024"], hard: 524288 });
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
    // Nothing in the config needs these: left as they were.
    expect(read("net.core.somaxconn")).toBe("4096");
    expect(read("net.ipv4.tcp_max_syn_backlog")).toBe("1024");
    expect(read("net.ipv4.ip_local_port_range")).toBe("32768 60999");
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
    const c = cfg({ "limits.max_total_connections": 1000, "tftp.port_range": "40000:65535" });
    const r = apply(plan(c, { sysctlRoot: root, limitsFile: limits, machine: MACHINE }), { sysctlRoot: root });
    expect(read("net.core.rmem_max")).toBe(String(256 * 1024 ** 2));
    expect(r.unchanged).toContain("net.core.rmem_max");
    const [min, , max] = target(computeTargets(c, MACHINE), "net.ipv4.udp_mem").values;
    expect(read("net.ipv4.udp_mem")).toBe(`${min} 99999999 ${max}`);
    // Cut back below the configured range: the low end stays where it was.
    expect(read("net.ipv4.ip_local_port_range")).toBe("2000 39999");
  });

  test("a configured port_range moves an overlapping ephemeral range clear of it", () => {
    const c = cfg({ "tftp.port_range": "40000:50000" });
    const r = apply(plan(c, { sysctlRoot: root, limitsFile: limits, machine: MACHINE }), { sysctlRoot: root });
    expect(read("net.ipv4.ip_local_port_range")).toBe("50001 60999");
    expect(r.changed.find((x) => x.key === "net.ipv4.ip_local_port_range")).toMatchObject({ from: "32768 60999", to: "50001 60999" });
    // Clear of it already: untouched.
    put("net.ipv4.ip_local_port_range", "32768\t39999");
    const again = apply(plan(cfg({ "tftp.port_range": "40000:50000" }), { sysctlRoot: root, limitsFile: limits, machine: MACHINE }), { sysctlRoot: root });
    expect(again.unchanged).toContain("net.ipv4.ip_local_port_range");
    expect(read("net.ipv4.ip_local_port_range")).toBe("32768 39999");
  });

  test("settings that cannot be written are reported, the rest still applied, exit 1", () => {
    // A setting this kernel lacks, and one that is not a file (as good as read-only, even for root).
    rmSync(sysctlPath(root, "net.core.wmem_default"));
    rmSync(sysctlPath(root, "net.ipv4.udp_rmem_min"));
    mkdirSync(sysctlPath(root, "net.ipv4.udp_rmem_min"));
    const r = apply(plan(cfg(), { sysctlRoot: root, limitsFile: limits, machine: MACHINE }), { sysctlRoot: root });
    const failed = Object.fromEntries(r.failed.map((f) => [f.key, f.reason]));
    expect(failed["net.core.wmem_default"]).toContain("ENOENT");
    expect(failed["net.ipv4.udp_rmem_min"]).toContain("EISDIR");
    expect(existsSync(sysctlPath(root, "net.core.wmem_default"))).toBe(false); // never created
    expect(read("net.core.rmem_max")).toBe(String(32 * 1024 ** 2));
    expect(read("net.core.netdev_max_backlog")).not.toBe("1000");
    expect(applyExitCode(r)).toBe(1);

    const cli = runTune({ apply: true, sysctlRoot: root, limitsFile: limits, machine: MACHINE, env: {}, config: undefined });
    expect(cli.exitCode).toBe(1);
    const last = cli.stdout.trimEnd().split("\n").at(-1);
    expect(last).toBe("tune: 2 needed settings could not be applied (0 changed)");
    expect(cli.stdout).toContain("not set    net.core.wmem_default: no such setting (ENOENT)");
  });

  test("autoTune: changes and failures, never throws", async () => {
    rmSync(sysctlPath(root, "net.core.wmem_default"));
    const r = await autoTune(cfg(), { sysctlRoot: root });
    expect(r.changed.map((c) => c.key)).toContain("net.core.rmem_max");
    expect(r.failed.map((f) => f.key)).toContain("net.core.wmem_default");
    const none = await autoTune(cfg(), { sysctlRoot: join(root, "missing") });
    expect(none.changed).toEqual([]);
    expect(none.failed.length).toBeGreaterThan(5);
  });
});

describe("tune --apply and tune.enabled", () => {
  test("tune.enabled false: --apply changes nothing and says so in one line, exit 0", () => {
    const file = join(root, "notune.json");
    writeFileSync(file, JSON.stringify({ tune: { enabled: false } }));
    const before = snapshot();
    const r = runTune({ apply: true, config: file, env: {}, sysctlRoot: root, limitsFile: limits, machine: MACHINE });
    expect(r).toEqual({ exitCode: 0, stdout: `tune.enabled is false in ${file}: nothing applied\n`, stderr: "" });
    expect(snapshot()).toEqual(before);
    // Set by the environment: named as such; --json says it too.
    const env = runTune({ apply: true, json: true, env: { TFTPD_TUNE_ENABLED: "false" }, sysctlRoot: root, limitsFile: limits, machine: MACHINE });
    expect(env.exitCode).toBe(0);
    expect(JSON.parse(env.stdout)).toEqual({ changed: [], failed: [], unchanged: [], skipped: "tune.enabled is false in TFTPD_TUNE_ENABLED: nothing applied" });
    expect(snapshot()).toEqual(before);
    // The table still shows what the config would need, and notes that nothing applies it.
    const table = runTune({ config: file, env: {}, sysctlRoot: root, limitsFile: limits, machine: MACHINE });
    expect(table.stdout).toContain("net.core.rmem_max");
    expect(table.stdout.trimEnd().split("\n").at(-1)).toBe(`tune.enabled is false in ${file}: serve and tune --apply leave these settings alone`);
    // Enabled (the default): applied as before.
    const on = runTune({ apply: true, env: {}, sysctlRoot: root, limitsFile: limits, machine: MACHINE });
    expect(on.stdout).toContain("changed    net.core.rmem_max");
  });
});

describe("tune --sysctl-d", () => {
  test("writes a sysctl.d file of the needed settings, each under its reason, and nothing else", () => {
    const out = join(root, "out", "99-tftpd.conf");
    mkdirSync(dirname(out));
    const c = { "tftp.port_range": "40000:50000" };
    const file = join(root, "pr.json");
    writeFileSync(file, JSON.stringify({ tftp: { port_range: "40000:50000" } }));
    const before = snapshot();
    const r = runTune({ sysctlD: out, config: file, env: {}, sysctlRoot: root, limitsFile: limits, machine: MACHINE });
    expect(r).toEqual({ exitCode: 0, stdout: `tune: wrote 9 settings to ${out} (nothing applied)\n`, stderr: "" });
    const text = readFileSync(out, "utf8");
    const { [out]: written, ...rest } = snapshot();
    expect(written).toBe(text);
    expect(rest).toEqual(before); // the tree untouched
    // Per sysctl: "# reason" then "key = value", the value --apply would leave.
    const lines = text.trimEnd().split("\n");
    const rows = toRows(plan(cfg(c), { sysctlRoot: root, limitsFile: limits, machine: MACHINE }));
    for (const row of rows.filter((x) => x.key !== "RLIMIT_NOFILE")) {
      const i = lines.indexOf(`${row.key} = ${row.recommended}`);
      expect(i).toBeGreaterThan(0);
      expect(lines[i - 1]).toBe(`# ${row.reason}`);
    }
    expect(text).toContain("net.ipv4.ip_local_port_range = 50001 60999");
    expect(text).toContain("fs.file-max = 9223372036854775807"); // never below what the host has
    expect(text).not.toContain("somaxconn");
    expect(text).toMatch(/^# RLIMIT_NOFILE is not a sysctl: set LimitNOFILE=\d+ in the systemd unit$/m);
    for (const line of lines) expect(line).toMatch(/^$|^# |^[a-z0-9_.-]+ = [\d ]+$/);
  });

  test("also with tune.enabled false (it changes nothing on the host); refuses --apply with it", () => {
    const file = join(root, "notune.json");
    writeFileSync(file, JSON.stringify({ tune: { enabled: false } }));
    const out = join(root, "tftpd.conf");
    const r = runTune({ sysctlD: out, json: true, config: file, env: {}, sysctlRoot: root, limitsFile: limits, machine: MACHINE });
    expect(r.exitCode).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ file: out, keys: DEFAULT_KEYS.filter((k) => k !== "RLIMIT_NOFILE") });
    expect(readFileSync(out, "utf8")).toContain("net.core.rmem_max = 33554432");

    const both = runTune({ apply: true, sysctlD: out, env: {}, sysctlRoot: root, limitsFile: limits, machine: MACHINE });
    expect(both.exitCode).toBe(2);
    expect(both.stderr).toBe("tftpd tune: --apply and --sysctl-d exclude each other: --sysctl-d writes a file instead of applying\n");
    expect(runTune({ sysctlD: "--json", env: {}, sysctlRoot: root }).exitCode).toBe(2);
    expect(existsSync("--json")).toBe(false);
    const unwritable = runTune({ sysctlD: join(root, "no", "such", "dir", "f.conf"), env: {}, sysctlRoot: root, limitsFile: limits, machine: MACHINE });
    expect(unwritable.exitCode).toBe(1);
    expect(unwritable.stderr).toMatch(/^tftpd tune: cannot write .*f\.conf: ENOENT/);
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
    expect(rows.map((r) => r.key)).toEqual(DEFAULT_KEYS);
  });
});

/**
 * Kernel and rlimit tuning: recommendations computed from the effective config and the machine,
 * read from and written to a sysctl tree (default /proc/sys; any directory for tests).
 *
 * Rule of apply: never make a setting worse. Each number of a setting has a direction: "at least"
 * (buffers, queues, limits: never lowered) or "at most" (the low end of a port range: never
 * raised, so the range only widens). Multi-number settings are merged element by element.
 */
import { closeSync, openSync, readFileSync, writeSync, constants as fsc } from "node:fs";
import { availableParallelism, totalmem } from "node:os";
import { join } from "node:path";
import type { Config } from "../config/load.ts";

export const DEFAULT_SYSCTL_ROOT = "/proc/sys";
const DEFAULT_LIMITS_FILE = "/proc/self/limits";
/** The unit of net.ipv4.udp_mem. */
const PAGE_SIZE = 4096;
const RLIMIT_KEY = "RLIMIT_NOFILE";

export const TUNE_KEYS = [
  "net.core.rmem_max",
  "net.core.wmem_max",
  "net.core.rmem_default",
  "net.core.wmem_default",
  "net.core.netdev_max_backlog",
  "net.core.somaxconn",
  "net.ipv4.udp_mem",
  "net.ipv4.udp_rmem_min",
  "net.ipv4.ip_local_port_range",
  "net.ipv4.tcp_max_syn_backlog",
  "fs.file-max",
  RLIMIT_KEY,
] as const;
export type TuneKey = (typeof TUNE_KEYS)[number];

/** "atLeast": the current number may be higher; "atMost": it may be lower. */
export type Direction = "atLeast" | "atMost";

export interface Machine {
  /** Bytes of RAM. */
  totalMemory: number;
  cpus: number;
}

function currentMachine(): Machine {
  return { totalMemory: totalmem(), cpus: availableParallelism() };
}

export interface Target {
  key: TuneKey;
  /** The recommended numbers (one, two or three). */
  values: number[];
  directions: Direction[];
  reason: string;
  /** Set when the config leaves no value that would do (the setting is then never "ok"). */
  impossible?: string;
}

export interface Reading {
  /** Numbers read, or null when the setting could not be read. */
  values: number[] | null;
  /** Why it could not be read. */
  error?: string;
}

export interface Row {
  key: TuneKey;
  current: string | null;
  recommended: string;
  ok: boolean;
  reason: string;
}

export interface TuneOptions {
  /** Root of the sysctl tree; default /proc/sys. */
  sysctlRoot?: string;
  /** Where RLIMIT_NOFILE is read ("Max open files"); default /proc/self/limits. */
  limitsFile?: string;
  machine?: Machine;
}

// ---------------------------------------------------------------------------------------------
// Computing

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** Bytes the kernel charges for one datagram of `payload` bytes (sk_buff and headers, roughly). */
const truesize = (payload: number): number => payload + 28 + 640;
const roundUp = (n: number, step: number): number => Math.ceil(n / step) * step;
const pow2AtLeast = (n: number): number => 2 ** Math.ceil(Math.log2(Math.max(1, n)));
const clamp = (n: number, lo: number, hi: number): number => Math.min(hi, Math.max(lo, n));
const fmtNum = (n: number): string => Math.round(n).toLocaleString("en-US");

export function formatBytes(n: number): string {
  const unit = (size: number, name: string) => {
    const v = n / size;
    return `${Number.isInteger(v) ? v : v.toFixed(1)} ${name}`;
  };
  if (n >= GiB) return unit(GiB, "GiB");
  if (n >= MiB) return unit(MiB, "MiB");
  if (n >= KiB) return unit(KiB, "KiB");
  return `${n} B`;
}

/** Engines that each hold their own request and shared transfer sockets. */
function engineCount(config: Config, machine: Machine): number {
  const w = config.performance.cpu.worker_threads;
  return w === "auto" ? Math.max(1, machine.cpus - 1) : w;
}

/** File descriptors the server may need: a socket and a file per transfer, plus a margin. */
function descriptorsNeeded(config: Config, machine: Machine): number {
  const engines = engineCount(config, machine);
  return roundUp(2 * config.limits.max_total_connections + 1024 * (engines + 1), 1024);
}

/** Bytes one transfer's window may hold in a socket buffer. */
export function windowBytes(config: Config): number {
  const { blksize_max, windowsize_max, window_bytes_max } = config.tftp;
  const blocks = Math.max(1, Math.min(windowsize_max, Math.floor(window_bytes_max / blksize_max)));
  return blocks * truesize(blksize_max + 4);
}

/** The ephemeral port range to recommend: wide, and clear of tftp.port_range. */
function portRangeTarget(config: Config, current: number[] | null): Target {
  const key = "net.ipv4.ip_local_port_range" as const;
  const wideLow = 10000;
  const top = 65535;
  const perTransfer = config.tftp.transfer_sockets === "per-transfer";
  const reserved = config.tftp.port_range;
  if (!reserved) {
    const width = top - wideLow + 1;
    const need = perTransfer ? ` (per-transfer sockets: max_total_connections ${fmtNum(config.limits.max_total_connections)}${config.limits.max_total_connections > width ? ", more than fit: set tftp.port_range" : ""})` : "";
    return {
      key,
      values: [wideLow, top],
      directions: ["atMost", "atLeast"],
      reason: `transfers take ephemeral ports; ${fmtNum(width)} ports at least${need}`,
    };
  }
  const { low, high } = reserved;
  const tag = `tftp.port_range ${low}-${high}`;
  const belowHigh = low - 1;
  const belowLow = Math.min(wideLow, Math.max(1024, belowHigh - 1023));
  const below = belowHigh >= belowLow ? [belowLow, belowHigh] : null;
  const above = high < top ? [Math.max(high + 1, 1024), top] : null;
  const size = (r: number[] | null): number => (r ? (r[1] ?? 0) - (r[0] ?? 0) + 1 : 0);
  let side: "below" | "above" | null;
  if (!below && !above) side = null;
  else if (!below) side = "above";
  else if (!above) side = "below";
  else if (current && current.length === 2 && (current[0] ?? 0) > high) side = "above";
  else if (current && current.length === 2 && (current[1] ?? 0) < low) side = "below";
  else side = size(below) >= size(above) ? "below" : "above";
  if (side === null) {
    return {
      key,
      values: current ?? [wideLow, top],
      directions: ["atMost", "atLeast"],
      reason: `${tag} leaves no room for ephemeral ports`,
      impossible: `${tag} leaves no room for ephemeral ports; narrow it`,
    };
  }
  const r = (side === "below" ? below : above) as number[];
  return {
    key,
    values: r,
    directions: side === "below" ? ["atMost", "atMost"] : ["atLeast", "atLeast"],
    reason: `kept ${side} ${tag} so the kernel never hands a transfer port to another socket (${fmtNum(size(r))} ephemeral ports)`,
  };
}

/** What each setting should be, for this config on this machine, with a one-line reason. */
export function computeTargets(config: Config, machine: Machine = currentMachine(), currentPortRange: number[] | null = null): Target[] {
  const rcv = config.performance.network.receive_buffer_size;
  const snd = config.performance.network.send_buffer_size;
  const total = config.limits.max_total_connections;
  const engines = engineCount(config, machine);
  const ramPages = Math.floor(machine.totalMemory / PAGE_SIZE);
  const window = windowBytes(config);
  const at = (n: number): Direction[] => Array<Direction>(n).fill("atLeast");

  // Bursts: how many small requests the receive buffer holds (a PXE RRQ is ~100 bytes).
  const burst = Math.floor(rcv / truesize(100));
  const backlog = clamp(pow2AtLeast(burst), 16384, 262144);

  // TCP listeners (metrics/control, Redis): the seed guide's 65535, scaled to RAM below 16 GiB.
  const tcpScale = clamp(machine.totalMemory / (16 * GiB), 1 / 16, 1);
  const tcpQueue = Math.min(65535, Math.max(4096, pow2AtLeast(65536 * tcpScale)));

  // UDP memory in pages: a fraction of RAM, and never below every transfer's window plus the
  // receive buffers of the engines' sockets (a request and a shared transfer socket per address).
  const sockets = engines * config.tftp.listen.length * 2;
  const needBytes = total * window + sockets * rcv;
  const needPages = Math.ceil(needBytes / PAGE_SIZE);
  const pressure = Math.max(Math.floor(ramPages / 8), needPages);
  const udpMem = [Math.floor(ramPages / 16), pressure, Math.max(Math.floor(ramPages / 4), Math.ceil(pressure * 1.5))];
  const udpNote = needBytes > machine.totalMemory / 2 ? "; more than half the RAM: lower limits.max_total_connections or tftp.window_bytes_max" : "";

  const rmemDefault = Math.min(rcv, Math.max(212992, Math.min(MiB, pow2AtLeast(window * 2))));
  const wmemDefault = Math.min(snd, Math.max(212992, Math.min(MiB, pow2AtLeast(window * 2))));
  const rmemMin = Math.max(PAGE_SIZE, roundUp(4 * truesize(config.tftp.blksize_max + 4), PAGE_SIZE));

  const nofile = descriptorsNeeded(config, machine);
  const fileMax = Math.max(1_048_576, 4 * nofile);

  return [
    { key: "net.core.rmem_max", values: [rcv], directions: at(1), reason: `the server asks SO_RCVBUF ${formatBytes(rcv)} (performance.network.receive_buffer_size); the kernel caps it here` },
    { key: "net.core.wmem_max", values: [snd], directions: at(1), reason: `the server asks SO_SNDBUF ${formatBytes(snd)} (performance.network.send_buffer_size); the kernel caps it here` },
    { key: "net.core.rmem_default", values: [rmemDefault], directions: at(1), reason: `sockets that set no SO_RCVBUF (per-transfer, clients) hold two windows of ${formatBytes(window)}` },
    { key: "net.core.wmem_default", values: [wmemDefault], directions: at(1), reason: `sockets that set no SO_SNDBUF send a whole window (${formatBytes(window)}) without blocking, twice over` },
    { key: "net.core.netdev_max_backlog", values: [backlog], directions: at(1), reason: `boot storms: a per-CPU queue for the ~${fmtNum(burst)} requests the ${formatBytes(rcv)} receive buffer holds` },
    { key: "net.core.somaxconn", values: [tcpQueue], directions: at(1), reason: `accept queue of the metrics/control endpoint and Redis links (seed 65535, scaled to ${formatBytes(machine.totalMemory)} RAM)` },
    {
      key: "net.ipv4.udp_mem",
      values: udpMem,
      directions: at(3),
      reason: `pages: RAM/16, RAM/8, RAM/4, and pressure >= ${fmtNum(total)} transfers x ${formatBytes(window)} window + ${sockets} sockets x ${formatBytes(rcv)} = ${formatBytes(roundUp(needBytes, PAGE_SIZE))}${udpNote}`,
    },
    { key: "net.ipv4.udp_rmem_min", values: [rmemMin], directions: at(1), reason: `under memory pressure every socket still queues 4 blocks of ${config.tftp.blksize_max} B: transfers slow down, not stall` },
    portRangeTarget(config, currentPortRange),
    { key: "net.ipv4.tcp_max_syn_backlog", values: [tcpQueue], directions: at(1), reason: "half-open TCP connections to the metrics endpoint and Redis (same as somaxconn)" },
    { key: "fs.file-max", values: [fileMax], directions: at(1), reason: `system-wide: 4 x the server's ${fmtNum(nofile)} descriptors, at least 1,048,576` },
    { key: RLIMIT_KEY, values: [nofile], directions: at(1), reason: `a socket and a file per transfer (${fmtNum(total)} x 2) + 1,024 per engine (${engines}) + 1,024` },
  ];
}

// ---------------------------------------------------------------------------------------------
// Reading and writing

export function sysctlPath(root: string, key: string): string {
  return join(root, ...key.split("."));
}

function describeErrno(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  switch (err?.code) {
    case "EACCES":
    case "EPERM":
      return `permission denied (${err.code}): not root?`;
    case "EROFS":
      return "read-only /proc/sys (EROFS): in a container without a writable sysctl namespace?";
    case "ENOENT":
      return "no such setting (ENOENT): not on this kernel";
    case "EISDIR":
      return "is a directory, not a setting (EISDIR)";
    case "EINVAL":
      return "value refused by the kernel (EINVAL)";
    default:
      return err?.code ? `${err.code}: ${err.message}` : String((err as Error | undefined)?.message ?? e);
  }
}

function parseNumbers(text: string): number[] | null {
  const parts = text.trim().split(/\s+/);
  if (parts.length === 0 || parts[0] === "") return null;
  const nums = parts.map((p) => (p === "unlimited" ? Number.POSITIVE_INFINITY : Number(p)));
  return nums.every((n) => !Number.isNaN(n)) ? nums : null;
}

export function readSysctl(root: string, key: string): Reading {
  let text: string;
  try {
    text = readFileSync(sysctlPath(root, key), "utf8");
  } catch (e) {
    return { values: null, error: describeErrno(e) };
  }
  const values = parseNumbers(text);
  return values ? { values } : { values: null, error: `not numbers: ${JSON.stringify(text.trim())}` };
}

/** The soft RLIMIT_NOFILE from a /proc/PID/limits file ("Max open files  SOFT  HARD  files"). */
export function readNofile(limitsFile: string = DEFAULT_LIMITS_FILE): Reading & { hard?: number } {
  let text: string;
  try {
    text = readFileSync(limitsFile, "utf8");
  } catch (e) {
    return { values: null, error: describeErrno(e) };
  }
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text);
  const soft = m ? parseNumbers(m[1] ?? "") : null;
  const hard = m ? parseNumbers(m[2] ?? "") : null;
  if (!soft || !hard) return { values: null, error: `no "Max open files" line in ${limitsFile}` };
  return { values: soft, hard: hard[0] };
}

/** Writes a setting in place: never creates a file (a missing setting stays missing). */
function writeSysctl(root: string, key: string, values: number[]): void {
  const fd = openSync(sysctlPath(root, key), fsc.O_WRONLY | fsc.O_TRUNC);
  try {
    writeSync(fd, `${values.join("\t")}\n`);
  } finally {
    closeSync(fd);
  }
}

const formatValue = (values: number[]): string => values.map((n) => (n === Number.POSITIVE_INFINITY ? "unlimited" : String(n))).join(" ");

/** Current merged with recommended, element by element, never worse than current. */
function merge(current: number[], target: Target): number[] {
  return current.map((c, i) => {
    const r = target.values[i] ?? c;
    return target.directions[i] === "atMost" ? Math.min(c, r) : Math.max(c, r);
  });
}

export function meets(current: number[] | null, target: Target): boolean {
  if (!current || current.length !== target.values.length || target.impossible) return false;
  return merge(current, target).every((v, i) => v === current[i]);
}

// ---------------------------------------------------------------------------------------------
// Plan, report, apply

export interface Item {
  target: Target;
  current: Reading;
  ok: boolean;
}

export function plan(config: Config, opts: TuneOptions = {}): Item[] {
  const root = opts.sysctlRoot ?? DEFAULT_SYSCTL_ROOT;
  const portRange = readSysctl(root, "net.ipv4.ip_local_port_range").values;
  return computeTargets(config, opts.machine ?? currentMachine(), portRange).map((target) => {
    const current = target.key === RLIMIT_KEY ? readNofile(opts.limitsFile) : readSysctl(root, target.key);
    return { target, current, ok: meets(current.values, target) };
  });
}

export function toRows(items: Item[]): Row[] {
  return items.map(({ target, current, ok }) => ({
    key: target.key,
    current: current.values ? formatValue(current.values) : null,
    // What the setting should read: the recommendation, but never below what is already higher.
    recommended: formatValue(current.values && current.values.length === target.values.length ? merge(current.values, target) : target.values),
    ok,
    reason: target.impossible ?? (current.values ? target.reason : `${current.error}; ${target.reason}`),
  }));
}

export function formatTable(rows: Row[]): string {
  const width = (f: (r: Row) => string, head: string) => Math.max(head.length, ...rows.map((r) => f(r).length));
  const cur = (r: Row) => r.current ?? "?";
  const wk = width((r) => r.key, "SETTING");
  const wc = width(cur, "CURRENT");
  const wr = width((r) => (r.ok ? "" : r.recommended), "RECOMMENDED");
  const line = (a: string, b: string, arrow: string, c: string, d: string) =>
    `${a.padEnd(wk)}  ${b.padEnd(wc)} ${arrow} ${c.padEnd(wr)}  ${d}`.trimEnd();
  const out = [line("SETTING", "CURRENT", " ", "RECOMMENDED", "REASON")];
  for (const r of rows) out.push(r.ok ? line(r.key, cur(r), " ", "", "ok") : line(r.key, cur(r), "→", r.recommended, r.reason));
  return `${out.join("\n")}\n`;
}

export interface ApplyResult {
  changed: { key: string; from: string; to: string }[];
  failed: { key: string; reason: string }[];
  /** Settings that already met the recommendation. */
  unchanged: string[];
  /** Failures that are advice only (RLIMIT_NOFILE: set it in the systemd unit). */
  advisory: string[];
}

export function apply(items: Item[], opts: TuneOptions = {}): ApplyResult {
  const root = opts.sysctlRoot ?? DEFAULT_SYSCTL_ROOT;
  const res: ApplyResult = { changed: [], failed: [], unchanged: [], advisory: [] };
  for (const { target, current, ok } of items) {
    const key = target.key;
    if (ok) {
      res.unchanged.push(key);
      continue;
    }
    if (target.impossible) {
      res.failed.push({ key, reason: target.impossible });
      continue;
    }
    if (!current.values) {
      res.failed.push({ key, reason: current.error ?? "unreadable" });
      if (key === RLIMIT_KEY) res.advisory.push(key);
      continue;
    }
    if (current.values.length !== target.values.length) {
      res.failed.push({ key, reason: `expected ${target.values.length} numbers, found ${current.values.length}` });
      continue;
    }
    const next = merge(current.values, target);
    const from = formatValue(current.values);
    const to = formatValue(next);
    if (key === RLIMIT_KEY) {
      // Bun (1.4) has no process.setrlimit, and it already raises the soft limit to the hard one
      // at start-up: the hard limit comes from the service manager.
      res.failed.push({ key, reason: `no setrlimit in Bun: set LimitNOFILE=${to} in the systemd unit` });
      res.advisory.push(key);
      continue;
    }
    try {
      writeSysctl(root, key, next);
    } catch (e) {
      res.failed.push({ key, reason: describeErrno(e) });
      continue;
    }
    const after = readSysctl(root, key).values;
    if (after && formatValue(after) === to) res.changed.push({ key, from, to });
    else res.failed.push({ key, reason: `wrote ${to}, the kernel kept ${after ? formatValue(after) : "?"}` });
  }
  return res;
}

/** Exit status of `tune --apply`: 1 when a needed sysctl could not be applied. */
export function applyExitCode(r: ApplyResult): 0 | 1 {
  return r.failed.some((f) => !r.advisory.includes(f.key)) ? 1 : 0;
}

/**
 * What `serve` runs once at start-up: raise what is too low, report what could not be raised.
 * Never throws; the caller logs `changed` and warns on `failed`.
 */
export async function autoTune(
  config: Config,
  opts: { sysctlRoot?: string } & TuneOptions = {},
): Promise<{ changed: { key: string; from: string; to: string }[]; failed: { key: string; reason: string }[] }> {
  try {
    const r = apply(plan(config, opts), opts);
    return { changed: r.changed, failed: r.failed };
  } catch (e) {
    return { changed: [], failed: [{ key: "tune", reason: describeErrno(e) }] };
  }
}

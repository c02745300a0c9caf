/**
 * Kernel and rlimit tuning: recommendations computed from the effective config and the machine,
 * read from and written to a sysctl tree (default /proc/sys; any directory for tests).
 *
 * Rule of choice: a setting is recommended only when something in the config needs it, and says
 * what (the reason); a recommendation is what the config needs, not a general-purpose floor.
 * Rule of apply: never make a setting worse. Each number of a setting has a direction: "at least"
 * (buffers, queues, limits: never lowered) or "at most" (never raised). Multi-number settings are
 * merged element by element.
 */
import { closeSync, openSync, readFileSync, writeSync, constants as fsc } from "node:fs";
import { availableParallelism, totalmem } from "node:os";
import { join } from "node:path";
import type { Config } from "../config/load.ts";
import type { PortRange } from "../net/address.ts";

export const DEFAULT_SYSCTL_ROOT = "/proc/sys";
const DEFAULT_LIMITS_FILE = "/proc/self/limits";
/** The unit of net.ipv4.udp_mem. */
const PAGE_SIZE = 4096;
const RLIMIT_KEY = "RLIMIT_NOFILE";

/**
 * Every setting tune may recommend, in the order shown; a config needs some of them only
 * (computeTargets). No TCP queue is here: the only TCP listener is the metrics endpoint (a scrape
 * every few seconds), and Redis links are outbound connections, which no listen backlog concerns.
 */
export const TUNE_KEYS = [
  "net.core.rmem_max",
  "net.core.wmem_max",
  "net.core.rmem_default",
  "net.core.wmem_default",
  "net.core.netdev_max_backlog",
  "net.ipv4.udp_mem",
  "net.ipv4.udp_rmem_min",
  "net.ipv4.ip_local_port_range",
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

export function currentMachine(): Machine {
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
  /**
   * The same numbers as the kernel wrote them: 64-bit settings (fs.file-max is 2^63-1 on recent
   * kernels) lose digits as JavaScript numbers, and a kept value must be written back exactly.
   */
  words?: string[];
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

/**
 * Whether some transfers bind a port of their own (windowed ones, or every one with
 * tftp.transfer_sockets "per-transfer"): those sockets set no SO_RCVBUF (nor SO_SNDBUF for a
 * small window), so the kernel's defaults size them. tftp.single_port binds none.
 */
function ownPortTransfers(config: Config): boolean {
  const { single_port, transfer_sockets, windowsize_max, rules } = config.tftp;
  if (single_port) return false;
  const windowed = windowsize_max > 1 || rules.some((r) => (r.windowsize_max ?? 0) > 1);
  return transfer_sockets === "per-transfer" || windowed;
}

/** The kernel's own ephemeral range, assumed where the current one cannot be read. */
const KERNEL_PORT_RANGE = [32768, 60999] as const;
const TOP_PORT = 65535;
/** Below this the ephemeral range is never moved (the well-known ports). */
const LOWEST_EPHEMERAL_PORT = 1024;
/**
 * Ports the ephemeral range keeps when it has to move clear of tftp.port_range: room for the
 * host's own clients (DNS lookups, Redis links) while taking as few new ports as will do.
 */
const MIN_EPHEMERAL_PORTS = 1024;

/**
 * The ephemeral range must stay clear of a configured tftp.port_range, or the kernel hands a
 * transfer's port to another socket. With no tftp.port_range nothing needs it: transfers on
 * ports of their own take what the range has, and a host that needs more of them sets
 * tftp.port_range rather than have tune widen a host-wide range (it would take ports other
 * services listen on, e.g. Kubernetes NodePorts 30000-32767). So the range is only ever cut
 * back to its side of tftp.port_range, and only moved (by the fewest ports) when nothing is left.
 */
function portRangeTarget(reserved: PortRange, current: number[] | null): Target {
  const key = "net.ipv4.ip_local_port_range" as const;
  const [cl, ch] = current && current.length === 2 ? (current as [number, number]) : KERNEL_PORT_RANGE;
  const { low, high } = reserved;
  const tag = `tftp.port_range ${low}-${high}`;
  const why = "so the kernel never hands a transfer port to another socket";
  if (ch < low || cl > high) {
    return { key, values: [cl, ch], directions: ["atMost", "atLeast"], reason: `must stay clear of ${tag} ${why}` };
  }
  // Ports each side: those of the current range kept, topped up to the minimum where there is room.
  const keptBelow = Math.max(0, low - cl);
  const keptAbove = Math.max(0, ch - high);
  const below = Math.min(low - Math.min(LOWEST_EPHEMERAL_PORT, cl), Math.max(keptBelow, MIN_EPHEMERAL_PORTS));
  const above = Math.min(TOP_PORT - high, Math.max(keptAbove, MIN_EPHEMERAL_PORTS));
  if (below <= 0 && above <= 0) {
    const impossible = `${tag} leaves no room for ephemeral ports; narrow it`;
    return { key, values: [cl, ch], directions: ["atMost", "atLeast"], reason: impossible, impossible };
  }
  const side = above > below || (above === below && keptAbove > keptBelow) ? "above" : "below";
  const ports = side === "below" ? below : above;
  return {
    key,
    values: side === "below" ? [low - below, low - 1] : [high + 1, high + above],
    directions: side === "below" ? ["atMost", "atMost"] : ["atLeast", "atLeast"],
    reason: `kept ${side} ${tag} ${why} (${fmtNum(ports)} ephemeral ports)`,
  };
}

/** What each setting this config needs should be, on this machine, with a one-line reason. */
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
  const backlog = Math.min(262144, pow2AtLeast(burst));

  // UDP memory in pages: every transfer's window plus the receive buffers of the engines' sockets
  // (a request and a shared transfer socket per address) below the pressure mark, half as much
  // again of headroom for the hard limit; the minimum stays under the kernel's own (3/32 of RAM).
  const sockets = engines * config.tftp.listen.length * 2;
  const needBytes = total * window + sockets * rcv;
  const pressure = Math.ceil(needBytes / PAGE_SIZE);
  const udpMem = [Math.min(Math.floor(ramPages / 16), pressure), pressure, Math.ceil(pressure * 1.5)];
  const udpNote = needBytes > machine.totalMemory / 2 ? "; more than half the RAM: lower limits.max_total_connections or tftp.window_bytes_max" : "";

  const rmemDefault = Math.min(rcv, Math.max(212992, Math.min(MiB, pow2AtLeast(window * 2))));
  const wmemDefault = Math.min(snd, Math.max(212992, Math.min(MiB, pow2AtLeast(window * 2))));
  const rmemMin = Math.max(PAGE_SIZE, roundUp(4 * truesize(config.tftp.blksize_max + 4), PAGE_SIZE));

  const nofile = descriptorsNeeded(config, machine);
  const fileMax = 4 * nofile;
  const ownPorts = config.tftp.transfer_sockets === "per-transfer" ? "per-transfer sockets" : "windowed transfers";

  const targets: Target[] = [
    { key: "net.core.rmem_max", values: [rcv], directions: at(1), reason: `the server asks SO_RCVBUF ${formatBytes(rcv)} (performance.network.receive_buffer_size); the kernel caps it here` },
    { key: "net.core.wmem_max", values: [snd], directions: at(1), reason: `the server asks SO_SNDBUF ${formatBytes(snd)} (performance.network.send_buffer_size); the kernel caps it here` },
  ];
  if (ownPortTransfers(config)) {
    targets.push(
      { key: "net.core.rmem_default", values: [rmemDefault], directions: at(1), reason: `${ownPorts} bind a port of their own that sets no SO_RCVBUF: it holds two windows of ${formatBytes(window)}` },
      { key: "net.core.wmem_default", values: [wmemDefault], directions: at(1), reason: `${ownPorts} bind a port of their own with the default SO_SNDBUF (windows up to 128 KiB): it sends a window (${formatBytes(window)}) without blocking, twice over` },
    );
  }
  targets.push(
    { key: "net.core.netdev_max_backlog", values: [backlog], directions: at(1), reason: `boot storms: a per-CPU queue for the ~${fmtNum(burst)} requests the ${formatBytes(rcv)} receive buffer holds` },
    {
      key: "net.ipv4.udp_mem",
      values: udpMem,
      directions: at(3),
      reason: `pages: pressure >= ${fmtNum(total)} transfers x ${formatBytes(window)} window + ${sockets} sockets x ${formatBytes(rcv)} = ${formatBytes(pressure * PAGE_SIZE)}, max 1.5 x that${udpNote}`,
    },
    { key: "net.ipv4.udp_rmem_min", values: [rmemMin], directions: at(1), reason: `under memory pressure every socket still queues 4 blocks of ${config.tftp.blksize_max} B: transfers slow down, not stall` },
  );
  if (config.tftp.port_range) targets.push(portRangeTarget(config.tftp.port_range, currentPortRange));
  targets.push(
    { key: "fs.file-max", values: [fileMax], directions: at(1), reason: `system-wide: 4 x the server's ${fmtNum(nofile)} descriptors, the rest for the host` },
    { key: RLIMIT_KEY, values: [nofile], directions: at(1), reason: `a socket and a file per transfer (${fmtNum(total)} x 2) + 1,024 per engine (${engines}) + 1,024` },
  );
  return targets;
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

const words = (text: string): string[] => text.trim().split(/\s+/);

function parseNumbers(text: string): number[] | null {
  const parts = words(text);
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
  return values ? { values, words: words(text) } : { values: null, error: `not numbers: ${JSON.stringify(text.trim())}` };
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
  return { values: soft, words: words(m?.[1] ?? ""), hard: hard[0] };
}

/** Writes a setting in place: never creates a file (a missing setting stays missing). */
function writeSysctl(root: string, key: string, values: string[]): void {
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

/** What the setting should read, as words: merged with current, a kept number exactly as read. */
function mergedWords(current: Reading, target: Target): string[] {
  const values = current.values;
  if (!values || values.length !== target.values.length) return target.values.map((n) => formatValue([n]));
  return merge(values, target).map((v, i) => (v === values[i] && current.words?.[i] !== undefined ? current.words[i]! : formatValue([v])));
}

const currentText = (current: Reading): string | null => (current.values ? (current.words ?? [formatValue(current.values)]).join(" ") : null);

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
    current: currentText(current),
    // What the setting should read: the recommendation, but never below what is already higher.
    recommended: mergedWords(current, target).join(" "),
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

/**
 * A sysctl.d file of the sysctls this config needs, each under its reason, for configuration
 * management to own instead of --apply. Each value is what --apply would leave on this host (the
 * recommendation, or what the host has when that is already higher), not only what it would
 * change: run after an --apply, the file still holds every setting, so a reboot keeps them.
 * RLIMIT_NOFILE is no sysctl and a setting no value would do is left out; comments say so.
 */
export function formatSysctlD(items: Item[], source: string, machine: Machine): string {
  const rows = toRows(items);
  const out = [
    `# Written by \`tftpd tune --sysctl-d\`: the kernel settings ${source} needs on a host with ${formatBytes(machine.totalMemory)} RAM and ${machine.cpus} CPUs.`,
    "# Values are never below what this host had; load with `sysctl --system`.",
  ];
  items.forEach(({ target }, i) => {
    const row = rows[i]!;
    out.push("");
    if (target.key === RLIMIT_KEY) {
      out.push(`# ${row.reason}`, `# RLIMIT_NOFILE is not a sysctl: set LimitNOFILE=${row.recommended} in the systemd unit`);
    } else if (target.impossible) {
      out.push(`# ${target.key} left out: ${target.impossible}`);
    } else {
      out.push(`# ${row.reason}`, `${target.key} = ${row.recommended}`);
    }
  });
  return `${out.join("\n")}\n`;
}

/** The sysctls a sysctl.d file from formatSysctlD sets. */
export function sysctlDKeys(items: Item[]): string[] {
  return items.filter(({ target }) => target.key !== RLIMIT_KEY && !target.impossible).map(({ target }) => target.key);
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
    const next = mergedWords(current, target);
    const from = currentText(current) ?? "?";
    const to = next.join(" ");
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
    const after = currentText(readSysctl(root, key));
    if (after === to) res.changed.push({ key, from, to });
    else res.failed.push({ key, reason: `wrote ${to}, the kernel kept ${after ?? "?"}` });
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

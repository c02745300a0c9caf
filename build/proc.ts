/**
 * /proc readings for the peer benchmark: CPU seconds and memory of a server's process tree
 * (the server, its threads, and for forking servers such as tftpd-hpa its live children).
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";

let clkTck = 0;

/** Clock ticks per second (USER_HZ) for /proc/PID/stat times. */
export function clockTicks(): number {
  if (clkTck === 0) {
    const out = Bun.spawnSync(["getconf", "CLK_TCK"], { stdout: "pipe", stderr: "ignore" });
    const n = Number(out.stdout.toString().trim());
    clkTck = Number.isFinite(n) && n > 0 ? n : 100;
  }
  return clkTck;
}

function readText(path: string): string | null {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return null;
  }
}

/** /proc/PID/stat fields from field 3 (state) on; null when the process is gone. */
function statFields(pid: number): string[] | null {
  const text = readText(`/proc/${pid}/stat`);
  if (text === null) return null;
  // comm (field 2) is in parentheses and may hold spaces: split after the last ")".
  return text.slice(text.lastIndexOf(")") + 2).trim().split(" ");
}

export function alive(pid: number): boolean {
  const f = statFields(pid);
  return f !== null && f[0] !== "Z" && f[0] !== "X";
}

/** The thread ids of pid (none when it is gone). */
function tasksOf(pid: number): string[] {
  try {
    return readdirSync(`/proc/${pid}/task`);
  } catch {
    return [];
  }
}

/** Direct children of pid (over all its threads). */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const tid of tasksOf(pid)) {
    const text = readText(`/proc/${pid}/task/${tid}/children`);
    if (!text) continue;
    for (const word of text.trim().split(/\s+/)) if (word) out.push(Number(word));
  }
  return out;
}

/** pid and all its live descendants, pid first. */
export function processTree(pid: number): number[] {
  const seen = new Set<number>();
  const queue = [pid];
  while (queue.length > 0) {
    const p = queue.shift()!;
    if (seen.has(p)) continue;
    seen.add(p);
    queue.push(...childrenOf(p));
  }
  return [...seen];
}

export interface TreeCpu {
  /** Seconds over the whole tree. */
  total: number;
  /** Seconds per live process of the tree. */
  perPid: Map<number, number>;
}

/**
 * CPU seconds of a process tree: utime+stime+cutime+cstime of the root (all its threads, and
 * every child it has reaped with wait()) plus the same of each live descendant. Sample before
 * and after a run; the difference is what the server spent on it — except the children a
 * server lets the kernel reap (SIGCHLD ignored, as tftpd-hpa does): their time is lost on exit,
 * see ProcessAccounting.
 */
export function treeCpu(pid: number): TreeCpu {
  const perPid = new Map<number, number>();
  let total = 0;
  for (const p of processTree(pid)) {
    const f = statFields(p);
    if (f === null) continue;
    // field 14 utime, 15 stime, 16 cutime, 17 cstime → indexes 11..14 from field 3.
    const s = (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / clockTicks();
    perPid.set(p, s);
    total += s;
  }
  return { total, perPid };
}

/** CPU seconds (utime+stime) of each live thread of `pid`, by thread id, with the thread's name. */
export function threadCpu(pid: number): Map<number, { name: string; seconds: number }> {
  const out = new Map<number, { name: string; seconds: number }>();
  for (const tid of tasksOf(pid)) {
    const text = readText(`/proc/${pid}/task/${tid}/stat`);
    if (text === null) continue;
    const name = text.slice(text.indexOf("(") + 1, text.lastIndexOf(")"));
    const f = text.slice(text.lastIndexOf(")") + 2).trim().split(" ");
    out.set(Number(tid), { name, seconds: (Number(f[11]) + Number(f[12])) / clockTicks() });
  }
  return out;
}

/**
 * What each kind of thread spent between two threadCpu readings, by thread name (threads that
 * ended meanwhile are missing), most first: "Worker 5.41 s, JITWorker 0.45 s, ...". Null when
 * one thread did all of it.
 */
export function threadSplit(before: ReturnType<typeof threadCpu>, after: ReturnType<typeof threadCpu>): string | null {
  const byName = new Map<string, number>();
  for (const [tid, now] of after) {
    const spent = now.seconds - (before.get(tid)?.seconds ?? 0);
    if (spent > 0) byName.set(now.name, (byName.get(now.name) ?? 0) + spent);
  }
  if (byName.size < 2) return null;
  return [...byName].sort((a, b) => b[1] - a[1]).map(([name, seconds]) => `${name} ${seconds.toFixed(2)} s`).join(", ");
}

/** Does the process ignore SIGCHLD (so its children are reaped by the kernel, times lost)? */
export function ignoresSigchld(pid: number): boolean {
  const text = readText(`/proc/${pid}/status`);
  const m = text ? /^SigIgn:\s+([0-9a-f]+)/m.exec(text) : null;
  return m ? (BigInt(`0x${m[1]}`) & (1n << 16n)) !== 0n : false;
}

/** One exited process, from a BSD process-accounting (acct v3) record. */
export interface AcctRecord {
  pid: number;
  ppid: number;
  cpuS: number;
  comm: string;
}

/** comp_t: 13-bit mantissa, 3-bit base-8 exponent. */
const compT = (v: number): number => (v & 0x1fff) * 8 ** ((v >> 13) & 7);
const AHZ = 100;

/**
 * BSD process accounting (acct(2), per pid namespace): while on, the kernel appends a record
 * with the CPU time of every process that exits. It is how the CPU of children that a server
 * lets the kernel reap is counted. Needs CAP_SYS_PACCT; off again in stop() (and on exit).
 */
export class ProcessAccounting {
  private static libc: ReturnType<typeof ProcessAccounting.open> | null = null;
  private static active: string | null = null;

  private static open() {
    return dlopen("libc.so.6", { acct: { args: [FFIType.ptr], returns: FFIType.i32 } });
  }

  private static call(path: string | null): boolean {
    ProcessAccounting.libc ??= ProcessAccounting.open();
    const arg = path === null ? null : ptr(Buffer.from(`${path}\0`));
    return ProcessAccounting.libc.symbols.acct(arg) === 0;
  }

  /** Turns accounting on into `file` (truncated); null when the kernel refuses. */
  static start(file: string): ProcessAccounting | null {
    try {
      writeFileSync(file, "");
      if (!ProcessAccounting.call(file)) return null;
      ProcessAccounting.active = file;
      return new ProcessAccounting(file);
    } catch {
      return null;
    }
  }

  /** Turns accounting off whoever turned it on (a run of this script that was SIGKILLed). */
  static forceOff(): boolean {
    try {
      return ProcessAccounting.call(null);
    } catch {
      return false;
    }
  }

  /** Turns accounting off if this process turned it on (safe to call from exit handlers). */
  static stopAll(): void {
    if (ProcessAccounting.active === null) return;
    ProcessAccounting.active = null;
    try {
      ProcessAccounting.call(null);
    } catch {
      /* nothing more to do */
    }
  }

  private constructor(readonly file: string) {}

  /** Turns accounting off and returns the records written meanwhile. */
  stop(): AcctRecord[] {
    ProcessAccounting.stopAll();
    const b = readFileSync(this.file);
    const out: AcctRecord[] = [];
    for (let o = 0; o + 64 <= b.length; o += 64) {
      const dv = new DataView(b.buffer, b.byteOffset + o, 64);
      if (dv.getUint8(1) !== 3) continue; // acct_v3 only
      out.push({
        pid: dv.getUint32(16, true),
        ppid: dv.getUint32(20, true),
        cpuS: (compT(dv.getUint16(32, true)) + compT(dv.getUint16(34, true))) / AHZ,
        comm: b.subarray(o + 48, o + 64).toString("latin1").replace(/\0.*$/s, ""),
      });
    }
    return out;
  }
}

/** Busy CPU seconds of the whole machine so far (all CPUs, /proc/stat: all but idle+iowait). */
export function machineBusySeconds(): number {
  const line = (readText("/proc/stat") ?? "").split("\n")[0] ?? "";
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const busy = v.reduce((a, b) => a + b, 0) - (v[3] ?? 0) - (v[4] ?? 0) - (v[8] ?? 0) - (v[9] ?? 0);
  return busy / clockTicks();
}

function statusKiB(pid: number, key: string): number | null {
  const text = readText(`/proc/${pid}/status`);
  if (text === null) return null;
  const m = new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(text);
  return m ? Number(m[1]) : null;
}

/** VmHWM (peak resident set) of one process, in KiB. */
export function peakRssKiB(pid: number): number | null {
  return statusKiB(pid, "VmHWM");
}

function pssKiB(pid: number): number | null {
  const text = readText(`/proc/${pid}/smaps_rollup`);
  if (text === null) return null;
  const m = /^Pss:\s+(\d+) kB/m.exec(text);
  return m ? Number(m[1]) : null;
}

/**
 * Memory of a process tree now, in KiB: the VmRSS of a lone process, or, when it has live
 * children (a forking server), the sum of Pss over the tree, so pages the children share
 * with the parent (libc, the binary, the file's page cache mapping) count once.
 */
export function treeMemoryKiB(pid: number): { kib: number; processes: number } {
  const tree = processTree(pid);
  if (tree.length <= 1) return { kib: statusKiB(pid, "VmRSS") ?? 0, processes: tree.length };
  let kib = 0;
  for (const p of tree) kib += pssKiB(p) ?? 0;
  return { kib, processes: tree.length };
}

/**
 * Samples treeMemoryKiB every `everyMs` until stopped; reports the peak seen. A sample over
 * thousands of forked children costs real CPU on a small machine, so the pause after each
 * sample is at least 10× what the sample took (the sampler stays under ~10 % of one core).
 */
export class MemorySampler {
  private timer: ReturnType<typeof setTimeout> | null = null;
  private stopped = false;
  peakKiB = 0;
  peakProcesses = 1;
  samples = 0;

  constructor(private readonly pid: number, private readonly everyMs = 200) {
    this.tick();
  }

  private tick(): void {
    if (this.stopped) return;
    const took = this.sample();
    this.timer = setTimeout(() => this.tick(), Math.max(this.everyMs, took * 10));
  }

  /** Takes one sample; returns the milliseconds it took. */
  sample(): number {
    const t = performance.now();
    const { kib, processes } = treeMemoryKiB(this.pid);
    this.samples++;
    if (kib > this.peakKiB) this.peakKiB = kib;
    if (processes > this.peakProcesses) this.peakProcesses = processes;
    return performance.now() - t;
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.sample();
  }
}

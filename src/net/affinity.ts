/**
 * CPU affinity of one thread (performance.cpu.affinity): sched_setaffinity(0, …) through
 * bun:ffi pins the calling thread only, so each transfer worker pins itself, within the CPUs
 * this process may use (usableCpus); where libc or that list is out of reach, nothing is
 * pinned and the caller says so. Also the nice value of one thread (setThreadNice), which
 * helper-threads.ts gives the runtime's background threads.
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import { readFileSync } from "node:fs";
import { netLibc } from "./libc.ts";

/** glibc's cpu_set_t: 1024 CPUs, one bit each */
const CPU_SET_BYTES = 128;

interface AffinityLibc {
  sched_setaffinity(pid: number, size: number, mask: number): number;
  setpriority(which: number, who: number, nice: number): number;
  gettid(): number;
}

/** setpriority's `which` for one process, or (given a thread id) one thread on Linux */
const PRIO_PROCESS = 0;

let libc: AffinityLibc | null | undefined;

function affinityLibc(): AffinityLibc | null {
  if (libc !== undefined) return libc;
  try {
    const { symbols: s } = dlopen("libc.so.6", {
      sched_setaffinity: { args: [FFIType.i32, FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
      setpriority: { args: [FFIType.i32, FFIType.u32, FFIType.i32], returns: FFIType.i32 },
      gettid: { args: [], returns: FFIType.i32 },
    });
    libc = {
      sched_setaffinity: (pid, size, mask) => s.sched_setaffinity(pid, size, mask),
      setpriority: (which, who, nice) => s.setpriority(which, who, nice),
      gettid: () => s.gettid(),
    };
  } catch {
    libc = null;
  }
  return libc;
}

/**
 * The CPUs this process may run on (Cpus_allowed_list of /proc/self/status: the online CPUs
 * less what taskset, a cgroup cpuset or a container took away), or null where that cannot be
 * read. Read before any thread pins itself: a pinned thread's own list is narrower.
 */
export function usableCpus(statusPath = "/proc/self/status"): number[] | null {
  try {
    const line = /^Cpus_allowed_list:\s*(\S+)/m.exec(readFileSync(statusPath, "utf8"));
    return line ? parseCpuList(line[1]!) : null;
  } catch {
    return null;
  }
}

/** the highest CPU number a list may name (the kernel's limit is far below) */
const MAX_CPU = 65_535;

/**
 * "0-3,8" → [0, 1, 2, 3, 8]: the format of /proc/PID/status's Cpus_allowed_list, of taskset,
 * and of the config's CPU lists (spaces around the numbers allowed); null when it is none.
 */
export function parseCpuList(text: string): number[] | null {
  const cpus: number[] = [];
  for (const part of text.trim().split(",")) {
    const m = /^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$/.exec(part);
    if (!m) return null;
    const lo = Number(m[1]);
    const hi = m[2] !== undefined ? Number(m[2]) : lo;
    if (lo > hi || hi > MAX_CPU) return null;
    for (let cpu = lo; cpu <= hi; cpu++) cpus.push(cpu);
  }
  return cpus;
}

/** The kernel id of the calling thread (what /proc/PID/task/TID names), or null without libc. */
export function threadId(): number | null {
  return affinityLibc()?.gettid() ?? null;
}

/**
 * Pins the calling thread to `cpus`. Returns null when done, else why not (in words: the
 * caller logs it).
 */
export function pinThisThread(cpus: readonly number[]): string | null {
  const lib = affinityLibc();
  if (!lib) return "libc is out of reach";
  const mask = new Uint8Array(new ArrayBuffer(CPU_SET_BYTES));
  for (const cpu of cpus) {
    if (cpu >= CPU_SET_BYTES * 8) return `CPU ${cpu} is past the ${CPU_SET_BYTES * 8} a CPU set holds`;
    mask[cpu >> 3]! |= 1 << (cpu & 7);
  }
  if (lib.sched_setaffinity(0, CPU_SET_BYTES, ptr(mask)) === 0) return null;
  return `sched_setaffinity failed (errno ${netLibc()?.errno() ?? "unknown"})`;
}

/**
 * Sets the nice value of thread `tid` of this process (a higher value yields the CPU to the
 * others; raising it needs no privilege). Returns null when done, else why not.
 */
export function setThreadNice(tid: number, nice: number): string | null {
  const lib = affinityLibc();
  if (!lib) return "libc is out of reach";
  if (lib.setpriority(PRIO_PROCESS, tid, nice) === 0) return null;
  return `setpriority failed (errno ${netLibc()?.errno() ?? "unknown"})`;
}

export type AffinitySetting = "auto" | "none" | readonly number[];

export interface AffinityPlan {
  /** the CPUs of worker i (index i), or null: left to the kernel */
  perWorker: (readonly number[] | null)[];
  /** why part of the setting is not honoured here, one line; null when all of it is */
  unhonoured: string | null;
}

/**
 * Which CPU each of `workers` transfer workers is pinned to:
 * - "none": none is pinned;
 * - a CPU list: worker i gets the list's i-th CPU (round robin when there are more workers);
 *   CPUs this process may not use (not online, or outside its cpuset) are left out, and said;
 * - "auto": one CPU each, from the last usable CPU down, when two CPUs are left over for the
 *   main thread, the kernel's network work and whatever else runs (CPU 0, where the kernel
 *   takes most interrupts, is among them); else it pins nothing. Measured on 2 CPUs with the
 *   one worker pinned to CPU 1, a boot storm lost 13-20 % of its goodput against the kernel's
 *   own placement: a worker sharing the CPUs with everything else is better moved than fixed.
 */
export function planAffinity(setting: AffinitySetting, workers: number, usable: readonly number[] | null): AffinityPlan {
  const none = (unhonoured: string | null = null): AffinityPlan => ({ perWorker: Array.from({ length: workers }, () => null), unhonoured });
  if (setting === "none" || workers === 0) return none();
  if (usable === null) return none(`performance.cpu.affinity: the CPUs this process may use cannot be read here (/proc/self/status), so transfer workers are not pinned`);
  if (setting === "auto") {
    if (usable.length < workers + 2) return none();
    return { perWorker: Array.from({ length: workers }, (_, i) => [usable[usable.length - 1 - i]!]), unhonoured: null };
  }
  const present = setting.filter((cpu) => usable.includes(cpu));
  const missing = setting.filter((cpu) => !usable.includes(cpu));
  const usableText = formatCpuList(usable);
  if (present.length === 0) {
    return none(`performance.cpu.affinity: no CPU of ${formatCpuList(setting)} is available here (this process may use ${usableText}), so transfer workers are not pinned`);
  }
  return {
    perWorker: Array.from({ length: workers }, (_, i) => [present[i % present.length]!]),
    unhonoured: missing.length > 0 ? `performance.cpu.affinity: CPU ${formatCpuList(missing)} is not available here (this process may use ${usableText}); workers are pinned to ${formatCpuList(present)} only` : null,
  };
}

/** [0, 1, 2, 3, 8] → "0-3,8" */
export function formatCpuList(cpus: readonly number[]): string {
  const sorted = [...new Set(cpus)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++;
    parts.push(j === i ? String(sorted[i]) : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return parts.join(",");
}

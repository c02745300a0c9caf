/**
 * On-demand CPU profiles of a running server, from JavaScriptCore's own sampling profiler
 * (`bun:jsc` profile): every JS thread of the process is sampled over the same N seconds, the
 * main thread here and each transfer worker by itself (a worker is a VM of its own, and the
 * profiler samples only the VM that starts it), then reported per thread: the top functions by
 * self time and a `.cpuprofile` (Chrome DevTools / speedscope format), from which folded
 * stacks (flamegraph.pl, speedscope) are made.
 *
 * The main thread is the control plane and, with one transfer engine on Bun's sockets, the
 * data plane too; with network.epoll or several engines the transfers run in the workers.
 */
import { profile, type SamplingProfileStackFrame } from "bun:jsc";

/**
 * How long after the profile's end a worker's samples are waited for: it stops, builds its
 * report and posts it between its loop's turns, so only a worker held up (a long turn) or
 * gone misses it, and the request still ends.
 */
export const WORKER_PROFILE_MARGIN_MS = 5000;

export interface HotFunction {
  name: string;
  url: string;
  line: number;
  selfSamples: number;
  selfPercent: number;
}

/** One thread's samples. */
export interface ThreadCpuProfile {
  samples: number;
  intervalMs: number;
  top: HotFunction[];
  /** Chrome's .cpuprofile JSON */
  cpuprofile: ChromeCpuProfile;
}

export interface ThreadReport {
  /** "main", or "worker-N" for transfer worker N (its index in "transfer workers started") */
  thread: string;
  /** the worker's index; null for the main thread */
  worker: number | null;
  /** /proc/PID/task/<tid>; null when it is not known */
  tid: number | null;
  /** null when the thread gave none: `missing` says why */
  profile: ThreadCpuProfile | null;
  missing: string | null;
}

export interface CpuProfileReport {
  seconds: number;
  intervalMs: number;
  /** the main thread first, then the workers by index */
  threads: ThreadReport[];
}

/** A worker's answer to a profile, as a pool of workers gives it (worker-pool.ts). */
export interface WorkerProfileOutcome {
  index: number;
  tid: number | null;
  profile: ThreadCpuProfile | null;
  missing: string | null;
}

/** Worker threads that sample themselves while the main thread does (WorkerPool). */
export interface ProfiledWorkers {
  /** every worker starts sampling its thread; `collect` stops them and waits at most `marginMs` for their answers */
  startProfiles(intervalUs: number, limit: number): { collect(marginMs: number): Promise<WorkerProfileOutcome[]> };
}

interface ChromeNode {
  id: number;
  callFrame: { functionName: string; scriptId: string; url: string; lineNumber: number; columnNumber: number };
  hitCount: number;
  children: number[];
}

export interface ChromeCpuProfile {
  nodes: ChromeNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const UNKNOWN = 4294967295;

function frameKey(f: SamplingProfileStackFrame): string {
  return `${f.name}|${f.sourceURL ?? ""}|${f.line}|${f.column}`;
}

/** Builds the call tree Chrome's format wants from JSC's raw samples (innermost frame first). */
function toChrome(traces: { timestamp: number; frames: SamplingProfileStackFrame[] }[]): ChromeCpuProfile {
  const root: ChromeNode = {
    id: 1,
    callFrame: { functionName: "(root)", scriptId: "0", url: "", lineNumber: -1, columnNumber: -1 },
    hitCount: 0,
    children: [],
  };
  const nodes = [root];
  const childIndex = new Map<string, number>(); // `${parentId}>${frameKey}` → node id
  const samples: number[] = [];
  const timeDeltas: number[] = [];
  let previous = traces[0]?.timestamp ?? 0;
  for (const trace of traces) {
    let parent = root;
    for (let i = trace.frames.length - 1; i >= 0; i--) {
      const frame = trace.frames[i]!;
      const key = `${parent.id}>${frameKey(frame)}`;
      let id = childIndex.get(key);
      if (id === undefined) {
        id = nodes.length + 1;
        nodes.push({
          id,
          callFrame: {
            functionName: frame.name || "(anonymous)",
            scriptId: String(frame.sourceID === UNKNOWN ? 0 : frame.sourceID),
            url: frame.sourceURL ?? "",
            lineNumber: frame.line === UNKNOWN ? -1 : frame.line - 1,
            columnNumber: frame.column === UNKNOWN ? -1 : frame.column - 1,
          },
          hitCount: 0,
          children: [],
        });
        parent.children.push(id);
        childIndex.set(key, id);
      }
      parent = nodes[id - 1]!;
    }
    parent.hitCount++;
    samples.push(parent.id);
    timeDeltas.push(Math.round((trace.timestamp - previous) * 1e6));
    previous = trace.timestamp;
  }
  const start = Math.round((traces[0]?.timestamp ?? 0) * 1e6);
  return { nodes, startTime: start, endTime: Math.round(previous * 1e6), samples, timeDeltas };
}

function topFunctions(traces: { frames: SamplingProfileStackFrame[] }[], limit: number): HotFunction[] {
  const counts = new Map<string, HotFunction>();
  for (const trace of traces) {
    const frame = trace.frames[0];
    if (!frame) continue;
    const key = frameKey(frame);
    let hot = counts.get(key);
    if (!hot) {
      hot = {
        name: frame.name || "(anonymous)",
        url: frame.sourceURL ?? "[native code]",
        line: frame.line === UNKNOWN ? 0 : frame.line,
        selfSamples: 0,
        selfPercent: 0,
      };
      counts.set(key, hot);
    }
    hot.selfSamples++;
  }
  const total = traces.length || 1;
  return [...counts.values()]
    .map((h) => ({ ...h, selfPercent: (h.selfSamples / total) * 100 }))
    .sort((a, b) => b.selfSamples - a.selfSamples)
    .slice(0, limit);
}

/** Samples the calling thread (its VM) until `until` settles, while it goes on with its work. */
export async function profileThisThread(until: Promise<unknown>, intervalUs = 1000, limit = 25): Promise<ThreadCpuProfile> {
  const result = await profile(() => until, intervalUs);
  const traces = result.stackTraces.traces;
  return {
    samples: traces.length,
    intervalMs: result.stackTraces.interval * 1000,
    top: topFunctions(traces, limit),
    cpuprofile: toChrome(traces),
  };
}

/**
 * Samples the main thread for `seconds` and, over the same seconds, every worker of `workers`
 * (each its own thread). A worker that gives no profile within WORKER_PROFILE_MARGIN_MS of
 * the end (held up, or it died meanwhile) is reported with why, not waited for.
 */
export async function recordCpuProfile(seconds: number, pool: ProfiledWorkers | null = null, intervalUs = 1000, limit = 25): Promise<CpuProfileReport> {
  // workers first and collected last, so their samples cover the main thread's seconds
  const running = pool?.startProfiles(intervalUs, limit);
  const main = await profileThisThread(Bun.sleep(seconds * 1000), intervalUs, limit);
  const workers = running ? await running.collect(WORKER_PROFILE_MARGIN_MS) : [];
  return {
    seconds,
    intervalMs: main.intervalMs,
    threads: [
      // the main thread's id is the process id
      { thread: "main", worker: null, tid: process.pid, profile: main, missing: null },
      ...workers.map((w) => ({ thread: `worker-${w.index}`, worker: w.index, tid: w.tid, profile: w.profile, missing: w.missing })),
    ],
  };
}

/** A report as a server from before per-thread profiles sent it (the main thread's fields at the top), in today's shape. */
export function withThreads(report: CpuProfileReport | (ThreadCpuProfile & { seconds: number })): CpuProfileReport {
  if ("threads" in report) return report;
  const { seconds, ...main } = report;
  return { seconds, intervalMs: main.intervalMs, threads: [{ thread: "main", worker: null, tid: null, profile: main, missing: null }] };
}

/** A frame as folded stacks show it: `name (file:line)`, with nothing in it that the format splits on. */
function foldedFrame(frame: ChromeNode["callFrame"]): string {
  const where = frame.url === "" ? "native" : `${frame.url}:${frame.lineNumber + 1}`;
  return `${frame.functionName} (${where})`.replace(/[;\r\n]/g, " ");
}

/**
 * Folded stacks of every thread that gave a profile, as flamegraph.pl and speedscope read
 * them: one line per distinct stack, `thread;outermost;...;innermost count`, the thread's name
 * ("main", "worker-0") as the first frame; a thread's counts sum to its samples.
 */
export function foldedStacks(threads: readonly ThreadReport[]): string {
  const counts = new Map<string, number>();
  for (const { thread, profile } of threads) {
    if (!profile) continue;
    const nodes = new Map(profile.cpuprofile.nodes.map((n) => [n.id, n]));
    // (root) is the thread itself: samples with no JS frame count there
    const pending: { id: number; stack: string }[] = [{ id: 1, stack: thread }];
    for (let next = pending.pop(); next; next = pending.pop()) {
      const node = nodes.get(next.id);
      if (!node) continue;
      // several call-tree nodes can show the same (the same line, another column): one line each stack
      if (node.hitCount > 0) counts.set(next.stack, (counts.get(next.stack) ?? 0) + node.hitCount);
      for (const child of node.children) {
        const callFrame = nodes.get(child)?.callFrame;
        if (callFrame) pending.push({ id: child, stack: `${next.stack};${foldedFrame(callFrame)}` });
      }
    }
  }
  return [...counts].map(([stack, count]) => `${stack} ${count}\n`).join("");
}

/** A V8-format heap snapshot (Chrome DevTools, VS Code) as UTF-8 JSON bytes. */
export function heapSnapshot(): ArrayBuffer {
  return Bun.generateHeapSnapshot("v8", "arraybuffer");
}

/**
 * On-demand CPU profiles of a running server, from JavaScriptCore's own sampling profiler
 * (`bun:jsc` profile): samples the main thread's stack for N seconds, then reports the top
 * functions by self time and a `.cpuprofile` (Chrome DevTools / speedscope format).
 *
 * The main thread is the control plane and, with one transfer engine (the default on two
 * CPUs), the data plane too; worker threads are separate VMs and are not sampled.
 */
import { profile, type SamplingProfileStackFrame } from "bun:jsc";

export interface HotFunction {
  name: string;
  url: string;
  line: number;
  selfSamples: number;
  selfPercent: number;
}

export interface CpuProfileReport {
  seconds: number;
  samples: number;
  intervalMs: number;
  top: HotFunction[];
  /** Chrome's .cpuprofile JSON */
  cpuprofile: ChromeCpuProfile;
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

/** Samples this thread for `seconds` while it goes on serving. */
export async function recordCpuProfile(seconds: number, intervalUs = 1000, limit = 25): Promise<CpuProfileReport> {
  const result = await profile(() => Bun.sleep(seconds * 1000), intervalUs);
  const traces = result.stackTraces.traces;
  return {
    seconds,
    samples: traces.length,
    intervalMs: result.stackTraces.interval * 1000,
    top: topFunctions(traces, limit),
    cpuprofile: toChrome(traces),
  };
}

/** A V8-format heap snapshot (Chrome DevTools, VS Code) as UTF-8 JSON bytes. */
export function heapSnapshot(): ArrayBuffer {
  return Bun.generateHeapSnapshot("v8", "arraybuffer");
}

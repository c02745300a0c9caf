/**
 * The runtime's background threads yield the CPU to the threads that answer packets
 * (performance.cpu.runtime_threads_nice). JavaScriptCore compiles hot functions on "JITWorker"
 * threads and pre-touches heap blocks on "JSCWarmUp", at the server's own priority: a compile
 * of one function takes 5-75 ms, and a request arriving meanwhile on the same CPU waited its
 * turn behind it. At nice 19 they run whenever that CPU would idle, and step aside at once
 * otherwise. The runtime ends those threads after an idle spell and starts new ones from a
 * JavaScript thread, whose priority they inherit, so the threads are looked over again each
 * `everyMs`.
 *
 * Collector threads keep the server's priority: a collection the main thread or a worker waits
 * for must not wait longer.
 */
import { setThreadNice } from "./affinity.ts";
import { readTaskFiles } from "./tasks.ts";

/** The lowest priority a thread can have: what the server gives these threads by default, and the bench its own. */
export const LOWEST_NICE = 19;

/** names (/proc/self/task/TID/comm) of the runtime's threads whose work can wait */
export const HELPER_THREAD_NAMES: ReadonlySet<string> = new Set(["JITWorker", "JSCWarmUp"]);

/** The ids of this process's threads named in HELPER_THREAD_NAMES. */
export function helperThreadIds(taskDir = "/proc/self/task"): number[] {
  return readTaskFiles("comm", taskDir)
    .filter((task) => HELPER_THREAD_NAMES.has(task.text.trimEnd()))
    .map((task) => Number(task.tid));
}

/** how often the threads are looked over for new ones */
const LOOK_OVER_EVERY_MS = 1000;

export interface HelperThreadPriority {
  stop(): void;
}

/**
 * Gives every helper thread nice `nice` now and each `everyMs` after; `refused` hears once why
 * a thread could not be set (the server runs on as it would without the setting).
 * Nice 0 does nothing: the threads keep the server's priority.
 */
export function keepHelperThreadsNice(nice: number, refused: (why: string) => void, everyMs = LOOK_OVER_EVERY_MS): HelperThreadPriority {
  if (nice === 0) return { stop: () => {} };
  let done = new Set<number>();
  let said = false;
  const lookOver = (): void => {
    const now = new Set(helperThreadIds());
    for (const tid of now) {
      if (done.has(tid)) continue;
      const why = setThreadNice(tid, nice);
      if (why !== null && !said) {
        said = true;
        refused(why);
      }
    }
    // threads that ended leave the set: a new thread given a reused id is set again
    done = now;
  };
  lookOver();
  const timer = setInterval(lookOver, everyMs);
  // (it must not keep the process alive)
  timer.unref();
  return { stop: () => clearInterval(timer) };
}

/**
 * The threads of this process as the kernel lists them (/proc/self/task/TID): one file of each,
 * read in one pass. A thread that ends between the listing and the read is left out; without
 * /proc there are none.
 */
import { readdirSync, readFileSync } from "node:fs";

export interface TaskFile {
  /** the thread's kernel id, as /proc names it */
  tid: string;
  text: string;
}

/** `file` (e.g. "comm", "status") of every thread listed in `taskDir`. */
export function readTaskFiles(file: string, taskDir = "/proc/self/task"): TaskFile[] {
  let tids: string[];
  try {
    tids = readdirSync(taskDir);
  } catch {
    return [];
  }
  const files: TaskFile[] = [];
  for (const tid of tids) {
    try {
      files.push({ tid, text: readFileSync(`${taskDir}/${tid}/${file}`, "utf8") });
    } catch {
      // the thread ended meanwhile
    }
  }
  return files;
}

/** Which threads helper-threads.ts takes for the runtime's background threads, read from a task directory made here. */
import { afterAll, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { helperThreadIds } from "../../../src/net/helper-threads.ts";
import { removeDir, tempDir } from "../../helpers/files.ts";

const taskDir = tempDir("tftpd-task-");
afterAll(() => removeDir(taskDir));

function thread(tid: number, comm: string | null): void {
  mkdirSync(`${taskDir}/${tid}`);
  if (comm !== null) writeFileSync(`${taskDir}/${tid}/comm`, `${comm}\n`);
}

test("the JIT compilers and the heap warm-up are taken; the main thread, workers, collectors and a thread gone meanwhile are not", () => {
  thread(100, "tftpd");
  thread(101, "JITWorker");
  thread(102, "JSCWarmUp");
  thread(103, "Worker");
  thread(104, "HeapHelper");
  thread(105, "JITWorker");
  thread(106, null);
  expect(helperThreadIds(taskDir).sort()).toEqual([101, 102, 105]);
});

test("no task directory: no threads", () => {
  expect(helperThreadIds(`${taskDir}/none`)).toEqual([]);
});

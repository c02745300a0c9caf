/**
 * A profile of the real in-process server with two transfer workers: each worker samples its
 * own thread over the main thread's seconds, and a worker that dies meanwhile is reported as
 * giving no profile instead of holding the profile up.
 */
import { afterEach, expect, test } from "bun:test";
import { recordCpuProfile, WORKER_PROFILE_MARGIN_MS } from "../../../src/ops/profiler.ts";
import { removeDir, tempDir } from "../../helpers/files.ts";
import { startServer, type InProcessServer } from "../../helpers/server.ts";

let served: InProcessServer | null = null;
let root: string | null = null;

afterEach(async () => {
  await served?.stop();
  served = null;
  if (root) removeDir(root);
  root = null;
});

async function serveWithWorkers(): Promise<InProcessServer> {
  root = tempDir();
  served = await startServer(root, { workers: 2 });
  return served;
}

test("every worker samples its own thread, named by its index and thread id", async () => {
  const { server } = await serveWithWorkers();
  const pool = server.workers!;
  const report = await recordCpuProfile(0.5, pool);
  expect(report.threads.map((t) => t.thread)).toEqual(["main", "worker-0", "worker-1"]);
  expect(report.threads[0]!.tid).toBe(process.pid);
  for (const [i, thread] of report.threads.slice(1).entries()) {
    expect(thread.worker).toBe(i);
    expect(thread.tid).toBe(pool.threads[i]!.tid);
    expect(thread.missing).toBeNull();
    expect(thread.profile!.cpuprofile.nodes[0]!.callFrame.functionName).toBe("(root)");
    expect(thread.profile!.samples).toBe(thread.profile!.cpuprofile.samples.length);
  }
});

test("a worker that dies during the profile is reported as giving none, and the profile ends on time", async () => {
  const { server } = await serveWithWorkers();
  const pool = server.workers!;
  const killedTid = pool.threads[0]!.tid;
  const started = performance.now();
  const profiling = recordCpuProfile(1, pool);
  await Bun.sleep(200);
  pool.kill(0);
  const report = await profiling;
  expect(performance.now() - started).toBeLessThan(1000 + WORKER_PROFILE_MARGIN_MS);
  const [, dead, alive] = report.threads;
  expect(dead!.thread).toBe("worker-0");
  expect(dead!.tid).toBe(killedTid);
  expect(dead!.profile).toBeNull();
  expect(dead!.missing).toMatch(/^exited during the profile/);
  expect(alive!.thread).toBe("worker-1");
  expect(alive!.profile).not.toBeNull();
  // the replacement serves on; the next profile has it in the dead one's place
  const next = await recordCpuProfile(0.2, pool);
  expect(next.threads[1]!.missing).toBeNull();
  expect(next.threads[1]!.tid).not.toBe(killedTid);
});

/**
 * performance.cpu.runtime_threads_nice on a real server: the runtime's background threads
 * (JITWorker, JSCWarmUp) get the nice value, which the kernel shows in
 * /proc/PID/task/TID/stat, while the threads that answer packets (the main thread, the
 * transfer workers) keep the server's; at 0 every thread keeps it.
 */
import { afterAll, expect, setDefaultTimeout, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { HELPER_THREAD_NAMES } from "../../../src/net/helper-threads.ts";
import { patternBytes, removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { run } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

setDefaultTimeout(30_000);

const root = tempDir("tftpd-helper-threads-");
writeFile(root, "boot.bin", patternBytes(200_000, 5));
afterAll(() => removeDir(root));

interface ThreadNice {
  tid: number;
  name: string;
  nice: number;
}

/** name and nice value (field 19 of stat) of each live thread of process `pid` */
function threads(pid: number): ThreadNice[] {
  const out: ThreadNice[] = [];
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const name = readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").trimEnd();
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      // the fields after the name in parentheses start at field 3 (state)
      const nice = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19 - 3]);
      out.push({ tid: Number(tid), name, nice });
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return out;
}

/** transfers enough for the runtime to compile the request path (its JIT threads then exist) */
async function someTransfers(server: ChildServer): Promise<void> {
  for (let i = 0; i < 20; i++) {
    const r = await run(["curl", "-sS", "-o", "/dev/null", `tftp://127.0.0.1:${server.port}/boot.bin`], { timeoutMs: 10_000 });
    expect(r.exitCode).toBe(0);
  }
}

async function serve(env: Record<string, string>): Promise<ChildServer> {
  return await spawnServer(["--root", root, "--listen", "127.0.0.1:0"], { env: { TFTPD_PERFORMANCE_CPU_WORKER_THREADS: "1", ...env } });
}

test("by default the runtime's background threads run at nice 19, the main thread and the workers at the server's", async () => {
  const server = await serve({});
  try {
    await someTransfers(server);
    const pid = server.proc.pid;
    // the threads are looked over each second: one started by the transfers above gets its turn
    const deadline = performance.now() + 3000;
    let seen = threads(pid);
    while (seen.some((t) => HELPER_THREAD_NAMES.has(t.name) && t.nice !== 19) && performance.now() < deadline) {
      await Bun.sleep(100);
      seen = threads(pid);
    }
    const helpers = seen.filter((t) => HELPER_THREAD_NAMES.has(t.name));
    expect(helpers.some((t) => t.name === "JITWorker")).toBe(true);
    expect(helpers.map((t) => t.nice)).toEqual(helpers.map(() => 19));
    // the main thread's id is the process's
    expect(seen.find((t) => t.tid === pid)?.nice).toBe(0);
    const workers = seen.filter((t) => t.name === "Worker");
    expect(workers.length).toBeGreaterThan(0);
    expect(workers.every((t) => t.nice === 0)).toBe(true);
  } finally {
    await server.stop();
  }
});

test("runtime_threads_nice 0: every thread keeps the server's priority", async () => {
  const server = await serve({ TFTPD_PERFORMANCE_CPU_RUNTIME_THREADS_NICE: "0" });
  try {
    await someTransfers(server);
    // past one look-over, had there been one
    await Bun.sleep(1200);
    const seen = threads(server.proc.pid);
    expect(seen.some((t) => t.name === "JITWorker")).toBe(true);
    expect(seen.every((t) => t.nice === 0)).toBe(true);
  } finally {
    await server.stop();
  }
});

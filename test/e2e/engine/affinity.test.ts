/**
 * performance.cpu.affinity on real threads: each transfer worker pins its own thread, which the
 * kernel shows in /proc/PID/task/TID/status (Cpus_allowed_list); a replacement worker takes its
 * CPU over; through the CLI the log names each worker's thread and CPUs, and a CPU that is
 * not online is said in one line by `config check` and at start.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { formatCpuList, usableCpus } from "../../../src/net/affinity.ts";
import { patternBytes, tempDir, writeFile } from "../../helpers/files.ts";
import { download } from "../../helpers/raw.ts";
import { BUN, MAIN, run } from "../../helpers/run.ts";
import { spawnServer, startServer } from "../../helpers/server.ts";
import { testScope } from "../../helpers/test-scope.ts";

const { peers, servers, dirs } = testScope();

function dir(): string {
  const d = tempDir("tftpd-affinity-");
  dirs.push(d);
  return d;
}

/** Cpus_allowed_list of thread `tid` of process `pid` */
function allowedCpus(pid: number, tid: number): string {
  const status = readFileSync(`/proc/${pid}/task/${tid}/status`, "utf8");
  return /Cpus_allowed_list:\s*(\S+)/.exec(status)![1]!;
}

const online = usableCpus()!;
const last = online.at(-1)!;
const first = online[0]!;

describe("workers pinned in-process", () => {
  test("each worker's thread is on the CPU planned for it, the main thread is not pinned, and transfers run", async () => {
    const root = dir();
    writeFile(root, "f.bin", patternBytes(20_000, 3));
    const s = await startServer(root, { workers: 2, ioLoop: "epoll", workerCpus: [[last], [first]] });
    servers.push(s);
    const threads = s.server.workers!.threads;
    expect(threads.map((t) => t?.cpus)).toEqual([[last], [first]]);
    expect(allowedCpus(process.pid, threads[0]!.tid!)).toBe(String(last));
    expect(allowedCpus(process.pid, threads[1]!.tid!)).toBe(String(first));
    // unpinned: the whole machine (or what this process was given)
    expect(allowedCpus(process.pid, process.pid)).toBe(formatCpuList(online));
    const peer = await peers.open();
    const r = await download(peer, s.port, "f.bin", { timeoutMs: 3000 });
    expect(r.bytes.length).toBe(20_000);
  });

  test("a worker that dies is replaced on the same CPU", async () => {
    const root = dir();
    writeFile(root, "f.bin", patternBytes(20_000, 4));
    const s = await startServer(root, { workers: 1, ioLoop: "epoll", workerCpus: [[first]], workerThrowAfterJobs: 1 });
    servers.push(s);
    const before = s.server.workers!.threads[0]!;
    const peer = await peers.open();
    await download(peer, s.port, "f.bin", { timeoutMs: 3000 }).catch(() => null); // the throw may cut it
    const deadline = performance.now() + 5000;
    let after = s.server.workers!.threads[0];
    while ((!after || after === before) && performance.now() < deadline) {
      await Bun.sleep(20);
      after = s.server.workers!.threads[0];
    }
    expect(after).not.toBe(before);
    expect(after!.tid).not.toBe(before.tid);
    expect(after!.cpus).toEqual([first]);
    expect(allowedCpus(process.pid, after!.tid!)).toBe(String(first));
  });

  test("without a plan the workers are left to the kernel", async () => {
    const s = await startServer(dir(), { workers: 1, ioLoop: "epoll" });
    servers.push(s);
    const thread = s.server.workers!.threads[0]!;
    expect(thread.cpus).toBeNull();
    expect(allowedCpus(process.pid, thread.tid!)).toBe(formatCpuList(online));
  });
});

describe("serve and config check", () => {
  test("TFTPD_PERFORMANCE_CPU_AFFINITY: the log names the worker's thread and CPU, and the kernel agrees", async () => {
    const root = dir();
    const server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--log-level", "info"], {
      env: { TFTPD_PERFORMANCE_CPU_AFFINITY: String(first), TFTPD_PERFORMANCE_CPU_WORKER_THREADS: "1" },
    });
    try {
      const started = await server.waitForLog((l) => l.msg === "transfer workers started", 5000);
      const threads = started.threads as { tid: number; cpus: string }[];
      expect(threads).toHaveLength(1);
      expect(threads[0]!.cpus).toBe(String(first));
      expect(allowedCpus(server.proc.pid, threads[0]!.tid)).toBe(String(first));
    } finally {
      await server.stop();
    }
  });

  test("a CPU this process may not use: one line from config check and at start naming the key; the others are used", async () => {
    const root = dir();
    const missing = last + 7;
    const configPath = `${dir()}/config.json`;
    await Bun.write(configPath, JSON.stringify({ tftp: { root }, performance: { cpu: { affinity: [first, missing], worker_threads: 1 } } }));
    const check = await run([BUN, MAIN, "config", "check", "--config", configPath]);
    expect(check.exitCode).toBe(0);
    const line = `performance.cpu.affinity: CPU ${missing} is not available here (this process may use ${formatCpuList(online)}); workers are pinned to ${first} only`;
    expect(check.stdout + check.stderr).toContain(line);
    const server = await spawnServer(["--config", configPath, "--listen", "127.0.0.1:0", "--log-level", "info"]);
    try {
      const warned = await server.waitForLog((l) => l.msg === line, 5000);
      expect(warned.level).toBe("warn");
      const started = await server.waitForLog((l) => l.msg === "transfer workers started", 5000);
      expect((started.threads as { cpus: string }[])[0]!.cpus).toBe(String(first));
    } finally {
      await server.stop();
    }
  });
});

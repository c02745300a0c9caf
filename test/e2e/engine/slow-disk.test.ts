/**
 * The io keys that wait for the disk, with the real server and a disk made slow: strace holds
 * one system call of the running server for a while (the server itself is not changed).
 *
 * - io.write_behind, every fdatasync held: with false (the default) curl's upload returns only
 *   after the delayed sync, and the file is published by then; with true curl returns at once
 *   and the file appears once the sync is done. Either way the server keeps answering other
 *   clients while the disk works (the sync runs off its event loop), and the file is byte-exact.
 * - io.async_io, io.io_threads and performance.cpu.thread_pool_size, every sendfile (the file
 *   cache's copy of a file from disk) held: with the pool (the default) a cold file's copy holds
 *   a pool thread and a cached file is served to another client at once; without it the copy
 *   holds the main thread, and the other client waits for it. The pool has io_threads threads,
 *   no more than thread_pool_size, each a thread of the process (/proc/PID/task/TID).
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { download, peerTracker } from "../../helpers/raw.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";
import { delaySyscall } from "../../helpers/strace.ts";

setDefaultTimeout(30_000);

/** how long each fdatasync, and each sendfile, of the server is held */
const SYNC_DELAY_MS = 1500;
const COPY_DELAY_MS = 1200;

const peers = peerTracker();
const dirs: string[] = [];
const cleanups: (() => Promise<unknown>)[] = [];

afterEach(async () => {
  peers.closeAll();
  for (const c of cleanups.splice(0).reverse()) await c();
  for (const d of dirs.splice(0)) removeDir(d);
});

function dir(prefix = "tftpd-slow-disk-"): string {
  const d = tempDir(prefix);
  dirs.push(d);
  return d;
}

/** every fdatasync of `pid` held SYNC_DELAY_MS, traced to `tracePath`, until the test ends */
async function slowed(pid: number, tracePath: string): Promise<void> {
  const tracer = await delaySyscall(pid, "fdatasync", SYNC_DELAY_MS, tracePath);
  cleanups.push(() => tracer.stop());
}

/** `tftpd serve` of `root` with uploads on, `env` added; stopped when the test ends */
async function serve(root: string, env: Record<string, string>): Promise<ChildServer> {
  const server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--write", "create", "--log-level", "info"], { env });
  cleanups.push(() => server.stop());
  return server;
}

/** curl -T; resolves with its exit code and how long it took */
async function curlPut(local: string, port: number, name: string): Promise<{ exitCode: number; ms: number; stderr: string }> {
  const started = performance.now();
  const curl = Bun.spawn(["curl", "-sS", "--max-time", "20", "-T", local, `tftp://127.0.0.1:${port}/${name}`], { stdout: "ignore", stderr: "pipe" });
  const exitCode = await curl.exited;
  return { exitCode, ms: performance.now() - started, stderr: await new Response(curl.stderr).text() };
}

describe("io.write_behind with fdatasync made slow", () => {
  test("false (the default): the final ACK waits for the file on disk; the server keeps serving meanwhile", async () => {
    const root = dir("tftpd-write-through-");
    const work = dir("tftpd-write-through-src-");
    const bytes = patternBytes(300_000, 21);
    const local = writeFile(work, "up.bin", bytes);
    writeFile(root, "other.bin", patternBytes(5000, 22));
    const server = await serve(root, { TFTPD_IO_WRITE_BEHIND: "false" });
    const trace = join(work, "strace.out");
    await slowed(server.proc.pid, trace);

    const put = curlPut(local, server.port, "up.bin");
    // while the sync is held, another client is served
    await Bun.sleep(SYNC_DELAY_MS / 3);
    const peer = await peers.open();
    const asked = performance.now();
    const other = await download(peer, server.port, "other.bin", { timeoutMs: 3000 });
    expect(other.bytes.length).toBe(5000);
    expect(performance.now() - asked).toBeLessThan(SYNC_DELAY_MS / 3);
    const done = await put;
    expect(done.exitCode).toBe(0);
    expect(done.ms).toBeGreaterThanOrEqual(SYNC_DELAY_MS);
    // acknowledged means published
    expect(sha256(readFileSync(join(root, "up.bin")))).toBe(sha256(bytes));
    expect(readFileSync(trace, "utf8")).toMatch(/fdatasync\(\d+\)\s+= 0 \(DELAYED\)/);
  });

  test("true: the final ACK goes at once; the file is published once the sync is done", async () => {
    const root = dir("tftpd-write-behind-");
    const work = dir("tftpd-write-behind-src-");
    const bytes = patternBytes(300_000, 23);
    const local = writeFile(work, "up.bin", bytes);
    const server = await serve(root, { TFTPD_IO_WRITE_BEHIND: "true" });
    const trace = join(work, "strace.out");
    await slowed(server.proc.pid, trace);

    const done = await curlPut(local, server.port, "up.bin");
    expect(done.exitCode).toBe(0);
    expect(done.ms).toBeLessThan(SYNC_DELAY_MS);
    // not yet published: its bytes are not on disk yet
    expect(existsSync(join(root, "up.bin"))).toBe(false);
    const record = await server.waitForLog((l) => l.msg === "transfer" && l.direction === "write", SYNC_DELAY_MS * 3);
    expect(record.result).toBe("ok");
    expect(sha256(readFileSync(join(root, "up.bin")))).toBe(sha256(bytes));
    expect(readFileSync(trace, "utf8")).toMatch(/fdatasync\(\d+\)\s+= 0 \(DELAYED\)/);
  });
});

/**
 * A cached file asked for while a cold file's copy is held: resolves with how long the cached
 * one took, after checking both downloads.
 */
async function cachedWhileCopying(server: ChildServer, cold: Uint8Array, warm: Uint8Array): Promise<number> {
  const coldPeer = await peers.open();
  const coldDownload = download(coldPeer, server.port, "cold.bin", { timeoutMs: 10_000 });
  await Bun.sleep(COPY_DELAY_MS / 4);
  const warmPeer = await peers.open();
  const asked = performance.now();
  const got = await download(warmPeer, server.port, "warm.bin", { timeoutMs: 10_000 });
  const ms = performance.now() - asked;
  expect(sha256(got.bytes)).toBe(sha256(warm));
  expect(sha256((await coldDownload).bytes)).toBe(sha256(cold));
  return ms;
}

describe("the file I/O pool and a slow disk", () => {
  const cases = [
    { asyncIo: true, onWorkers: true, waits: false, name: "async_io true: a cold file's copy waits on a pool thread; a cached file is served at once" },
    { asyncIo: false, onWorkers: false, waits: true, name: "async_io false, requests on the main thread: the copy holds it, and a cached file waits for it" },
    { asyncIo: false, onWorkers: true, waits: false, name: "async_io false, requests on the workers: the copy holds the main thread, a cached file is served at once by a worker" },
  ];
  for (const { asyncIo, onWorkers, waits, name } of cases) {
    test(name, async () => {
      const root = dir();
      const cold = patternBytes(200_000, 31);
      const warm = patternBytes(30_000, 32);
      writeFile(root, "cold.bin", cold);
      writeFile(root, "warm.bin", warm);
      const server = await serve(root, { TFTPD_IO_ASYNC_IO: String(asyncIo), TFTPD_NETWORK_REQUESTS_ON_WORKERS: String(onWorkers) });
      const peer = await peers.open();
      await download(peer, server.port, "warm.bin", { timeoutMs: 3000 }); // now cached
      const tracer = await delaySyscall(server.proc.pid, "sendfile", COPY_DELAY_MS);
      cleanups.push(() => tracer.stop());
      const ms = await cachedWhileCopying(server, cold, warm);
      if (waits) expect(ms).toBeGreaterThan(COPY_DELAY_MS / 2);
      else expect(ms).toBeLessThan(COPY_DELAY_MS / 3);
    });
  }

  test("io_threads 3 capped by thread_pool_size 2: two threads of the process, in the log; config check says why", async () => {
    const root = dir();
    const server = await serve(root, { TFTPD_IO_IO_THREADS: "3", TFTPD_PERFORMANCE_CPU_THREAD_POOL_SIZE: "2" });
    const started = await server.waitForLog((l) => l.msg === "file I/O pool started", 5000);
    expect(started.threads).toBe(2);
    const tids = started.tids as number[];
    expect(tids).toHaveLength(2);
    for (const tid of tids) expect(existsSync(`/proc/${server.proc.pid}/task/${tid}`)).toBe(true);
    const note = await server.waitForLog((l) => typeof l.msg === "string" && l.msg.startsWith("io.io_threads is 3"), 3000);
    expect(note.msg).toBe("io.io_threads is 3, more than performance.cpu.thread_pool_size 2: the file I/O pool has 2 threads");
  });

  test("async_io false: no pool, said at start", async () => {
    const server = await serve(dir(), { TFTPD_IO_ASYNC_IO: "false" });
    const line = await server.waitForLog((l) => l.msg === "the file cache's copies are made on the main thread (io.async_io false)", 5000);
    expect(line.threads).toBe(0);
  });
});

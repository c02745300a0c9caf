/**
 * io.write_behind with a real client and a disk made slow: strace injects a delay into every
 * fdatasync of the running server (the server itself is not changed). With false (the
 * default) curl's upload returns only after the delayed sync, and the file is published by
 * then; with true curl returns at once and the file appears once the sync is done. Either way
 * the server keeps answering other clients while the disk works (the sync runs off its event
 * loop), and the file published is byte-exact.
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { download, peerTracker } from "../../helpers/raw.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";
import { delaySyscall } from "../../helpers/strace.ts";

setDefaultTimeout(30_000);

/** how long each fdatasync of the server is held */
const SYNC_DELAY_MS = 1500;

const peers = peerTracker();
const dirs: string[] = [];
const cleanups: (() => Promise<unknown>)[] = [];

afterEach(async () => {
  peers.closeAll();
  for (const c of cleanups.splice(0).reverse()) await c();
  for (const d of dirs.splice(0)) removeDir(d);
});

function dir(prefix: string): string {
  const d = tempDir(prefix);
  dirs.push(d);
  return d;
}

/** every fdatasync of `pid` held SYNC_DELAY_MS, traced to `tracePath`, until the test ends */
async function slowed(pid: number, tracePath: string): Promise<void> {
  const tracer = await delaySyscall(pid, "fdatasync", SYNC_DELAY_MS, tracePath);
  cleanups.push(() => tracer.stop());
}

async function serve(root: string, writeBehind: boolean): Promise<ChildServer> {
  const server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--write", "create", "--log-level", "info"], {
    env: { TFTPD_IO_WRITE_BEHIND: String(writeBehind) },
  });
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
    const server = await serve(root, false);
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
    const server = await serve(root, true);
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

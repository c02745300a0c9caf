/**
 * `tftpd bench` as a child process against the real server in this process: counts that add
 * up with the server's own records, --verify, failures by reason, the --rate schedule, a
 * 2,000-session burst, and exit codes.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import { patternBytes, removeDir, tempDir, writeFile } from "../helpers/files.ts";
import { tftpd } from "../helpers/run.ts";
import { startServer, type InProcessServer } from "../helpers/server.ts";
import type { BenchResult } from "../../src/bench/tally.ts";

setDefaultTimeout(60_000);

let root: string;
let local: string;
let server: InProcessServer;
let target: string;

beforeAll(async () => {
  root = tempDir("tftpd-bench-root-");
  local = tempDir("tftpd-bench-local-");
  const big = patternBytes(65536, 64);
  writeFile(root, "boot/64k.bin", big);
  writeFile(local, "64k.bin", big);
  writeFile(local, "other.bin", patternBytes(65536, 65));
  writeFile(root, "boot/8k.bin", patternBytes(8192, 8));
  server = await startServer(root, { timeoutMs: 1000, retries: 5 });
  target = `127.0.0.1:${server.port}`;
});

afterAll(async () => {
  await server?.stop();
  removeDir(root);
  removeDir(local);
});


async function bench(args: string[], timeoutMs = 40_000) {
  const r = await tftpd(["bench", ...args], { timeoutMs });
  expect(r.timedOut).toBe(false);
  return r;
}

function parse(stdout: string): BenchResult {
  const lines = stdout.trim().split("\n");
  expect(lines.length).toBe(1); // --json: one object, nothing else
  return JSON.parse(lines[0]!) as BenchResult;
}

async function okRecords(since: number, want: number): Promise<number> {
  const deadline = Date.now() + 10_000;
  const count = () => server.records.slice(since).filter((r) => r.result === "ok").length;
  while (count() < want && Date.now() < deadline) await Bun.sleep(10);
  return count();
}

test("200 transfers at concurrency 50 with --verify: all pass, and the counts add up", async () => {
  const before = server.records.length;
  const r = await bench([target, "--concurrency", "50", "--total", "200", "--file", "boot/64k.bin", "--verify", join(local, "64k.bin"), "--json"]);
  const j = parse(r.stdout);
  expect(j.failures).toEqual({});
  expect(r.stderr).toBe("");
  expect(r.exitCode).toBe(0);
  expect(j).toMatchObject({
    target,
    files: ["boot/64k.bin"],
    concurrency: 50,
    rate: null,
    requested: 200,
    completed: 200,
    failed: 0,
    failures: {},
    bytes: 200 * 65536,
  });
  expect(j.goodput_mbps).toBeCloseTo((j.bytes * 8) / j.wall_s / 1e6, 0);
  expect(j.transfers_per_s).toBeCloseTo(200 / j.wall_s, 0);
  for (const p of [j.first_response_ms, j.transfer_ms]) {
    expect(p.p50).toBeGreaterThan(0);
    expect(p.p50!).toBeLessThanOrEqual(p.p90!);
    expect(p.p90!).toBeLessThanOrEqual(p.p99!);
    expect(p.p99!).toBeLessThanOrEqual(p.max!);
  }
  expect(j.first_response_ms.max!).toBeLessThanOrEqual(j.transfer_ms.max!);
  expect(j.cpu_s.user + j.cpu_s.system).toBeGreaterThan(0);
  expect(j.cpu_pct).toBeGreaterThan(0);
  expect(await okRecords(before, 200)).toBe(200);
});

test("human form: one greppable figure per line", async () => {
  const r = await bench([target, "--concurrency", "4", "--total", "8", "--file", "boot/8k.bin", "--file", "boot/64k.bin", "--blksize", "1468", "--tsize"]);
  expect(r.exitCode).toBe(0);
  const out = r.stdout;
  for (const line of [
    `target: ${target}`,
    "files: boot/8k.bin boot/64k.bin",
    "concurrency: 4",
    "rate: closed loop",
    "requested: 8",
    "completed: 8",
    "failed: 0",
    `bytes: ${4 * 8192 + 4 * 65536}`,
    "failures: none",
  ]) {
    expect(out).toContain(`${line}\n`);
  }
  for (const re of [
    /^goodput: \d+\.\d\d Mbit\/s$/m,
    /^transfers\/s: \d+\.\d$/m,
    /^first response p50: \d+\.\d{3} ms$/m,
    /^first response p99: \d+\.\d{3} ms$/m,
    /^transfer max: \d+\.\d{3} ms$/m,
    /^retransmits: \d+$/m,
    /^cpu user: \d+\.\d{3} s$/m,
    /^cpu: \d+\.\d % of one core$/m,
  ]) {
    expect(out).toMatch(re);
  }
  expect(r.stderr).toBe(""); // no progress line: stderr is not a TTY
});

test("a missing file: every transfer fails with the server's error 1, exit 1, report still printed", async () => {
  const r = await bench([target, "--concurrency", "50", "--total", "200", "--file", "boot/nope.bin", "--json"]);
  expect(r.exitCode).toBe(1);
  const j = parse(r.stdout);
  expect(j).toMatchObject({ requested: 200, completed: 0, failed: 200, failures: { "server error 1": 200 }, bytes: 0 });
  expect(j.first_response_ms.p50).toBeGreaterThan(0); // the server answered, with an ERROR
  expect(j.transfer_ms.p50).toBeNull();
});

test("--verify mismatch is a failure 'verify'", async () => {
  const r = await bench([target, "--concurrency", "5", "--total", "10", "--file", "boot/64k.bin", "--verify", join(local, "other.bin"), "--json"]);
  expect(r.exitCode).toBe(1);
  expect(parse(r.stdout)).toMatchObject({ completed: 0, failed: 10, failures: { verify: 10 } });
});

test("--quiet: nothing on stdout; one line on stderr when something failed", async () => {
  const ok = await bench([target, "--total", "3", "--file", "boot/8k.bin", "--quiet"]);
  expect(ok).toMatchObject({ exitCode: 0, stdout: "", stderr: "" });
  const bad = await bench([target, "--total", "3", "--file", "boot/none", "--quiet"]);
  expect(bad.exitCode).toBe(1);
  expect(bad.stdout).toBe("");
  expect(bad.stderr).toBe("tftpd bench: 3 of 3 transfers failed (server error 1 3)\n");
});

test("--rate: 150 transfers at 300/s take about total/rate = 0.5 s", async () => {
  const r = await bench([target, "--rate", "300", "--total", "150", "--concurrency", "100", "--file", "boot/8k.bin", "--json"]);
  expect(r.exitCode).toBe(0);
  const j = parse(r.stdout);
  expect(j).toMatchObject({ rate: 300, requested: 150, completed: 150 });
  // last arrival is due at 149/300 s; add its own transfer time
  expect(j.wall_s).toBeGreaterThanOrEqual(149 / 300);
  expect(j.wall_s).toBeLessThan(0.5 + 0.5);
  expect(j.transfers_per_s).toBeGreaterThan(150);
  expect(j.transfers_per_s).toBeLessThan(305);
});

test("--duration stops starting new transfers", async () => {
  const started = performance.now();
  const r = await bench([target, "--duration", "0.5", "--rate", "100", "--concurrency", "50", "--file", "boot/8k.bin", "--json"]);
  const elapsed = performance.now() - started;
  expect(r.exitCode).toBe(0);
  const j = parse(r.stdout);
  expect(j.requested).toBe(50); // due at 0, 10, …, 490 ms
  expect(j.completed).toBe(50);
  expect(elapsed).toBeLessThan(5_000);
});

test("a 2,000-session burst of 8 KiB files completes", async () => {
  const before = server.records.length;
  const r = await bench(
    [target, "--concurrency", "2000", "--total", "2000", "--burst", "--blksize", "1468", "--file", "boot/8k.bin", "--timeout", "1", "--retries", "8", "--json"],
    60_000,
  );
  const j = parse(r.stdout);
  expect(j.failures).toEqual({});
  expect(r.stderr).toBe("");
  expect(r.exitCode).toBe(0);
  expect(j).toMatchObject({ concurrency: 2000, requested: 2000, completed: 2000, failed: 0, bytes: 2000 * 8192 });
  expect(await okRecords(before, 2000)).toBe(2000);
});

describe("bad arguments exit 2 with one line", () => {
  const cases: [string, string[], RegExp][] = [
    ["no host", ["--file", "x"], /missing HOST/],
    ["no file", ["127.0.0.1:69"], /--file/],
    ["bad concurrency", ["127.0.0.1:69", "--file", "x", "--concurrency", "0"], /--concurrency/],
    ["bad blksize", ["127.0.0.1:69", "--file", "x", "--blksize", "99999"], /--blksize/],
    ["bad host", ["300.1.2.3:x", "--file", "x"], /port/],
    ["unknown option", ["127.0.0.1:69", "--file", "x", "--bogus"], /unknown option --bogus/],
    ["--burst with --rate", ["127.0.0.1:69", "--file", "x", "--burst", "--rate", "5"], /--burst/],
    ["missing --verify file", ["127.0.0.1:69", "--file", "x", "--verify", "/nonexistent/file"], /--verify: cannot read/],
    ["over the open-file limit", ["127.0.0.1:69", "--file", "x", "--concurrency", "100000"], /ulimit -n/],
  ];
  for (const [name, args, message] of cases) {
    test(name, async () => {
      const r = await bench(args);
      expect(r.exitCode).toBe(2);
      expect(r.stdout).toBe("");
      expect(r.stderr).toMatch(message);
      expect(r.stderr.trim().split("\n").length).toBe(1);
    });
  }
});

test("--help says what to raise for a high concurrency", async () => {
  const r = await tftpd(["bench", "--help"]);
  expect(r.exitCode).toBe(0);
  expect(r.stdout).toContain("ulimit -n");
});

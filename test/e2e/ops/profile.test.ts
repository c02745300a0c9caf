/**
 * `tftpd profile` against a running server with two transfer workers: a real JSC sampling
 * profile of the main thread and of each worker (a .cpuprofile per thread, or folded stacks of
 * them all), and a heap snapshot.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { download } from "../../../src/client/index.ts";
import { patternBytes, removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { tftpd } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

let root: string;
let out: string;
let server: ChildServer;

beforeAll(async () => {
  root = tempDir();
  out = tempDir("tftpd-profile-out-");
  writeFile(root, "f.bin", patternBytes(2_000_000, 3));
  server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0"], { env: { TFTPD_PERFORMANCE_CPU_WORKER_THREADS: "2" } });
});
afterAll(async () => {
  await server.stop();
  removeDir(root);
  removeDir(out);
});

/** The worker threads as the server logged them at start ("transfer workers started"). */
function workerThreads(): { tid: number }[] {
  const started = server.logs.find((l) => l.msg === "transfer workers started");
  return (started?.threads ?? []) as { tid: number }[];
}

/**
 * Runs `command` while the built-in client downloads from the server, one download after
 * another on each of two lanes. The sampler records nothing while a thread waits outside JS,
 * so the load lasts until the command has ended: a fixed number of downloads can end before
 * it has started.
 */
async function underLoad<T>(command: () => Promise<T>): Promise<T> {
  let loading = true;
  const lane = async (): Promise<void> => {
    while (loading) {
      const report = await download({ host: "127.0.0.1", port: server.port, remote: "f.bin", blksize: 1468, windowsize: 8, onData: () => {} });
      expect(report.error).toBeUndefined();
    }
  };
  const lanes = [lane(), lane()];
  try {
    return await command();
  } finally {
    loading = false;
    await Promise.all(lanes);
  }
}

function expectCpuProfile(file: string): void {
  const profile = JSON.parse(readFileSync(file, "utf8"));
  expect(profile.nodes[0].callFrame.functionName).toBe("(root)");
  expect(profile.samples.length).toBe(profile.timeDeltas.length);
  expect(profile.samples.length).toBeGreaterThan(0);
  const ids = new Set(profile.nodes.map((n: { id: number }) => n.id));
  for (const id of profile.samples) expect(ids.has(id)).toBe(true);
}

test("a CPU profile taken under load reports the main thread and each worker and writes a .cpuprofile per thread", async () => {
  const file = join(out, "p.cpuprofile");
  const r = await underLoad(() => tftpd(["profile", "--url", server.metricsUrl!, "--seconds", "1", "--out", file, "--top", "5"]));
  expect(r.exitCode).toBe(0);
  expect(r.stdout).toMatch(/^cpu profile over 1 s \(every 1 ms\): the main thread and 2 transfer workers$/m);
  expect(r.stdout).toMatch(new RegExp(`^main \\(tid ${server.proc.pid}\\): \\d+ samples( \\(.*\\))?$`, "m"));
  const workers = workerThreads();
  expect(workers).toHaveLength(2);
  const workerSamples = workers.map(({ tid }, i) => {
    const line = new RegExp(`^worker-${i} \\(tid ${tid}\\): (\\d+) samples( \\(.*\\))?$`, "m").exec(r.stdout);
    expect(line).not.toBeNull();
    return Number(line![1]);
  });
  expect(Math.max(...workerSamples)).toBeGreaterThan(0);
  const rows = r.stdout.split("\n").filter((l) => /^\s+\d+\.\d\s+\d+\s+\S/.test(l));
  expect(rows.length).toBeGreaterThan(0);
  expectCpuProfile(file);
  for (const [i, samples] of workerSamples.entries()) {
    if (samples > 0) expectCpuProfile(join(out, `p.worker-${i}.cpuprofile`));
  }
});

test("--format folded writes `stack count` lines, the thread first, that sum to the samples", async () => {
  const r = await underLoad(() => tftpd(["profile", "--url", server.metricsUrl!, "--seconds", "1", "--format", "folded"]));
  expect(r.exitCode).toBe(0);
  // the report goes to stderr, so stdout is the folded stacks alone
  const samples = new Map<string, number>();
  for (const m of r.stderr.matchAll(/^(main|worker-\d+) \(tid \d+\): (\d+) samples( \(.*\))?$/gm)) samples.set(m[1]!, Number(m[2]));
  expect([...samples.keys()]).toEqual(["main", "worker-0", "worker-1"]);
  const counted = new Map<string, number>();
  const lines = r.stdout.split("\n").filter((l) => l !== "");
  for (const line of lines) {
    const m = /^(\S[^;]*(?:;[^;]+)*) (\d+)$/.exec(line);
    expect(m).not.toBeNull();
    const thread = m![1]!.split(";")[0]!;
    expect(samples.has(thread)).toBe(true);
    counted.set(thread, (counted.get(thread) ?? 0) + Number(m![2]));
  }
  expect(new Set(lines.map((l) => l.slice(0, l.lastIndexOf(" ")))).size).toBe(lines.length);
  for (const [thread, n] of samples) expect(counted.get(thread) ?? 0).toBe(n);
  // a worker's stacks show its transfers' sends and receives, not only its sleeps in epoll_wait
  expect(lines.some((l) => l.startsWith("worker-") && !/epoll_wait \([^)]*\) \d+$/.test(l))).toBe(true);

  const file = join(out, "p.folded");
  const w = await underLoad(() => tftpd(["profile", "--url", server.metricsUrl!, "--seconds", "1", "--format", "folded", "--out", file]));
  expect(w.exitCode).toBe(0);
  expect(w.stdout).toContain(`folded stacks of every thread written to ${file}`);
  const written = readFileSync(file, "utf8").split("\n").filter((l) => l !== "");
  expect(written.length).toBeGreaterThan(0);
  for (const line of written) expect(line).toMatch(/^(main|worker-\d+)(;.+)? \d+$/);
});

test("an unknown --format is a usage error, in one line", async () => {
  const r = await tftpd(["profile", "--url", server.metricsUrl!, "--format", "svg"]);
  expect(r.exitCode).toBe(2);
  expect(r.stderr).toBe("tftpd profile: --format must be cpuprofile or folded, got svg\n");
  expect(r.stdout).toBe("");
});

test("--heap writes a V8 heap snapshot", async () => {
  const file = join(out, "h.heapsnapshot");
  const r = await tftpd(["profile", "--url", server.metricsUrl!, "--heap", file]);
  expect(r.exitCode).toBe(0);
  const snapshot = JSON.parse(readFileSync(file, "utf8"));
  expect(snapshot.snapshot).toBeDefined();
  expect(Array.isArray(snapshot.nodes)).toBe(true);
});

test("with metrics.control off the control endpoint refuses and the command says so", async () => {
  const off = await spawnServer(["--root", root, "--listen", "127.0.0.1:0"], { env: { TFTPD_METRICS_CONTROL: "false" } });
  try {
    const r = await tftpd(["profile", "--url", off.metricsUrl!, "--seconds", "1"]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain("HTTP 404");
    expect(r.stderr).toContain("metrics.control");
  } finally {
    await off.stop();
  }
});

test("bad --seconds is a usage error", async () => {
  const r = await tftpd(["profile", "--url", server.metricsUrl!, "--seconds", "0"]);
  expect(r.exitCode).toBe(2);
  expect(r.stderr).toContain("--seconds");
});

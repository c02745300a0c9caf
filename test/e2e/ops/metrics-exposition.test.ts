/**
 * What /metrics exposes besides the transfer figures, against a real `tftpd serve` child: only
 * tftpd_ names (none of prom-client's nodejs_ ones, wrong or meaningless under Bun), the build
 * info, and process figures that agree with what the kernel says in /proc/PID. Then the alert
 * rules in dashboards/alerts.yml: valid for promtool, built on metrics the registry exposes,
 * and firing on synthetic series as their unit test (dashboards/alerts.test.yml) expects.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ServerMetrics } from "../../../src/ops/metrics.ts";
import { parsePrometheus, type Sample } from "../../../src/ops/summary.ts";
import { BUILD_COMMIT, VERSION } from "../../../src/version.ts";
import { removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { run } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

setDefaultTimeout(15_000);

const DASHBOARDS = join(import.meta.dir, "../../../dashboards");
/** USER_HZ, as /proc/PID/stat counts times */
const TICKS_PER_SECOND = 100;

let root: string;
let server: ChildServer;

beforeAll(async () => {
  root = tempDir("tftpd-exposition-root-");
  writeFile(root, "f.bin", "boot");
  server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0"]);
});

afterAll(async () => {
  await server?.stop("SIGKILL");
  removeDir(root);
});

async function scrapeText(): Promise<string> {
  const response = await fetch(`${server.metricsUrl}/metrics`, { signal: AbortSignal.timeout(3000) });
  expect(response.status).toBe(200);
  return await response.text();
}

/** Every metric name the exposition declares (# TYPE) or has a sample of. */
function metricNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split("\n")) {
    const declared = /^# (?:TYPE|HELP) (\S+)/.exec(line)?.[1];
    if (declared) names.add(declared);
    else if (line !== "" && !line.startsWith("#")) names.add(/^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)![0]);
  }
  return names;
}

function only(samples: Sample[], name: string): Sample {
  const found = samples.filter((s) => s.name === name);
  expect(found.length).toBe(1);
  return found[0]!;
}

/** /proc/PID as the kernel keeps it: the server's CPU times, memory, fds, limits and start. */
function procOf(pid: number) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)![1]) * 1024;
  const bootTime = Number(/^btime (\d+)$/m.exec(readFileSync("/proc/stat", "utf8"))![1]);
  return {
    userSeconds: Number(fields[11]) / TICKS_PER_SECOND,
    systemSeconds: Number(fields[12]) / TICKS_PER_SECOND,
    startSeconds: bootTime + Number(fields[19]) / TICKS_PER_SECOND,
    rss: kb("VmRSS"),
    vsize: kb("VmSize"),
    openFds: readdirSync(`/proc/${pid}/fd`).length,
    maxFds: Number(/^Max open files\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/limits`, "utf8"))![1]),
  };
}

describe("the exposition of a running server", () => {
  let text: string;
  let samples: Sample[];
  let procBefore: ReturnType<typeof procOf>;
  let procAfter: ReturnType<typeof procOf>;

  beforeAll(async () => {
    // the figures of one scrape fall between what /proc says just before and just after it
    procBefore = procOf(server.proc.pid);
    text = await scrapeText();
    procAfter = procOf(server.proc.pid);
    samples = parsePrometheus(text);
  });

  test("it is the spawned process that answers", () => {
    expect(server.logs.find((l) => l.msg === "metrics listening")?.pid).toBe(server.proc.pid);
  });

  test("only tftpd_ metrics, none of Node's nodejs_ ones", () => {
    const names = [...metricNames(text)];
    expect(names.length).toBeGreaterThan(20);
    expect(names.filter((n) => !n.startsWith("tftpd_"))).toEqual([]);
    expect(names.filter((n) => n.includes("nodejs_"))).toEqual([]);
    // nor the V8-only process figure: VmData, gigabytes of reservations under Bun, is no heap
    expect(names).not.toContain("tftpd_process_heap_bytes");
  });

  test("tftpd_build_info: version, commit and Bun, value 1", () => {
    const info = only(samples, "tftpd_build_info");
    expect(info.value).toBe(1);
    // run from source, as the binary stamped with no commit
    expect(info.labels).toEqual({ version: VERSION, commit: BUILD_COMMIT, bun: Bun.version });
    expect(info.labels.commit).toBe("dev");
  });

  test("CPU seconds, user and system, are the kernel's since the process started", () => {
    // /proc counts in ticks (10 ms); getrusage in µs, accounted at slightly different moments
    const slack = 0.05;
    const cpu = (name: string) => only(samples, name).value;
    const user = cpu("tftpd_process_cpu_user_seconds_total");
    const system = cpu("tftpd_process_cpu_system_seconds_total");
    expect(user).toBeGreaterThanOrEqual(procBefore.userSeconds - slack);
    expect(user).toBeLessThanOrEqual(procAfter.userSeconds + slack);
    expect(system).toBeGreaterThanOrEqual(procBefore.systemSeconds - slack);
    expect(system).toBeLessThanOrEqual(procAfter.systemSeconds + slack);
    const total = cpu("tftpd_process_cpu_seconds_total");
    expect(total).toBeGreaterThanOrEqual(procBefore.userSeconds + procBefore.systemSeconds - 2 * slack);
    expect(total).toBeLessThanOrEqual(procAfter.userSeconds + procAfter.systemSeconds + 2 * slack);
    // starting a Bun process and loading the server is CPU the counter must not miss
    expect(total).toBeGreaterThan(0.05);
  });

  test("resident and virtual memory are /proc's VmRSS and VmSize", () => {
    const rss = only(samples, "tftpd_process_resident_memory_bytes").value;
    expect(rss).toBeGreaterThan(Math.min(procBefore.rss, procAfter.rss) * 0.9);
    expect(rss).toBeLessThan(Math.max(procBefore.rss, procAfter.rss) * 1.1);
    // a thread starting maps a stack (and an allocator arena): a few percent of Bun's reservations
    const vsize = only(samples, "tftpd_process_virtual_memory_bytes").value;
    expect(vsize).toBeGreaterThan(Math.min(procBefore.vsize, procAfter.vsize) * 0.98);
    expect(vsize).toBeLessThan(Math.max(procBefore.vsize, procAfter.vsize) * 1.02);
  });

  test("open fds are /proc/PID/fd's entries, max fds the soft RLIMIT_NOFILE", () => {
    // the scrape's own connection is open while the server counts
    const open = only(samples, "tftpd_process_open_fds").value;
    expect(open).toBeGreaterThanOrEqual(Math.min(procBefore.openFds, procAfter.openFds) - 2);
    expect(open).toBeLessThanOrEqual(Math.max(procBefore.openFds, procAfter.openFds) + 2);
    expect(only(samples, "tftpd_process_max_fds").value).toBe(procAfter.maxFds);
  });

  test("the start time is the kernel's", () => {
    const started = only(samples, "tftpd_process_start_time_seconds").value;
    expect(Math.abs(started - procAfter.startSeconds)).toBeLessThan(0.02);
    expect(started).toBeLessThan(Date.now() / 1000);
  });
});

describe("dashboards/alerts.yml", () => {
  const rules = join(DASHBOARDS, "alerts.yml");

  test("promtool check rules: valid", async () => {
    const r = await run(["promtool", "check", "rules", rules], { timeoutMs: 10_000 });
    expect(`${r.stdout}${r.stderr}`).toContain("SUCCESS: 6 rules found");
    expect(r.exitCode).toBe(0);
  });

  test("promtool test rules: each alert fires on its synthetic series (server down, Redis down, ...)", async () => {
    const unitTest = join(DASHBOARDS, "alerts.test.yml");
    const spec = readFileSync(unitTest, "utf8");
    for (const alert of ["TftpdDown", "TftpdAbsent", "TftpdRedisDown", "TftpdTransfersFailing", "TftpdCacheFull", "TftpdRequestsRefusedRising"]) {
      expect(spec).toContain(`alertname: ${alert}`);
    }
    const r = await run(["promtool", "test", "rules", unitTest], { timeoutMs: 10_000 });
    expect(`${r.stdout}${r.stderr}`).toContain("SUCCESS");
    expect(r.exitCode).toBe(0);
  });

  test("every tftpd_ metric the rules use is one the registry exposes", async () => {
    const metrics = new ServerMetrics({
      activeTransfers: () => 0,
      cacheStats: () => ({ hits: 0, misses: 0, bypasses: 0, evictions: 0, bytes: 0, entries: 0 }),
      cacheCapacity: () => 64 << 20,
      clusterStats: () => ({ redisUp: true, lookups: 0, fills: 0, fillFailures: 0, staleServes: 0, unavailable: 0 }),
    });
    const exposed = metricNames(await metrics.text());
    const used = new Set(readFileSync(rules, "utf8").match(/\btftpd_[a-z_]+/g));
    expect(used.size).toBeGreaterThan(5);
    expect([...used].filter((name) => !exposed.has(name))).toEqual([]);
    expect(parsePrometheus(await metrics.text()).find((s) => s.name === "tftpd_cache_capacity_bytes")?.value).toBe(64 << 20);
  });
});

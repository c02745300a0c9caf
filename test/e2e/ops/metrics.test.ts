/**
 * The operations endpoint and `tftpd metrics` against a real `tftpd serve` child: health and
 * readiness, counters that move by exactly what the clients did (curl downloads, a missing
 * file, a UEFI-style tsize probe), TFTP and HTTP told apart by the `protocol` label of the
 * families they share, the CLI's greppable lines, --raw, --json, a dead URL, and metrics
 * switched off.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { renameSync } from "node:fs";
import { join } from "node:path";
import { parsePrometheus, type Sample } from "../../../src/ops/summary.ts";
import { patternBytes, removeDir, sha256, sha256File, tempDir, writeFile } from "../../helpers/files.ts";
import { error, RawPeer, rrq } from "../../helpers/raw.ts";
import { BUN, MAIN, run, tftpd } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

setDefaultTimeout(15_000);

const SIZE = 100_000;
const lines = (text: string): string[] => text.split("\n").filter((l) => l !== "");

let root: string;
let out: string;
let content: Uint8Array;
let server: ChildServer;
const extra: ChildServer[] = [];

function curl(args: string[]) {
  return run(["curl", "-sS", "--max-time", "10", ...args], { timeoutMs: 12_000 });
}

async function get(path: string): Promise<{ status: number; body: string }> {
  const response = await fetch(`${server.metricsUrl}${path}`, { signal: AbortSignal.timeout(3000) });
  return { status: response.status, body: await response.text() };
}

async function scrape(): Promise<Sample[]> {
  const r = await get("/metrics");
  expect(r.status).toBe(200);
  return parsePrometheus(r.body);
}

/** The sum of the samples named `name` whose labels include `labels`. */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const s of samples) {
    if (s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)) total += s.value;
  }
  return total;
}

beforeAll(async () => {
  root = tempDir("tftpd-metrics-root-");
  out = tempDir("tftpd-metrics-out-");
  content = patternBytes(SIZE, 11);
  writeFile(root, "f.bin", content);
  writeFile(root, "empty.bin", new Uint8Array(0));
  server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0"]);
  expect(server.metricsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
});

afterAll(async () => {
  for (const s of [server, ...extra]) await s?.stop("SIGKILL");
  removeDir(root);
  removeDir(out);
});

describe("health and readiness", () => {
  test("/healthz 200 ok; /readyz 200; an unknown path 404", async () => {
    expect(await get("/healthz")).toEqual({ status: 200, body: "ok\n" });
    expect((await get("/readyz")).status).toBe(200);
    expect((await get("/nope")).status).toBe(404);
  });

  test("/readyz is 503 naming the root while the root is gone, 200 again once it is back", async () => {
    // tests run as root, so chmod 000 would not stop reads: move the root away instead
    const away = `${root}.away`;
    renameSync(root, away);
    try {
      const r = await get("/readyz");
      expect(r.status).toBe(503);
      expect(r.body).toContain(root);
      expect(r.body).toStartWith("not ready");
      // alive all the same
      expect((await get("/healthz")).status).toBe(200);
    } finally {
      renameSync(away, root);
    }
    expect((await get("/readyz")).status).toBe(200);
  });
});

describe("counters", () => {
  let before: Sample[];
  let after: Sample[];
  const delta = (name: string, labels: Record<string, string> = {}): number => value(after, name, labels) - value(before, name, labels);

  beforeAll(async () => {
    before = await scrape();
    const url = `tftp://127.0.0.1:${server.port}`;

    for (let i = 0; i < 5; i++) {
      const dest = join(out, `f${i}.bin`);
      const r = await curl(["--tftp-blksize", "1468", "-o", dest, `${url}/f.bin`]);
      expect(r.stderr).toBe("");
      expect(r.exitCode).toBe(0);
      expect(await sha256File(dest)).toBe(sha256(content));
    }

    const missing = await curl(["--tftp-blksize", "1468", "-o", join(out, "missing"), `${url}/missing.bin`]);
    expect(missing.exitCode).not.toBe(0);

    // UEFI firmware asks for the size first: RRQ with tsize 0, reads the OACK, answers ERROR 8
    const peer = await RawPeer.open("127.0.0.1");
    try {
      peer.send(rrq("f.bin", "octet", [["tsize", "0"], ["blksize", "1468"]]), server.port);
      const oack = await peer.nextOack(3000);
      expect(oack.packet.options.get("tsize")).toBe(String(SIZE));
      expect(oack.packet.options.get("blksize")).toBe("1468");
      peer.send(error(8, "tsize probe"), oack.port, oack.address);
      // the transfer ends there: nothing more comes
      await peer.expectNothing(100);
    } finally {
      peer.close();
    }

    // records reach the metrics when a transfer ends: wait until all 6 are counted
    const deadline = performance.now() + 3000;
    for (;;) {
      after = await scrape();
      if (value(after, "tftpd_transfers_total") - value(before, "tftpd_transfers_total") >= 6 || performance.now() > deadline) break;
      await Bun.sleep(50);
    }
    await Bun.sleep(100);
    after = await scrape();
  });

  test("transfers: 5 ok and 1 probe; the missing file is a refused request, not a transfer", () => {
    expect(delta("tftpd_transfers_total", { protocol: "tftp", direction: "read", result: "ok" })).toBe(5);
    expect(delta("tftpd_transfers_total", { protocol: "tftp", direction: "read", result: "probe" })).toBe(1);
    expect(delta("tftpd_transfers_total")).toBe(6);
    expect(value(after, "tftpd_active_transfers")).toBe(0);
  });

  test("bytes: 5 × 100,000 sent, nothing received", () => {
    expect(delta("tftpd_sent_bytes_total", { protocol: "tftp" })).toBe(5 * SIZE);
    expect(delta("tftpd_sent_bytes_total")).toBe(5 * SIZE);
    expect(delta("tftpd_received_bytes_total")).toBe(0);
  });

  test("first-response histogram counts the 5 downloads and the probe", () => {
    expect(delta("tftpd_first_response_seconds_count", { protocol: "tftp" })).toBe(6);
    expect(delta("tftpd_first_response_seconds_bucket", { protocol: "tftp", le: "+Inf" })).toBe(6);
    expect(delta("tftpd_transfer_duration_seconds_count", { protocol: "tftp" })).toBe(6);
    expect(delta("tftpd_first_response_seconds_sum")).toBeGreaterThan(0);
  });

  test("errors, probes and options", () => {
    expect(delta("tftpd_errors_sent_total", { code: "1" })).toBe(1);
    expect(delta("tftpd_requests_refused_total", { protocol: "tftp", reason: "not_found" })).toBe(1);
    // the probe's ERROR 8 came from the client, not the server
    expect(delta("tftpd_errors_sent_total", { code: "8" })).toBe(0);
    expect(delta("tftpd_size_probes_total")).toBe(1);
    expect(delta("tftpd_option_requests_total", { option: "blksize" })).toBeGreaterThanOrEqual(6);
    expect(delta("tftpd_option_requests_total", { option: "tsize" })).toBeGreaterThanOrEqual(1);
    expect(delta("tftpd_admission_refusals_total")).toBe(0);
  });

  test("cache: one miss (the first read of f.bin), the later reads hit", () => {
    expect(delta("tftpd_cache_misses_total")).toBe(1);
    expect(delta("tftpd_cache_hits_total")).toBe(5);
    expect(value(after, "tftpd_cache_bytes")).toBeGreaterThanOrEqual(SIZE);
  });

  test("default process metrics carry the tftpd_ prefix", () => {
    expect(value(after, "tftpd_process_cpu_seconds_total")).toBeGreaterThan(0);
    expect(value(after, "tftpd_process_resident_memory_bytes")).toBeGreaterThan(0);
  });

  describe("tftpd metrics", () => {
    test("prints the greppable headline lines", async () => {
      const r = await tftpd(["metrics", "--url", server.metricsUrl!, "--interval", "0.2"], { timeoutMs: 8000 });
      expect(r.stderr).toBe("");
      expect(r.exitCode).toBe(0);
      const printed = lines(r.stdout);
      expect(printed.some((l) => /^throughput /.test(l))).toBe(true);
      expect(printed.some((l) => /^latency first-response p50 [\d.]+ ms p99 [\d.]+ ms/.test(l))).toBe(true);
      expect(printed.some((l) => /^connections active \d+ total 6 failed 0/.test(l))).toBe(true);
      expect(printed.some((l) => /^cache hit-ratio/.test(l))).toBe(true);
      // 5 hits of 6 lookups
      expect(printed).toContain("cache hit-ratio 83.3 %");
    });

    test("| grep throughput gives exactly one line", async () => {
      const r = await run(["sh", "-c", `"$0" "$1" metrics --url "$2" --interval 0.2 | grep throughput`, BUN, MAIN, server.metricsUrl!], {
        timeoutMs: 8000,
      });
      expect(r.exitCode).toBe(0);
      expect(lines(r.stdout)).toHaveLength(1);
      expect(r.stdout).toMatch(/^throughput /);
    });

    test("--raw prints the Prometheus text as served", async () => {
      const r = await tftpd(["metrics", "--url", `${server.metricsUrl}/metrics`, "--raw"], { timeoutMs: 8000 });
      expect(r.exitCode).toBe(0);
      expect(r.stdout).toContain("# TYPE tftpd_transfers_total counter");
      expect(r.stdout).toContain("tftpd_transfers_total");
    });

    test("--json prints one JSON object", async () => {
      const r = await tftpd(["metrics", "--url", server.metricsUrl!, "--json", "--interval", "0.2"], { timeoutMs: 8000 });
      expect(r.exitCode).toBe(0);
      expect(lines(r.stdout)).toHaveLength(1);
      const figures = JSON.parse(r.stdout) as Record<string, unknown>;
      expect(figures.connections_total).toBe(6);
      expect(figures.transfers_failed).toBe(0);
      expect(figures.sent_bytes_total).toBe(5 * SIZE);
      expect(typeof figures.throughput_bits_per_second).toBe("number");
      expect(typeof figures.latency_first_response_p50_ms).toBe("number");
    });

    test("a closed port: exit 1 and one stderr line naming the URL", async () => {
      const probe = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("") });
      const closed = `http://127.0.0.1:${probe.port}`;
      probe.stop(true);
      const r = await tftpd(["metrics", "--url", closed], { timeoutMs: 8000 });
      expect(r.exitCode).toBe(1);
      expect(r.stdout).toBe("");
      expect(lines(r.stderr)).toHaveLength(1);
      expect(r.stderr).toContain(`${closed}/metrics`);
    });
  });
});

describe("TFTP and HTTP in the same families, told apart by protocol", () => {
  let both: ChildServer;
  let samples: Sample[];
  const of = (name: string, labels: Record<string, string> = {}): number => value(samples, name, labels);

  beforeAll(async () => {
    both = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]);
    extra.push(both);
    const http = both.logs.find((l) => l.msg === "http listening")?.address;
    expect(typeof http).toBe("string");

    const viaTftp = join(out, "both-tftp.bin");
    expect((await curl(["--tftp-blksize", "1468", "-o", viaTftp, `tftp://127.0.0.1:${both.port}/f.bin`])).exitCode).toBe(0);
    expect(await sha256File(viaTftp)).toBe(sha256(content));
    const viaHttp = join(out, "both-http.bin");
    expect((await curl(["-o", viaHttp, `http://${http}/f.bin`])).exitCode).toBe(0);
    expect(await sha256File(viaHttp)).toBe(sha256(content));
    const missing = await curl(["-o", "/dev/null", "-w", "%{http_code}", `http://${http}/missing.bin`]);
    expect(missing.stdout).toBe("404");

    // an HTTP download is recorded when its response ends, which may be after curl returned
    const deadline = performance.now() + 3000;
    for (;;) {
      samples = parsePrometheus(await (await fetch(`${both.metricsUrl}/metrics`, { signal: AbortSignal.timeout(3000) })).text());
      if (of("tftpd_transfers_total") >= 2 || performance.now() > deadline) break;
      await Bun.sleep(50);
    }
  });

  test("sent bytes: the file's size under each protocol", () => {
    expect(of("tftpd_sent_bytes_total", { protocol: "tftp" })).toBe(SIZE);
    expect(of("tftpd_sent_bytes_total", { protocol: "http" })).toBe(SIZE);
  });

  test("transfers: one read of each protocol, both ok; the 404 is no transfer", () => {
    expect(of("tftpd_transfers_total", { protocol: "tftp", direction: "read", result: "ok" })).toBe(1);
    expect(of("tftpd_transfers_total", { protocol: "http", direction: "read", result: "ok" })).toBe(1);
    expect(of("tftpd_transfers_total")).toBe(2);
    expect(of("tftpd_http_requests_total", { method: "GET", status: "200", result: "ok" })).toBe(1);
  });

  test("time to first byte and duration: one observation under each protocol", () => {
    expect(of("tftpd_first_response_seconds_count", { protocol: "tftp" })).toBe(1);
    expect(of("tftpd_first_response_seconds_count", { protocol: "http" })).toBe(1);
    expect(of("tftpd_first_response_seconds_bucket", { protocol: "http", le: "+Inf" })).toBe(1);
    expect(of("tftpd_first_response_seconds_sum", { protocol: "http" })).toBeGreaterThan(0);
    expect(of("tftpd_transfer_duration_seconds_count", { protocol: "http" })).toBe(1);
  });

  test("the HTTP 404 is an HTTP refusal (not_found), and no TFTP ERROR was sent for it", () => {
    expect(of("tftpd_requests_refused_total", { protocol: "http", reason: "not_found" })).toBe(1);
    expect(of("tftpd_requests_refused_total", { protocol: "tftp", reason: "not_found" })).toBe(0);
    expect(of("tftpd_errors_sent_total")).toBe(0);
  });

  test("HTTP has no families of its own for what both protocols do", () => {
    const names = new Set(samples.map((s) => s.name));
    for (const gone of ["tftpd_http_sent_bytes_total", "tftpd_http_first_byte_seconds_count", "tftpd_http_first_byte_seconds_bucket"]) {
      expect(names.has(gone)).toBe(false);
    }
  });

  test("tftpd metrics counts the transfers and bytes of both", async () => {
    const r = await tftpd(["metrics", "--url", both.metricsUrl!, "--json", "--interval", "0.2"], { timeoutMs: 8000 });
    expect(r.exitCode).toBe(0);
    const figures = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(figures.connections_total).toBe(2);
    expect(figures.sent_bytes_total).toBe(2 * SIZE);
    expect(figures.transfers_failed).toBe(0);
  });
});

describe("metrics disabled", () => {
  test("TFTPD_METRICS_ENABLED=false: no metrics listener, files still served", async () => {
    const s = await spawnServer(["--root", root, "--listen", "127.0.0.1:0"], { env: { TFTPD_METRICS_ENABLED: "false" } });
    extra.push(s);
    expect(s.metricsUrl).toBeNull();
    expect(s.logs.some((l) => l.msg === "metrics listening")).toBe(false);
    const dest = join(out, "disabled.bin");
    const r = await curl(["--tftp-blksize", "1468", "-o", dest, `tftp://127.0.0.1:${s.port}/f.bin`]);
    expect(r.exitCode).toBe(0);
    expect(await sha256File(dest)).toBe(sha256(content));
  });
});

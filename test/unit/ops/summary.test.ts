/**
 * The `tftpd metrics` figures: Prometheus text parsing, histogram quantiles (interpolated as
 * PromQL does), rates from two scrapes, and the greppable summary lines.
 */
import { describe, expect, test } from "bun:test";
import { histogramQuantile, parsePrometheus, summarize, summaryLines, type Sample } from "../../../src/ops/summary.ts";

const TEXT = `# HELP tftpd_transfers_total Finished transfers
# TYPE tftpd_transfers_total counter
tftpd_transfers_total{direction="read",result="ok"} 5
tftpd_transfers_total{direction="read",result="probe"} 1

# a comment line
odd_labels{path="C:\\\\boot\\\\x",quoted="say \\"hi\\"",nl="a\\nb",brace="}{ x"} 2.5
no_labels 42
gauge_inf +Inf
gauge_ninf -Inf
gauge_nan NaN
with_timestamp{a="b"} 7 1700000000000
exp_value 1.5e3
h_bucket{le="0.1"} 2
h_bucket{le="+Inf"} 10
`;

describe("parsePrometheus", () => {
  const samples = parsePrometheus(TEXT);
  const find = (name: string): Sample | undefined => samples.find((s) => s.name === name);

  test("reads every sample line and skips comments and blank lines", () => {
    expect(samples.map((s) => s.name)).toEqual([
      "tftpd_transfers_total",
      "tftpd_transfers_total",
      "odd_labels",
      "no_labels",
      "gauge_inf",
      "gauge_ninf",
      "gauge_nan",
      "with_timestamp",
      "exp_value",
      "h_bucket",
      "h_bucket",
    ]);
    expect(samples[0]).toEqual({ name: "tftpd_transfers_total", labels: { direction: "read", result: "ok" }, value: 5 });
    expect(samples[1]!.labels.result).toBe("probe");
  });

  test("unescapes label values (backslash, quote, newline) and keeps braces inside quotes", () => {
    const s = find("odd_labels")!;
    expect(s.labels).toEqual({ path: "C:\\boot\\x", quoted: 'say "hi"', nl: "a\nb", brace: "}{ x" });
    expect(s.value).toBe(2.5);
  });

  test("values: plain, exponent, +Inf, -Inf, NaN; a trailing timestamp is not the value", () => {
    expect(find("no_labels")!).toEqual({ name: "no_labels", labels: {}, value: 42 });
    expect(find("exp_value")!.value).toBe(1500);
    expect(find("gauge_inf")!.value).toBe(Infinity);
    expect(find("gauge_ninf")!.value).toBe(-Infinity);
    expect(find("gauge_nan")!.value).toBeNaN();
    expect(find("with_timestamp")!.value).toBe(7);
  });

  test('le="+Inf" is kept as a label', () => {
    expect(samples.filter((s) => s.name === "h_bucket").map((s) => s.labels.le)).toEqual(["0.1", "+Inf"]);
  });

  test("empty text: no samples", () => {
    expect(parsePrometheus("")).toEqual([]);
    expect(parsePrometheus("# HELP x y\n# TYPE x counter\n")).toEqual([]);
  });
});

/** 10 observations: 2 ≤ 0.1, 4 in (0.1, 0.5], 2 in (0.5, 1], 2 above 1. */
const HIST = parsePrometheus(`# TYPE lat histogram
lat_bucket{le="0.5"} 6
lat_bucket{le="0.1"} 2
lat_bucket{le="1"} 8
lat_bucket{le="+Inf"} 10
lat_sum 7.3
lat_count 10
`);

describe("histogramQuantile", () => {
  test("interpolates linearly inside the bucket holding the rank (buckets in any order)", () => {
    // rank 1 in [0, 0.1] holding 2: 0.1 × 1/2
    expect(histogramQuantile(HIST, "lat", 0.1)).toBeCloseTo(0.05, 12);
    // rank 2.5 in (0.1, 0.5] holding 4 above 2: 0.1 + 0.4 × 0.5/4
    expect(histogramQuantile(HIST, "lat", 0.25)).toBeCloseTo(0.15, 12);
    // rank 5: 0.1 + 0.4 × 3/4
    expect(histogramQuantile(HIST, "lat", 0.5)).toBeCloseTo(0.4, 12);
    // rank 7.5 in (0.5, 1] holding 2 above 6: 0.5 + 0.5 × 1.5/2
    expect(histogramQuantile(HIST, "lat", 0.75)).toBeCloseTo(0.875, 12);
    // rank 8 exactly at a bound
    expect(histogramQuantile(HIST, "lat", 0.8)).toBeCloseTo(1, 12);
  });

  test("a rank in the +Inf bucket answers the highest finite bound", () => {
    expect(histogramQuantile(HIST, "lat", 0.95)).toBe(1);
    expect(histogramQuantile(HIST, "lat", 0.99)).toBe(1);
  });

  test("empty histogram (all zero, or absent): null", () => {
    const empty = parsePrometheus('lat_bucket{le="0.1"} 0\nlat_bucket{le="+Inf"} 0\nlat_count 0\n');
    expect(histogramQuantile(empty, "lat", 0.5)).toBeNull();
    expect(histogramQuantile([], "lat", 0.5)).toBeNull();
    expect(histogramQuantile(HIST, "other", 0.5)).toBeNull();
  });

  test("several series of one histogram are summed by bucket bound", () => {
    const two = parsePrometheus(
      [
        'lat_bucket{engine="0",le="0.1"} 1',
        'lat_bucket{engine="0",le="0.5"} 3',
        'lat_bucket{engine="0",le="+Inf"} 5',
        'lat_bucket{engine="1",le="0.1"} 1',
        'lat_bucket{engine="1",le="0.5"} 3',
        'lat_bucket{engine="1",le="+Inf"} 5',
      ].join("\n"),
    );
    // same as HIST's first buckets: 2 ≤ 0.1, 6 ≤ 0.5, 10 in all → p50 = 0.4
    expect(histogramQuantile(two, "lat", 0.5)).toBeCloseTo(0.4, 12);
  });

  test("a filter takes some series only", () => {
    const two = parsePrometheus(
      [
        'lat_bucket{protocol="tftp",le="0.1"} 2',
        'lat_bucket{protocol="tftp",le="+Inf"} 2',
        'lat_bucket{protocol="http",le="0.1"} 0',
        'lat_bucket{protocol="http",le="+Inf"} 2',
      ].join("\n"),
    );
    expect(histogramQuantile(two, "lat", 0.5, (l) => l.protocol === "tftp")).toBeCloseTo(0.05, 12);
    // both: rank 2 of 4 is the 0.1 bound
    expect(histogramQuantile(two, "lat", 0.5)).toBeCloseTo(0.1, 12);
    expect(histogramQuantile(two, "lat", 0.5, () => false)).toBeNull();
  });
});

interface Scrape {
  sent: number;
  received: number;
  cpu: number;
  ok: number;
  timeout?: number;
  hits?: number;
  misses?: number;
  bypasses?: number;
  retransmits?: number;
  active?: number;
  rss?: number;
  http?: { sent: number; ok: number; aborted: number; failed: number };
}

function scrape(o: Scrape): Sample[] {
  const http = o.http ?? { sent: 0, ok: 0, aborted: 0, failed: 0 };
  return parsePrometheus(
    [
      `tftpd_sent_bytes_total{protocol="tftp"} ${o.sent}`,
      `tftpd_sent_bytes_total{protocol="http"} ${http.sent}`,
      `tftpd_received_bytes_total ${o.received}`,
      `tftpd_process_cpu_seconds_total ${o.cpu}`,
      `tftpd_transfers_total{protocol="tftp",direction="read",result="ok"} ${o.ok}`,
      `tftpd_transfers_total{protocol="tftp",direction="read",result="probe"} 1`,
      `tftpd_transfers_total{protocol="tftp",direction="read",result="timeout"} ${o.timeout ?? 0}`,
      `tftpd_transfers_total{protocol="tftp",direction="write",result="error"} 1`,
      `tftpd_transfers_total{protocol="tftp",direction="write",result="client-error"} 1`,
      `tftpd_transfers_total{protocol="http",direction="read",result="ok"} ${http.ok}`,
      `tftpd_transfers_total{protocol="http",direction="read",result="aborted"} ${http.aborted}`,
      `tftpd_transfers_total{protocol="http",direction="read",result="failed"} ${http.failed}`,
      `tftpd_retransmits_total ${o.retransmits ?? 0}`,
      `tftpd_cache_hits_total ${o.hits ?? 0}`,
      `tftpd_cache_misses_total ${o.misses ?? 0}`,
      `tftpd_cache_bypasses_total ${o.bypasses ?? 0}`,
      `tftpd_active_transfers ${o.active ?? 0}`,
      `tftpd_process_resident_memory_bytes ${o.rss ?? 0}`,
      'tftpd_first_response_seconds_bucket{protocol="tftp",le="0.001"} 4',
      'tftpd_first_response_seconds_bucket{protocol="tftp",le="0.01"} 8',
      'tftpd_first_response_seconds_bucket{protocol="tftp",le="+Inf"} 8',
      // HTTP's time to first byte, far slower: it must not move TFTP's quantiles
      `tftpd_first_response_seconds_bucket{protocol="http",le="0.001"} 0`,
      `tftpd_first_response_seconds_bucket{protocol="http",le="0.01"} 0`,
      `tftpd_first_response_seconds_bucket{protocol="http",le="+Inf"} ${http.ok + http.aborted + http.failed}`,
    ].join("\n"),
  );
}

describe("summarize", () => {
  const earlier = scrape({ sent: 1_000_000, received: 0, cpu: 10, ok: 2, http: { sent: 100_000, ok: 1, aborted: 0, failed: 0 } });
  const now = scrape({
    sent: 3_000_000,
    received: 500_000,
    cpu: 11,
    ok: 7,
    timeout: 2,
    hits: 6,
    misses: 1,
    bypasses: 1,
    retransmits: 3,
    active: 2,
    rss: 64 * 1048576,
    http: { sent: 400_000, ok: 3, aborted: 2, failed: 1 },
  });

  test("throughput: (sent over both protocols + received) delta × 8 / seconds; cpu %: cpu seconds delta / seconds", () => {
    const s = summarize(now, earlier, 2);
    expect(s.throughput_bits_per_second).toBe(((2_000_000 + 300_000 + 500_000) * 8) / 2);
    expect(s.cpu_percent).toBeCloseTo(50, 9);
    expect(s.cpu_seconds_total).toBe(11);
  });

  test("totals and ratios from the latest scrape: transfers and bytes of both protocols, retransmits per TFTP transfer", () => {
    const s = summarize(now, earlier, 2);
    expect(s.sent_bytes_total).toBe(3_400_000);
    expect(s.received_bytes_total).toBe(500_000);
    // TFTP: 7 ok + 1 probe + 2 timeout + 1 error + 1 client-error; HTTP: 3 ok + 2 aborted + 1 failed
    expect(s.connections_total).toBe(18);
    // TFTP's timeout and error, HTTP's failed (aborted: the client went away, as client-error)
    expect(s.transfers_failed).toBe(4);
    expect(s.connections_active).toBe(2);
    expect(s.retransmits_total).toBe(3);
    expect(s.retransmits_per_transfer).toBeCloseTo(3 / 12, 12);
    expect(s.cache_hit_ratio).toBeCloseTo(6 / 8, 12);
    expect(s.memory_rss_bytes).toBe(64 * 1048576);
    // rank 4 of 8 is exactly the 1 ms bound; rank 7.92 in (1 ms, 10 ms] holding 4: 1 + 9 × 3.92/4
    expect(s.latency_first_response_p50_ms).toBeCloseTo(1, 9);
    expect(s.latency_first_response_p99_ms).toBeCloseTo(1 + (9 * 3.92) / 4, 9);
  });

  test("without an earlier scrape (or zero seconds) the rates are null; with no lookups the hit ratio is null", () => {
    const s = summarize(now, null, 1);
    expect(s.throughput_bits_per_second).toBeNull();
    expect(s.cpu_percent).toBeNull();
    expect(summarize(now, earlier, 0).throughput_bits_per_second).toBeNull();
    const bare = summarize([], null, 1);
    expect(bare.cache_hit_ratio).toBeNull();
    expect(bare.retransmits_per_transfer).toBeNull();
    expect(bare.latency_first_response_p50_ms).toBeNull();
    expect(bare.connections_total).toBe(0);
  });

  test("a server from before the protocol label: its unlabelled series are TFTP's", () => {
    const old = parsePrometheus(
      [
        "tftpd_sent_bytes_total 2000",
        'tftpd_transfers_total{direction="read",result="ok"} 3',
        'tftpd_transfers_total{direction="read",result="timeout"} 1',
        "tftpd_retransmits_total 2",
        'tftpd_first_response_seconds_bucket{le="0.001"} 4',
        'tftpd_first_response_seconds_bucket{le="+Inf"} 4',
      ].join("\n"),
    );
    const s = summarize(old, null, 1);
    expect(s.sent_bytes_total).toBe(2000);
    expect(s.transfers_failed).toBe(1);
    expect(s.retransmits_per_transfer).toBeCloseTo(2 / 4, 12);
    expect(s.latency_first_response_p50_ms).toBeCloseTo(0.5, 9);
  });
});

describe("summaryLines", () => {
  const words = ["throughput", "latency", "connections", "retransmits", "cache", "cpu", "memory"];

  test("one line per figure, each starting with its documented word", () => {
    const s = summarize(scrape({ sent: 3_000_000, received: 0, cpu: 11, ok: 7, hits: 1, misses: 1 }), scrape({ sent: 0, received: 0, cpu: 10, ok: 0 }), 1);
    const lines = summaryLines(s, 1);
    expect(lines).toHaveLength(words.length);
    lines.forEach((line, i) => expect(line.startsWith(`${words[i]} `)).toBe(true));
    expect(lines[0]).toMatch(/^throughput 24\.00 Mbit\/s over 1 s /);
    expect(lines[1]).toMatch(/^latency first-response p50 [\d.]+ ms p99 [\d.]+ ms$/);
    expect(lines[2]).toBe("connections active 0 total 10 failed 1");
    expect(lines[4]).toBe("cache hit-ratio 50.0 %");
    expect(lines[5]).toMatch(/^cpu 100\.0 % \(11\.00 s in all\)$/);
  });

  test("missing figures print n/a, still under the same words", () => {
    const lines = summaryLines(summarize([], null, 1), 1);
    lines.forEach((line, i) => expect(line.startsWith(`${words[i]} `)).toBe(true));
    expect(lines[0]).toStartWith("throughput n/a");
    expect(lines[1]).toBe("latency first-response p50 n/a p99 n/a");
    expect(lines[4]).toBe("cache hit-ratio n/a");
  });
});

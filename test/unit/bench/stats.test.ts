/** Percentiles over all samples (nearest rank), the growable sample store, and the result math. */
import { describe, expect, test } from "bun:test";
import { percentile, percentiles, round, Samples } from "../../../src/bench/stats.ts";
import { buildResult, failureReason, formatHuman, Tally } from "../../../src/bench/tally.ts";
import type { TransferReport } from "../../../src/client/types.ts";

describe("percentile (nearest rank)", () => {
  const oneToHundred = Float64Array.from({ length: 100 }, (_, i) => i + 1);

  test("1..100", () => {
    expect(percentiles(oneToHundred)).toEqual({ p50: 50, p90: 90, p99: 99, max: 100 });
  });

  test("1..1000: p99 is the 990th value, p50 the 500th", () => {
    const a = Float64Array.from({ length: 1000 }, (_, i) => i + 1);
    expect(percentiles(a)).toEqual({ p50: 500, p90: 900, p99: 990, max: 1000 });
  });

  test("small sets pick real samples, never interpolate", () => {
    expect(percentiles([7])).toEqual({ p50: 7, p90: 7, p99: 7, max: 7 });
    expect(percentiles([1, 2])).toEqual({ p50: 1, p90: 2, p99: 2, max: 2 });
    expect(percentile([1, 2, 3], 100)).toBe(3);
    expect(percentile([1, 2, 3], 0)).toBe(1);
  });

  test("no samples: null", () => {
    expect(percentiles(new Float64Array(0))).toEqual({ p50: null, p90: null, p99: null, max: null });
  });

  test("one outlier in 100 shows at max, not at p99", () => {
    const a = new Float64Array(100).fill(1);
    a[99] = 5000;
    expect(percentiles(a)).toEqual({ p50: 1, p90: 1, p99: 1, max: 5000 });
  });
});

describe("Samples", () => {
  test("grows past its first size and sorts numerically once", () => {
    const s = new Samples(16);
    const values: number[] = [];
    for (let i = 0; i < 10_000; i++) {
      const v = ((i * 7919) % 10_007) / 3; // scrambled, non-integer
      values.push(v);
      s.push(v);
    }
    expect(s.length).toBe(10_000);
    const sorted = s.sorted();
    expect(Array.from(sorted)).toEqual(values.sort((a, b) => a - b));
    expect(s.percentiles().max).toBe(values.at(-1)!);
  });

  test("10 and 9 sort as numbers, not strings", () => {
    const s = new Samples();
    for (const v of [10, 9, 100, 1.5]) s.push(v);
    expect(Array.from(s.sorted())).toEqual([1.5, 9, 10, 100]);
  });
});

test("round", () => {
  expect(round(1.23456, 3)).toBe(1.235);
  expect(round(null)).toBeNull();
  expect(round(Number.NaN)).toBeNull();
});

function report(over: Partial<TransferReport>): TransferReport {
  return {
    ok: true,
    bytes: 65536,
    blocks: 128,
    blksize: 512,
    windowsize: 1,
    tsize: null,
    oack: null,
    firstResponseMs: 1,
    durationMs: 10,
    retransmits: 0,
    ...over,
  };
}

describe("Tally and the result", () => {
  test("failure reasons", () => {
    expect(failureReason(report({ ok: false, error: { code: 0, message: "no response", source: "timeout" } }))).toBe("timeout");
    expect(failureReason(report({ ok: false, error: { code: 1, message: "File not found", source: "server" } }))).toBe("server error 1");
    expect(failureReason(report({ ok: false, error: { code: 0, message: "EMFILE", source: "local" } }))).toBe("local");
  });

  test("counts, bytes of completed transfers only, goodput, transfers/s, CPU %", () => {
    const t = new Tally(4);
    t.add(report({ firstResponseMs: 2, durationMs: 20, retransmits: 1 }));
    t.add(report({ firstResponseMs: 4, durationMs: 40 }));
    t.add(report({ firstResponseMs: 3, durationMs: 30 }), true); // verify mismatch
    t.add(report({ ok: false, bytes: 0, firstResponseMs: 1, error: { code: 1, message: "File not found", source: "server" } }));
    t.add(report({ ok: false, bytes: 512, firstResponseMs: null, retransmits: 5, error: { code: 0, message: "x", source: "timeout" } }));
    const r = buildResult(t, {
      target: "127.0.0.1:69",
      files: ["a"],
      concurrency: 2,
      rate: null,
      requested: 5,
      wallMs: 500,
      cpu: { user: 200_000, system: 50_000 },
      lateStarts: 0,
      maxLagMs: 0,
    });
    expect(r.completed).toBe(2);
    expect(r.failed).toBe(3);
    expect(r.completed + r.failed).toBe(r.requested);
    expect(r.failures).toEqual({ verify: 1, "server error 1": 1, timeout: 1 });
    expect(r.bytes).toBe(2 * 65536);
    expect(r.goodput_mbps).toBeCloseTo((2 * 65536 * 8) / 0.5 / 1e6, 3);
    expect(r.transfers_per_s).toBe(4);
    expect(r.retransmits).toBe(6);
    expect(r.first_response_ms).toEqual({ p50: 2, p90: 4, p99: 4, max: 4 }); // answered ones: 1,2,3,4
    expect(r.transfer_ms).toEqual({ p50: 20, p90: 40, p99: 40, max: 40 }); // completed ones only
    expect(r.cpu_s).toEqual({ user: 0.2, system: 0.05 });
    expect(r.cpu_pct).toBe(50);
    expect(Object.keys(r)).toEqual([
      "target", "files", "concurrency", "rate", "requested", "completed", "failed", "failures", "bytes",
      "wall_s", "goodput_mbps", "transfers_per_s", "first_response_ms", "transfer_ms", "retransmits",
      "cpu_s", "cpu_pct", "late_starts", "max_start_lag_ms",
    ]);

    const text = formatHuman(r, t.examples);
    expect(text).toContain("target: 127.0.0.1:69\n");
    expect(text).toContain("completed: 2\n");
    expect(text).toContain("failed: 3\n");
    expect(text).toMatch(/^goodput: 2\.10 Mbit\/s$/m);
    expect(text).toMatch(/^first response p99: 4\.000 ms$/m);
    expect(text).toMatch(/^transfer max: 40\.000 ms$/m);
    expect(text).toMatch(/^failures server error 1: 1 \(File not found\)$/m);
    expect(text).toMatch(/^cpu: 50\.0 % of one core$/m);
    expect(text).not.toContain("late starts"); // closed loop
  });

  test("nothing finished: zeros and nulls, no division by zero", () => {
    const r = buildResult(new Tally(0), {
      target: "[::1]:69", files: ["a"], concurrency: 1, rate: 5, requested: 0, wallMs: 0,
      cpu: { user: 0, system: 0 }, lateStarts: 0, maxLagMs: 0,
    });
    expect(r.goodput_mbps).toBe(0);
    expect(r.transfers_per_s).toBe(0);
    expect(r.cpu_pct).toBe(0);
    expect(r.transfer_ms.p99).toBeNull();
    expect(formatHuman(r)).toContain("failures: none\n");
    expect(formatHuman(r)).toContain("rate: 5/s\n");
    expect(formatHuman(r)).toContain("first response p50: -\n");
  });
});

/** `tftpd bench` flag checks and the open-file limit check. */
import { expect, test } from "bun:test";
import { fdLimitProblem, FD_MARGIN, openFileLimit, parseBenchFlags, UsageError } from "../../../src/bench/options.ts";

const base = { files: ["boot.bin"], verify: [] as string[] };

test("defaults: concurrency 10, total = concurrency × 10, closed loop", () => {
  const s = parseBenchFlags(base);
  expect(s.concurrency).toBe(10);
  expect(s.total).toBe(100);
  expect(s.durationMs).toBeNull();
  expect(s.rate).toBeNull();
  expect(s.burst).toBe(false);
  expect(parseBenchFlags({ ...base, concurrency: "7" }).total).toBe(70);
});

test("--duration alone: no total; both: both kept (whichever comes first)", () => {
  expect(parseBenchFlags({ ...base, duration: "2.5" })).toMatchObject({ total: null, durationMs: 2500 });
  expect(parseBenchFlags({ ...base, duration: "2", total: "9" })).toMatchObject({ total: 9, durationMs: 2000 });
});

test("transfer options pass through to the engine's names", () => {
  const s = parseBenchFlags({ ...base, blksize: "1468", windowsize: "8", timeout: "2", retries: "3", tsize: true, rate: "2000" });
  expect(s.transfer).toEqual({ blksize: 1468, windowsize: 8, timeoutSeconds: 2, retries: 3, backoff: true, tsize: true });
  expect(s.rate).toBe(2000);
  // --no-backoff: a fixed retransmit schedule
  expect(parseBenchFlags({ ...base, backoff: false }).transfer.backoff).toBe(false);
});

test("bad values throw a UsageError that names the flag", () => {
  const bad: [Partial<Parameters<typeof parseBenchFlags>[0]>, RegExp][] = [
    [{ concurrency: "0" }, /--concurrency/],
    [{ concurrency: "ten" }, /--concurrency/],
    [{ total: "-1" }, /--total/],
    [{ rate: "0" }, /--rate/],
    [{ rate: "fast" }, /--rate/],
    [{ duration: "0" }, /--duration/],
    [{ blksize: "7" }, /--blksize/],
    [{ windowsize: "0" }, /--windowsize/],
    [{ timeout: "300" }, /--timeout/],
    [{ files: [] }, /--file/],
    [{ rate: "10", burst: true }, /--burst/],
    [{ files: ["a", "b", "c"], verify: ["x", "y"] }, /--verify/],
  ];
  for (const [flags, message] of bad) {
    let error: unknown;
    try {
      parseBenchFlags({ ...base, ...flags });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(UsageError);
    expect((error as Error).message).toMatch(message);
  }
});

test("open-file limit: read from /proc/self/limits, refused with what to raise", () => {
  const limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
  expect(openFileLimit(limits)).toBe(1024);
  expect(openFileLimit("nothing")).toBeNull();
  expect(openFileLimit()).toBeGreaterThan(0); // this machine
  expect(fdLimitProblem(1024 - FD_MARGIN, 1024)).toBeNull();
  expect(fdLimitProblem(10_000, null)).toBeNull();
  const problem = fdLimitProblem(30_000, 20_000)!;
  expect(problem).toContain("ulimit -n 30100");
  expect(problem).toContain("LimitNOFILE");
  expect(problem).not.toContain("\n");
});

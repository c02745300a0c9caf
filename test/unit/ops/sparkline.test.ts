import { describe, expect, test } from "bun:test";
import { History, sparkline, withSparklines } from "../../../src/ops/sparkline.ts";

describe("sparkline", () => {
  test("empty is empty", () => {
    expect(sparkline([])).toBe("");
  });

  test("scales between the window's min and max", () => {
    expect(sparkline([0, 1, 2, 3, 4, 5, 6, 7])).toBe("▁▂▃▄▅▆▇█");
    expect(sparkline([10, 80])).toBe("▁█");
    expect(sparkline([-5, 5, 0])).toBe("▁█▅");
    expect(sparkline([1000, 1001, 1000.5])).toBe("▁█▅");
  });

  test("all equal is a flat row of low bars", () => {
    expect(sparkline([3, 3, 3])).toBe("▁▁▁");
    expect(sparkline([0])).toBe("▁");
  });

  test("keeps only the last `width` values, scaled within that window", () => {
    const values = Array.from({ length: 30 }, (_, i) => i);
    expect(sparkline(values)).toHaveLength(20);
    expect(sparkline(values, 4)).toBe("▁▃▆█");
    // the 100 fell out of the window, so it does not flatten the rest
    expect(sparkline([100, 1, 2], 2)).toBe("▁█");
    expect(sparkline([1, 2], 0)).toBe("");
  });

  test("gaps (NaN, Infinity) are spaces and do not affect the scale", () => {
    expect(sparkline([NaN, 0, 7])).toBe(" ▁█");
    expect(sparkline([0, Infinity, 7])).toBe("▁ █");
    expect(sparkline([NaN, NaN])).toBe("  ");
  });
});

describe("History", () => {
  test("keeps the last N values per figure, oldest first", () => {
    const h = new History(3);
    for (const v of [1, 2, 3, 4, 5]) h.push("a", v);
    h.push("b", 9);
    expect(h.values("a")).toEqual([3, 4, 5]);
    expect(h.values("b")).toEqual([9]);
    expect(h.values("none")).toEqual([]);
  });

  test("values() is a copy", () => {
    const h = new History(3);
    h.push("a", 1);
    h.values("a").push(99);
    expect(h.values("a")).toEqual([1]);
  });

  test("null is kept as a gap", () => {
    const h = new History(4);
    h.push("a", null);
    h.push("a", 0);
    h.push("a", 7);
    expect(h.values("a")[0]).toBeNaN();
    expect(h.sparkline("a")).toBe(" ▁█");
  });

  test("sparkline of a figure is as wide as its history at most", () => {
    const h = new History(5);
    expect(h.sparkline("a")).toBe("");
    for (let i = 0; i < 12; i++) h.push("a", i % 3);
    expect(h.sparkline("a")).toHaveLength(5);
  });

  test("capacity must be a positive integer", () => {
    expect(() => new History(0)).toThrow(RangeError);
    expect(() => new History(2.5)).toThrow(RangeError);
  });
});

describe("withSparklines", () => {
  test("pads lines to the longest and appends each sparkline", () => {
    expect(withSparklines(["ab", "abcd", "x"], ["▁█", "█▁", undefined])).toEqual(["ab    ▁█", "abcd  █▁", "x"]);
  });

  test("keeps the greppable line as a prefix", () => {
    const lines = withSparklines(["throughput 1 bit/s", "cpu 2 %"], ["▁", "█"]);
    expect(lines[0]!.startsWith("throughput 1 bit/s")).toBe(true);
    expect(lines[1]!.startsWith("cpu 2 %")).toBe(true);
  });
});

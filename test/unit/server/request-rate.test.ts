import { describe, expect, test } from "bun:test";
import { RequestRate } from "../../../src/server/request-rate.ts";

describe("RequestRate", () => {
  test("a source gets its burst at once, then the rate; what it sent over is summed up once", () => {
    const rate = new RequestRate({ perSecond: 10, burst: 20 });
    let allowed = 0;
    for (let i = 0; i < 200; i++) if (rate.allow("10.0.0.1", 0)) allowed++;
    expect(allowed).toBe(20);
    expect(rate.dropped).toBe(180);
    // one second later: ten more tokens
    for (let i = 0; i < 50; i++) if (rate.allow("10.0.0.1", 1000)) allowed++;
    expect(allowed).toBe(30);
    expect(rate.dropped).toBe(220);

    expect(rate.summarize(1000)).toEqual({ sources: [{ address: "10.0.0.1", dropped: 220 }], unreported: 0 });
    // reported once: the next summary has nothing of it
    expect(rate.summarize(1001)).toEqual({ sources: [], unreported: 0 });
    expect(rate.dropped).toBe(220);
  });

  test("another source is unaffected by one over its rate", () => {
    const rate = new RequestRate({ perSecond: 1, burst: 2 });
    for (let i = 0; i < 100; i++) rate.allow("10.0.0.1", 0);
    expect(rate.allow("10.0.0.2", 0)).toBe(true);
    expect(rate.allow("10.0.0.2", 0)).toBe(true);
    expect(rate.allow("10.0.0.2", 0)).toBe(false);
    expect(rate.summarize(0).sources).toEqual([
      { address: "10.0.0.1", dropped: 98 },
      { address: "10.0.0.2", dropped: 1 },
    ]);
  });

  test("rate 0 lets everything through and keeps no state", () => {
    const rate = new RequestRate({ perSecond: 0, burst: 1 });
    for (let i = 0; i < 1000; i++) expect(rate.allow(`10.0.${i >> 8}.${i & 255}`, 0)).toBe(true);
    expect(rate.size).toBe(0);
    expect(rate.enabled).toBe(false);
  });

  test("a source idle until its bucket is full again is forgotten; one still dropping or recent is kept", () => {
    const rate = new RequestRate({ perSecond: 10, burst: 20 }); // refilled after 2 s
    rate.allow("10.0.0.1", 0);
    for (let i = 0; i < 30; i++) rate.allow("10.0.0.2", 1500);
    expect(rate.size).toBe(2);
    rate.summarize(2500); // .1 idle 2.5 s: gone; .2 reported
    expect(rate.size).toBe(1);
    rate.summarize(3000); // .2 idle 1.5 s: kept
    expect(rate.size).toBe(1);
    rate.summarize(3600); // .2 idle 2.1 s: gone
    expect(rate.size).toBe(0);
  });

  test("a flood of forged sources holds at most maxSources, and their drops are still reported", () => {
    const rate = new RequestRate({ perSecond: 1, burst: 1 }, 100);
    for (let i = 0; i < 10_000; i++) {
      const address = `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
      rate.allow(address, 0);
      rate.allow(address, 0); // over the burst of 1
      expect(rate.size).toBeLessThanOrEqual(100);
    }
    expect(rate.dropped).toBe(10_000);
    const summary = rate.summarize(0);
    expect(summary.sources).toHaveLength(100);
    expect(summary.unreported).toBe(9_900);
    expect(summary.sources.reduce((n, s) => n + s.dropped, 0) + summary.unreported).toBe(10_000);
  });

  test("new limits start every source afresh; the same limits again change nothing", () => {
    const rate = new RequestRate({ perSecond: 1, burst: 1 });
    rate.allow("10.0.0.1", 0);
    expect(rate.allow("10.0.0.1", 0)).toBe(false);
    rate.setLimits({ perSecond: 1, burst: 1 }, 0);
    expect(rate.allow("10.0.0.1", 0)).toBe(false);
    rate.setLimits({ perSecond: 1, burst: 3 }, 0);
    expect(rate.allow("10.0.0.1", 0)).toBe(true);
    expect(rate.allow("10.0.0.1", 0)).toBe(true);
    expect(rate.allow("10.0.0.1", 0)).toBe(true);
    expect(rate.allow("10.0.0.1", 0)).toBe(false);
    // the drops before the change are still reported, with their source
    expect(rate.summarize(0)).toEqual({ sources: [{ address: "10.0.0.1", dropped: 3 }], unreported: 0 });
    rate.setLimits({ perSecond: 0, burst: 1 });
    expect(rate.allow("10.0.0.1", 0)).toBe(true);
    // the limit off: the next summary forgets every source that has nothing to report
    rate.summarize(0);
    expect(rate.size).toBe(0);
  });
});

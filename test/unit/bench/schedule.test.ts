/** The arrival scheduler on a fake clock: open-loop spacing, closed-loop occupancy, stopping. */
import { describe, expect, test } from "bun:test";
import { ArrivalScheduler, LATE_MS, type SchedulePlan } from "../../../src/bench/schedule.ts";
import { FakeClock } from "./fake-clock.ts";

interface Start {
  index: number;
  at: number;
  lag: number;
  inFlight: number;
}

/** A scheduler whose transfer k lasts `duration(k)` ms of fake time. */
function harness(plan: SchedulePlan, duration: (index: number) => number, clock = new FakeClock()) {
  const starts: Start[] = [];
  let inFlight = 0;
  let maxSeen = 0;
  const occupancyAfterDone: number[] = [];
  const s = new ArrivalScheduler(
    plan,
    (index, lag, done) => {
      inFlight++;
      maxSeen = Math.max(maxSeen, inFlight);
      starts.push({ index, at: clock.now(), lag, inFlight });
      clock.set(() => {
        inFlight--;
        done();
        occupancyAfterDone.push(inFlight);
      }, duration(index));
    },
    clock,
  );
  let finished = false;
  const promise = s.run().then(() => {
    finished = true;
  });
  return { s, clock, starts, promise, isFinished: () => finished, maxSeen: () => maxSeen, occupancyAfterDone };
}

describe("open loop (--rate)", () => {
  test("rate N/s spaces start times 1/N apart", async () => {
    const h = harness({ concurrency: 1000, total: 50, durationMs: null, rate: 200 }, () => 1000);
    h.clock.drain();
    await h.promise;
    expect(h.starts.map((s) => s.at)).toEqual(Array.from({ length: 50 }, (_, k) => k * 5));
    expect(h.s.started).toBe(50);
    expect(h.s.finished).toBe(50);
    expect(h.s.lateStarts).toBe(0);
    expect(h.s.maxLagMs).toBe(0);
  });

  test("2000/s on a 1 ms timer: caught up each tick, never early, never more than a tick late", async () => {
    const clock = new FakeClock(1);
    const h = harness({ concurrency: 10_000, total: 2000, durationMs: null, rate: 2000 }, () => 3, clock);
    clock.drain();
    await h.promise;
    expect(h.starts.length).toBe(2000);
    for (const s of h.starts) {
      const due = s.index * 0.5;
      expect(s.at).toBeGreaterThanOrEqual(due);
      expect(s.at - due).toBeLessThanOrEqual(1);
      expect(s.lag).toBeCloseTo(s.at - due, 9);
    }
    // the schedule takes total/rate seconds, not more
    expect(h.starts.at(-1)!.at).toBeLessThanOrEqual(1000);
    expect(h.s.lateStarts).toBe(0);
  });

  test("the arrival rate does not depend on how long transfers take", async () => {
    const fast = harness({ concurrency: 1000, total: 100, durationMs: null, rate: 100 }, () => 1);
    const slow = harness({ concurrency: 1000, total: 100, durationMs: null, rate: 100 }, () => 500);
    fast.clock.drain();
    slow.clock.drain();
    await Promise.all([fast.promise, slow.promise]);
    expect(slow.starts.map((s) => s.at)).toEqual(fast.starts.map((s) => s.at));
    expect(slow.maxSeen()).toBe(50); // 500 ms transfers at 100/s: 50 in flight
  });

  test("--concurrency caps the transfers in flight; held arrivals start late and are counted", async () => {
    const h = harness({ concurrency: 2, total: 20, durationMs: null, rate: 1000 }, () => 10);
    h.clock.drain();
    await h.promise;
    expect(h.maxSeen()).toBe(2);
    expect(h.s.maxInFlight).toBe(2);
    expect(h.s.started).toBe(20);
    // arrivals 0 and 1 on time; then each waits for a slot: two start per 10 ms, one was due per 1 ms
    expect(h.starts.map((s) => s.at)).toEqual(Array.from({ length: 20 }, (_, k) => Math.floor(k / 2) * 10 + (k % 2)));
    expect(h.s.lateStarts).toBeGreaterThan(10);
    expect(h.s.maxLagMs).toBe(91 - 19);
    expect(h.starts.filter((s) => s.lag > LATE_MS).length).toBe(h.s.lateStarts);
  });

  test("--duration stops arrivals due at or after the end", async () => {
    const h = harness({ concurrency: 100, total: null, durationMs: 1000, rate: 10 }, () => 250);
    h.clock.drain();
    await h.promise;
    expect(h.starts.map((s) => s.at)).toEqual([0, 100, 200, 300, 400, 500, 600, 700, 800, 900]);
    expect(h.isFinished()).toBe(true);
  });

  test("--total and --duration: whichever comes first", async () => {
    const a = harness({ concurrency: 100, total: 3, durationMs: 1000, rate: 10 }, () => 5);
    const b = harness({ concurrency: 100, total: 1000, durationMs: 300, rate: 10 }, () => 5);
    a.clock.drain();
    b.clock.drain();
    await Promise.all([a.promise, b.promise]);
    expect(a.s.started).toBe(3);
    expect(b.s.started).toBe(3);
  });
});

describe("closed loop", () => {
  test("keeps exactly `concurrency` in flight until the last start", async () => {
    const durations = [7, 3, 11, 5, 2, 13, 1, 8, 4, 9];
    const h = harness({ concurrency: 5, total: 40, durationMs: null, rate: null }, (k) => durations[k % durations.length]!);
    // the first wave starts at once, synchronously
    expect(h.starts.length).toBe(5);
    expect(h.starts.every((s) => s.at === 0)).toBe(true);
    h.clock.drain();
    await h.promise;
    expect(h.s.started).toBe(40);
    expect(h.s.finished).toBe(40);
    expect(h.maxSeen()).toBe(5);
    // every start after the first wave refills the slot that just freed: 5 in flight again
    for (const s of h.starts.slice(5)) expect(s.inFlight).toBe(5);
    // once a transfer ends, the next one is already running before anyone else looks
    const whileStarting = h.occupancyAfterDone.slice(0, 40 - 5);
    expect(whileStarting.every((n) => n === 5)).toBe(true);
    expect(h.s.lateStarts).toBe(0);
  });

  test("fewer transfers than slots: all start at once", async () => {
    const h = harness({ concurrency: 100, total: 7, durationMs: null, rate: null }, () => 1);
    expect(h.starts.length).toBe(7);
    h.clock.drain();
    await h.promise;
    expect(h.s.maxInFlight).toBe(7);
  });

  test("--duration: no new start once it has passed", async () => {
    const h = harness({ concurrency: 2, total: null, durationMs: 100, rate: null }, () => 30);
    h.clock.drain();
    await h.promise;
    expect(h.starts.map((s) => s.at)).toEqual([0, 0, 30, 30, 60, 60, 90, 90]);
  });

  test("synchronous completions do not recurse (100,000 instant transfers)", async () => {
    let launched = 0;
    const s = new ArrivalScheduler({ concurrency: 3, total: 100_000, durationMs: null, rate: null }, (_i, _l, done) => {
      launched++;
      done();
    }, new FakeClock());
    await s.run();
    expect(launched).toBe(100_000);
    expect(s.inFlight).toBe(0);
  });

  test("done twice counts once", async () => {
    const s = new ArrivalScheduler({ concurrency: 2, total: 4, durationMs: null, rate: null }, (_i, _l, done) => {
      done();
      done();
    }, new FakeClock());
    await s.run();
    expect(s.started).toBe(4);
    expect(s.finished).toBe(4);
  });

  test("stop(): nothing more starts, the run ends when those in flight end", async () => {
    const h = harness({ concurrency: 4, total: 1000, durationMs: null, rate: null }, () => 10);
    h.clock.advance(25);
    h.s.stop();
    const started = h.s.started;
    expect(started).toBe(12);
    expect(h.isFinished()).toBe(false);
    h.clock.drain();
    await h.promise;
    expect(h.s.started).toBe(started);
    expect(h.s.finished).toBe(started);
  });
});

test("bad plans are refused", () => {
  const launch = (): void => {};
  expect(() => new ArrivalScheduler({ concurrency: 0, total: 1, durationMs: null, rate: null }, launch)).toThrow();
  expect(() => new ArrivalScheduler({ concurrency: 1, total: null, durationMs: null, rate: null }, launch)).toThrow();
  expect(() => new ArrivalScheduler({ concurrency: 1, total: 1, durationMs: null, rate: 0 }, launch)).toThrow();
});

/**
 * Admission counts in shared memory (src/server/admission-state.ts): the tables agree with a
 * plain Map under a long random run of increments and decrements (so removal by backward shift
 * never loses a key behind a hole), a full table refuses a new key but still counts the ones it
 * has, and two threads admitting against one state at once never pass a limit between them.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { AdmissionState } from "../../../src/server/admission-state.ts";
import { Admission } from "../../../src/server/admission.ts";
import { waitFor } from "../../helpers/raw.ts";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

/** a small deterministic generator, so a failure repeats */
function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 0x1_0000_0000;
  };
}

describe("tables", () => {
  test("agree with a Map through 20,000 random increments and decrements over 300 keys in a 512-slot table", () => {
    const state = AdmissionState.create(300);
    expect(state.capacity).toBe(512);
    const model = new Map<string, number>();
    const next = random(7);
    state.locked(() => {
      for (let step = 0; step < 20_000; step++) {
        const key = `10.0.${Math.floor(next() * 3)}.${Math.floor(next() * 100)}`;
        const had = model.get(key) ?? 0;
        if (next() < 0.55) {
          expect(state.increment("ip", key)).toBe(true);
          model.set(key, had + 1);
        } else {
          expect(state.decrement("ip", key)).toBe(had > 0);
          if (had > 1) model.set(key, had - 1);
          else model.delete(key);
        }
        if (step % 997 === 0) for (const [k, n] of model) expect(state.count("ip", k)).toBe(n);
      }
      for (const [k, n] of model) expect(state.count("ip", k)).toBe(n);
      // the two tables are apart
      expect(state.count("client", [...model.keys()][0]!)).toBe(0);
    });
  });

  test("a full table refuses a new key, and keeps counting the keys it holds", () => {
    const state = AdmissionState.create(12); // 16 slots, 12 keys at most
    state.locked(() => {
      for (let i = 0; i < 12; i++) expect(state.increment("client", `k${i}`)).toBe(true);
      expect(state.increment("client", "one-too-many")).toBe(false);
      expect(state.count("client", "one-too-many")).toBe(0);
      expect(state.increment("client", "k3")).toBe(true);
      expect(state.count("client", "k3")).toBe(2);
      state.decrement("client", "k5");
      expect(state.increment("client", "one-too-many")).toBe(true);
    });
  });

  test("an admission over a full table is refused as 'total' and takes nothing", () => {
    const admission = new Admission({ maxTotal: 12, maxPerIp: 100, maxPerClient: 100 }, AdmissionState.create(4));
    for (let i = 0; i < 12; i++) expect(admission.admit("10.0.0.1", `f${i}`)).toBeNull();
    const other = new Admission({ maxTotal: 100, maxPerIp: 100, maxPerClient: 100 }, admission.state);
    expect(other.admit("10.0.0.1", "f-new")).toBe("total");
    expect(other.running).toBe(12);
  });
});

describe("two threads, one state", () => {
  test("a thread that finds the lock held long sleeps on it (the word says so) and takes it once let go", async () => {
    const state = AdmissionState.create(16);
    const source = `
      import { AdmissionState } from ${JSON.stringify(new URL("../../../src/server/admission-state.ts", import.meta.url).pathname)};
      self.onmessage = (e) => {
        const state = new AdmissionState(e.data.buffer);
        const flags = new Int32Array(e.data.flags);
        state.locked(() => {
          Atomics.store(flags, 0, 1);
          // held while the other thread asks, and long past its spins
          const until = performance.now() + 30;
          while (performance.now() < until) {}
          // what the lock word says now: 2 once a thread sleeps on it
          Atomics.store(flags, 1, Atomics.load(new Int32Array(e.data.buffer), 0));
          state.total = 7;
        });
      };
    `;
    const file = `${process.env.TMPDIR ?? "/tmp"}/admission-lock-${process.pid}.ts`;
    await Bun.write(file, source);
    const worker = new Worker(file);
    cleanups.push(() => worker.terminate());
    const flags = new Int32Array(new SharedArrayBuffer(8));
    worker.postMessage({ buffer: state.buffer, flags: flags.buffer });
    await waitFor(() => Atomics.load(flags, 0) === 1, 10_000, "the worker holding the lock");
    const seen = state.locked(() => state.total);
    expect(seen).toBe(7);
    expect(Atomics.load(flags, 1)).toBe(2);
    // let go by the last holder: free again
    expect(Atomics.load(new Int32Array(state.buffer), 0)).toBe(0);
  });

  test("a worker and this thread admitting at once never pass maxTotal or maxPerIp between them", async () => {
    const state = AdmissionState.create(1000);
    const limits = { maxTotal: 500, maxPerIp: 40, maxPerClient: 1000 };
    const source = `
      import { Admission } from ${JSON.stringify(new URL("../../../src/server/admission.ts", import.meta.url).pathname)};
      import { AdmissionState } from ${JSON.stringify(new URL("../../../src/server/admission-state.ts", import.meta.url).pathname)};
      self.onmessage = (e) => {
        const admission = new Admission(e.data.limits, new AdmissionState(e.data.buffer));
        // both threads start together: ready, then wait for go
        const flags = new Int32Array(e.data.flags);
        Atomics.store(flags, 0, 1);
        while (Atomics.load(flags, 1) === 0) {}
        let admitted = 0;
        for (let i = 0; i < 20000; i++) if (admission.admit("10.0." + (i % 50) + ".1", "w" + i) === null) admitted++;
        postMessage(admitted);
      };
    `;
    const file = `${process.env.TMPDIR ?? "/tmp"}/admission-worker-${process.pid}.ts`;
    await Bun.write(file, source);
    const worker = new Worker(file);
    cleanups.push(() => worker.terminate());
    let theirs = -1;
    worker.onmessage = (event) => (theirs = event.data as number);
    const flags = new Int32Array(new SharedArrayBuffer(8));
    worker.postMessage({ limits, buffer: state.buffer, flags: flags.buffer });
    const admission = new Admission(limits, state);
    await waitFor(() => Atomics.load(flags, 0) === 1, 10_000, "the worker ready");
    Atomics.store(flags, 1, 1);
    let ours = 0;
    for (let i = 0; i < 20000; i++) if (admission.admit(`10.0.${i % 50}.1`, `m${i}`) === null) ours++;
    await waitFor(() => theirs >= 0, 10_000, "the worker's count");
    // 50 addresses × 40 would be 2,000: the total of 500 binds first, shared by both threads
    expect(ours + theirs).toBe(500);
    expect(admission.running).toBe(500);
    for (let ip = 0; ip < 50; ip++) expect(state.locked(() => state.count("ip", `10.0.${ip}.1`))).toBeLessThanOrEqual(40);
  });
});

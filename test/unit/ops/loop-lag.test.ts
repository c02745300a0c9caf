import { expect, test } from "bun:test";
import { LoopLag } from "../../../src/ops/loop-lag.ts";

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function busyFor(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // the event loop is held here, as a long synchronous step would hold it
  }
}

test("a loop held for 150 ms shows a delay of at least 100 ms, and a reading takes the samples with it", async () => {
  const lag = new LoopLag(20);
  await sleep(60);
  busyFor(150);
  await sleep(60);
  expect(lag.takeP99Ms()).toBeGreaterThanOrEqual(100);
  // read again at once: the samples went with the first reading
  expect(lag.takeP99Ms()).toBeLessThan(100);
});

test("an idle loop's delays stay small", async () => {
  const lag = new LoopLag(20);
  await sleep(200);
  expect(lag.takeP99Ms()).toBeLessThan(100);
});

test("the timer does not keep a process alive, however often it fired", () => {
  // the process lives 100 ms on another timer, so the sampler fires and re-arms itself meanwhile
  const script = `import { LoopLag } from ${JSON.stringify(new URL("../../../src/ops/loop-lag.ts", import.meta.url).pathname)}; new LoopLag(10); setTimeout(() => {}, 100);`;
  const started = performance.now();
  const run = Bun.spawnSync([process.execPath, "-e", script], { stdout: "pipe", stderr: "pipe", timeout: 10_000 });
  expect(run.exitCode).toBe(0);
  expect(performance.now() - started).toBeLessThan(5_000);
});

/**
 * RetransmitClock's schedule: exponential backoff from the round-trip estimate, but never a
 * wait longer than the configured timeout (what clients tolerate); give-up after `retries`.
 */
import { afterEach, expect, test } from "bun:test";
import { judgeRepeat, RetransmitClock, RTO_MIN_MS, STARVED_PATIENCE } from "../../../src/server/transfer.ts";

const clocks: RetransmitClock[] = [];
afterEach(() => {
  for (const c of clocks.splice(0)) c.stop();
});

function clock(timeoutMs: number, retries: number, fixed = false, clientPaced = false) {
  const fired: number[] = [];
  let gaveUpAt = -1;
  const c = new RetransmitClock(
    { timeoutMs, fixed, retries, clientPaced },
    () => fired.push(performance.now()),
    () => (gaveUpAt = performance.now()),
  );
  clocks.push(c);
  return { c, fired, gaveUp: () => gaveUpAt };
}

test("after a short round trip the backoff doubles from the estimate up to the timeout, never past it", async () => {
  const { c, fired } = clock(400, 6);
  c.progress(); // the first packet left
  c.sample(1); // a LAN: the timeout drops to RTO_MIN_MS
  const start = performance.now();
  c.progress(); // the client answered
  await Bun.sleep(RTO_MIN_MS + 400 + 400 + 400 + 150);
  // 200, then 400 (doubled), then capped at 400 twice more
  const gaps = fired.map((t, i) => t - (i === 0 ? start : fired[i - 1]!));
  expect(gaps.length).toBeGreaterThanOrEqual(4);
  expect(gaps[0]!).toBeGreaterThanOrEqual(RTO_MIN_MS - 5);
  expect(gaps[0]!).toBeLessThan(RTO_MIN_MS + 80);
  for (const gap of gaps.slice(1, 4)) {
    expect(gap).toBeGreaterThanOrEqual(395);
    expect(gap).toBeLessThan(480);
  }
});

test("with no sample, every retransmission waits the configured timeout; give-up after retries + 1 timeouts", async () => {
  const { c, fired, gaveUp } = clock(60, 3);
  c.progress(); // the first packet left
  const start = performance.now();
  c.progress(); // the client answered
  await Bun.sleep(60 * 4 + 120);
  expect(fired).toHaveLength(3);
  expect(gaveUp() - start).toBeGreaterThanOrEqual(60 * 4 - 5);
  expect(gaveUp() - start).toBeLessThan(60 * 4 + 100);
});

test("before the client's first answer nothing is retransmitted: the clock only gives up, after retries + 1 timeouts", async () => {
  const { c, fired, gaveUp } = clock(60, 3);
  const start = performance.now();
  c.progress(); // the first packet left
  expect(c.established).toBe(false);
  await Bun.sleep(60 * 4 + 120);
  expect(fired).toEqual([]);
  expect(gaveUp() - start).toBeGreaterThanOrEqual(60 * 4 - 5);
  expect(gaveUp() - start).toBeLessThan(60 * 4 + 100);
});

test("a repeated request answered before the client's first answer restarts that wait; the answer then starts the timer", async () => {
  const { c, fired, gaveUp } = clock(60, 3);
  c.progress();
  await Bun.sleep(200);
  const repeatedAt = performance.now();
  c.sentAgain();
  await Bun.sleep(150);
  expect(gaveUp()).toBe(-1);
  await Bun.sleep(60 * 4 + 100 - 150);
  expect(gaveUp() - repeatedAt).toBeGreaterThanOrEqual(60 * 4 - 5);
  expect(fired).toEqual([]);

  const answered = clock(100, 3);
  answered.c.progress();
  await Bun.sleep(30);
  answered.c.progress(); // the client answered
  expect(answered.c.established).toBe(true);
  await Bun.sleep(100 + 50);
  expect(answered.fired).toHaveLength(1);
});

test("client-paced (a shared port): one resend earned per datagram heard, at most retries banked; out of credit, patience × STARVED_PATIENCE from when the client was last heard", async () => {
  const { c, fired, gaveUp } = clock(60, 3, true, true);
  c.progress(); // the first packet left, for the request: one resend earned
  c.progress(); // an answer (perhaps forged): the next block left, one more earned
  await Bun.sleep(60 * 3 + 30);
  expect(fired).toHaveLength(2); // both spent; the third expiry only waits
  const heardAt = performance.now();
  c.heard(); // the client repeats its ACK: it is there, and one more resend is earned
  await Bun.sleep(60 + 20);
  expect(fired).toHaveLength(3);
  const starved = 60 * 4 * STARVED_PATIENCE;
  await Bun.sleep(starved + 60);
  expect(fired).toHaveLength(3);
  // silent since and out of credit: it gives up STARVED_PATIENCE patiences after the client was last heard
  expect(gaveUp() - heardAt).toBeGreaterThanOrEqual(starved - 5);
  expect(gaveUp() - heardAt).toBeLessThan(starved + 100);

  // never heard after the (forged) answer: the two resends it earned, then the wait and the give-up
  const forged = clock(60, 3, true, true);
  forged.c.progress();
  const answeredAt = performance.now();
  forged.c.progress();
  await Bun.sleep(starved + 100);
  expect(forged.fired).toHaveLength(2);
  expect(forged.gaveUp() - answeredAt).toBeGreaterThanOrEqual(starved - 5);
  expect(forged.gaveUp() - answeredAt).toBeLessThan(starved + 100);

  // many blocks in, the bank is full (retries): a stall is resent as an unpaced clock would
  const running = clock(60, 3, true, true);
  for (let block = 0; block < 10; block++) running.c.progress();
  await Bun.sleep(60 * 3 + 30);
  expect(running.fired).toHaveLength(3);

  const unpaced = clock(60, 3, true);
  unpaced.c.progress();
  unpaced.c.progress();
  await Bun.sleep(60 * 3 + 30);
  expect(unpaced.fired).toHaveLength(3);
});

test("judgeRepeat: resend before the client answered, ignore while alive, supersede after a silence", () => {
  const { c } = clock(1000, 3);
  c.progress(); // the first packet left
  const sent = c.lastSentAt;
  expect(judgeRepeat(c, true, sent + 10)).toBe("ignore"); // crossed our first packet
  expect(judgeRepeat(c, true, sent + RTO_MIN_MS + 1)).toBe("resend");
  expect(judgeRepeat(c, false, sent + 10)).toBe("supersede");
  c.progress(); // the client answered
  const moved = c.lastProgressAt;
  expect(judgeRepeat(c, true, moved + 500)).toBe("ignore");
  expect(judgeRepeat(c, false, moved + 500)).toBe("ignore");
  expect(judgeRepeat(c, true, moved + 1001)).toBe("supersede");
});

test("past `retries` misses, a resend the client could not answer before the patience ends is not sent: the rest is waited out", async () => {
  const { c, fired, gaveUp } = clock(500, 2);
  c.progress(); // the first packet left
  c.sample(1); // the timeout drops to RTO_MIN_MS, then doubles back up to 500
  const start = performance.now();
  c.progress(); // the client answered
  await Bun.sleep(500 * 3 + 250);
  // resends at RTO_MIN_MS and 3 × RTO_MIN_MS; a third would leave 400 ms before the end, too
  // late for a 500 ms wait
  expect(fired).toHaveLength(2);
  expect(gaveUp() - start).toBeGreaterThanOrEqual(500 * 3 - 5);
  expect(gaveUp() - start).toBeLessThan(500 * 3 + 80);
});

import { expect, test } from "bun:test";
import { TokenBucket } from "../../../src/server/token-bucket.ts";

test("a full bucket allows a burst, then refuses until time refills it", () => {
  const bucket = new TokenBucket(10, 5, 0);
  const taken = Array.from({ length: 8 }, () => bucket.take(0));
  expect(taken.filter(Boolean)).toHaveLength(5);
  expect(bucket.take(50)).toBe(false); // half a token
  expect(bucket.take(100)).toBe(true); // one token per 100 ms at 10/s
  expect(bucket.take(100)).toBe(false);
});

test("a long silence refills no more than the burst", () => {
  const bucket = new TokenBucket(100, 3, 0);
  for (let i = 0; i < 3; i++) bucket.take(0);
  let allowed = 0;
  for (let i = 0; i < 10; i++) if (bucket.take(60_000)) allowed++;
  expect(allowed).toBe(3);
});

test("over a second of steady offers, about the rate gets through", () => {
  const bucket = new TokenBucket(50, 50, 0);
  let allowed = 0;
  // 2,000 offers spread over 1 s: the burst, then 50 per second
  for (let i = 0; i < 2000; i++) if (bucket.take(i / 2)) allowed++;
  expect(allowed).toBeGreaterThanOrEqual(99);
  expect(allowed).toBeLessThanOrEqual(101);
});

import { expect, test } from "bun:test";
import { WakeGate } from "../../../src/net/wake-gate.ts";

test("the poster wakes the loop only while it may be asleep", () => {
  const poster = new WakeGate();
  const loop = new WakeGate(poster.buffer);
  // awake in a turn: no write
  expect(poster.posted()).toBe(false);
  loop.received();
  expect(loop.maySleep()).toBe(true);
  // asleep: the next message is followed by a write
  expect(poster.posted()).toBe(true);
  loop.awake();
  loop.received();
  expect(poster.posted()).toBe(false);
});

test("the loop does not sleep while a message posted to it is unread", () => {
  const poster = new WakeGate();
  const loop = new WakeGate(poster.buffer);
  // posted while the loop was awake (no write): the loop must only look, not sleep
  expect(poster.posted()).toBe(false);
  expect(loop.maySleep()).toBe(false);
  // and having declined, it is not counted asleep: a poster now would not write for nothing
  expect(poster.posted()).toBe(false);
  loop.received();
  expect(loop.maySleep()).toBe(false);
  loop.received();
  expect(loop.maySleep()).toBe(true);
});

test("the counts agree past the 32-bit wrap", () => {
  const poster = new WakeGate();
  const loop = new WakeGate(poster.buffer);
  new Int32Array(poster.buffer)[1] = 2 ** 31 - 1;
  (loop as unknown as { read: number }).read = 2 ** 31 - 1;
  expect(loop.maySleep()).toBe(true);
  loop.awake();
  poster.posted();
  expect(loop.maySleep()).toBe(false);
  loop.received();
  expect(loop.maySleep()).toBe(true);
});

import { expect, test } from "bun:test";
import { LossPlan } from "../../../src/server/loss.ts";
import { encodeAck, encodeData } from "../../../src/protocol/codec.ts";

const ack = encodeAck(7);
const data = encodeData(3, new Uint8Array(10));

test("counted rules drop exactly their count", () => {
  const plan = LossPlan.parse("in:ack:7*2");
  expect([1, 2, 3].map(() => plan.shouldDrop("in", ack))).toEqual([true, true, false]);
  expect(plan.shouldDrop("out", ack)).toBe(false);
});

test("a PERCENT rule drops about that share of any datagram, the same ones for the same seed", () => {
  const drops = (spec: string): boolean[] => {
    const plan = LossPlan.parse(spec);
    return Array.from({ length: 10_000 }, (_, i) => plan.shouldDrop(i % 2 ? "in" : "out", i % 3 ? ack : data));
  };
  const a = drops("in:any%20,out:any%20,seed=5");
  const share = a.filter(Boolean).length / a.length;
  expect(share).toBeGreaterThan(0.18);
  expect(share).toBeLessThan(0.22);
  expect(drops("in:any%20,out:any%20,seed=5")).toEqual(a);
  expect(drops("in:any%20,out:any%20,seed=6")).not.toEqual(a);
  // only the direction named
  const inOnly = LossPlan.parse("in:data%100");
  expect(inOnly.shouldDrop("in", data)).toBe(true);
  expect(inOnly.shouldDrop("out", data)).toBe(false);
  expect(inOnly.shouldDrop("in", ack)).toBe(false);
});

test("bad specs are refused with the rule named", () => {
  for (const spec of ["in:any%0", "in:any%101", "in:any%", "in:ack%5*2", "seed=0", "seed=x", "up:any%5", "in:bogus%5"]) {
    expect(() => LossPlan.parse(spec)).toThrow(/TFTPD_TEST_DROP/);
  }
});

/**
 * Admission: each limit (total, per address, per client = address + file) refuses at the
 * limit and names itself; a release frees exactly one slot of each kind it took; releasing
 * more than was admitted never drives a count below zero (which would let extra transfers in).
 * The memory budget: what admitted transfers reserve never passes it, a refusal takes nothing,
 * a release gives back what the transfer reserved, and a new budget applies to the next request.
 */
import { describe, expect, test } from "bun:test";
import { Admission } from "../../../src/server/admission.ts";

const BIG = 1_000_000;

describe("limits", () => {
  test("maxTotal refuses the next transfer from anyone, naming 'total'", () => {
    const a = new Admission({ maxTotal: 3, maxPerIp: BIG, maxPerClient: BIG });
    expect(a.admit("10.0.0.1", "a")).toBeNull();
    expect(a.admit("10.0.0.2", "b")).toBeNull();
    expect(a.admit("10.0.0.3", "c")).toBeNull();
    expect(a.running).toBe(3);
    expect(a.admit("10.0.0.4", "d")).toBe("total");
    expect(a.admit("10.0.0.1", "a")).toBe("total");
    expect(a.running).toBe(3); // a refusal takes nothing
  });

  test("maxPerIp refuses only that address, naming 'per-ip'", () => {
    const a = new Admission({ maxTotal: BIG, maxPerIp: 2, maxPerClient: BIG });
    expect(a.admit("10.0.0.1", "a")).toBeNull();
    expect(a.admit("10.0.0.1", "b")).toBeNull();
    expect(a.admit("10.0.0.1", "c")).toBe("per-ip");
    expect(a.admit("10.0.0.2", "c")).toBeNull();
    expect(a.admit("10.0.0.2", "d")).toBeNull();
    expect(a.admit("10.0.0.2", "e")).toBe("per-ip");
    expect(a.running).toBe(4);
  });

  test("maxPerClient refuses the same file from the same address, naming 'per-client'", () => {
    const a = new Admission({ maxTotal: BIG, maxPerIp: BIG, maxPerClient: 1 });
    expect(a.admit("10.0.0.1", "initrd")).toBeNull();
    expect(a.admit("10.0.0.1", "initrd")).toBe("per-client");
    expect(a.admit("10.0.0.1", "kernel")).toBeNull(); // another file: another client
    expect(a.admit("10.0.0.2", "initrd")).toBeNull(); // another address: another client
    expect(a.running).toBe(3);
  });

  test("the limits are checked total, then per-ip, then per-client", () => {
    const a = new Admission({ maxTotal: 2, maxPerIp: 1, maxPerClient: 1 });
    expect(a.admit("10.0.0.1", "f")).toBeNull();
    expect(a.admit("10.0.0.1", "f")).toBe("per-ip");
    expect(a.admit("10.0.0.2", "f")).toBeNull();
    expect(a.admit("10.0.0.1", "f")).toBe("total");
  });
});

describe("release", () => {
  test("frees exactly one slot of each kind", () => {
    const a = new Admission({ maxTotal: 2, maxPerIp: 2, maxPerClient: 2 });
    expect(a.admit("10.0.0.1", "f")).toBeNull();
    expect(a.admit("10.0.0.1", "f")).toBeNull();
    expect(a.admit("10.0.0.1", "f")).toBe("total");
    a.release("10.0.0.1", "f");
    expect(a.running).toBe(1);
    expect(a.admit("10.0.0.1", "f")).toBeNull(); // one slot came back...
    expect(a.admit("10.0.0.1", "f")).toBe("total"); // ...and only one
  });

  test("per-ip and per-client slots come back with the release", () => {
    const ip = new Admission({ maxTotal: BIG, maxPerIp: 1, maxPerClient: BIG });
    expect(ip.admit("10.0.0.1", "a")).toBeNull();
    ip.release("10.0.0.1", "a");
    expect(ip.admit("10.0.0.1", "b")).toBeNull();
    expect(ip.admit("10.0.0.1", "c")).toBe("per-ip");

    const client = new Admission({ maxTotal: BIG, maxPerIp: BIG, maxPerClient: 1 });
    expect(client.admit("10.0.0.1", "a")).toBeNull();
    client.release("10.0.0.1", "a");
    expect(client.admit("10.0.0.1", "a")).toBeNull();
    expect(client.admit("10.0.0.1", "a")).toBe("per-client");
  });

  test("releasing one client's slot does not free another's", () => {
    const a = new Admission({ maxTotal: BIG, maxPerIp: 2, maxPerClient: 1 });
    expect(a.admit("10.0.0.1", "a")).toBeNull();
    expect(a.admit("10.0.0.1", "b")).toBeNull();
    a.release("10.0.0.1", "a");
    expect(a.admit("10.0.0.1", "b")).toBe("per-client");
    expect(a.admit("10.0.0.1", "a")).toBeNull();
    expect(a.admit("10.0.0.1", "c")).toBe("per-ip");
  });

  test("counts never go negative: extra releases do not create slots", () => {
    const a = new Admission({ maxTotal: 2, maxPerIp: 2, maxPerClient: 1 });
    a.release("10.0.0.1", "never-admitted");
    expect(a.running).toBe(0);
    expect(a.admit("10.0.0.1", "f")).toBeNull();
    a.release("10.0.0.1", "f");
    a.release("10.0.0.1", "f"); // released twice
    a.release("10.0.0.9", "g");
    expect(a.running).toBe(0);
    expect(a.admit("10.0.0.1", "a")).toBeNull();
    expect(a.admit("10.0.0.2", "b")).toBeNull();
    expect(a.admit("10.0.0.3", "c")).toBe("total"); // still 2, not 3 or 4
    expect(a.running).toBe(2);
  });

  test("a double release of one client does not free another client's per-ip slot", () => {
    const a = new Admission({ maxTotal: BIG, maxPerIp: 2, maxPerClient: BIG });
    expect(a.admit("10.0.0.1", "a")).toBeNull();
    expect(a.admit("10.0.0.1", "b")).toBeNull();
    a.release("10.0.0.1", "a");
    a.release("10.0.0.1", "a");
    expect(a.admit("10.0.0.1", "c")).toBeNull();
    expect(a.admit("10.0.0.1", "d")).toBe("per-ip");
  });
});

describe("memory budget", () => {
  const KiB = 1024;

  test("admits while the reservations fit, refuses the one that would pass, naming 'memory'", () => {
    const a = new Admission({ maxTotal: BIG, maxPerIp: BIG, maxPerClient: BIG, maxMemory: 24 * KiB });
    expect(a.memoryBudget).toBe(24 * KiB);
    expect(a.admit("10.0.0.1", "a", 8 * KiB)).toBeNull();
    expect(a.admit("10.0.0.2", "b", 8 * KiB)).toBeNull();
    expect(a.admit("10.0.0.3", "c", 8 * KiB)).toBeNull();
    expect(a.reservedMemory).toBe(24 * KiB);
    expect(a.admit("10.0.0.4", "d", 8 * KiB)).toBe("memory");
    expect(a.admit("10.0.0.4", "d", 1)).toBe("memory");
    // a refusal takes neither a slot nor memory
    expect(a.running).toBe(3);
    expect(a.reservedMemory).toBe(24 * KiB);
    a.release("10.0.0.2", "b", 8 * KiB);
    expect(a.reservedMemory).toBe(16 * KiB);
    expect(a.admit("10.0.0.4", "d", 8 * KiB)).toBeNull();
    expect(a.reservedMemory).toBe(24 * KiB);
  });

  test("the other limits are asked first and a refusal by them reserves nothing", () => {
    const a = new Admission({ maxTotal: 1, maxPerIp: BIG, maxPerClient: BIG, maxMemory: 24 * KiB });
    expect(a.admit("10.0.0.1", "a", 8 * KiB)).toBeNull();
    expect(a.admit("10.0.0.2", "b", 8 * KiB)).toBe("total");
    expect(a.reservedMemory).toBe(8 * KiB);
  });

  test("reserve adds to an admitted transfer within the budget, unreserve gives part back", () => {
    const a = new Admission({ maxTotal: BIG, maxPerIp: BIG, maxPerClient: BIG, maxMemory: 100 * KiB });
    expect(a.admit("10.0.0.1", "menu.cfg", 8 * KiB)).toBeNull();
    expect(a.reserve(93 * KiB)).toBe(false); // 101 KiB would pass 100
    expect(a.reservedMemory).toBe(8 * KiB);
    expect(a.reserve(92 * KiB)).toBe(true); // exactly the budget
    expect(a.admit("10.0.0.2", "x", 1)).toBe("memory");
    a.unreserve(60 * KiB);
    expect(a.reservedMemory).toBe(40 * KiB);
    a.release("10.0.0.1", "menu.cfg", 40 * KiB);
    expect(a.reservedMemory).toBe(0);
    expect(a.running).toBe(0);
  });

  test("a release of a slot never held gives nothing back; reservations never go below zero", () => {
    const a = new Admission({ maxTotal: BIG, maxPerIp: BIG, maxPerClient: BIG, maxMemory: 16 * KiB });
    expect(a.admit("10.0.0.1", "a", 8 * KiB)).toBeNull();
    a.release("10.0.0.9", "z", 8 * KiB);
    expect(a.reservedMemory).toBe(8 * KiB);
    a.unreserve(64 * KiB);
    expect(a.reservedMemory).toBe(0);
  });

  test("a new budget applies to the next request; running transfers keep what they reserved", () => {
    const a = new Admission({ maxTotal: BIG, maxPerIp: BIG, maxPerClient: BIG, maxMemory: 16 * KiB });
    expect(a.admit("10.0.0.1", "a", 8 * KiB)).toBeNull();
    expect(a.admit("10.0.0.2", "b", 8 * KiB)).toBeNull();
    expect(a.admit("10.0.0.3", "c", 8 * KiB)).toBe("memory");
    a.setLimits({ maxTotal: BIG, maxPerIp: BIG, maxPerClient: BIG, maxMemory: 24 * KiB });
    expect(a.admit("10.0.0.3", "c", 8 * KiB)).toBeNull();
    // lowered below what is reserved: nothing new until enough has ended
    a.setLimits({ maxTotal: BIG, maxPerIp: BIG, maxPerClient: BIG, maxMemory: 8 * KiB });
    expect(a.reservedMemory).toBe(24 * KiB);
    a.release("10.0.0.1", "a", 8 * KiB);
    expect(a.admit("10.0.0.4", "d", 8 * KiB)).toBe("memory");
    a.release("10.0.0.2", "b", 8 * KiB);
    a.release("10.0.0.3", "c", 8 * KiB);
    expect(a.admit("10.0.0.4", "d", 8 * KiB)).toBeNull();
  });

  test("without a budget, memory never refuses", () => {
    const a = new Admission({ maxTotal: BIG, maxPerIp: BIG, maxPerClient: BIG });
    expect(a.memoryBudget).toBe(Infinity);
    expect(a.admit("10.0.0.1", "a", 2 ** 40)).toBeNull();
    expect(a.reserve(2 ** 40)).toBe(true);
  });
});

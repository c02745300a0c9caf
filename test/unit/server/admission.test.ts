/**
 * Admission: each limit (total, per address, per client = address + file) refuses at the
 * limit and names itself; a release frees exactly one slot of each kind it took; releasing
 * more than was admitted never drives a count below zero (which would let extra transfers in).
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

/**
 * LoadBalancer: round_robin visits every worker in turn; least_connections takes the least
 * loaded worker (lowest index on a tie); consistent_hashing maps a key to the same worker every
 * time, spreads keys evenly, moves only about 1/N of them when a worker is added, and hashes
 * the configured key (client address, address and port, or file name) and nothing else.
 */
import { describe, expect, test } from "bun:test";
import { LoadBalancer, type BalanceInput } from "../../../src/server/balance.ts";

const idle = (n: number): number[] => new Array<number>(n).fill(0);
const input = (clientAddress: string, clientPort = 1069, filename = "pxelinux.0"): BalanceInput => ({ clientAddress, clientPort, filename });

function randomIps(count: number): string[] {
  const octet = (): number => Math.floor(Math.random() * 256);
  return Array.from({ length: count }, () => `${1 + Math.floor(Math.random() * 254)}.${octet()}.${octet()}.${octet()}`);
}

describe("round_robin", () => {
  test("cycles over every worker, each the same number of times", () => {
    for (const n of [2, 3, 4, 7]) {
      const balancer = new LoadBalancer("round_robin", "client_ip", n);
      const picks = Array.from({ length: n * 10 }, () => balancer.pick(input("10.0.0.1"), idle(n)));
      const counts = idle(n);
      for (const p of picks) counts[p]!++;
      expect(counts).toEqual(new Array<number>(n).fill(10));
      // in turn: each window of n consecutive picks names every worker once
      for (let i = 0; i + n <= picks.length; i++) expect(new Set(picks.slice(i, i + n)).size).toBe(n);
    }
  });

  test("ignores the loads and the request", () => {
    const balancer = new LoadBalancer("round_robin", "client_ip", 3);
    const picks = [balancer.pick(input("a"), [9, 0, 0]), balancer.pick(input("a"), [9, 0, 0]), balancer.pick(input("a"), [9, 0, 0])];
    expect(new Set(picks).size).toBe(3);
  });

  test("one worker: always 0", () => {
    const balancer = new LoadBalancer("round_robin", "client_ip", 1);
    for (let i = 0; i < 5; i++) expect(balancer.pick(input("10.0.0.1"), [3])).toBe(0);
  });
});

describe("least_connections", () => {
  const balancer = new LoadBalancer("least_connections", "client_ip", 4);
  test("picks the worker with the fewest transfers", () => {
    expect(balancer.pick(input("x"), [3, 1, 2, 5])).toBe(1);
    expect(balancer.pick(input("x"), [3, 4, 2, 5])).toBe(2);
    expect(balancer.pick(input("x"), [3, 4, 2, 0])).toBe(3);
    expect(balancer.pick(input("x"), [0, 4, 2, 1])).toBe(0);
  });
  test("the lowest index wins a tie", () => {
    expect(balancer.pick(input("x"), [0, 0, 0, 0])).toBe(0);
    expect(balancer.pick(input("x"), [2, 1, 1, 1])).toBe(1);
    expect(balancer.pick(input("x"), [2, 2, 1, 1])).toBe(2);
    expect(balancer.pick(input("x"), [5, 5, 5, 5])).toBe(0);
  });
  test("fed its own picks, it keeps the loads level", () => {
    const loads = idle(4);
    for (let i = 0; i < 40; i++) loads[balancer.pick(input("x"), loads)]!++;
    expect(loads).toEqual([10, 10, 10, 10]);
  });
});

describe("consistent_hashing", () => {
  test("the same key always lands on the same worker, whatever the loads", () => {
    const balancer = new LoadBalancer("consistent_hashing", "client_ip", 4);
    for (const ip of randomIps(200)) {
      const first = balancer.pick(input(ip), idle(4));
      expect(balancer.pick(input(ip), [9, 0, 0, 0])).toBe(first);
      expect(balancer.pick(input(ip, 40000, "other"), [0, 0, 0, 9])).toBe(first);
      // a fresh balancer (a restarted server) agrees
      expect(new LoadBalancer("consistent_hashing", "client_ip", 4).pick(input(ip), idle(4))).toBe(first);
    }
  });

  test("10,000 random addresses spread over 4 workers within ±25 % of even", () => {
    const balancer = new LoadBalancer("consistent_hashing", "client_ip", 4);
    const counts = idle(4);
    for (const ip of randomIps(10_000)) counts[balancer.pick(input(ip), idle(4))]!++;
    for (const c of counts) {
      expect(c).toBeGreaterThan(2500 * 0.75);
      expect(c).toBeLessThan(2500 * 1.25);
    }
  });

  test("sequential datacenter addresses spread evenly too", () => {
    const balancer = new LoadBalancer("consistent_hashing", "client_ip", 4);
    const counts = idle(4);
    for (let i = 0; i < 10_000; i++) counts[balancer.pick(input(`10.20.${i >> 8}.${i & 255}`), idle(4))]!++;
    for (const c of counts) {
      expect(c).toBeGreaterThan(2500 * 0.75);
      expect(c).toBeLessThan(2500 * 1.25);
    }
  });

  test("going from 4 to 5 workers moves fewer than 35 % of keys, and only onto the new one", () => {
    const four = new LoadBalancer("consistent_hashing", "client_ip", 4);
    const five = new LoadBalancer("consistent_hashing", "client_ip", 5);
    const ips = randomIps(10_000);
    let moved = 0;
    for (const ip of ips) {
      const before = four.pick(input(ip), idle(4));
      const after = five.pick(input(ip), idle(5));
      if (before !== after) {
        moved++;
        expect(after).toBe(4);
      }
    }
    expect(moved / ips.length).toBeLessThan(0.35);
    expect(moved).toBeGreaterThan(0); // the new worker takes some keys
    // resize() on a live balancer gives the same ring as a new one
    four.resize(5);
    for (const ip of ips.slice(0, 500)) expect(four.pick(input(ip), idle(5))).toBe(five.pick(input(ip), idle(5)));
  });

  /** which inputs differ only in `vary` yet land on different workers */
  function spreads(hashKey: "client_ip" | "client_port" | "filename", vary: (i: number) => BalanceInput): number {
    const balancer = new LoadBalancer("consistent_hashing", hashKey, 4);
    const seen = new Set<number>();
    for (let i = 0; i < 200; i++) seen.add(balancer.pick(vary(i), idle(4)));
    return seen.size;
  }

  test("hash_key client_ip: only the address counts", () => {
    expect(spreads("client_ip", (i) => input("10.0.0.1", 1024 + i, `file-${i}`))).toBe(1);
    expect(spreads("client_ip", (i) => input(`10.0.${i}.1`, 1069, "same"))).toBe(4);
  });

  test("hash_key client_port: address and port count, the file does not", () => {
    expect(spreads("client_port", (i) => input("10.0.0.1", 1069, `file-${i}`))).toBe(1);
    expect(spreads("client_port", (i) => input("10.0.0.1", 1024 + i, "same"))).toBe(4);
    expect(spreads("client_port", (i) => input(`10.0.${i}.1`, 1069, "same"))).toBe(4);
    // the address is part of the key: the same port from different hosts is not one key
    const balancer = new LoadBalancer("consistent_hashing", "client_port", 4);
    const byPort = new Set(Array.from({ length: 50 }, (_, i) => balancer.pick(input(`192.168.${i}.9`, 2000), idle(4))));
    expect(byPort.size).toBeGreaterThan(1);
  });

  test("hash_key filename: only the file counts", () => {
    expect(spreads("filename", (i) => input(`10.0.${i}.1`, 1024 + i, "boot/initrd.img"))).toBe(1);
    expect(spreads("filename", (i) => input("10.0.0.1", 1069, `boot/node-${i}.cfg`))).toBe(4);
  });
});

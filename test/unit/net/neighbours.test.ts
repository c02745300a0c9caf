/**
 * The neighbour tables without a kernel: the parsers fed the text /proc/net/arp and
 * `ip -j neigh` print, and the shared reads driven by a manual clock, counting every read a
 * boot storm's lookups cause.
 */
import { describe, expect, test } from "bun:test";
import {
  kernelNeighbours,
  macDirectoryName,
  neighbourKey,
  parseIpNeighJson,
  parseProcNetArp,
  rememberedKeys,
  type Clock,
  type NeighbourSources,
} from "../../../src/net/neighbours.ts";

// As Linux prints it: an incomplete entry (flags 0x0, zero MAC), a permanent one (0x6), an
// InfiniBand one (HW type 0x20, 20-byte address), the same address on two devices.
const PROC_NET_ARP = `IP address       HW type     Flags       HW address            Mask     Device
192.168.1.10     0x1         0x2         52:54:00:AB:cd:01     *        eth0
192.168.1.11     0x1         0x0         00:00:00:00:00:00     *        eth0
192.168.1.12     0x1         0x6         52:54:00:ab:cd:02     *        eth0
10.9.0.7         0x20        0x2         80:00:00:48:fe:80:00:00:00:00:00:00:00:02:c9:03:00:0a:0b:0c *  ib0
192.168.2.5      0x1         0x2         52:54:00:00:00:05     *        eth1
192.168.2.5      0x1         0x2         52:54:00:00:00:06     *        eth2
192.168.1.13     0x1         0x2         00:00:00:00:00:00     *        eth0
`;

// `ip -j -6 neigh show`: reachable, stale with a router flag, failed (a stale lladdr kept),
// incomplete (no lladdr), permanent, a link-local address on two links.
const IP_NEIGH_JSON = JSON.stringify([
  { dst: "fd00:213::2", dev: "eth0", lladdr: "E2:53:37:66:61:DF", state: ["REACHABLE"] },
  { dst: "2001:db8::1", dev: "eth0", lladdr: "52:54:00:00:00:01", router: null, state: ["STALE"] },
  { dst: "2001:db8::bad", dev: "eth0", lladdr: "52:54:00:00:00:09", state: ["FAILED"] },
  { dst: "2001:db8::9", dev: "eth0", state: ["INCOMPLETE"] },
  { dst: "2001:db8::7", dev: "eth0", lladdr: "52:54:00:00:00:07", state: ["PERMANENT"] },
  { dst: "fe80::1", dev: "eth0", lladdr: "52:54:00:00:01:00", state: ["STALE"] },
  { dst: "fe80::1", dev: "eth1", lladdr: "52:54:00:00:01:01", state: ["DELAY"] },
  { dst: "fd00::1", dev: "eth0", state: ["FAILED"] },
]);

describe("parsers", () => {
  test("/proc/net/arp: resolved Ethernet entries only, MACs in lower case", () => {
    const entries = parseProcNetArp(PROC_NET_ARP);
    expect(entries.get("192.168.1.10")).toBe("52:54:00:ab:cd:01");
    expect(entries.get("192.168.1.12")).toBe("52:54:00:ab:cd:02");
    expect(entries.has("192.168.1.11")).toBe(false); // incomplete
    expect(entries.has("192.168.1.13")).toBe(false); // all-zero MAC
    expect(entries.has("10.9.0.7")).toBe(false); // not an Ethernet address
    // the same address on two links: the first
    expect(entries.get("192.168.2.5")).toBe("52:54:00:00:00:05");
    expect(entries.size).toBe(3);
  });

  test("/proc/net/arp: nonsense, a header alone or nothing give no entries", () => {
    expect(parseProcNetArp("").size).toBe(0);
    expect(parseProcNetArp(PROC_NET_ARP.split("\n")[0]!).size).toBe(0);
    expect(parseProcNetArp("header\nnot an arp line\n1.2.3.4 0x1 zz 52:54:00:00:00:01 * eth0\n").size).toBe(0);
    expect(parseProcNetArp("header\n999.1.1.1 0x1 0x2 52:54:00:00:00:01 * eth0\n").size).toBe(0);
  });

  test("ip -j neigh: entries with a usable lladdr; FAILED and INCOMPLETE have none", () => {
    const entries = parseIpNeighJson(IP_NEIGH_JSON);
    expect(entries.get(neighbourKey("fd00:213::2")!)).toBe("e2:53:37:66:61:df");
    expect(entries.get(neighbourKey("2001:db8::1")!)).toBe("52:54:00:00:00:01");
    expect(entries.get(neighbourKey("2001:db8::7")!)).toBe("52:54:00:00:00:07");
    expect(entries.has(neighbourKey("2001:db8::bad")!)).toBe(false);
    expect(entries.has(neighbourKey("2001:db8::9")!)).toBe(false);
    expect(entries.has(neighbourKey("fd00::1")!)).toBe(false);
    expect(entries.get(neighbourKey("fe80::1")!)).toBe("52:54:00:00:01:00");
    expect(entries.get(`${neighbourKey("fe80::1")}%eth1`)).toBe("52:54:00:00:01:01");
  });

  test("ip -j neigh: IPv4 entries (when asked without -6) are keyed as IPv4", () => {
    const entries = parseIpNeighJson(JSON.stringify([{ dst: "10.213.0.2", dev: "veth", lladdr: "e2:53:37:66:61:df", state: ["STALE"] }]));
    expect(entries.get("10.213.0.2")).toBe("e2:53:37:66:61:df");
  });

  test("ip -j neigh: output that is not the expected JSON gives no entries, never throws", () => {
    for (const text of ["", "garbage", "{}", "null", "[1, null, \"x\"]", '[{"dst": 5}]', '[{"dst":"::1","lladdr":"zz"}]']) {
      expect(parseIpNeighJson(text).size).toBe(0);
    }
  });

  test("keys: any spelling of an IPv6 address meets; IPv4-mapped is IPv4; nonsense has none", () => {
    expect(neighbourKey("FD00:0213:0:0::2")).toBe(neighbourKey("fd00:213::2"));
    expect(neighbourKey("::ffff:10.0.0.1")).toBe("10.0.0.1");
    expect(neighbourKey("fe80::1%eth0")).toBe(neighbourKey("fe80::1"));
    expect(neighbourKey("not-an-address")).toBeNull();
    expect(neighbourKey("")).toBeNull();
  });

  test("remembered keys are neighbourKey's, read after read", () => {
    const keys = rememberedKeys();
    for (let round = 0; round < 2; round++) {
      for (const a of ["fd00:213::2", "FD00:213::2", "fe80::1%eth0", "10.0.0.1", "bogus"]) expect(keys(a)).toBe(neighbourKey(a));
      expect(parseIpNeighJson(IP_NEIGH_JSON, keys)).toEqual(parseIpNeighJson(IP_NEIGH_JSON));
    }
  });

  test("macDirectoryName is dnsmasq's: six bytes, lower case, '-' between, no ARP type prefix", () => {
    expect(macDirectoryName("01:02:03:04:aa:bb")).toBe("01-02-03-04-aa-bb");
    expect(macDirectoryName("E2:53:37:66:61:DF")).toBe("e2-53-37-66-61-df");
  });
});

/** Time moves only when a read waits (sleep), so every wait is seen and counted. */
class ManualClock implements Clock {
  t = 1_000;
  readonly sleeps: number[] = [];
  now(): number {
    return this.t;
  }
  async sleep(ms: number): Promise<void> {
    this.sleeps.push(ms);
    this.t += ms;
  }
}

/** Tables the test edits between reads; every read is counted, and can be made to fail. */
class FakeKernel implements NeighbourSources {
  arp = new Map<string, string>();
  neigh: { dst: string; dev: string; lladdr?: string; state: string[] }[] = [];
  fail: Error | null = null;
  /** while set, a read sees the table as it is when the read begins but answers only once this resolves */
  gate: Promise<void> | null = null;
  readonly log: string[] = [];
  async ipv4(): Promise<string> {
    this.log.push("ipv4");
    if (this.fail) throw this.fail;
    const lines = [...this.arp].map(([ip, mac]) => `${ip} 0x1 0x2 ${mac} * eth0`);
    if (this.gate) await this.gate;
    return `IP address HW type Flags HW address Mask Device\n${lines.join("\n")}\n`;
  }
  async ipv6(): Promise<string> {
    this.log.push("ipv6");
    if (this.fail) throw this.fail;
    return JSON.stringify(this.neigh);
  }
}

const REFRESH = 250;

function setup() {
  const clock = new ManualClock();
  const kernel = new FakeKernel();
  const errors: [number, string][] = [];
  const neighbours = kernelNeighbours({
    refreshMs: REFRESH,
    clock,
    sources: kernel,
    onReadError: (family, error) => errors.push([family, String(error)]),
  });
  return { clock, kernel, neighbours, errors };
}

const mac = (i: number): string => `52:54:00:00:${((i >> 8) & 0xff).toString(16).padStart(2, "0")}:${(i & 0xff).toString(16).padStart(2, "0")}`;

describe("shared reads", () => {
  test("a boot storm's thousand concurrent lookups share one read of the table", async () => {
    const { kernel, neighbours } = setup();
    for (let i = 0; i < 1000; i++) kernel.arp.set(`10.1.${i >> 8}.${i & 0xff}`, mac(i));
    const answers = await Promise.all(Array.from({ length: 1000 }, (_, i) => neighbours.macOf(`10.1.${i >> 8}.${i & 0xff}`)));
    expect(answers).toEqual(Array.from({ length: 1000 }, (_, i) => mac(i)));
    expect(kernel.log).toEqual(["ipv4"]);
  });

  test("a read serves lookups for refreshMs; the first lookup after that reads again, without waiting", async () => {
    const { clock, kernel, neighbours } = setup();
    kernel.arp.set("10.0.0.1", mac(1));
    expect(await neighbours.macOf("10.0.0.1")).toBe(mac(1));
    clock.t += REFRESH - 1;
    kernel.arp.set("10.0.0.1", mac(2)); // the table changed, but the read is still fresh
    expect(await neighbours.macOf("10.0.0.1")).toBe(mac(1));
    expect(kernel.log).toEqual(["ipv4"]);
    clock.t += 1;
    expect(await neighbours.macOf("10.0.0.1")).toBe(mac(2));
    expect(kernel.log).toEqual(["ipv4", "ipv4"]);
    expect(clock.sleeps.filter((ms) => ms > 0)).toEqual([]);
  });

  test("a client that arrived after the last read is found: its miss waits for one read, at most one per refreshMs", async () => {
    const { clock, kernel, neighbours } = setup();
    kernel.arp.set("10.0.0.1", mac(1));
    expect(await neighbours.macOf("10.0.0.1")).toBe(mac(1));
    clock.t += 100;
    kernel.arp.set("10.0.0.2", mac(2)); // it ARPed for the server after that read
    const readAt = clock.t;
    expect(await neighbours.macOf("10.0.0.2")).toBe(mac(2));
    expect(kernel.log).toEqual(["ipv4", "ipv4"]);
    // the re-read waited until refreshMs after the previous one began
    expect(clock.sleeps.filter((ms) => ms > 0)).toEqual([REFRESH - 100]);
    expect(clock.t).toBe(readAt + REFRESH - 100);
  });

  test("misses for many new clients at once cost one extra read, not one each", async () => {
    const { clock, kernel, neighbours } = setup();
    expect(await neighbours.macOf("10.0.0.1")).toBeNull();
    clock.t += 10;
    for (let i = 0; i < 500; i++) kernel.arp.set(`10.2.${i >> 8}.${i & 0xff}`, mac(i));
    const answers = await Promise.all(Array.from({ length: 500 }, (_, i) => neighbours.macOf(`10.2.${i >> 8}.${i & 0xff}`)));
    expect(answers).toEqual(Array.from({ length: 500 }, (_, i) => mac(i)));
    expect(kernel.log).toEqual(["ipv4", "ipv4"]);
  });

  test("a miss triggers at most one re-read: a client that is not on the link is then answered null at once", async () => {
    const { clock, kernel, neighbours } = setup();
    kernel.arp.set("10.0.0.1", mac(1));
    expect(await neighbours.macOf("10.0.0.1")).toBe(mac(1));
    // a routed client: never in the table
    expect(await neighbours.macOf("192.0.2.50")).toBeNull();
    expect(kernel.log).toEqual(["ipv4", "ipv4"]);
    // its retransmissions (and the known client) while that read is fresh: no more reads
    for (let i = 0; i < 100; i++) expect(await neighbours.macOf("192.0.2.50")).toBeNull();
    expect(await neighbours.macOf("10.0.0.1")).toBe(mac(1));
    expect(kernel.log).toEqual(["ipv4", "ipv4"]);
    // once it is stale, one read again
    clock.t += REFRESH;
    expect(await neighbours.macOf("192.0.2.50")).toBeNull();
    expect(kernel.log).toEqual(["ipv4", "ipv4", "ipv4"]);
  });

  test("lookups during a read that began before them wait for the next, which all of them share", async () => {
    const { clock, kernel, neighbours } = setup();
    let open!: () => void;
    kernel.gate = new Promise((resolve) => (open = resolve));
    const first = neighbours.macOf("10.0.0.1");
    await Bun.sleep(1);
    expect(kernel.log).toEqual(["ipv4"]); // the first read began, with the table empty
    clock.t += 5;
    kernel.arp.set("10.0.0.1", mac(1));
    kernel.arp.set("10.0.0.2", mac(2));
    const later = [neighbours.macOf("10.0.0.1"), neighbours.macOf("10.0.0.2"), neighbours.macOf("10.0.0.3")];
    kernel.gate = null;
    open();
    expect(await first).toBeNull();
    expect(await Promise.all(later)).toEqual([mac(1), mac(2), null]);
    expect(kernel.log).toEqual(["ipv4", "ipv4"]);
    expect(clock.sleeps).toEqual([REFRESH - 5]);
  });

  test("IPv6 from its own table; any spelling, IPv4-mapped through the IPv4 table", async () => {
    const { kernel, neighbours } = setup();
    kernel.arp.set("10.213.0.2", mac(4));
    kernel.neigh.push({ dst: "fd00:213::2", dev: "veth", lladdr: mac(6), state: ["STALE"] });
    expect(await neighbours.macOf("::ffff:10.213.0.2")).toBe(mac(4));
    expect(kernel.log).toEqual(["ipv4"]);
    expect(await neighbours.macOf("fd00:213:0::0:2")).toBe(mac(6));
    expect(await neighbours.macOf("fd00:213::2")).toBe(mac(6));
    expect(kernel.log).toEqual(["ipv4", "ipv6"]);
  });

  test("a link-local client with a zone gets the entry of its own link", async () => {
    const { kernel, neighbours } = setup();
    kernel.neigh.push({ dst: "fe80::1", dev: "eth0", lladdr: mac(0x100), state: ["STALE"] });
    kernel.neigh.push({ dst: "fe80::1", dev: "eth1", lladdr: mac(0x101), state: ["STALE"] });
    expect(await neighbours.macOf("fe80::1%eth1")).toBe(mac(0x101));
    expect(await neighbours.macOf("fe80::1%eth0")).toBe(mac(0x100));
    expect(await neighbours.macOf("fe80::1%eth7")).toBeNull();
    // without a zone, or with one by number, the first
    expect(await neighbours.macOf("fe80::1")).toBe(mac(0x100));
    expect(await neighbours.macOf("fe80::1%3")).toBe(mac(0x100));
  });

  test("what is not an address is null, without a read", async () => {
    const { kernel, neighbours } = setup();
    for (const bad of ["", "bogus", "10.0.0", "::ffff:999.0.0.1", "1.2.3.4.5"]) expect(await neighbours.macOf(bad)).toBeNull();
    expect(kernel.log).toEqual([]);
  });

  test("a table that cannot be read gives null, never throws; reported once until it reads again", async () => {
    const { clock, kernel, neighbours, errors } = setup();
    kernel.arp.set("10.0.0.1", mac(1));
    kernel.fail = new Error("EACCES: /proc/self/net/arp");
    expect(await neighbours.macOf("10.0.0.1")).toBeNull();
    clock.t += REFRESH;
    expect(await neighbours.macOf("10.0.0.1")).toBeNull();
    expect(errors).toEqual([[4, "Error: EACCES: /proc/self/net/arp"]]);
    kernel.fail = null;
    clock.t += REFRESH;
    expect(await neighbours.macOf("10.0.0.1")).toBe(mac(1));
    kernel.fail = new Error("ip: not found");
    clock.t += REFRESH;
    expect(await neighbours.macOf("fd00::5")).toBeNull();
    clock.t += REFRESH;
    expect(await neighbours.macOf("10.0.0.1")).toBeNull();
    expect(errors).toEqual([
      [4, "Error: EACCES: /proc/self/net/arp"],
      [6, "Error: ip: not found"],
      [4, "Error: ip: not found"],
    ]);
  });

  test("a reporter that throws does not stall the table", async () => {
    const clock = new ManualClock();
    const kernel = new FakeKernel();
    kernel.fail = new Error("broken");
    const neighbours = kernelNeighbours({
      clock,
      sources: kernel,
      onReadError: () => {
        throw new Error("reporter broke");
      },
    });
    expect(await neighbours.macOf("10.0.0.1")).toBeNull();
    kernel.fail = null;
    kernel.arp.set("10.0.0.1", mac(1));
    clock.t += 1_000;
    expect(await neighbours.macOf("10.0.0.1")).toBe(mac(1));
    expect(neighbours.reads).toEqual({ ipv4: 2, ipv6: 0 });
  });
});

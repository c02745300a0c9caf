/**
 * bindInPortRange: transfer sockets bound inside a configured port range (firewalls that open
 * only a range), skipping ports other sockets hold. Real UDP sockets on loopback.
 */
import { afterEach, expect, test } from "bun:test";
import type { udp } from "bun";
import { bindInPortRange } from "../../../src/net/port-range-bind.ts";

const sockets: udp.Socket<"uint8array">[] = [];
afterEach(() => {
  for (const s of sockets.splice(0)) s.close();
});

function bindUdp(hostname: string, port: number): Promise<udp.Socket<"uint8array">> {
  return Bun.udpSocket({ hostname, port, binaryType: "uint8array" }).then((s) => {
    sockets.push(s);
    return s;
  });
}

/** `count` consecutive loopback ports, every one free when this returns. */
async function freeRange(count: number): Promise<{ low: number; high: number }> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const low = 20_000 + Math.floor(Math.random() * 30_000);
    const probes: udp.Socket<"uint8array">[] = [];
    try {
      for (let port = low; port < low + count; port++) probes.push(await Bun.udpSocket({ hostname: "127.0.0.1", port }));
      return { low, high: low + count - 1 };
    } catch {
      // one of them is taken: try elsewhere
    } finally {
      for (const p of probes) p.close();
    }
  }
  throw new Error("no free run of ports");
}

test("with no range, the kernel picks the port", async () => {
  const asked: number[] = [];
  const socket = await bindInPortRange("127.0.0.1", null, (port) => {
    asked.push(port);
    return bindUdp("127.0.0.1", port);
  });
  expect(asked).toEqual([0]);
  expect(socket.port).toBeGreaterThan(0);
});

test("ports other sockets hold are skipped: the one free port of the range is found", async () => {
  const range = await freeRange(4);
  for (const port of [range.low, range.low + 1, range.high]) await bindUdp("127.0.0.1", port);
  for (let i = 0; i < 5; i++) {
    const socket = await bindInPortRange("127.0.0.1", range, (port) => Bun.udpSocket({ hostname: "127.0.0.1", port }));
    expect(socket.port).toBe(range.low + 2);
    socket.close();
  }
});

test("a range with every port taken is tried once per port, then refused with the range named", async () => {
  const range = await freeRange(3);
  for (let port = range.low; port <= range.high; port++) await bindUdp("127.0.0.1", port);
  const asked: number[] = [];
  // (Bun refuses a taken port at once or by a rejection: the caller's await sees either)
  const attempt = (async () =>
    bindInPortRange("127.0.0.1", range, (port) => {
      asked.push(port);
      return bindUdp("127.0.0.1", port);
    }))();
  await expect(attempt).rejects.toThrow(`no free transfer port in ${range.low}:${range.high} on 127.0.0.1`);
  expect(asked.toSorted()).toEqual([range.low, range.low + 1, range.high]);
});

test("a failure that is no taken port ends the search at once", async () => {
  let tries = 0;
  const attempt = bindInPortRange("127.0.0.1", { low: 40_000, high: 40_099 }, () => {
    tries++;
    return Promise.reject(Object.assign(new Error("address not available"), { code: "EADDRNOTAVAIL" }));
  });
  await expect(attempt).rejects.toThrow("address not available");
  expect(tries).toBe(1);
});

test("sockets opened one after another start at different ports of the range", async () => {
  const range = await freeRange(64);
  const ports = new Set<number>();
  for (let i = 0; i < 12; i++) {
    const socket = await bindInPortRange("127.0.0.1", range, (port) => Bun.udpSocket({ hostname: "127.0.0.1", port }));
    ports.add(socket.port);
    socket.close();
  }
  expect(ports.size).toBeGreaterThan(1);
  for (const port of ports) expect(port >= range.low && port <= range.high).toBe(true);
});

/** A bind that answers at once, as the epoll loop's sockets do: `taken` ports throw EADDRINUSE. */
function bindAtOnce(taken: Set<number>, asked: number[]) {
  return (port: number): { port: number } => {
    asked.push(port);
    if (taken.has(port)) throw Object.assign(new Error(`bind 127.0.0.1:${port} failed: EADDRINUSE`), { code: "EADDRINUSE" });
    return { port };
  };
}

test("a bind that answers at once is answered at once, past the taken ports, with no promise", () => {
  const range = { low: 41_000, high: 41_003 };
  const asked: number[] = [];
  const bound = bindInPortRange("127.0.0.1", range, bindAtOnce(new Set([41_000, 41_001, 41_003]), asked));
  expect(bound).not.toBeInstanceOf(Promise);
  expect(bound).toEqual({ port: 41_002 });
  expect(asked.at(-1)).toBe(41_002);
});

test("a bind that answers at once, with every port taken, throws at once with the range named", () => {
  const range = { low: 41_100, high: 41_102 };
  const asked: number[] = [];
  expect(() => bindInPortRange("127.0.0.1", range, bindAtOnce(new Set([41_100, 41_101, 41_102]), asked))).toThrow(
    "no free transfer port in 41100:41102 on 127.0.0.1",
  );
  expect(asked.toSorted()).toEqual([41_100, 41_101, 41_102]);
});

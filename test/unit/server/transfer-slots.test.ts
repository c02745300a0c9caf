/**
 * The transfer slot pool (connection_pool.*): slots made at start, the warmest taken first,
 * kept up to max and given up past min once idle for idleMs; and a real socket sending and
 * receiving through a slot that an earlier socket used.
 */
import { describe, expect, test } from "bun:test";
import { closeWake, IoLoop } from "../../../src/net/io-loop.ts";
import { FfiUdpSocket, SocketBuffers, SocketName } from "../../../src/net/udp-ffi.ts";
import { OWN_SOCKET } from "../../../src/server/ffi-transport.ts";
import { SlotPool, slotShare, type SlotPoolSettings } from "../../../src/server/transfer-slots.ts";

function pool(settings: Partial<SlotPoolSettings>, clock = { now: 0 }) {
  let made = 0;
  const slots = new SlotPool(() => ({ n: made++ }), { preallocate: 0, min: 0, max: 100, idleMs: 1000, ...settings }, () => clock.now);
  return { slots, clock, made: () => made };
}

describe("SlotPool", () => {
  test("preallocates, then transfers take idle slots before any is made", () => {
    const { slots, made } = pool({ preallocate: 3 });
    expect(made()).toBe(3);
    const taken = [slots.take(), slots.take(), slots.take()];
    expect(made()).toBe(3);
    expect(slots.stats).toEqual({ idle: 0, busy: 3, allocated: 3, reused: 3 });
    slots.take();
    expect(made()).toBe(4);
    for (const slot of taken) slots.give(slot);
    expect(slots.stats).toEqual({ idle: 3, busy: 1, allocated: 4, reused: 3 });
  });

  test("the slot given back last is taken first (its memory is the warmest)", () => {
    const { slots } = pool({});
    const a = slots.take();
    const b = slots.take();
    slots.give(a);
    slots.give(b);
    expect(slots.take()).toBe(b);
    expect(slots.take()).toBe(a);
  });

  test("max caps busy and idle together; a slot past it is left to the collector", () => {
    const { slots, made } = pool({ preallocate: 10, max: 2 });
    expect(made()).toBe(2);
    const taken = [slots.take(), slots.take(), slots.take(), slots.take()];
    expect(made()).toBe(4);
    for (const slot of taken) slots.give(slot);
    expect(slots.stats.idle).toBe(2);
  });

  test("max 0 keeps nothing: every take makes a slot", () => {
    const { slots, made } = pool({ preallocate: 5, max: 0 });
    for (let i = 0; i < 3; i++) slots.give(slots.take());
    expect(made()).toBe(3);
    expect(slots.stats).toEqual({ idle: 0, busy: 0, allocated: 3, reused: 0 });
  });

  test("trim gives up slots idle for idleMs, oldest first, down to min", () => {
    const clock = { now: 0 };
    const { slots } = pool({ preallocate: 6, min: 2, idleMs: 1000 }, clock);
    clock.now = 500;
    const fresh = slots.take();
    slots.give(fresh); // idle since 500
    clock.now = 999;
    slots.trim();
    expect(slots.stats.idle).toBe(6);
    clock.now = 1000;
    slots.trim(); // the five idle since 0 may go, but min keeps two: the fresh one and one more
    expect(slots.stats.idle).toBe(2);
    expect(slots.take()).toBe(fresh);
    clock.now = 10_000;
    slots.trim();
    expect(slots.stats.idle).toBe(1);
  });

  test("a node's settings are shared out over its engines, rounding up", () => {
    expect(slotShare({ preallocate: 10000, min: 1000, max: 50000, idleMs: 300_000 }, 3)).toEqual({ preallocate: 3334, min: 334, max: 16667, idleMs: 300_000 });
    expect(slotShare({ preallocate: 0, min: 0, max: 0, idleMs: 1 }, 4)).toEqual({ preallocate: 0, min: 0, max: 0, idleMs: 1 });
  });
});

describe("a socket on a slot another socket used", () => {
  test("sends and receives as on buffers of its own, and leaves nothing queued behind", async () => {
    const loop = IoLoop.open();
    if (!loop) throw new Error("no epoll loop here");
    // a test's loop turns while the test waits: keep its sleeps short
    loop.holds = 1;
    const buffers = new SocketBuffers(OWN_SOCKET);
    const heard: string[] = [];
    const peer = await Bun.udpSocket({ hostname: "127.0.0.1", port: 0, socket: { data: (_s, data) => void heard.push(new TextDecoder().decode(data)) } });
    try {
      for (const round of ["first", "second"]) {
        const got: number[] = [];
        const socket = FfiUdpSocket.open(loop, "127.0.0.1", 0, buffers, (datagram) => got.push(datagram.bytes[3]!));
        expect(socket.buffers).toBe(buffers);
        socket.enqueue(new TextEncoder().encode(round), new SocketName("127.0.0.1", peer.port));
        socket.flush();
        peer.send(new Uint8Array([0, 4, 0, round === "first" ? 1 : 2]), socket.port, "127.0.0.1");
        for (let i = 0; i < 100 && (got.length === 0 || heard.length < (round === "first" ? 1 : 2)); i++) await Bun.sleep(5);
        expect(got).toEqual([round === "first" ? 1 : 2]);
        socket.enqueue(new TextEncoder().encode("unsent"), new SocketName("127.0.0.1", peer.port));
        socket.close(); // flushes what it queued: nothing of this transfer is left to the next
        expect(socket.queuedCount).toBe(0);
      }
      await Bun.sleep(20);
      expect(heard).toEqual(["first", "unsent", "second", "unsent"]);
    } finally {
      peer.close();
      loop.close();
      closeWake(loop.wakeFd);
    }
  });
});

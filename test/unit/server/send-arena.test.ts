/**
 * The send arena: runs of packet buffers handed out front to back, never overlapping within a
 * lap whatever their sizes; before the buffer is handed out again, the datagrams a shared
 * transfer socket still queues from it are sent (else a client would receive bytes written
 * for another packet). Real sockets on loopback: a shared transfer socket and a raw client.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { SendArena } from "../../../src/server/send-arena.ts";
import { SharedTransferSocket } from "../../../src/server/shared-socket.ts";
import type { TransferChannel } from "../../../src/server/transport.ts";
import { RawPeer } from "../../helpers/raw.ts";

const opened: { close(): void }[] = [];
afterEach(() => {
  for (const o of opened.splice(0)) o.close();
});

/** A channel that sends nothing and counts settle() calls. */
function countingChannel(): TransferChannel & { settles: number } {
  return {
    localPort: 0,
    settles: 0,
    send() {},
    sendMany() {},
    settle() {
      this.settles++;
    },
    close() {},
  };
}

function span(run: { packets: readonly Uint8Array[]; first: number }, count: number): [number, number] {
  const first = run.packets[run.first]!;
  const last = run.packets[run.first + count - 1]!;
  return [first.byteOffset, last.byteOffset + last.length];
}

describe("handing out", () => {
  test("runs of one lap never overlap, whatever their packet sizes", () => {
    const arena = new SendArena(64 * 1024);
    const spans: [number, number][] = [];
    // a transfer each, as in a boot storm
    for (const [stride, count] of [[516, 4], [1472, 16], [516, 1], [8196, 3], [1472, 2], [100, 7]] as const) {
      const run = arena.take(stride, count, countingChannel());
      for (let i = 0; i < count; i++) expect(run.packets[run.first + i]!.length).toBe(stride);
      spans.push(span(run, count));
    }
    expect(arena.laps).toBe(0);
    for (let i = 1; i < spans.length; i++) expect(spans[i]![0]).toBeGreaterThanOrEqual(spans[i - 1]![1]);
    expect(spans.at(-1)![1]).toBeLessThanOrEqual(64 * 1024);
  });

  test("a run that does not fit the rest of the lap starts the next one, after settling every channel that took packets", () => {
    const arena = new SendArena(10 * 1000);
    const a = countingChannel();
    const b = countingChannel();
    arena.take(1000, 4, a);
    arena.take(1000, 4, b);
    expect(a.settles + b.settles).toBe(0);
    const run = arena.take(1000, 4, a); // 12 > 10 packets: a new lap
    expect(arena.laps).toBe(1);
    expect(run.first).toBe(0);
    expect([a.settles, b.settles]).toEqual([1, 1]);
    // the next lap settles only who took packets in it
    expect(arena.take(1000, 4, a).first).toBe(4);
    expect(arena.take(1000, 4, a).first).toBe(0);
    expect(arena.laps).toBe(2);
    expect([a.settles, b.settles]).toEqual([2, 1]);
  });

  test("a channel alone walks the whole buffer too: it is settled only when the lap ends", () => {
    const arena = new SendArena(10 * 1000);
    const a = countingChannel();
    expect(arena.take(1000, 3, a).first).toBe(0);
    expect(arena.take(1000, 3, a).first).toBe(3);
    expect(arena.take(1000, 3, a).first).toBe(6);
    expect(a.settles).toBe(0);
    expect(arena.take(1000, 3, a).first).toBe(0);
    expect(a.settles).toBe(1);
  });

  test("a run larger than the arena is refused, not wrapped forever", () => {
    const arena = new SendArena(4096);
    expect(() => arena.take(1472, 3, countingChannel())).toThrow(RangeError);
  });
});

describe("with a shared transfer socket", () => {
  test("datagrams queued from a lap leave before the buffer is written again: each client gets each packet's own bytes", async () => {
    const socket = await SharedTransferSocket.open("127.0.0.1", null, { enabled: true, size: 64 }, { receive: 1 << 20, send: 1 << 20 });
    opened.push(socket);
    const clients = [await RawPeer.open("127.0.0.1"), await RawPeer.open("127.0.0.1")];
    opened.push(...clients);
    const channels = clients.map((c) => socket.attach({ address: "127.0.0.1", port: c.port }, () => {})!);
    const stride = 200;
    const arena = new SendArena(4 * stride);
    // two transfers take turns sending 2 packets, 16 in all through an arena of 4, in one
    // event-loop turn: the shared socket would send them all at its end, long after their
    // buffers were written again
    for (let mark = 0; mark < 16; mark += 2) {
      const channel = channels[(mark / 2) % 2]!;
      const run = arena.take(stride, 2, channel);
      const packets = [run.packets[run.first]!.fill(mark), run.packets[run.first + 1]!.fill(mark + 1)];
      channel.sendMany(packets);
    }
    expect(arena.laps).toBe(3);
    const got = await Promise.all(clients.map((c) => c.collect(500)));
    for (const r of got.flat()) {
      expect(r.bytes.length).toBe(stride);
      expect(r.bytes.every((b) => b === r.bytes[0])).toBe(true);
    }
    expect(got[0]!.map((r) => r.bytes[0])).toEqual([0, 1, 4, 5, 8, 9, 12, 13]);
    expect(got[1]!.map((r) => r.bytes[0])).toEqual([2, 3, 6, 7, 10, 11, 14, 15]);
  });
});

/**
 * The libc UDP sockets of the epoll loop (src/net/udp-ffi.ts, src/net/io-loop.ts), against
 * real Bun sockets on loopback: datagrams in by recvmmsg with the sender's port and address,
 * out by sendmmsg to the names queued, in the order queued; IPv4 and IPv6; a taken port fails
 * with EADDRINUSE as Bun's bind does (the port-range search depends on it); another thread's
 * wake reaches a loop asleep in epoll_wait.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { udp } from "bun";
import { IDLE_WORK_AFTER_MS, type IoLoop, wakeLoop } from "../../../src/net/io-loop.ts";
import { isIPv4 } from "node:net";
import { FfiUdpSocket, MAX_BATCHES_PER_DRAIN, SocketBuffers, SocketName, ipv4Word, ipv6Bytes, type Datagram } from "../../../src/net/udp-ffi.ts";
import { waitFor } from "../../helpers/raw.ts";
import { openTestLoop } from "../../helpers/io-loop.ts";

interface Heard {
  bytes: Uint8Array;
  port: number;
  address: string;
}

const closers: (() => void)[] = [];
afterEach(() => {
  for (const close of closers.splice(0).reverse()) close();
});

function openLoop(): IoLoop {
  return openTestLoop(closers);
}

async function bunPeer(hostname = "127.0.0.1"): Promise<{ socket: udp.Socket<"uint8array">; heard: Heard[] }> {
  const heard: Heard[] = [];
  const socket = await Bun.udpSocket({
    hostname,
    binaryType: "uint8array",
    socket: {
      data(_s, bytes, port, address) {
        heard.push({ bytes: bytes.slice(), port, address });
      },
      // ICMP port unreachable after a send to a closed port
      error() {},
    },
  });
  closers.push(() => socket.close());
  return { socket, heard };
}

const OPTIONS = { receiveBatch: 8, receiveBytes: 2048, sendBatch: 16 };

describe("SocketName", () => {
  test("an IPv4 address: a sockaddr_in and one integer", () => {
    const name = new SocketName("10.1.2.3", 6969);
    expect(name.family).toBe(4);
    expect(name.length).toBe(16);
    expect([...name.bytes.subarray(0, 8)]).toEqual([2, 0, 0x1b, 0x39, 10, 1, 2, 3]);
    expect(name.v4).toBe(0x0a010203);
  });

  test("an IPv6 address: a sockaddr_in6, the IPv4-mapped form and :: compression included", () => {
    const name = new SocketName("::ffff:192.0.2.7", 69);
    expect(name.family).toBe(6);
    expect(name.length).toBe(28);
    expect(name.v4).toBe(-1);
    expect([...name.bytes.subarray(8, 24)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7]);
    expect([...ipv6Bytes("2001:db8::1")]).toEqual([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    expect([...ipv6Bytes("fe80::a:b%eth0")].slice(12)).toEqual([0, 0x0a, 0, 0x0b]);
    expect([...ipv6Bytes("1:2:3:4:5:6:7:8")].filter((_, i) => i % 2 === 1)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  test("not an address: a clear error", () => {
    expect(() => new SocketName("boot.example", 69)).toThrow("not an IP address: boot.example");
    expect(() => new SocketName("10.0.0.256", 69)).toThrow("not an IP address: 10.0.0.256");
  });

  test("a dotted quad is read as isIPv4 judges it", () => {
    const cases = ["1.2.3.4", "127.0.0.1", "255.255.255.255", "0.0.0.0", "256.1.1.1", "01.2.3.4", "10.0.0.010", "1.2.3", "1.2.3.4.5", "1..2.3", "1.2.3.", ".1.2.3", "a.b.c.d", "", "1.2.3.4 ", "::1", "1.2.3.-4"];
    for (const address of cases) expect([address, ipv4Word(address) >= 0]).toEqual([address, isIPv4(address)]);
    expect(ipv4Word("192.168.1.200")).toBe(0xc0a801c8);
  });
});

describe("FfiUdpSocket", () => {
  test("receives with the sender's port and address, and answers in the order queued", async () => {
    const loop = openLoop();
    const got: { bytes: number[]; port: number; v4: number; name: SocketName }[] = [];
    const socket = FfiUdpSocket.open(loop, "127.0.0.1", 0, OPTIONS, (datagram: Datagram, from) => {
      got.push({ bytes: [...datagram.bytes], port: datagram.port, v4: datagram.v4, name: from.toName() });
    });
    closers.push(() => socket.close());
    expect(socket.port).toBeGreaterThan(0);
    const peer = await bunPeer();
    // an ACK (4 bytes: a view of the slot) and a longer datagram (a copy)
    peer.socket.send(new Uint8Array([0, 4, 0, 1]), socket.port, "127.0.0.1");
    peer.socket.send(new Uint8Array([0, 5, 0, 0, 104, 105, 0]), socket.port, "127.0.0.1");
    await waitFor(() => got.length === 2, 2000, "two datagrams");
    expect(got[0]!.bytes).toEqual([0, 4, 0, 1]);
    expect(got[1]!.bytes).toEqual([0, 5, 0, 0, 104, 105, 0]);
    expect(got[0]!.port).toBe(peer.socket.port);
    expect(got[0]!.v4).toBe(0x7f000001);
    expect(got[0]!.name.address).toBe("127.0.0.1");
    expect(got[0]!.name.port).toBe(peer.socket.port);

    const to = new SocketName("127.0.0.1", peer.socket.port);
    for (let i = 0; i < 40; i++) socket.enqueue(new Uint8Array([0, 3, 0, i]), to);
    socket.flush();
    await waitFor(() => peer.heard.length === 40, 2000, "forty datagrams");
    expect(peer.heard.map((h) => h.bytes[3])).toEqual([...Array(40).keys()]);
    expect(peer.heard[0]!.port).toBe(socket.port);
    expect(socket.dropped).toBe(0);
  });

  test("two sockets of one loop on one set of buffers: each sends what it queued from its own port, and hears only its own", async () => {
    const loop = openLoop();
    const buffers = new SocketBuffers(OPTIONS);
    const got: { a: number[]; b: number[] } = { a: [], b: [] };
    const a = FfiUdpSocket.open(loop, "127.0.0.1", 0, buffers, (d) => got.a.push(d.bytes[3]!));
    const b = FfiUdpSocket.open(loop, "127.0.0.1", 0, buffers, (d) => got.b.push(d.bytes[3]!));
    closers.push(() => a.close(), () => b.close());
    const peer = await bunPeer();
    const to = new SocketName("127.0.0.1", peer.socket.port);
    // queued in turns, sent one socket after the other: a queue is its socket's own
    for (let i = 0; i < 6; i++) (i % 2 === 0 ? a : b).enqueue(new Uint8Array([0, 3, 0, i]), to);
    expect(a.queuedCount).toBe(3);
    expect(b.queuedCount).toBe(3);
    a.flush();
    b.flush();
    await waitFor(() => peer.heard.length === 6, 2000, "six datagrams");
    expect(peer.heard.filter((h) => h.port === a.port).map((h) => h.bytes[3])).toEqual([0, 2, 4]);
    expect(peer.heard.filter((h) => h.port === b.port).map((h) => h.bytes[3])).toEqual([1, 3, 5]);
    for (let i = 0; i < 4; i++) peer.socket.send(new Uint8Array([0, 4, 0, 10 + i]), i % 2 === 0 ? a.port : b.port, "127.0.0.1");
    await waitFor(() => got.a.length + got.b.length === 4, 2000, "four ACKs");
    expect(got).toEqual({ a: [10, 12], b: [11, 13] });
  });

  test("a message queued with a segment size leaves cut into datagrams of it (UDP GSO per message), beside whole ones in the same batch", async () => {
    const loop = openLoop();
    const socket = FfiUdpSocket.open(loop, "127.0.0.1", 0, OPTIONS, () => {});
    closers.push(() => socket.close());
    const one = await bunPeer();
    const two = await bunPeer();
    // 3 segments of 100 bytes and a last one of 40, each led by its index; then a whole 250-byte one
    const run = new Uint8Array(340);
    for (let i = 0; i < 4; i++) run.fill(i, i * 100, Math.min(340, i * 100 + 100));
    socket.enqueue(new Uint8Array(250).fill(9), new SocketName("127.0.0.1", two.socket.port));
    socket.enqueue(run, new SocketName("127.0.0.1", one.socket.port), 100);
    socket.enqueue(new Uint8Array(250).fill(8), new SocketName("127.0.0.1", two.socket.port));
    socket.flush();
    await waitFor(() => one.heard.length === 4 && two.heard.length === 2, 2000, "four segments and two whole datagrams");
    expect(one.heard.map((h) => [h.bytes.length, h.bytes[0]])).toEqual([[100, 0], [100, 1], [100, 2], [40, 3]]);
    expect(two.heard.map((h) => [h.bytes.length, h.bytes[0]])).toEqual([[250, 9], [250, 8]]);
    // the second slot, which carried the segment size, sends whole again next time
    socket.enqueue(new Uint8Array(250).fill(6), new SocketName("127.0.0.1", two.socket.port));
    socket.enqueue(new Uint8Array(250).fill(7), new SocketName("127.0.0.1", one.socket.port));
    socket.flush();
    await waitFor(() => one.heard.length >= 5 && two.heard.length === 3, 2000, "whole datagrams from both slots");
    await Bun.sleep(50);
    expect(one.heard.slice(4).map((h) => h.bytes.length)).toEqual([250]);
    expect(socket.dropped).toBe(0);
  });

  test("a datagram queued outside a turn leaves at the loop's next turn", async () => {
    const loop = openLoop();
    const socket = FfiUdpSocket.open(loop, "127.0.0.1", 0, OPTIONS, () => {});
    closers.push(() => socket.close());
    const peer = await bunPeer();
    socket.enqueue(new Uint8Array([1, 2, 3]), new SocketName("127.0.0.1", peer.socket.port));
    expect(socket.queuedCount).toBe(1);
    await waitFor(() => peer.heard.length === 1, 2000, "the queued datagram");
    expect(socket.queuedCount).toBe(0);
  });

  test("IPv6: ::1 both ways", async () => {
    const loop = openLoop();
    const got: Datagram[] = [];
    const socket = FfiUdpSocket.open(loop, "::1", 0, OPTIONS, (datagram, from) => {
      got.push({ ...datagram, bytes: datagram.bytes.slice() });
      socket.enqueue(new Uint8Array([7]), from.toName());
    });
    closers.push(() => socket.close());
    const peer = await bunPeer("::1");
    peer.socket.send(new Uint8Array([0, 4, 0, 9]), socket.port, "::1");
    await waitFor(() => peer.heard.length === 1, 2000, "the answer over IPv6");
    expect(got[0]!.v4).toBe(-1);
    expect(got[0]!.port).toBe(peer.socket.port);
    expect(peer.heard[0]!.bytes).toEqual(new Uint8Array([7]));
  });

  test("a port already bound: EADDRINUSE, as Bun reports it", async () => {
    const loop = openLoop();
    const peer = await bunPeer();
    let error: unknown = null;
    try {
      FfiUdpSocket.open(loop, "127.0.0.1", peer.socket.port, OPTIONS, () => {});
    } catch (e) {
      error = e;
    }
    expect((error as { code?: string }).code).toBe("EADDRINUSE");
    expect((error as Error).message).toContain(`127.0.0.1:${peer.socket.port}`);
  });

  test("a closed socket sends and receives nothing more", async () => {
    const loop = openLoop();
    let got = 0;
    const socket = FfiUdpSocket.open(loop, "127.0.0.1", 0, OPTIONS, () => got++);
    const port = socket.port;
    socket.close();
    const peer = await bunPeer();
    peer.socket.send(new Uint8Array([0, 4, 0, 1]), port, "127.0.0.1");
    socket.enqueue(new Uint8Array([1]), new SocketName("127.0.0.1", peer.socket.port));
    await Bun.sleep(100);
    expect(got).toBe(0);
    expect(peer.heard.length).toBe(0);
  });
});

describe("IoLoop", () => {
  /**
   * A socket taking one datagram per recvmmsg, whose handler works 3 ms on each and queues an
   * answer: `count` datagrams waiting make one long turn (as many as one drain reads). The
   * asking peer is a socket of the same thread, read by hand while the turn runs: returns how
   * many answers it had when each datagram was handled; `between` runs as the handler of the
   * first datagram schedules it (setImmediate), and is given how many were handled by then.
   */
  async function longTurn(batchTimeoutMs: number, count = MAX_BATCHES_PER_DRAIN, between?: (handled: number) => void): Promise<number[]> {
    const loop = openLoop();
    loop.batchTimeoutMs = batchTimeoutMs;
    let answers = 0;
    const seen: number[] = [];
    const peer = FfiUdpSocket.open(loop, "127.0.0.1", 0, OPTIONS, () => answers++);
    closers.push(() => peer.close());
    const socket = FfiUdpSocket.open(loop, "127.0.0.1", 0, { receiveBatch: 1, receiveBytes: 64, sendBatch: 16 }, (datagram, from) => {
      const until = performance.now() + 3;
      while (performance.now() < until) {
        // work on the datagram
      }
      peer.drain();
      seen.push(answers);
      if (seen.length === 1 && between) setImmediate(() => between(seen.length));
      socket.enqueue(new Uint8Array([datagram.bytes[3]!]), from.toName());
    });
    closers.push(() => socket.close());
    const to = new SocketName("127.0.0.1", socket.port);
    for (let i = 0; i < count; i++) peer.enqueue(new Uint8Array([0, 4, 0, i]), to);
    peer.flush();
    await waitFor(() => answers === count, 3000, `${count} answers`);
    return seen;
  }

  test("batch_timeout: in a long turn, answers leave once the oldest has waited that long, not at the turn's end", async () => {
    // 1 ms: each answer leaves after the next datagram's 3 ms of work at the latest
    const quick = await longTurn(1);
    expect(quick.length).toBe(MAX_BATCHES_PER_DRAIN);
    expect(quick[MAX_BATCHES_PER_DRAIN - 1]!).toBeGreaterThanOrEqual(MAX_BATCHES_PER_DRAIN - 2);
    // longer than the turn: nothing left before the turn's end
    expect(await longTurn(1000)).toEqual(Array(MAX_BATCHES_PER_DRAIN).fill(0));
  });

  test("a socket in a flood reads MAX_BATCHES_PER_DRAIN batches, then the thread's other work runs before the rest", async () => {
    let handledBefore = -1;
    const seen = await longTurn(1, MAX_BATCHES_PER_DRAIN + 2, (handled) => (handledBefore = handled));
    expect(seen.length).toBe(MAX_BATCHES_PER_DRAIN + 2);
    // what the first datagram's handler scheduled ran after one drain's worth, not after all
    expect(handledBefore).toBe(MAX_BATCHES_PER_DRAIN);
  });

  test("a socket watched first is drained first in a turn where others are ready too (a listen socket before transfers)", async () => {
    async function order(firstOnLater: boolean): Promise<string[]> {
      const loop = openLoop();
      const handled: string[] = [];
      const earlier = FfiUdpSocket.open(loop, "127.0.0.1", 0, OPTIONS, () => handled.push("earlier"));
      const later = FfiUdpSocket.open(loop, "127.0.0.1", 0, { ...OPTIONS, first: firstOnLater }, () => handled.push("later"));
      const peer = FfiUdpSocket.open(loop, "127.0.0.1", 0, OPTIONS, () => {});
      closers.push(() => earlier.close(), () => later.close(), () => peer.close());
      // both datagrams are waiting before the loop's next turn (this thread runs it)
      peer.enqueue(new Uint8Array([0, 4, 0, 1]), new SocketName("127.0.0.1", earlier.port));
      peer.enqueue(new Uint8Array([0, 4, 0, 2]), new SocketName("127.0.0.1", later.port));
      peer.flush();
      await waitFor(() => handled.length === 2, 2000, "both datagrams");
      return handled;
    }
    expect(await order(false)).toEqual(["earlier", "later"]);
    expect(await order(true)).toEqual(["later", "earlier"]);
  });

  test("onIdle runs a quarter second after the last datagram when nothing runs, and not while transfers run", async () => {
    const loop = openLoop();
    const idleAt: number[] = [];
    loop.onIdle = () => {
      idleAt.push(performance.now());
      // (this test's thread is the loop's: with nothing running its next turn would sleep until a datagram)
      loop.holds = 1;
    };
    let heard = 0;
    const socket = FfiUdpSocket.open(loop, "127.0.0.1", 0, OPTIONS, () => heard++);
    const peer = FfiUdpSocket.open(loop, "127.0.0.1", 0, OPTIONS, () => {});
    closers.push(() => socket.close(), () => peer.close());
    const to = new SocketName("127.0.0.1", socket.port);
    // a transfer running: the loop keeps short sleeps and is never idle
    peer.enqueue(new Uint8Array([0, 4, 0, 1]), to);
    peer.flush();
    await waitFor(() => heard === 1, 2000, "the first datagram");
    await Bun.sleep(IDLE_WORK_AFTER_MS + 150);
    expect(idleAt).toEqual([]);
    // nothing running: IDLE_WORK_AFTER_MS after the last datagram
    loop.holds = 0;
    const sentAt = performance.now();
    peer.enqueue(new Uint8Array([0, 4, 0, 2]), to);
    peer.flush();
    await waitFor(() => idleAt.length === 1, 2000, "the idle work");
    expect(heard).toBe(2);
    expect(idleAt[0]! - sentAt).toBeGreaterThanOrEqual(IDLE_WORK_AFTER_MS - 5);
  });

  test("a loop asleep in epoll_wait in a worker wakes for a message when its wake descriptor is written", async () => {
    const source = `
      import { IoLoop } from ${JSON.stringify(new URL("../../../src/net/io-loop.ts", import.meta.url).pathname)};
      import { FfiUdpSocket } from ${JSON.stringify(new URL("../../../src/net/udp-ffi.ts", import.meta.url).pathname)};
      const loop = IoLoop.open();
      // a socket to watch, and no transfers: the loop sleeps until woken
      FfiUdpSocket.open(loop, "127.0.0.1", 0, { receiveBatch: 1, receiveBytes: 64, sendBatch: 1 }, () => {});
      self.onmessage = (e) => postMessage({ echo: e.data });
      postMessage({ wakeFd: loop.wakeFd });
    `;
    const file = `${process.env.TMPDIR ?? "/tmp"}/io-loop-worker-${process.pid}.ts`;
    await Bun.write(file, source);
    const worker = new Worker(file);
    let wakeFd = -1;
    closers.push(() => {
      // asleep in epoll_wait, it sees the termination once woken
      worker.terminate();
      if (wakeFd >= 0) wakeLoop(wakeFd);
    });
    const messages: { wakeFd?: number; echo?: number }[] = [];
    worker.onmessage = (event) => messages.push(event.data);
    await waitFor(() => messages.length === 1, 5000, "the worker's wake descriptor");
    wakeFd = messages[0]!.wakeFd!;
    // give it time to fall asleep; unwoken, the message would wait for a datagram that never comes
    await Bun.sleep(100);
    worker.postMessage(1);
    await Bun.sleep(300);
    expect(messages.length).toBe(1);
    wakeLoop(wakeFd);
    await waitFor(() => messages.length === 2, 2000, "the echo after the wake");
    expect(messages[1]!.echo).toBe(1);
  });
});

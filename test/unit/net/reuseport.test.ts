/**
 * Steering by source address (src/net/reuseport.ts), with real sockets on loopback: a
 * Bun.udpSocket bound first (as the main thread's listener is) joins a group after its bind,
 * two libc sockets join it, and the program sends each source address to one of the two by its
 * last bits, never to the first socket nor to a socket that joined later; with the steered
 * sockets gone, the first hears all.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { udp } from "bun";
import type { IoLoop } from "../../../src/net/io-loop.ts";
import { FfiUdpSocket } from "../../../src/net/udp-ffi.ts";
import { setReusePort, steerBySource, steeringProgram } from "../../../src/net/reuseport.ts";
import { socketFd } from "../../../src/net/sockopt.ts";
import { waitFor } from "../../helpers/raw.ts";
import { openTestLoop } from "../../helpers/io-loop.ts";

const closers: (() => void)[] = [];
afterEach(() => {
  for (const close of closers.splice(0).reverse()) close();
});

function openLoop(): IoLoop {
  return openTestLoop(closers);
}

async function bunSocket(hostname: string, port = 0, heard: number[] = []): Promise<udp.Socket<"uint8array">> {
  const socket = await Bun.udpSocket({
    hostname,
    port,
    binaryType: "uint8array",
    socket: {
      data(_s, bytes) {
        heard.push(bytes[0]!);
      },
      error() {},
    },
  });
  closers.push(() => socket.close());
  return socket;
}

/** Sends one datagram from each of 127.0.0.<last> to 127.0.0.1:port, its first byte <last>. */
async function sendFrom(lasts: number[], port: number): Promise<void> {
  for (const last of lasts) {
    const sender = await bunSocket(`127.0.0.${last}`);
    sender.send(new Uint8Array([last]), port, "127.0.0.1");
  }
}

describe("steeringProgram", () => {
  test("loads the source address's last word relative to the network header, then mod, add, return", () => {
    const v4 = new DataView(steeringProgram(4, 1, 3).buffer);
    expect(v4.byteLength).toBe(32);
    expect([v4.getUint16(0, true), v4.getUint32(4, true)]).toEqual([0x20, 0xfff0000c]);
    expect([v4.getUint16(8, true), v4.getUint32(12, true)]).toEqual([0x94, 3]);
    expect([v4.getUint16(16, true), v4.getUint32(20, true)]).toEqual([0x04, 1]);
    expect(v4.getUint16(24, true)).toBe(0x16);
    expect(new DataView(steeringProgram(6, 1, 3).buffer).getUint32(4, true)).toBe(0xfff00014);
    expect(() => steeringProgram(4, 1, 0)).toThrow("at least one socket");
  });
});

describe("a group steered by source address", () => {
  test("each source reaches the steered socket its address picks, the first socket none; gone, the first hears all", async () => {
    const firstHeard: number[] = [];
    const first = await bunSocket("127.0.0.1", 0, firstHeard);
    const fd = socketFd(first);
    if (fd === null) throw new Error("no descriptor on a Bun socket");
    expect(setReusePort(fd)).toBe(true);
    const loop = openLoop();
    const heard: number[][] = [[], []];
    const steered = [0, 1].map((i) =>
      FfiUdpSocket.open(loop, "127.0.0.1", first.port, { receiveBatch: 8, receiveBytes: 64, sendBatch: 1 }, (d) => heard[i]!.push(d.bytes[0]!), true),
    );
    expect(steerBySource(steered[0]!.fd, 4, 1, 2)).toBeNull();

    const lasts = [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];
    await sendFrom(lasts, first.port);
    await waitFor(() => heard[0]!.length + heard[1]!.length === lasts.length, 2000);
    // index 1 + (address mod 2): even last bytes to the first steered socket, odd to the second
    expect(heard[0]!.sort((a, b) => a - b)).toEqual(lasts.filter((n) => n % 2 === 0));
    expect(heard[1]!.sort((a, b) => a - b)).toEqual(lasts.filter((n) => n % 2 === 1));
    expect(firstHeard).toEqual([]);

    // a newcomer may join, but the program never names it
    const newcomerHeard: number[] = [];
    const newcomer = FfiUdpSocket.open(loop, "127.0.0.1", first.port, { receiveBatch: 8, receiveBytes: 64, sendBatch: 1 }, (d) => newcomerHeard.push(d.bytes[0]!), true);
    heard[0]!.length = 0;
    heard[1]!.length = 0;
    await sendFrom([30, 31, 32, 33], first.port);
    await waitFor(() => heard[0]!.length + heard[1]!.length === 4, 2000);
    expect([heard[0], heard[1], newcomerHeard]).toEqual([[30, 32], [31, 33], []]);

    newcomer.close();
    for (const socket of steered) socket.close();
    await sendFrom([20, 21, 22], first.port);
    await waitFor(() => firstHeard.length === 3, 2000);
    expect(firstHeard.sort((a, b) => a - b)).toEqual([20, 21, 22]);
  });

  test("a socket that did not ask for SO_REUSEPORT cannot join", async () => {
    const first = await bunSocket("127.0.0.1");
    const loop = openLoop();
    expect(() => FfiUdpSocket.open(loop, "127.0.0.1", first.port, { receiveBatch: 8, receiveBytes: 64, sendBatch: 1 }, () => {}, true)).toThrow();
  });
});

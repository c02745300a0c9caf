/**
 * UDP GSO for windows (network.zero_copy): a windowed transfer's own socket cuts one send of
 * packets laid end to end into datagrams of the transfer's packet size. What the client gets
 * must be exactly the datagrams it would get from one send per block.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { encodeAck, encodeData, encodeOack } from "../../../src/protocol/codec.ts";
import { Opcode } from "../../../src/protocol/packet.ts";
import { GSO_MAX_BYTES, GSO_MAX_SEGMENTS } from "../../../src/net/sockopt.ts";
import { contiguousRun, openTransferChannel, probeGso } from "../../../src/server/transport.ts";
import { patternBytes } from "../../helpers/files.ts";
import { peerTracker } from "../../helpers/raw.ts";

const peers = peerTracker();
const closers: { close(): void }[] = [];
afterEach(() => {
  for (const c of closers.splice(0)) c.close();
  peers.closeAll();
});

/** `count` DATA packets of `blksize` laid end to end in one buffer, as SendArena lays a run; the last `lastBytes` long. */
function window(blksize: number, count: number, lastBytes = blksize): Uint8Array[] {
  const stride = blksize + 4;
  const buffer = new Uint8Array(stride * count + 64);
  const packets: Uint8Array[] = [];
  for (let i = 0; i < count; i++) {
    const size = i === count - 1 ? lastBytes : blksize;
    const packet = encodeData(i + 1, patternBytes(size, i + 1));
    buffer.set(packet, i * stride);
    packets.push(buffer.subarray(i * stride, i * stride + packet.length));
  }
  return packets;
}

describe("contiguousRun", () => {
  test("packets end to end, the last shorter: one view over all of them", () => {
    const packets = window(512, 5, 100);
    const run = contiguousRun(packets, 516)!;
    expect(run.byteOffset).toBe(packets[0]!.byteOffset);
    expect(run.length).toBe(4 * 516 + 104);
    expect(run.buffer).toBe(packets[0]!.buffer);
  });

  test("a gap, a short packet before the last, another buffer, or a last packet longer than the segment: null", () => {
    const packets = window(512, 4);
    expect(contiguousRun([packets[0]!, packets[2]!], 516)).toBeNull();
    expect(contiguousRun([packets[0]!.subarray(0, 100), packets[1]!], 516)).toBeNull();
    expect(contiguousRun([packets[0]!, packets[1]!.slice()], 516)).toBeNull();
    expect(contiguousRun(packets, 512)).toBeNull();
  });

  test("more than one GSO send may carry: null", () => {
    const stride = 1472;
    const tooMany = window(stride - 4, GSO_MAX_SEGMENTS + 1);
    expect(contiguousRun(tooMany, stride)).toBeNull();
    const big = window(8192, Math.ceil(GSO_MAX_BYTES / 8196) + 1);
    expect(contiguousRun(big, 8196)).toBeNull();
    expect(contiguousRun(big.slice(0, 7), 8196)).not.toBeNull();
  });
});

describe("a windowed transfer's channel", () => {
  test("with GSO: a window sent at once reaches the client as one datagram per block, bytes and order intact", async () => {
    expect(await probeGso("127.0.0.1")).toBeNull();
    const client = await peers.open();
    const channel = await openTransferChannel("127.0.0.1", { address: "127.0.0.1", port: client.port }, null, () => {}, 0, 1472);
    closers.push(channel);
    expect(channel.segmented).toBe(true);
    const packets = window(1468, 16, 300);
    channel.sendMany(packets);
    const got = await client.collect(300);
    expect(got.map((r) => r.bytes)).toEqual(packets.map((p) => p.slice()));
  });

  test("an OACK or ERROR longer than a segment (blksize 8: 12 bytes) still leaves as one datagram, to the client and to a stranger", async () => {
    const client = await peers.open();
    const stranger = await peers.open();
    const channel = await openTransferChannel("127.0.0.1", { address: "127.0.0.1", port: client.port }, null, () => {}, 0, 12);
    closers.push(channel);
    expect(channel.segmented).toBe(true);
    const oack = encodeOack([["blksize", "8"], ["windowsize", "16"]]);
    channel.send(oack);
    expect((await client.next()).bytes).toEqual(oack);
    stranger.send(encodeAck(1), channel.localPort);
    const reply = await stranger.next();
    expect(reply.packet?.op).toBe(Opcode.ERROR);
    // and the window after it is cut into 12-byte DATA packets again
    const packets = window(8, 4);
    channel.sendMany(packets);
    expect((await client.collect(300)).map((r) => r.bytes)).toEqual(packets.map((p) => p.slice()));
  });

  test("a batch that is not laid end to end still leaves block by block", async () => {
    const client = await peers.open();
    const channel = await openTransferChannel("127.0.0.1", { address: "127.0.0.1", port: client.port }, null, () => {}, 0, 516);
    closers.push(channel);
    const packets = window(512, 3).map((p) => p.slice());
    channel.sendMany(packets);
    const got = await client.collect(300);
    expect(got.map((r) => r.bytes)).toEqual(packets);
  });

  test("without GSO (lock-step, or network.zero_copy off) the socket has none", async () => {
    const client = await peers.open();
    const channel = await openTransferChannel("127.0.0.1", { address: "127.0.0.1", port: client.port }, null, () => {});
    closers.push(channel);
    expect(channel.segmented).toBe(false);
    const packets = window(512, 4);
    channel.sendMany(packets);
    expect((await client.collect(300)).map((r) => r.bytes)).toEqual(packets.map((p) => p.slice()));
  });
});

import { afterEach, describe, expect, test } from "bun:test";
import { LossPlan } from "../../../src/server/loss.ts";
import { openListener, openTransferChannel } from "../../../src/server/transport.ts";
import { encodeAck, encodeData } from "../../../src/protocol/codec.ts";
import { ErrorCode } from "../../../src/protocol/packet.ts";
import { peerTracker, rrq, waitFor } from "../../helpers/raw.ts";

const ack = encodeAck(7);
const data = encodeData(3, new Uint8Array(10));

test("counted rules drop exactly their count", () => {
  const plan = LossPlan.parse("in:ack:7*2");
  expect([1, 2, 3].map(() => plan.shouldDrop("in", ack))).toEqual([true, true, false]);
  expect(plan.shouldDrop("out", ack)).toBe(false);
});

test("a PERCENT rule drops about that share of any datagram, the same ones for the same seed", () => {
  const drops = (spec: string): boolean[] => {
    const plan = LossPlan.parse(spec);
    return Array.from({ length: 10_000 }, (_, i) => plan.shouldDrop(i % 2 ? "in" : "out", i % 3 ? ack : data));
  };
  const a = drops("in:any%20,out:any%20,seed=5");
  const share = a.filter(Boolean).length / a.length;
  expect(share).toBeGreaterThan(0.18);
  expect(share).toBeLessThan(0.22);
  expect(drops("in:any%20,out:any%20,seed=5")).toEqual(a);
  expect(drops("in:any%20,out:any%20,seed=6")).not.toEqual(a);
  // only the direction named
  const inOnly = LossPlan.parse("in:data%100");
  expect(inOnly.shouldDrop("in", data)).toBe(true);
  expect(inOnly.shouldDrop("out", data)).toBe(false);
  expect(inOnly.shouldDrop("in", ack)).toBe(false);
});

test("bad specs are refused with the rule named", () => {
  for (const spec of ["in:any%0", "in:any%101", "in:any%", "in:ack%5*2", "seed=0", "seed=x", "up:any%5", "in:bogus%5"]) {
    expect(() => LossPlan.parse(spec)).toThrow(/TFTPD_TEST_DROP/);
  }
});

describe("applied where sockets open", () => {
  const peers = peerTracker();
  const closers: { close(): void }[] = [];
  afterEach(() => {
    for (const c of closers.splice(0)) c.close();
    peers.closeAll();
  });

  async function lossyChannel(spec: string, received: Uint8Array[]) {
    const plan = LossPlan.parse(spec);
    const client = await peers.open();
    const stranger = await peers.open();
    const inner = await openTransferChannel("127.0.0.1", { address: "127.0.0.1", port: client.port }, null, plan.incoming((b: Uint8Array) => received.push(b.slice())));
    const channel = plan.outgoing(inner);
    closers.push(channel);
    return { plan, client, stranger, channel };
  }

  test("a channel loses the datagrams its plan picks, sent alone or in a batch, and only as many as the rule counts", async () => {
    const { client, channel } = await lossyChannel("out:data:2*2", []);
    channel.sendMany([encodeData(1, new Uint8Array(4)), encodeData(2, new Uint8Array(4)), encodeData(3, new Uint8Array(4))]);
    channel.send(encodeData(2, new Uint8Array(4)));
    channel.send(encodeData(2, new Uint8Array(4)));
    const got = await client.collect(300);
    expect(got.map((r) => (r.packet?.op === 3 ? r.packet.block : -1))).toEqual([1, 3, 2]);
  });

  test("a closed channel's sends use up no rule", async () => {
    const { plan, client, channel } = await lossyChannel("out:ack", []);
    channel.close();
    channel.send(ack);
    await client.expectNothing(100);
    expect(plan.shouldDrop("out", ack)).toBe(true);
  });

  test("the client's datagrams are lost as the plan says; a stranger's still get ERROR 5 and use up nothing", async () => {
    const received: Uint8Array[] = [];
    const { plan, client, stranger, channel } = await lossyChannel("in:ack*2", received);
    stranger.send(ack, channel.localPort);
    await stranger.nextError(ErrorCode.UNKNOWN_TID);
    for (let i = 0; i < 3; i++) client.send(ack, channel.localPort);
    await waitFor(() => received.length === 1, 1000, "the third ACK");
    await Bun.sleep(50);
    expect(received).toEqual([ack]);
    expect(plan.shouldDrop("in", ack)).toBe(false);
  });

  test("a listener loses the requests its plan picks before they are handled", async () => {
    const seen: string[] = [];
    const listener = await openListener("127.0.0.1", 0, (_l, bytes) => seen.push(new TextDecoder().decode(bytes.subarray(2, 7))), { receive: 0, send: 0 }, LossPlan.parse("in:rrq"));
    closers.push(listener);
    const client = await peers.open();
    client.send(rrq("first", "octet"), listener.port);
    client.send(rrq("again", "octet"), listener.port);
    await waitFor(() => seen.length === 1, 1000, "the second request");
    await Bun.sleep(50);
    expect(seen).toEqual(["again"]);
  });
});

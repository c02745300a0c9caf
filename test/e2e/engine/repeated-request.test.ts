/**
 * A request that comes again from the port of a client whose transfer runs. It used to end the
 * running transfer silently once the transfer was older than one timeout and start a new one,
 * often on another worker's shared socket: the client, still ACKing the old port, was told its
 * transfer ID was unknown (ERROR 5). Now the engine that runs the transfer decides: answered
 * again (the client never got our first packet), ignored (the transfer is alive), or
 * superseded (the client went silent and asks anew; see port-reuse.test.ts).
 */
import { afterAll, afterEach, beforeAll, expect, test } from "bun:test";
import { Opcode } from "../../../src/protocol/packet.ts";
import { LossPlan } from "../../../src/server/loss.ts";
import type { ServerOptions } from "../../../src/server/server.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { ack, concat, describeReceived, peerTracker, recordWhere, rrq, type RawPeer } from "../../helpers/raw.ts";
import { startServer, type InProcessServer } from "../../helpers/server.ts";

const peers = peerTracker();
const servers: InProcessServer[] = [];
afterEach(async () => {
  peers.closeAll();
  for (const s of servers.splice(0)) await s.stop();
});

const BIG = patternBytes(512 * 40 + 100, 3);
const SMALL = patternBytes(700, 4);
let root: string;
beforeAll(() => {
  root = tempDir();
  writeFile(root, "big.bin", BIG);
  writeFile(root, "small.bin", SMALL);
});
afterAll(() => removeDir(root));

const modes: Partial<ServerOptions>[] = [
  { workers: 1, transferSockets: "shared" },
  { workers: 1, transferSockets: "per-transfer" },
  { workers: 2, transferSockets: "shared" },
];

async function serve(options: Partial<ServerOptions>): Promise<InProcessServer> {
  const server = await startServer(root, options);
  servers.push(server);
  return server;
}

/**
 * Plays a lock-step download of big.bin; after `before(block)` resolves for a block the client
 * ACKs it. Every datagram must come from the transfer's port and be the DATA expected.
 */
async function lockStep(peer: RawPeer, port: number, before: (block: number) => Promise<void>): Promise<Uint8Array> {
  peer.send(rrq("big.bin"), port, "127.0.0.1");
  const chunks: Uint8Array[] = [];
  let tid = 0;
  for (let block = 1; ; block++) {
    const got = await peer.next(2000);
    if (got.packet?.op !== Opcode.DATA || got.packet.block !== block) throw new Error(`expected DATA ${block}, got ${describeReceived(got)}`);
    if (tid === 0) tid = got.port;
    expect(got.port).toBe(tid);
    chunks.push(got.packet.data);
    await before(block);
    peer.send(ack(block), tid, "127.0.0.1");
    if (got.packet.data.length < 512) return concat(chunks);
  }
}

for (const mode of modes) {
  const label = `workers ${mode.workers}, ${mode.transferSockets}`;

  test(`${label}: the same request again while the transfer progresses is ignored, not a new transfer (no ERROR 5)`, async () => {
    const server = await serve({ ...mode, timeoutMs: 150, retries: 5 });
    const peer = await peers.open();
    const started = performance.now();
    let repeated = false;
    const bytes = await lockStep(peer, server.port, async (block) => {
      await Bun.sleep(10);
      // well past one timeout since the transfer began, while it keeps moving
      if (!repeated && performance.now() - started > 300) {
        repeated = true;
        peer.send(rrq("big.bin"), server.port, "127.0.0.1");
        await Bun.sleep(20);
      }
      expect(block).toBeGreaterThan(0);
    });
    expect(repeated).toBe(true);
    expect(sha256(bytes)).toBe(sha256(BIG));
    const record = await recordWhere(server, (r) => r.client.endsWith(`:${peer.port}`));
    expect(record.result).toBe("ok");
    expect(record.strays).toEqual({ "duplicate-request": 1 });
    await peer.expectNothing(200);
    expect(server.records).toHaveLength(1);
  });

  test(`${label}: a request sent again because the first answer was lost gets that answer again, at once`, async () => {
    // the first OACK is lost; the server's own timer would resend it only after 2 s
    const server = await serve({ ...mode, timeoutMs: 2000, loss: LossPlan.parse("out:oack") });
    const peer = await peers.open();
    const request = rrq("small.bin", "octet", [["blksize", "600"]]);
    peer.send(request, server.port, "127.0.0.1");
    await peer.expectNothing(300);
    const resentAt = performance.now();
    peer.send(request, server.port, "127.0.0.1");
    const oack = await peer.nextOack(1000);
    expect(oack.at - resentAt).toBeLessThan(200);
    peer.send(ack(0), oack.port, "127.0.0.1");
    const d1 = await peer.nextData(1);
    expect(d1.port).toBe(oack.port);
    peer.send(ack(1), oack.port, "127.0.0.1");
    const d2 = await peer.nextData(2);
    peer.send(ack(2), oack.port, "127.0.0.1");
    expect(sha256(concat([d1.packet.data, d2.packet.data]))).toBe(sha256(SMALL));
    const record = await recordWhere(server, (r) => r.client.endsWith(`:${peer.port}`));
    expect(record.result).toBe("ok");
    expect(record.retransmits).toBe(1);
    expect(server.records).toHaveLength(1);
  });
}

test("a different request before the client ever answered: the old transfer is superseded, the new one served", async () => {
  const server = await serve({ timeoutMs: 2000 });
  const peer = await peers.open();
  peer.send(rrq("big.bin"), server.port, "127.0.0.1");
  await peer.nextData(1);
  peer.send(rrq("small.bin"), server.port, "127.0.0.1");
  const d1 = await peer.nextData(1);
  expect(d1.packet.data).toEqual(SMALL.subarray(0, 512));
  peer.send(ack(1), d1.port, "127.0.0.1");
  const d2 = await peer.nextData(2);
  peer.send(ack(2), d1.port, "127.0.0.1");
  expect(d2.packet.data).toEqual(SMALL.subarray(512));
  const old = await recordWhere(server, (r) => r.file === "big.bin");
  expect(old.result).toBe("superseded");
  expect((await recordWhere(server, (r) => r.file === "small.bin")).result).toBe("ok");
});

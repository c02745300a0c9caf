/** connection_pool deadlines: connection_timeout, idle_timeout and max_lifetime end transfers. */
import { afterAll, afterEach, beforeAll, expect, test } from "bun:test";
import { patternBytes, removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { ack, peerTracker, rrq } from "../../helpers/raw.ts";
import { startServer, type InProcessServer } from "../../helpers/server.ts";

let root: string;
let server: InProcessServer;
const peers = peerTracker();

beforeAll(async () => {
  root = tempDir();
  writeFile(root, "f.bin", patternBytes(512 * 100, 5));
  // Retransmission alone would keep these transfers alive for a long time.
  server = await startServer(root, {
    timeoutMs: 5000,
    retries: 20,
    lifetimes: { connectionTimeoutMs: 800, idleTimeoutMs: 60_000, maxLifetimeMs: 1500 },
  });
});
afterEach(() => peers.closeAll());
afterAll(async () => {
  await server.stop();
  removeDir(root);
});

test("connection_timeout: a client that never answers the OACK is dropped, without an ERROR (it may never have asked)", async () => {
  const peer = await peers.open();
  peer.send(rrq("f.bin", "octet", [["blksize", "512"]]), server.port);
  await peer.nextOack();
  const started = performance.now();
  const record = await waitRecord(peer.port, 4000);
  expect(performance.now() - started).toBeLessThan(3500);
  expect(record.result).toBe("timeout");
  expect(record.error).toBeUndefined();
  await peer.expectNothing(200);
  expect(server.server.activeTransfers).toBe(0);
});

test("max_lifetime: a transfer that crawls is ended when it outlives the limit", async () => {
  const peer = await peers.open();
  peer.send(rrq("f.bin"), server.port);
  const started = performance.now();
  let block = 1;
  for (;;) {
    const got = await peer.next(4000);
    if (got.packet?.op === 5) {
      expect(got.packet.message).toContain("maximum lifetime");
      break;
    }
    await Bun.sleep(100); // a slow client: one block every 100 ms
    peer.send(ack(block++), got.port, got.address);
  }
  const elapsed = performance.now() - started;
  expect(elapsed).toBeGreaterThan(1400);
  expect(elapsed).toBeLessThan(4000);
  expect((await waitRecord(peer.port)).result).toBe("timeout");
});

async function waitRecord(clientPort: number, timeoutMs = 2000) {
  for (let i = 0; i < timeoutMs / 20; i++) {
    const hit = server.records.find((r) => r.client.endsWith(`:${clientPort}`));
    if (hit) return hit;
    await Bun.sleep(20);
  }
  throw new Error(`no record for client port ${clientPort}`);
}

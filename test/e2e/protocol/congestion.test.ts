/**
 * Retransmission that adapts to the path: the timeout follows measured round trips (RFC 6298
 * style) when the client fixed none, and a windowed sender paces its windows after a loss
 * (RFC 7440 §6 asks for congestion control).
 */
import { afterAll, afterEach, beforeAll, expect, test } from "bun:test";
import { RTO_MIN_MS } from "../../../src/server/transfer.ts";
import { patternBytes, removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { ack, peerTracker, rrq } from "../../helpers/raw.ts";
import { recordAfter, startServer, type InProcessServer } from "../../helpers/server.ts";

let root: string;
let server: InProcessServer;
const peers = peerTracker();

beforeAll(async () => {
  root = tempDir();
  writeFile(root, "f.bin", patternBytes(512 * 200, 3));
  // A configured timeout far above what the loopback round trip calls for.
  server = await startServer(root, { timeoutMs: 1500, retries: 3 });
});
afterEach(() => peers.closeAll());
afterAll(async () => {
  await server.stop();
  removeDir(root);
});

test("after quick round trips a lost ACK is answered after about RTO_MIN, not the configured 1.5 s", async () => {
  const peer = await peers.open();
  peer.send(rrq("f.bin"), server.port);
  for (let block = 1; block <= 30; block++) {
    const got = await peer.nextData(block);
    if (block < 30) peer.send(ack(block), got.port, got.address);
  }
  // ACK 30 is "lost": the server must resend DATA 30 on its own.
  const silentSince = performance.now();
  const again = await peer.nextData(30, 3000);
  const waited = again.at - silentSince;
  expect(waited).toBeGreaterThanOrEqual(RTO_MIN_MS - 20);
  expect(waited).toBeLessThan(1000);
});

test("a client that fixed the timeout keeps it: no estimate overrides RFC 2349", async () => {
  const peer = await peers.open();
  peer.send(rrq("f.bin", "octet", [["timeout", "1"]]), server.port);
  const oack = await peer.nextOack();
  peer.send(ack(0), oack.port, oack.address);
  for (let block = 1; block <= 10; block++) {
    const got = await peer.nextData(block);
    if (block < 10) peer.send(ack(block), got.port, got.address);
  }
  const silentSince = performance.now();
  const again = await peer.nextData(10, 3000);
  expect(again.at - silentSince).toBeGreaterThanOrEqual(950);
});

test("after a loss inside a window, the next windows are paced; the transfer still completes", async () => {
  const peer = await peers.open();
  peer.send(rrq("f.bin", "octet", [["windowsize", "8"]]), server.port);
  const oack = await peer.nextOack();
  const tid = { port: oack.port, address: oack.address };
  peer.send(ack(0), tid.port, tid.address);
  // Window 1..8 arrives; pretend 5..8 were lost: ACK 4 (a rewind).
  for (let b = 1; b <= 8; b++) await peer.nextData(b);
  const ackedAt = performance.now();
  peer.send(ack(4), tid.port, tid.address);
  const resumed = await peer.nextData(5);
  // The rewound window waits at least the 1 ms pacing step before leaving.
  expect(resumed.at - ackedAt).toBeGreaterThanOrEqual(0.9);
  // Finish the transfer as a good client would and check nothing is missing.
  let expected = 6;
  let inWindow = 1;
  let received = 4 + 1;
  for (;;) {
    const got = await peer.nextData(expected & 0xffff);
    received++;
    const last = got.packet.data.length < 512;
    if (last || ++inWindow >= 8) {
      peer.send(ack(expected & 0xffff), tid.port, tid.address);
      inWindow = 0;
    }
    expected++;
    if (last) break;
  }
  expect(received).toBe(201); // 200 full blocks and the empty final one
  // this transfer's record: every byte acknowledged (a transfer of an earlier test whose client
  // had the same port number, superseded by this request, has a record of the same client)
  const record = await recordAfter(server, 0, (r) => r.client.endsWith(`:${peer.port}`) && r.bytes === 512 * 200, 3000);
  expect(record.result).toBe("ok");
});

test("a short timeout learned from quick round trips does not make the server give up on a client sooner", async () => {
  // timeout 500 ms, 3 retries: the configured schedule gives up after 4 × 500 ms of silence.
  const slow = await startServer(root, { timeoutMs: 500, retries: 3 });
  try {
    const peer = await peers.open();
    peer.send(rrq("f.bin"), slow.port);
    for (let block = 1; block <= 20; block++) {
      const got = await peer.nextData(block);
      if (block < 20) peer.send(ack(block), got.port, got.address);
    }
    // Silent for 1.8 s: with the learned 200 ms timeout (backing off to 400, then the 500 ms
    // ceiling) the 3rd retry is spent by ~1.1 s and the 4th expiry comes at ~1.6 s, which alone
    // must not end the transfer.
    await Bun.sleep(1800);
    const again = await peer.collect(10);
    const last = again.at(-1) ?? (await peer.nextData(20, 2000));
    expect(last.packet?.op).toBe(3);
    peer.send(ack(20), last.port, last.address);
    const next = await peer.nextData(21, 2000);
    expect(next.packet.data.length).toBe(512);
  } finally {
    await slow.stop();
  }
});

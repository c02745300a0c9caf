/**
 * How soon a transfer starts (TransferEngine.begin): on a shared port already open it runs in
 * the very task that asked for it, so a request read in a batch of many is answered with that
 * batch's sends; so does one whose socket the epoll loop opens (plain system calls); one of
 * Bun's sockets still to be opened is waited for. Real sockets on loopback, raw clients.
 */
import { afterEach, expect, test } from "bun:test";
import { TransferEngine, type EngineOptions, type TransferJob } from "../../../src/server/engine.ts";
import { ffiTransferSockets } from "../../../src/server/ffi-transport.ts";
import { openTestLoop } from "../../helpers/io-loop.ts";
import type { TransferOutcome } from "../../../src/server/transfer.ts";
import { memorySource } from "../../../src/storage/source.ts";
import { patternBytes } from "../../helpers/files.ts";
import { ack, peerTracker, type RawPeer } from "../../helpers/raw.ts";

const peers = peerTracker();
const engines: TransferEngine[] = [];
const closers: (() => void)[] = [];
afterEach(async () => {
  for (const engine of engines.splice(0)) await engine.stop();
  for (const close of closers.splice(0).reverse()) close();
  peers.closeAll();
});

const BATCH = { size: 64, enabled: true };

/** An engine on Bun's sockets, or (`epoll`) on those of an epoll loop of this thread. */
function engine(transferSockets: EngineOptions["transferSockets"], epoll = false): { engine: TransferEngine; ends: Map<number, TransferOutcome> } {
  const ends = new Map<number, TransferOutcome>();
  const made = new TransferEngine(
    {
      portRange: null,
      transferSockets,
      batch: BATCH,
      gso: false,
      receiveBufferBytes: 0,
      sendBufferBytes: 0,
      lifetimes: { connectionTimeoutMs: 30_000, idleTimeoutMs: 300_000, maxLifetimeMs: 3_600_000 },
      unverifiedPerSource: 16,
    },
    null,
    (id, outcome) => ends.set(id, outcome),
    epoll ? ffiTransferSockets(openTestLoop(closers), BATCH) : undefined,
  );
  engines.push(made);
  return { engine: made, ends };
}

function job(id: number, port: number): TransferJob {
  return {
    id,
    peer: { address: "127.0.0.1", port },
    localAddress: "127.0.0.1",
    blksize: 512,
    windowsize: 1,
    oack: null,
    retransmit: { timeoutMs: 1000, fixed: false, retries: 3 },
    receivedAtEpoch: performance.timeOrigin + performance.now(),
  };
}

/** Takes a 700-byte file's two blocks (one ACKed before the next comes) and ACKs the last. */
async function downloadTwoBlocks(client: RawPeer): Promise<void> {
  const one = await client.nextData(1);
  client.send(ack(1), one.port, one.address);
  const two = await client.nextData(2);
  expect(two.packet.data.length).toBe(700 - 512);
  client.send(ack(2), two.port, two.address);
}

test("a shared port open already: the transfer runs before startRead returns; the first one waited for the port", async () => {
  const { engine: shared, ends } = engine("shared");
  const bytes = patternBytes(700, 4);
  const first = await peers.open();
  const opening = shared.startRead(job(1, first.port), memorySource(bytes));
  // the shared port is opened for the first transfer: it runs once that is done
  expect(shared.active).toBe(0);
  await opening;
  expect(shared.active).toBe(1);
  const second = await peers.open();
  void shared.startRead(job(2, second.port), memorySource(bytes));
  expect(shared.active).toBe(2);
  // both are real transfers on the one port, served to the end
  for (const client of [first, second]) await downloadTwoBlocks(client);
  await Bun.sleep(50);
  expect([ends.get(1)?.result, ends.get(2)?.result]).toEqual(["ok", "ok"]);
});

test("a socket per transfer: each transfer waits for its own socket to open", async () => {
  const { engine: own } = engine("per-transfer");
  const client = await peers.open();
  await own.startRead(job(1, client.port), memorySource(patternBytes(100, 1)));
  const other = await peers.open();
  const opening = own.startRead(job(2, other.port), memorySource(patternBytes(100, 2)));
  expect(own.active).toBe(1);
  await opening;
  expect(own.active).toBe(2);
  expect((await other.nextData(1)).packet.data.length).toBe(100);
});

test("the epoll loop's sockets open in the task that asks: a new shared port, a window pool port, a socket per transfer", async () => {
  const bytes = patternBytes(700, 5);
  const { engine: shared, ends } = engine("shared", true);
  const lockStep = await peers.open();
  void shared.startRead(job(1, lockStep.port), memorySource(bytes));
  expect(shared.active).toBe(1);
  const windowed = await peers.open();
  void shared.startRead({ ...job(2, windowed.port), windowsize: 4 }, memorySource(bytes));
  expect(shared.active).toBe(2);
  const { engine: own, ends: ownEnds } = engine("per-transfer", true);
  const alone = await peers.open();
  void own.startRead(job(3, alone.port), memorySource(bytes));
  expect(own.active).toBe(1);
  // real transfers, served to the end (one packet per request until the client answers: read-transfer.ts)
  for (const client of [lockStep, windowed, alone]) await downloadTwoBlocks(client);
  await Bun.sleep(50);
  expect([ends.get(1)?.result, ends.get(2)?.result, ownEnds.get(3)?.result]).toEqual(["ok", "ok", "ok"]);
});

/**
 * Admission limits through the real in-process server on loopback (workers: 1): a request over
 * maxPerIp, maxTotal or maxPerClient is answered ERROR 0 "busy: … limit reached" with onLimit
 * "busy" and gets no reply at all with "drop"; a retry after a slot frees is served. Slots come
 * back however a transfer ends — completion, give-up, a client ERROR, a tsize probe — and when
 * a request is refused after it was admitted (missing file, uploads off): none may leak.
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { Opcode } from "../../../src/protocol/packet.ts";
import type { ServerOptions } from "../../../src/server/server.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import {
  ack,
  concat,
  describeReceived,
  download,
  error,
  peerTracker,
  recordWhere,
  rrq,
  waitFor,
  within,
  wrq,
  type RawPeer,
} from "../../helpers/raw.ts";
import { startServer, type InProcessServer } from "../../helpers/server.ts";

setDefaultTimeout(20_000);

const KiB = 1024;
/** a second loopback address: another client IP for the same server */
const OTHER_IP = "127.0.0.2";

const peers = peerTracker();
const servers: InProcessServer[] = [];
let root = "";
const content = new Map<string, Uint8Array>();

afterEach(async () => {
  peers.closeAll();
  for (const s of servers.splice(0)) await s.stop();
  if (root) removeDir(root);
  root = "";
  content.clear();
});

type Limits = ServerOptions["limits"];

async function serve(limits: Partial<Limits>, options: Partial<ServerOptions> = {}): Promise<InProcessServer> {
  root = tempDir("tftpd-admission-");
  for (let i = 0; i < 6; i++) {
    const bytes = patternBytes(12 * KiB + i * 101, 300 + i);
    writeFile(root, `f${i}.bin`, bytes);
    content.set(`f${i}.bin`, bytes);
  }
  const s = await startServer(root, {
    // long timeouts: held transfers must outlive the test's pauses
    timeoutMs: 1000,
    retries: 5,
    limits: { maxTotal: 100_000, maxPerIp: 100_000, maxPerClient: 100_000, onLimit: "busy", ...limits },
    ...options,
  });
  servers.push(s);
  return s;
}

interface Held {
  peer: RawPeer;
  tid: { port: number; address: string };
  /** ACKs the held block and runs lock-step to the end; resolves with the whole file */
  finish(): Promise<Uint8Array>;
}

/** A lock-step RRQ (blksize 512) that receives DATA 1 and 2, ACKs only 1, and waits there. */
async function hold(s: InProcessServer, name: string, host = "127.0.0.1"): Promise<Held> {
  const peer = await peers.open(host);
  peer.send(rrq(name), s.port, s.host);
  const one = await peer.nextData(1);
  const tid = { port: one.port, address: one.address };
  peer.send(ack(1), tid.port, tid.address);
  const two = await peer.nextData(2);
  const chunks = [one.packet.data, two.packet.data];
  return {
    peer,
    tid,
    async finish() {
      peer.send(ack(2), tid.port, tid.address);
      for (let expected = 3; ; ) {
        const r = await peer.next(3000);
        if (r.packet?.op !== Opcode.DATA) throw new Error(`held ${name}: ${describeReceived(r)}`);
        if (r.packet.block !== expected) continue; // a retransmission of a block we have
        chunks.push(r.packet.data);
        peer.send(ack(expected), tid.port, tid.address);
        if (r.packet.data.length < 512) return concat(chunks);
        expected++;
      }
    },
  };
}

/** A fresh client asks for `name` and expects the "busy" ERROR naming `limit`. */
async function expectBusy(s: InProcessServer, name: string, limit: string, host = "127.0.0.1"): Promise<RawPeer> {
  const peer = await peers.open(host);
  peer.send(rrq(name), s.port, s.host);
  const r = await peer.nextError(0);
  expect(r.packet.message).toContain("busy");
  expect(r.packet.message).toContain(limit);
  expect(r.port).toBe(s.port); // from the listener: no transfer was started
  return peer;
}

/** A fresh client asks for `name` and hears nothing for 300 ms. */
async function expectDropped(s: InProcessServer, name: string, host = "127.0.0.1"): Promise<RawPeer> {
  const peer = await peers.open(host);
  peer.send(rrq(name), s.port, s.host);
  await peer.expectNothing(300);
  return peer;
}

async function fetchOk(s: InProcessServer, name: string, peer?: RawPeer): Promise<void> {
  const client = peer ?? (await peers.open());
  const r = await download(client, s.port, name, { host: s.host, options: [["blksize", "1468"]] });
  expect(sha256(r.bytes)).toBe(sha256(content.get(name)!));
}

describe("maxPerIp 2", () => {
  test('"busy": a third transfer from 127.0.0.1 gets ERROR 0 busy; another address is served', async () => {
    const s = await serve({ maxPerIp: 2, onLimit: "busy" });
    const a = await hold(s, "f0.bin");
    await hold(s, "f1.bin");
    await expectBusy(s, "f2.bin", "per-ip");
    await expectBusy(s, "f3.bin", "per-ip");
    await fetchOk(s, "f2.bin", await peers.open(OTHER_IP)); // the limit is per address
    await waitFor(() => s.server.activeTransfers === 2, 2000, "the two held transfers only");
    expect(sha256(await within(a.finish(), 5000, "held transfer"))).toBe(sha256(content.get("f0.bin")!));
    await recordWhere(s, (r) => r.file === "f0.bin" && r.result === "ok");
    await fetchOk(s, "f3.bin");
  });

  test('"drop": a third transfer gets no reply; once one of the first two ends, a retry is served', async () => {
    const s = await serve({ maxPerIp: 2, onLimit: "drop" });
    const a = await hold(s, "f0.bin");
    await hold(s, "f1.bin");
    const third = await expectDropped(s, "f2.bin");
    expect(s.server.activeTransfers).toBe(2);
    await within(a.finish(), 5000, "held transfer");
    await recordWhere(s, (r) => r.file === "f0.bin" && r.result === "ok");
    await waitFor(() => s.server.activeTransfers === 1, 2000, "one transfer left");
    await fetchOk(s, "f2.bin", third); // the same client, retrying
  });
});

describe("maxTotal 2", () => {
  test('"busy": a third transfer from any address gets ERROR 0 busy', async () => {
    const s = await serve({ maxTotal: 2, onLimit: "busy" });
    const a = await hold(s, "f0.bin");
    await hold(s, "f1.bin", OTHER_IP);
    await expectBusy(s, "f2.bin", "total");
    await expectBusy(s, "f2.bin", "total", OTHER_IP);
    await within(a.finish(), 5000, "held transfer");
    await recordWhere(s, (r) => r.file === "f0.bin" && r.result === "ok");
    await fetchOk(s, "f2.bin");
  });

  test('"drop": no reply over the limit; once one ends, a retry is served', async () => {
    const s = await serve({ maxTotal: 2, onLimit: "drop" });
    const a = await hold(s, "f0.bin");
    await hold(s, "f1.bin", OTHER_IP);
    const third = await expectDropped(s, "f2.bin", OTHER_IP);
    await within(a.finish(), 5000, "held transfer");
    await recordWhere(s, (r) => r.file === "f0.bin" && r.result === "ok");
    await fetchOk(s, "f2.bin", third);
  });
});

describe("maxPerClient 1", () => {
  test("the same file twice at once from one address: the second is refused; another file is served", async () => {
    const s = await serve({ maxPerClient: 1, onLimit: "busy" });
    const a = await hold(s, "f0.bin");
    await expectBusy(s, "f0.bin", "per-client");
    await fetchOk(s, "f1.bin"); // another file: another client
    await fetchOk(s, "f0.bin", await peers.open(OTHER_IP)); // another address: another client
    await within(a.finish(), 5000, "held transfer");
    await recordWhere(s, (r) => r.file === "f0.bin" && r.client.startsWith("127.0.0.1:") && r.result === "ok");
    await fetchOk(s, "f0.bin"); // its slot came back
  });

  test('"drop": the second request for the same file gets no reply', async () => {
    const s = await serve({ maxPerClient: 1, onLimit: "drop" });
    await hold(s, "f0.bin");
    await expectDropped(s, "f0.bin");
    await fetchOk(s, "f1.bin");
  });
});

describe("slots are released", () => {
  test("after the server gives up on a silent client (timeout)", async () => {
    const s = await serve({ maxTotal: 1, onLimit: "busy" }, { timeoutMs: 100, retries: 1 });
    const silent = await peers.open();
    silent.send(rrq("f0.bin"), s.port, s.host);
    await silent.nextData(1);
    await expectBusy(s, "f1.bin", "total"); // the slot is taken while it retransmits
    const record = await recordWhere(s, (r) => r.file === "f0.bin", 3000);
    expect(record.result).toBe("timeout");
    await waitFor(() => s.server.activeTransfers === 0, 1000, "no active transfers");
    await fetchOk(s, "f1.bin");
  });

  test("after the client sends an ERROR", async () => {
    const s = await serve({ maxTotal: 1, onLimit: "busy" });
    const held = await hold(s, "f0.bin");
    await expectBusy(s, "f1.bin", "total");
    held.peer.send(error(0, "user aborted"), held.tid.port, held.tid.address);
    const record = await recordWhere(s, (r) => r.file === "f0.bin");
    expect(record.result).toBe("client-error");
    await fetchOk(s, "f1.bin");
  });

  test("after a tsize probe (ERROR 8 in answer to the OACK)", async () => {
    const s = await serve({ maxTotal: 1, onLimit: "busy" });
    for (let i = 0; i < 5; i++) {
      const peer = await peers.open();
      peer.send(rrq("f0.bin", "octet", [["tsize", "0"]]), s.port, s.host);
      const oack = await peer.nextOack();
      peer.send(error(8, "tsize probe"), oack.port, oack.address);
      await recordWhere(s, (r) => r.result === "probe" && r.client.endsWith(`:${peer.port}`));
    }
    await fetchOk(s, "f1.bin");
  });

  test("after refusals that come once a slot was taken: 20 missing files, uploads when writes are off", async () => {
    const s = await serve({ maxTotal: 2, onLimit: "busy" });
    for (let i = 0; i < 20; i++) {
      const peer = await peers.open();
      peer.send(rrq(`missing-${i}.bin`), s.port, s.host);
      const r = await peer.nextError(1);
      expect(r.packet.message).not.toContain("busy");
    }
    for (let i = 0; i < 5; i++) {
      const peer = await peers.open();
      peer.send(wrq(`upload-${i}.bin`), s.port, s.host);
      const r = await peer.nextError();
      expect(r.packet.message).not.toContain("busy");
    }
    expect(s.server.activeTransfers).toBe(0);
    // both slots are still free: two transfers at once, then a third is refused
    await hold(s, "f0.bin");
    await hold(s, "f1.bin");
    await expectBusy(s, "f2.bin", "total");
  });

  test("the same with onLimit drop: a good request after 20 missing files is served", async () => {
    const s = await serve({ maxTotal: 2, onLimit: "drop" });
    for (let i = 0; i < 20; i++) {
      const peer = await peers.open();
      peer.send(rrq(`missing-${i}.bin`), s.port, s.host);
      await peer.nextError(1);
    }
    await fetchOk(s, "f0.bin");
    await hold(s, "f1.bin");
    await fetchOk(s, "f2.bin");
  });
});

/**
 * No reflection amplifier: until a client answers its transfer's first packet (ACK 1, ACK 0
 * after an OACK, DATA 1 of an upload), the server sends exactly one datagram per request
 * datagram, nothing on its own timer and no ERROR, and ends the transfer silently. A request
 * forged in someone else's name draws one packet onto them, not one per retry. After the first
 * answer, retransmission runs on the timer as before.
 */
import { afterAll, afterEach, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { Opcode } from "../../../src/protocol/packet.ts";
import type { ServerOptions } from "../../../src/server/server.ts";
import { patternBytes, removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { ack, data, describeReceived, peerTracker, recordWhere, rrq, wrq, type RawPeer, type Received } from "../../helpers/raw.ts";
import { tftpd } from "../../helpers/run.ts";
import { startServer, type InProcessServer } from "../../helpers/server.ts";

setDefaultTimeout(20_000);

const peers = peerTracker();
const servers: InProcessServer[] = [];
afterEach(async () => {
  peers.closeAll();
  for (const s of servers.splice(0)) await s.stop();
});

const FILE = patternBytes(8 * 1024 + 100, 12);
let root: string;
beforeAll(() => {
  root = tempDir();
  writeFile(root, "boot.img", FILE);
});
afterAll(() => removeDir(root));

/** timeout 200 ms, 3 retries: the server's old schedule sent the first packet 4 times in 800 ms */
const QUICK = { timeoutMs: 200, retries: 3 };
/** several times the whole old schedule */
const WATCH_MS = 2500;
const WINDOWED: [string, string][] = [
  ["blksize", "65464"],
  ["windowsize", "16"],
  ["tsize", "0"],
];

async function serve(options: Partial<ServerOptions>): Promise<InProcessServer> {
  const server = await startServer(root, { ...QUICK, ...options });
  servers.push(server);
  return server;
}

function kinds(received: readonly Received[]): string[] {
  return received.map(describeReceived);
}

const recordOf = (server: InProcessServer, peer: RawPeer) => recordWhere(server, (r) => r.client === `127.0.0.1:${peer.port}`, WATCH_MS);

const modes: Partial<ServerOptions>[] = [
  { workers: 1, transferSockets: "per-transfer" },
  { workers: 1, transferSockets: "shared" },
  { workers: 2, transferSockets: "shared" },
];

for (const mode of modes) {
  describe(`workers ${mode.workers}, ${mode.transferSockets}`, () => {
    test("an unanswered plain RRQ gets exactly one DATA, and its transfer ends without an ERROR", async () => {
      const server = await serve(mode);
      const peer = await peers.open();
      peer.send(rrq("boot.img"), server.port);
      const got = await peer.collect(WATCH_MS);
      expect(kinds(got)).toEqual([expect.stringMatching(/^DATA 1 \(512 bytes\)/)]);
      const record = await recordOf(server, peer);
      expect(record.result).toBe("timeout");
      expect(record.retransmits).toBe(0);
      expect(record.error).toBeUndefined();
      // it ended after the old schedule's patience (timeout × (retries + 1)), not at once
      expect(record.durationMs).toBeGreaterThanOrEqual(QUICK.timeoutMs * (QUICK.retries + 1) - 20);
    });

    test("an unanswered RRQ with blksize 65464, windowsize 16 and tsize gets exactly one OACK", async () => {
      const server = await serve(mode);
      const peer = await peers.open();
      peer.send(rrq("boot.img", "octet", WINDOWED), server.port);
      const got = await peer.collect(WATCH_MS);
      expect(got).toHaveLength(1);
      expect(got[0]!.packet?.op).toBe(Opcode.OACK);
      expect(got[0]!.bytes.length).toBeLessThanOrEqual(2 * rrq("boot.img", "octet", WINDOWED).length);
      expect((await recordOf(server, peer)).result).toBe("timeout");
    });

    test("a repeated request gets the first packet again at once: one datagram per request, nothing more", async () => {
      const server = await serve(mode);
      const peer = await peers.open();
      const request = rrq("boot.img");
      peer.send(request, server.port);
      const first = await peer.nextData(1);
      for (let i = 0; i < 3; i++) {
        await Bun.sleep(300); // a client resends after its own timeout
        const sentAt = performance.now();
        peer.send(request, server.port);
        const again = await peer.nextData(1);
        expect(again.port).toBe(first.port);
        expect(again.at - sentAt).toBeLessThan(150);
      }
      await peer.expectNothing(WATCH_MS);
      const record = await recordOf(server, peer);
      expect(record.result).toBe("timeout");
      expect(record.retransmits).toBe(3);
      expect(server.records).toHaveLength(1);
    });

    test("after the client's first ACK a lost DATA is sent again on the timer, as before", async () => {
      const server = await serve(mode);
      const peer = await peers.open();
      peer.send(rrq("boot.img"), server.port);
      const d1 = await peer.nextData(1);
      peer.send(ack(1), d1.port);
      const d2 = await peer.nextData(2);
      // DATA 2 "lost": no ACK; the server's timer sends it again
      const again = await peer.nextData(2, 1000);
      expect(again.at - d2.at).toBeGreaterThanOrEqual(QUICK.timeoutMs - 20);
      expect(again.at - d2.at).toBeLessThan(QUICK.timeoutMs * 3);
      for (let block = 2; ; block++) {
        peer.send(ack(block), d1.port);
        if (block * 512 > FILE.length) break;
        await peer.nextData(block + 1);
      }
      const record = await recordOf(server, peer);
      expect(record.result).toBe("ok");
      expect(record.retransmits).toBeGreaterThanOrEqual(1);
    });
  });
}

describe("the shared port, which anyone can learn: a forged answer draws little", () => {
  const shared = { workers: 1, transferSockets: "shared" } as const;

  test("a forged first ACK to a lock-step transfer draws its answer and one resend per datagram sent (request and ACK); then the timer waits for the client", async () => {
    const server = await serve(shared);
    const victim = await peers.open();
    victim.send(rrq("boot.img"), server.port);
    const d1 = await victim.nextData(1);
    // what a forger who learnt the shared port sends in the victim's name; the victim says nothing
    victim.send(ack(1), d1.port);
    const got = await victim.collect(WATCH_MS);
    const described = kinds(got);
    // and nothing else: the transfer gave up on the schedule, silently
    expect(described).toEqual([expect.stringMatching(/^DATA 2 /), expect.stringMatching(/^DATA 2 /), expect.stringMatching(/^DATA 2 /)]);
    const record = await recordOf(server, victim);
    expect(record.result).toBe("timeout");
    expect(record.retransmits).toBe(2);
  });

  test("a real client that repeats its ACK gets a resend for each repeat, and completes", async () => {
    const server = await serve(shared);
    const peer = await peers.open();
    peer.send(rrq("boot.img"), server.port);
    const d1 = await peer.nextData(1);
    peer.send(ack(1), d1.port);
    await peer.nextData(2); // "lost"
    await peer.nextData(2, 1000); // the resends the request and the ACK earned: "lost" too
    await peer.nextData(2, 1000);
    // the next expiry sends nothing: nothing heard from the client since
    await peer.expectNothing(QUICK.timeoutMs);
    peer.send(ack(1), d1.port); // the client's own timeout: it repeats its ACK
    await peer.nextData(2, 1000);
    for (let block = 2; ; block++) {
      peer.send(ack(block), d1.port);
      if (block * 512 > FILE.length) break;
      await peer.nextData(block + 1);
    }
    expect((await recordOf(server, peer)).result).toBe("ok");
  });

  test("a windowed transfer gets a port of its own, not the shared one", async () => {
    const server = await serve(shared);
    const plain = await peers.open();
    const windowed = await peers.open();
    plain.send(rrq("boot.img"), server.port);
    windowed.send(rrq("boot.img", "octet", [["windowsize", "8"]]), server.port);
    const [d1, oack] = await Promise.all([plain.nextData(1), windowed.nextOack()]);
    const another = await peers.open();
    another.send(rrq("boot.img"), server.port);
    expect((await another.nextData(1)).port).toBe(d1.port);
    expect(oack.port).not.toBe(d1.port);
    // an ACK 0 sent to the shared port in the windowed client's name opens nothing
    windowed.send(ack(0), d1.port);
    const got = await windowed.collect(QUICK.timeoutMs * 2);
    expect(got.filter((r) => r.packet?.op === Opcode.DATA)).toEqual([]);
  });
});

describe("windows", () => {
  test("a repeated windowed request gets the OACK again; ACK 0 opens the window, which the timer then resends", async () => {
    const server = await serve({});
    const peer = await peers.open();
    const request = rrq("boot.img", "octet", [
      ["blksize", "1024"],
      ["windowsize", "4"],
    ]);
    peer.send(request, server.port);
    const oack = await peer.nextOack();
    await Bun.sleep(300);
    peer.send(request, server.port);
    const oackAgain = await peer.nextOack(150);
    expect(oackAgain.port).toBe(oack.port);
    await peer.expectNothing(500);
    const ackedAt = performance.now();
    peer.send(ack(0), oack.port);
    for (let block = 1; block <= 4; block++) expect((await peer.nextData(block)).at - ackedAt).toBeLessThan(QUICK.timeoutMs - 50);
    // verified: the unanswered window goes again on the timer
    for (let block = 1; block <= 4; block++) expect((await peer.nextData(block, 1000)).at - ackedAt).toBeGreaterThanOrEqual(QUICK.timeoutMs - 20);
  });
});

describe("uploads", () => {
  let uploads: string;
  beforeAll(() => {
    uploads = tempDir("tftpd-amp-up-");
  });
  afterAll(() => removeDir(uploads));

  async function uploadServer(): Promise<InProcessServer> {
    const server = await startServer(uploads, { ...QUICK, write: "create" });
    servers.push(server);
    return server;
  }

  test("an unanswered WRQ gets exactly one ACK 0 (or one OACK); nothing is left behind", async () => {
    const server = await uploadServer();
    const plain = await peers.open();
    const windowed = await peers.open();
    plain.send(wrq("plain.bin"), server.port);
    windowed.send(wrq("windowed.bin", "octet", [["blksize", "1024"], ["windowsize", "8"]]), server.port);
    const [fromPlain, fromWindowed] = await Promise.all([plain.collect(WATCH_MS), windowed.collect(WATCH_MS)]);
    expect(kinds(fromPlain)).toEqual([expect.stringMatching(/^ACK 0 /)]);
    expect(fromWindowed.map((r) => r.packet?.op)).toEqual([Opcode.OACK]);
    for (const peer of [plain, windowed]) {
      const record = await recordOf(server, peer);
      expect(record.result).toBe("timeout");
      expect(record.error).toBeUndefined();
    }
    expect(existsSync(join(uploads, "plain.bin"))).toBe(false);
    expect(existsSync(join(uploads, "windowed.bin"))).toBe(false);
  });

  test("a repeated WRQ gets ACK 0 again; after DATA 1 the timer resends the last ACK as before", async () => {
    const server = await uploadServer();
    const peer = await peers.open();
    const request = wrq("later.bin");
    peer.send(request, server.port);
    const ack0 = await peer.nextAck(0);
    await Bun.sleep(300);
    peer.send(request, server.port);
    expect((await peer.nextAck(0, 150)).port).toBe(ack0.port);
    const content = patternBytes(700, 13);
    peer.send(data(1, content.subarray(0, 512)), ack0.port);
    const ack1 = await peer.nextAck(1);
    // DATA 2 "lost": the server's timer sends ACK 1 again
    const ack1Again = await peer.nextAck(1, 1000);
    expect(ack1Again.at - ack1.at).toBeGreaterThanOrEqual(QUICK.timeoutMs - 20);
    peer.send(data(2, content.subarray(512)), ack0.port);
    await peer.nextAck(2);
    expect((await recordOf(server, peer)).result).toBe("ok");
  });
});

describe("the per-source budget of unanswered transfers", () => {
  test("past it, a request from that address is dropped (record 'dropped', nothing sent); an answer frees a place", async () => {
    const server = await serve({ unverifiedPerSource: 3 });
    const waiting = await Promise.all([peers.open(), peers.open(), peers.open()]);
    for (const peer of waiting) peer.send(rrq("boot.img"), server.port);
    const firsts = await Promise.all(waiting.map((peer) => peer.nextData(1)));
    const fourth = await peers.open();
    fourth.send(rrq("boot.img"), server.port);
    await fourth.expectNothing(300);
    expect((await recordOf(server, fourth)).result).toBe("dropped");
    // another address is not held to this one's budget
    const elsewhere = await peers.open("127.0.0.2");
    elsewhere.send(rrq("boot.img"), server.port, "127.0.0.1");
    await elsewhere.nextData(1);
    // one client answers: its transfer no longer counts, and a new request is served
    waiting[0]!.send(ack(1), firsts[0]!.port);
    await waiting[0]!.nextData(2);
    const fifth = await peers.open();
    fifth.send(rrq("boot.img"), server.port);
    await fifth.nextData(1);
    // the dropped client asks again once the unanswered ones expired, and is served
    await recordOf(server, waiting[1]!);
    await recordOf(server, waiting[2]!);
    fourth.send(rrq("boot.img"), server.port);
    await fourth.nextData(1);
  });
});

describe("tftpd bench --amplification", () => {
  test("reports one DATA for a plain request and one OACK with options, as factors of the request's size", async () => {
    const server = await serve({});
    const r = await tftpd(["bench", "--amplification", `127.0.0.1:${server.port}`, "boot.img", "--duration", "2", "--json"], { timeoutMs: 15_000 });
    expect(r.exitCode).toBe(0);
    const report = JSON.parse(r.stdout) as { probes: { label: string; requestBytes: number; datagrams: number; bytes: number; factor: number; kinds: Record<string, number> }[] };
    const [plain, windowed] = report.probes;
    expect(plain).toMatchObject({ label: "plain", datagrams: 1, bytes: 516, kinds: { DATA: 1 } });
    expect(plain!.requestBytes).toBe(rrq("boot.img").length);
    expect(plain!.factor).toBeCloseTo(516 / plain!.requestBytes, 5);
    expect(windowed).toMatchObject({ datagrams: 1, kinds: { OACK: 1 } });
    expect(windowed!.factor).toBeLessThanOrEqual(2);
    // per-transfer ports: the port learnt is closed by the time the forged ACKs go to it
    expect(report.probes[2]).toMatchObject({ label: "plain + forged ACK 1", datagrams: 1, kinds: { DATA: 1 } });
    expect(report.probes[2]!.requestBytes).toBe(plain!.requestBytes + 4);
    expect(report.probes[3]).toMatchObject({ datagrams: 1, kinds: { OACK: 1 } });
    const human = await tftpd(["bench", "--amplification", `127.0.0.1:${server.port}`, "--file", "boot.img", "--duration", "1"], { timeoutMs: 15_000 });
    expect(human.exitCode).toBe(0);
    expect(human.stdout).toContain("1 datagram (DATA 1), 516 B");
    expect(human.stdout).toContain("1 datagram (OACK 1)");
  });

  test("on a shared port the forged ACK 1 draws DATA 2 and two resends (one per datagram sent); the forged ACK 0 of a windowed request no DATA", async () => {
    const server = await serve({ transferSockets: "shared" });
    const r = await tftpd(["bench", "--amplification", `127.0.0.1:${server.port}`, "boot.img", "--duration", "2", "--json"], { timeoutMs: 15_000 });
    expect(r.exitCode).toBe(0);
    const probes = (JSON.parse(r.stdout) as { probes: { label: string; datagrams: number; kinds: Record<string, number> }[] }).probes;
    expect(probes[2]).toMatchObject({ datagrams: 4, kinds: { DATA: 4 } });
    expect(probes[3]!.kinds.DATA).toBeUndefined();
    expect(probes[3]!.kinds.OACK).toBe(1);
  });
});

/**
 * transferSockets "shared": lock-step transfers to different clients share one port per local
 * address (so datagrams go out in sendmmsg batches), yet each stays its own TID pair: a stranger
 * on that port gets ERROR 5, loss recovery works, and real clients are served. A windowed
 * transfer joins a port drawn at random from a pool of `windowsize` ports that lock-step
 * transfers never use (a forged ACK sent to the port anyone learns must not open a window, and
 * one sent to every port of the pool draws one block per datagram); a window too big to batch
 * gets a port of its own. On the epoll loop a pooled window leaves as one GSO message.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { ErrorCode, Opcode } from "../../../src/protocol/packet.ts";
import { LossPlan } from "../../../src/server/loss.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { ack, download, peerTracker, rrq } from "../../helpers/raw.ts";
import { run } from "../../helpers/run.ts";
import { startServer, type InProcessServer } from "../../helpers/server.ts";

let root: string;
let server: InProcessServer;
const peers = peerTracker();
const big = patternBytes(300_000, 7);

beforeAll(async () => {
  root = tempDir();
  writeFile(root, "a.bin", big);
  writeFile(root, "b.bin", patternBytes(70_000, 8));
  server = await startServer(root, { transferSockets: "shared" });
});
afterEach(() => peers.closeAll());
afterAll(async () => {
  await server.stop();
  removeDir(root);
});

/** `pairs` curl (lock-step) and atftp (windowsize 16) downloads of a.bin at once: all byte-exact. */
async function curlAndAtftpAtOnce(port: number, pairs: number): Promise<void> {
  const out = tempDir("tftpd-shared-out-");
  try {
    const jobs = [];
    for (let i = 0; i < pairs; i++) {
      jobs.push(run(["curl", "-sS", "--tftp-blksize", "1468", "-o", `${out}/c${i}`, `tftp://127.0.0.1:${port}/a.bin`]));
      jobs.push(run(["atftp", "--get", "-r", "a.bin", "-l", `${out}/a${i}`, "--option", "blksize 1468", "--option", "windowsize 16", "127.0.0.1", String(port)]));
    }
    for (const r of await Promise.all(jobs)) expect(r.exitCode).toBe(0);
    for (let i = 0; i < pairs; i++) {
      expect(sha256(new Uint8Array(await Bun.file(`${out}/c${i}`).arrayBuffer()))).toBe(sha256(big));
      expect(sha256(new Uint8Array(await Bun.file(`${out}/a${i}`).arrayBuffer()))).toBe(sha256(big));
    }
  } finally {
    removeDir(out);
  }
}

describe("shared transfer sockets", () => {
  test("two lock-step clients are served from one transfer port, not the listen port, both byte-exact; a windowed one from another port", async () => {
    const [one, two, three] = [await peers.open(), await peers.open(), await peers.open()];
    const [a, b, c] = await Promise.all([
      download(one, server.port, "a.bin", { options: [["blksize", "1468"]] }),
      download(two, server.port, "b.bin"),
      download(three, server.port, "b.bin", { options: [["blksize", "1468"], ["windowsize", "8"]] }),
    ]);
    expect(sha256(a.bytes)).toBe(sha256(big));
    expect(b.bytes.length).toBe(70_000);
    expect(sha256(c.bytes)).toBe(sha256(b.bytes));
    expect(a.port).toBe(b.port);
    expect(a.port).not.toBe(server.port);
    expect(c.port).not.toBe(a.port);
    expect(c.port).not.toBe(server.port);
  });

  test("a stranger writing to the shared port gets ERROR 5 and the transfer in progress completes", async () => {
    const client = await peers.open();
    const stranger = await peers.open();
    client.send(rrq("a.bin", "octet", [["blksize", "1468"]]), server.port);
    const oack = await client.next();
    expect(oack.packet?.op).toBe(Opcode.OACK);
    stranger.send(ack(1), oack.port, oack.address);
    const reply = await stranger.next();
    expect(reply.packet?.op).toBe(Opcode.ERROR);
    expect(reply.packet?.op === Opcode.ERROR && reply.packet.code).toBe(ErrorCode.UNKNOWN_TID);
    // the real client carries on from ACK 0
    client.send(ack(0), oack.port, oack.address);
    let block = 0;
    let received = 0;
    for (;;) {
      const got = await client.next();
      if (got.packet?.op !== Opcode.DATA) throw new Error("expected DATA");
      block = got.packet.block;
      received += got.packet.data.length;
      client.send(ack(block), got.port, got.address);
      if (got.packet.data.length < 1468) break;
    }
    expect(received).toBe(big.length);
  });

  test("curl and atftp (windowed) at once, byte-exact", () => curlAndAtftpAtOnce(server.port, 6));
});

test("shared sockets: a lost DATA in a window is recovered by rewind with a real client", async () => {
  const lossy = await startServer(root, { transferSockets: "shared", loss: LossPlan.parse("out:data:3,out:data:20") });
  const out = tempDir("tftpd-shared-loss-");
  try {
    const r = await run(["atftp", "--get", "-r", "a.bin", "-l", `${out}/a`, "--option", "blksize 1468", "--option", "windowsize 8", "127.0.0.1", String(lossy.port)]);
    expect(r.exitCode).toBe(0);
    expect(sha256(new Uint8Array(await Bun.file(`${out}/a`).arrayBuffer()))).toBe(sha256(big));
    const record = lossy.records.find((x) => x.file === "a.bin");
    expect(record?.result).toBe("ok");
    expect(record!.retransmits).toBeGreaterThan(0);
  } finally {
    await lossy.stop();
    removeDir(out);
  }
});

/**
 * Sixteen windowed downloads at once from one server, each its own client port: the ports they
 * were served from, and each one's bytes.
 */
async function windowedAtOnce(port: number, file: string, options: [string, string][], count = 16) {
  const clients = await Promise.all(Array.from({ length: count }, () => peers.open()));
  return Promise.all(clients.map((client) => download(client, port, file, { options })));
}

for (const ioLoop of ["bun", "epoll"] as const) {
  describe(`the window pool (${ioLoop} loop)`, () => {
    let s: InProcessServer;
    beforeAll(async () => {
      s = await startServer(root, { transferSockets: "shared", ioLoop, workers: 1 });
    });
    afterAll(() => s.stop());

    test("windowsize 4: at most 4 ports, drawn at random per transfer, none the lock-step port; every download byte-exact", async () => {
      const lockStep = await download(await peers.open(), s.port, "b.bin");
      // b.bin is 70,000 bytes: 47 full blocks of 1468 and a short one, so windows end short too
      const results = await windowedAtOnce(s.port, "b.bin", [["blksize", "1468"], ["windowsize", "4"]]);
      for (const r of results) expect(sha256(r.bytes)).toBe(sha256(lockStep.bytes));
      const ports = new Set(results.map((r) => r.port));
      expect(ports.size).toBeLessThanOrEqual(4);
      // all sixteen on one port of four: 4 × (1/4)^16, about one run in a billion
      expect(ports.size).toBeGreaterThan(1);
      expect(ports.has(lockStep.port)).toBe(false);
      expect(ports.has(s.port)).toBe(false);
    });

    test("a pool port with no transfer left closes within two sweeps; the lock-step port stays", async () => {
      const lockStep = await download(await peers.open(), s.port, "b.bin");
      const results = await windowedAtOnce(s.port, "b.bin", [["blksize", "1468"], ["windowsize", "4"]], 8);
      const stranger = await peers.open();
      // open now: a stranger's ACK draws ERROR 5
      const pooled = results[0]!.port;
      stranger.send(ack(1), pooled, "127.0.0.1");
      const open = await stranger.next();
      expect(open.packet?.op === Opcode.ERROR && open.packet.code).toBe(ErrorCode.UNKNOWN_TID);
      await Bun.sleep(2500);
      for (const port of new Set(results.map((r) => r.port))) {
        stranger.send(ack(1), port, "127.0.0.1");
        await stranger.expectNothing(200);
      }
      stranger.send(ack(1), lockStep.port, "127.0.0.1");
      const still = await stranger.next();
      expect(still.packet?.op === Opcode.ERROR && still.packet.code).toBe(ErrorCode.UNKNOWN_TID);
    });

    test("a window too big to batch (blksize 8192 × windowsize 64) gets a port of its own", async () => {
      const results = await windowedAtOnce(s.port, "a.bin", [["blksize", "8192"], ["windowsize", "64"]], 3);
      for (const r of results) expect(sha256(r.bytes)).toBe(sha256(big));
      expect(new Set(results.map((r) => r.port)).size).toBe(3);
    });

    test("atftp with windowsize 16 and curl lock-step at once, byte-exact", () => curlAndAtftpAtOnce(s.port, 4));
  });
}

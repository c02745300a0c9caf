/**
 * Malformed datagrams at the listen port: each gets the right answer (ERROR 4, or silence)
 * and none may crash or stall the server — after every one, a normal download still works.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { Opcode } from "../../../src/protocol/packet.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import {
  ack,
  data,
  download,
  error,
  peerTracker,
  rawPacket,
  recordWhere,
  rrq,
  waitFor,
} from "../../helpers/raw.ts";
import { startServer, type InProcessServer } from "../../helpers/server.ts";

const peers = peerTracker();
afterEach(() => peers.closeAll());

const file = patternBytes(3000, 31);
let root: string;
let srv: InProcessServer;

beforeAll(async () => {
  root = tempDir();
  writeFile(root, "ok.bin", file);
  srv = await startServer(root, { timeoutMs: 200, retries: 2 });
});
afterAll(async () => {
  await srv.stop();
  removeDir(root);
});

async function stillServes(): Promise<void> {
  const got = await download(await peers.open(), srv.port, "ok.bin");
  expect(sha256(got.bytes)).toBe(sha256(file));
}

/** Sends `bytes` to the listen port and returns what came back within `ms` (from any port). */
async function sendRaw(bytes: Uint8Array, ms = 150) {
  const peer = await peers.open();
  peer.send(bytes, srv.port, "127.0.0.1");
  return { peer, replies: await peer.collect(ms) };
}

async function expectError(bytes: Uint8Array, code: number): Promise<void> {
  const { replies } = await sendRaw(bytes);
  expect(replies.length).toBe(1);
  const reply = replies[0]!;
  expect(reply.packet?.op).toBe(Opcode.ERROR);
  if (reply.packet?.op === Opcode.ERROR) expect(reply.packet.code).toBe(code);
  // the refusal comes from the listen port: no transfer (and no transfer port) was made
  expect(reply.port).toBe(srv.port);
}

async function expectSilence(bytes: Uint8Array): Promise<void> {
  const { replies } = await sendRaw(bytes, 200);
  expect(replies).toEqual([]);
}

describe("malformed datagrams at the listen port", () => {
  afterEach(async () => {
    await stillServes();
  });

  test("empty datagram: dropped", async () => {
    await expectSilence(new Uint8Array(0));
  });

  test("1-byte datagram: dropped", async () => {
    await expectSilence(Uint8Array.of(1));
  });

  test("unknown opcode 9 → ERROR 4", async () => {
    await expectError(rawPacket(9, "ok.bin\0octet\0"), 4);
  });

  test("opcode 0 → ERROR 4", async () => {
    await expectError(rawPacket(0, "ok.bin\0octet\0"), 4);
  });

  test("RRQ without any NUL → ERROR 4", async () => {
    await expectError(rawPacket(Opcode.RRQ, "ok.binoctet"), 4);
  });

  test("RRQ whose mode is not NUL-terminated → ERROR 4", async () => {
    await expectError(rawPacket(Opcode.RRQ, "ok.bin\0octet"), 4);
  });

  test("RRQ with an empty file name → ERROR 4", async () => {
    await expectError(rawPacket(Opcode.RRQ, "\0octet\0"), 4);
  });

  test('bad mode "mail" → ERROR 4', async () => {
    await expectError(rrq("ok.bin", "mail"), 4);
  });

  test('bad mode "foo" → ERROR 4', async () => {
    await expectError(rrq("ok.bin", "foo"), 4);
  });

  test("2000-byte request → ERROR 4", async () => {
    const long = rrq("ok.bin", "octet", [["x-pad", "p".repeat(1978)]]);
    expect(long.length).toBe(2000);
    await expectError(long, 4);
  });

  test("DATA sent to the listen port → ERROR 4", async () => {
    await expectError(data(1, patternBytes(100, 1)), 4);
  });

  test("ACK sent to the listen port → ERROR 4", async () => {
    await expectError(ack(1), 4);
  });

  test("OACK sent to the listen port → ERROR 4", async () => {
    await expectError(rawPacket(Opcode.OACK, "blksize\x001024\0"), 4);
  });

  test("ERROR sent to the listen port: never answered", async () => {
    await expectSilence(error(0, "hello"));
    await expectSilence(rawPacket(Opcode.ERROR, Uint8Array.of(0)));
  });

  test("options with an odd count: the dangling name is ignored, the request served", async () => {
    const peer = await peers.open();
    peer.send(rawPacket(Opcode.RRQ, "ok.bin\0octet\0blksize\x001024\0tsize\0"), srv.port, "127.0.0.1");
    const oack = await peer.nextOack();
    expect([...oack.packet.options]).toEqual([["blksize", "1024"]]);
    peer.send(ack(0), oack.port, "127.0.0.1");
    expect((await peer.nextData(1)).packet.data.length).toBe(1024);
  });

  test("garbage option values: ignored, the request served without an OACK", async () => {
    const peer = await peers.open();
    peer.send(
      rrq("ok.bin", "octet", [
        ["blksize", "abc"],
        ["tsize", "-1"],
        ["timeout", "99999999999999999999"],
        ["windowsize", ""],
        ["blksize", "1024"], // a repeated name does not override the first
      ]),
      srv.port,
      "127.0.0.1",
    );
    const first = await peer.nextData(1);
    expect(first.packet.data.length).toBe(512);
  });

  test("NUL padding after the mode (firmware does this): served", async () => {
    const peer = await peers.open();
    peer.send(rawPacket(Opcode.RRQ, "ok.bin\0octet\0\0\0\0\0"), srv.port, "127.0.0.1");
    await peer.nextData(1);
  });

  test("a file name that is not UTF-8 → ERROR 2, no crash", async () => {
    await expectError(rawPacket(Opcode.RRQ, Uint8Array.of(0xff, 0xfe, 0xc3, 0x28, 0), "octet\0"), 2);
  });

  test("a file name with control characters → ERROR 2", async () => {
    await expectError(rrq("ok\x01.bin"), 2);
  });
});

describe("garbage at a transfer port", () => {
  test("an undecodable datagram from the client is dropped and counted; its transfer goes on", async () => {
    const peer = await peers.open();
    peer.send(rrq("ok.bin"), srv.port, "127.0.0.1");
    const d1 = await peer.nextData(1);
    peer.send(rawPacket(42, "junk"), d1.port, "127.0.0.1");
    await peer.expectNothing(100);
    const chunks = [d1.packet.data];
    peer.send(ack(1), d1.port, "127.0.0.1");
    // 3000 bytes: blocks 2 to 6, the last one short
    for (let block = 2; block <= 6; block++) {
      const d = await peer.nextData(block);
      chunks.push(d.packet.data);
      peer.send(ack(block), d1.port, "127.0.0.1");
    }
    expect(sha256(Buffer.concat(chunks))).toBe(sha256(file));
    const record = await recordWhere(srv, (r) => r.client.endsWith(`:${peer.port}`));
    expect(record.result).toBe("ok");
    expect(record.strays).toEqual({ malformed: 1 });
    await stillServes();
  });

  test("empty and 1-byte datagrams at a transfer port are dropped; the transfer goes on", async () => {
    const peer = await peers.open();
    peer.send(rrq("ok.bin"), srv.port, "127.0.0.1");
    const d1 = await peer.nextData(1);
    peer.send(new Uint8Array(0), d1.port, "127.0.0.1");
    peer.send(Uint8Array.of(4), d1.port, "127.0.0.1");
    await peer.expectNothing(100);
    peer.send(ack(1), d1.port, "127.0.0.1");
    await peer.nextData(2);
  });
});

describe("a burst of random datagrams", () => {
  test("1000 seeded random datagrams: only ERRORs come back, nothing stalls, then a download works", async () => {
    let x = 0x2545f491;
    const rand = (n: number): number => {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      return x % n;
    };
    const peer = await peers.open();
    const strings = ["octet", "netascii", "OCTET", "mail", "blksize", "tsize", "0", "65464", "windowsize", "../x", "/", ""];
    const enc = new TextEncoder();
    for (let i = 0; i < 1000; i++) {
      let bytes: Uint8Array;
      const shape = rand(4);
      if (shape === 0) {
        // pure noise, 0..600 bytes
        bytes = new Uint8Array(rand(601));
        for (let j = 0; j < bytes.length; j++) bytes[j] = rand(256);
      } else if (shape === 1) {
        // a valid opcode followed by noise
        bytes = new Uint8Array(2 + rand(100));
        for (let j = 2; j < bytes.length; j++) bytes[j] = rand(256);
        bytes[1] = 1 + rand(6);
      } else {
        // a request made of plausible pieces: random names that do not exist
        const parts: string[] = [`r${rand(1_000_000)}`];
        const count = rand(8);
        for (let k = 0; k < count; k++) parts.push(strings[rand(strings.length)]!);
        bytes = rawPacket(1 + rand(2), enc.encode(parts.join("\0") + (rand(2) ? "\0" : "")));
      }
      peer.send(bytes, srv.port, "127.0.0.1");
    }
    const replies = await peer.collect(500);
    for (const r of replies) {
      expect(r.packet?.op).toBe(Opcode.ERROR);
    }
    await waitFor(() => srv.server.activeTransfers === 0, 3000, "no transfer left running");
    await stillServes();
  });
});

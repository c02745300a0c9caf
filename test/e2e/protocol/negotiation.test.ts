/**
 * Option negotiation over the wire: RFC 2347 (OACK), RFC 2348 (blksize), RFC 2349 (timeout,
 * tsize) and RFC 7440 (windowsize), against the in-process server.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { Opcode } from "../../../src/protocol/packet.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import {
  ack,
  download,
  error,
  peerTracker,
  recordWhere,
  rrq,
  type Options,
  type RawPeer,
  wrq,
} from "../../helpers/raw.ts";
import { startServer, type InProcessServer } from "../../helpers/server.ts";

const peers = peerTracker();
afterEach(() => peers.closeAll());

const FILE_SIZE = 200_000;
const file = patternBytes(FILE_SIZE, 21);

let root: string;
let srv: InProcessServer;

beforeAll(async () => {
  root = tempDir();
  writeFile(root, "boot.img", file);
  writeFile(root, "menu.txt", "default linux\nlabel linux\n");
  srv = await startServer(root, { timeoutMs: 1000, write: "create", uploadMax: 100_000 });
});
afterAll(async () => {
  await srv.stop();
  removeDir(root);
});

/** Sends an RRQ and returns the first answer (from the transfer port). */
async function ask(options: Options, name = "boot.img", mode = "octet", server = srv): Promise<{ peer: RawPeer; first: Awaited<ReturnType<RawPeer["next"]>> }> {
  const peer = await peers.open();
  peer.send(rrq(name, mode, options), server.port, "127.0.0.1");
  return { peer, first: await peer.next() };
}

async function oackFor(options: Options, name?: string, mode?: string, server?: InProcessServer): Promise<[string, string][]> {
  const { first } = await ask(options, name, mode, server);
  if (first.packet?.op !== Opcode.OACK) throw new Error(`expected OACK, got opcode ${first.packet?.op}`);
  return [...first.packet.options];
}

describe("RFC 2347 OACK", () => {
  test("acknowledges exactly what was asked: blksize alone → OACK with blksize alone", async () => {
    expect(await oackFor([["blksize", "1024"]])).toEqual([["blksize", "1024"]]);
  });

  test("unknown options are ignored, never acknowledged", async () => {
    const oack = await oackFor([
      ["multicast", ""],
      ["blksize", "1024"],
      ["rollover", "0"],
      ["x-vendor", "42"],
    ]);
    expect(oack).toEqual([["blksize", "1024"]]);
  });

  test("option names are case-insensitive (BLKSIZE, TSize, WindowSize)", async () => {
    const { peer, first } = await ask([
      ["BLKSIZE", "1024"],
      ["TSize", "0"],
      ["WindowSize", "2"],
    ]);
    expect(first.packet?.op).toBe(Opcode.OACK);
    if (first.packet?.op !== Opcode.OACK) return;
    expect(Object.fromEntries(first.packet.options)).toEqual({ blksize: "1024", tsize: String(FILE_SIZE), windowsize: "2" });
    peer.send(ack(0), first.port, "127.0.0.1");
    expect((await peer.nextData(1)).packet.data.length).toBe(1024);
    expect((await peer.nextData(2)).packet.data.length).toBe(1024);
  });

  test("no known option → no OACK: DATA 1 straight away on RRQ", async () => {
    const { first } = await ask([["x-vendor", "1"]]);
    expect(first.packet?.op).toBe(Opcode.DATA);
    if (first.packet?.op === Opcode.DATA) {
      expect(first.packet.block).toBe(1);
      expect(first.packet.data.length).toBe(512);
    }
  });

  test("no known option → no OACK: ACK 0 straight away on WRQ", async () => {
    const peer = await peers.open();
    peer.send(wrq("noopt.bin", "octet", [["x-vendor", "1"]]), srv.port, "127.0.0.1");
    const first = await peer.nextAck(0);
    peer.send(error(0, "done"), first.port, "127.0.0.1");
  });

  test("ERROR 8 right after the OACK ends the transfer quietly, recorded as a probe", async () => {
    const { peer, first } = await ask([["tsize", "0"]]);
    expect(first.packet?.op).toBe(Opcode.OACK);
    peer.send(error(8, "User aborted the transfer"), first.port, "127.0.0.1");
    const record = await recordWhere(srv, (r) => r.client.endsWith(`:${peer.port}`));
    expect(record.result).toBe("probe");
    // no ERROR back, no DATA, no retransmitted OACK
    await peer.expectNothing(1300);
  });

  test("an unacknowledged OACK is sent again for the request sent again, not on the server's timer", async () => {
    const { peer, first } = await ask([["blksize", "1024"]]);
    // a peer that never answered may never have asked (a forged source): nothing more on a timer
    await peer.expectNothing(1300);
    peer.send(rrq("boot.img", "octet", [["blksize", "1024"]]), srv.port, "127.0.0.1");
    const again = await peer.nextOack(500);
    expect(again.port).toBe(first.port);
    peer.send(ack(0), first.port, "127.0.0.1");
    await peer.nextData(1);
  });
});

describe("RFC 2348 blksize", () => {
  test("blksize 7 is out of range: not acknowledged, transfer uses 512", async () => {
    const { peer, first } = await ask([
      ["blksize", "7"],
      ["tsize", "0"],
    ]);
    expect(first.packet?.op).toBe(Opcode.OACK);
    if (first.packet?.op !== Opcode.OACK) return;
    expect([...first.packet.options]).toEqual([["tsize", String(FILE_SIZE)]]);
    peer.send(ack(0), first.port, "127.0.0.1");
    expect((await peer.nextData(1)).packet.data.length).toBe(512);
  });

  test("blksize 65465 is out of range: not acknowledged, transfer uses 512", async () => {
    const { peer, first } = await ask([
      ["blksize", "65465"],
      ["tsize", "0"],
    ]);
    if (first.packet?.op !== Opcode.OACK) throw new Error("expected OACK");
    expect(first.packet.options.has("blksize")).toBe(false);
    peer.send(ack(0), first.port, "127.0.0.1");
    expect((await peer.nextData(1)).packet.data.length).toBe(512);
  });

  test("blksize 7 alone → no OACK at all, 512-byte DATA 1", async () => {
    const { first } = await ask([["blksize", "7"]]);
    expect(first.packet?.op).toBe(Opcode.DATA);
    if (first.packet?.op === Opcode.DATA) expect(first.packet.data.length).toBe(512);
  });

  test("non-numeric blksize is ignored", async () => {
    const { first } = await ask([["blksize", "1e3"]]);
    expect(first.packet?.op).toBe(Opcode.DATA);
  });

  test("blksize 65464 (the RFC maximum) is answered with the configured maximum", async () => {
    // default server: its maximum is 65464, and DATA 1 really carries 65464 bytes
    const { peer, first } = await ask([["blksize", "65464"]]);
    if (first.packet?.op !== Opcode.OACK) throw new Error("expected OACK");
    expect([...first.packet.options]).toEqual([["blksize", "65464"]]);
    peer.send(ack(0), first.port, "127.0.0.1");
    expect((await peer.nextData(1)).packet.data.length).toBe(65464);

    const capped = await startServer(root, { blksizeMax: 1468, timeoutMs: 1000 });
    try {
      expect(await oackFor([["blksize", "65464"]], "boot.img", "octet", capped)).toEqual([["blksize", "1468"]]);
    } finally {
      await capped.stop();
    }
  });

  test("a blksize above the configured maximum is answered with the maximum; DATA follows it", async () => {
    const capped = await startServer(root, { blksizeMax: 1468, timeoutMs: 1000 });
    try {
      const got = await download(await peers.open(), capped.port, "boot.img", { options: [["blksize", "9000"]] });
      expect(got.oack?.get("blksize")).toBe("1468");
      expect(sha256(got.bytes)).toBe(sha256(file));
      const full = Math.floor(FILE_SIZE / 1468);
      expect(got.sizes.slice(0, full).every((n) => n === 1468)).toBe(true);
      expect(got.sizes.length).toBe(full + 1);
      expect(got.sizes[full]).toBe(FILE_SIZE % 1468);
    } finally {
      await capped.stop();
    }
  });

  test("DATA sizes follow the negotiated blksize (1000)", async () => {
    const got = await download(await peers.open(), srv.port, "boot.img", { options: [["blksize", "1000"]] });
    expect(got.oack?.get("blksize")).toBe("1000");
    expect(got.sizes.length).toBe(201); // 200 full blocks, then an empty one
    expect(got.sizes.slice(0, 200).every((n) => n === 1000)).toBe(true);
    expect(got.sizes[200]).toBe(0);
    expect(sha256(got.bytes)).toBe(sha256(file));
  });
});

describe("RFC 2349 timeout and tsize", () => {
  test("timeout 0 and 256 are omitted from the OACK, not clamped", async () => {
    for (const value of ["0", "256"]) {
      const oack = await oackFor([
        ["timeout", value],
        ["blksize", "1024"],
      ]);
      expect(oack).toEqual([["blksize", "1024"]]);
    }
  });

  test("timeout 1 is acknowledged and used: the retransmit comes after ~1 s, not the server's default", async () => {
    const fast = await startServer(root, { timeoutMs: 100, retries: 2 });
    try {
      const { peer, first } = await ask([["timeout", "1"]], "boot.img", "octet", fast);
      if (first.packet?.op !== Opcode.OACK) throw new Error("expected OACK");
      expect([...first.packet.options]).toEqual([["timeout", "1"]]);
      peer.send(ack(0), first.port, "127.0.0.1");
      const d1 = await peer.nextData(1);
      // the server's own 100 ms would retransmit DATA 1 well within this silence
      await peer.expectNothing(700);
      const again = await peer.nextData(1, 800);
      expect(again.at - d1.at).toBeGreaterThanOrEqual(900);
      peer.send(error(0, "enough"), first.port, "127.0.0.1");
    } finally {
      await fast.stop();
    }
  });

  test("tsize 0 on an octet RRQ returns the file size", async () => {
    expect(await oackFor([["tsize", "0"]])).toEqual([["tsize", String(FILE_SIZE)]]);
  });

  test("tsize is not offered for netascii (the converted size is unknown up front)", async () => {
    expect(
      await oackFor(
        [
          ["tsize", "0"],
          ["blksize", "1024"],
        ],
        "menu.txt",
        "netascii",
      ),
    ).toEqual([["blksize", "1024"]]);
    // tsize alone on netascii: nothing to acknowledge, so DATA 1 straight away
    const { first } = await ask([["tsize", "0"]], "menu.txt", "netascii");
    expect(first.packet?.op).toBe(Opcode.DATA);
  });

  test("WRQ tsize above uploadMax → ERROR 3, nothing created", async () => {
    const peer = await peers.open();
    peer.send(wrq("huge.bin", "octet", [["tsize", "100001"]]), srv.port, "127.0.0.1");
    await peer.nextError(3);
    expect(existsSync(join(root, "huge.bin"))).toBe(false);
    expect(readdirSync(root).filter((n) => n.includes("huge"))).toEqual([]);
  });

  test("WRQ tsize within uploadMax is acknowledged as sent", async () => {
    const peer = await peers.open();
    peer.send(wrq("fits.bin", "octet", [["tsize", "100000"]]), srv.port, "127.0.0.1");
    const oack = await peer.nextOack();
    expect([...oack.packet.options]).toEqual([["tsize", "100000"]]);
    peer.send(error(0, "changed my mind"), oack.port, "127.0.0.1");
  });
});

describe("RFC 7440 windowsize", () => {
  test("answered with the request when it is within the caps", async () => {
    expect(await oackFor([["windowsize", "8"]])).toEqual([["windowsize", "8"]]);
  });

  test("answered ≤ the block cap (windowsizeMax)", async () => {
    const capped = await startServer(root, { windowsizeMax: 16, timeoutMs: 1000 });
    try {
      expect(await oackFor([["windowsize", "100"]], "boot.img", "octet", capped)).toEqual([["windowsize", "16"]]);
      expect(await oackFor([["windowsize", "3"]], "boot.img", "octet", capped)).toEqual([["windowsize", "3"]]);
    } finally {
      await capped.stop();
    }
  });

  test("answered ≤ the byte cap (windowBytesMax / blksize), and the server keeps to it", async () => {
    const capped = await startServer(root, { windowBytesMax: 8192, timeoutMs: 1000 });
    try {
      const { peer, first } = await ask(
        [
          ["blksize", "1024"],
          ["windowsize", "64"],
        ],
        "boot.img",
        "octet",
        capped,
      );
      if (first.packet?.op !== Opcode.OACK) throw new Error("expected OACK");
      expect([...first.packet.options]).toEqual([
        ["blksize", "1024"],
        ["windowsize", "8"],
      ]);
      peer.send(ack(0), first.port, "127.0.0.1");
      for (let b = 1; b <= 8; b++) await peer.nextData(b);
      await peer.expectNothing(200);
    } finally {
      await capped.stop();
    }
  });

  test("windowsize 0 and garbage are not acknowledged", async () => {
    expect(
      await oackFor([
        ["windowsize", "0"],
        ["blksize", "1024"],
      ]),
    ).toEqual([["blksize", "1024"]]);
    expect(
      await oackFor([
        ["windowsize", "-4"],
        ["blksize", "1024"],
      ]),
    ).toEqual([["blksize", "1024"]]);
  });
});

/**
 * RFC 1350 transfers over the wire, against the in-process server: modes, transfer IDs,
 * block numbering and the end of a transfer, windows (RFC 7440), the Sorcerer's Apprentice
 * rule (RFC 1123 §4.2.3.1) and retransmission.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Opcode } from "../../../src/protocol/packet.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import {
  ack,
  concat,
  data,
  download,
  freePort,
  peerTracker,
  recordWhere,
  rrq,
  upload,
  waitFor,
  wrq,
} from "../../helpers/raw.ts";
import { startServer, type InProcessServer } from "../../helpers/server.ts";

const enc = new TextEncoder();
const peers = peerTracker();
afterEach(() => peers.closeAll());

/** Independent netascii encoding for the assertions: bare CR → CR NUL, then LF → CR LF. */
function netasciiOf(text: string): Uint8Array {
  return enc.encode(text.replaceAll("\r", "\r\0").replaceAll("\n", "\r\n"));
}

describe("RFC 1350 modes", () => {
  let root: string;
  let srv: InProcessServer;
  const text = "first line\nsecond\rthird\r\nfourth\n\n".repeat(40) + "no newline at end\r";
  const binary = patternBytes(5000, 7);

  beforeAll(async () => {
    root = tempDir();
    writeFile(root, "bin.img", binary);
    writeFile(root, "menu.cfg", text);
    srv = await startServer(root, { write: "create", timeoutMs: 1000 });
  });
  afterAll(async () => {
    await srv.stop();
    removeDir(root);
  });

  test("RRQ octet returns the file byte for byte", async () => {
    const peer = await peers.open();
    const got = await download(peer, srv.port, "bin.img");
    expect(sha256(got.bytes)).toBe(sha256(binary));
    expect(got.oack).toBeNull();
    expect(got.sizes).toEqual([512, 512, 512, 512, 512, 512, 512, 512, 512, 392]);
  });

  test("RRQ netascii: LF goes out as CR LF, a bare CR as CR NUL", async () => {
    const peer = await peers.open();
    const got = await download(peer, srv.port, "menu.cfg", { mode: "netascii" });
    expect(Buffer.from(got.bytes).equals(Buffer.from(netasciiOf(text)))).toBe(true);
    // and not the raw file: a server that ignores the mode fails here
    expect(got.bytes.length).toBeGreaterThan(text.length);
  });

  test("mode names are case-insensitive (OcTeT, NetAscii)", async () => {
    const a = await download(await peers.open(), srv.port, "bin.img", { mode: "OcTeT" });
    expect(sha256(a.bytes)).toBe(sha256(binary));
    const b = await download(await peers.open(), srv.port, "menu.cfg", { mode: "NetAscii" });
    expect(Buffer.from(b.bytes).equals(Buffer.from(netasciiOf(text)))).toBe(true);
  });

  test("WRQ netascii: CR LF is stored as LF and CR NUL as CR, also across block edges", async () => {
    // 511 plain bytes, then CR | LF split over blocks 1 and 2, then CR NUL split over 2 and 3.
    const hostText = `${"a".repeat(511)}\n${"b".repeat(510)}\rtail\nend`;
    const wire = netasciiOf(hostText);
    expect(wire[511]).toBe(0x0d);
    expect(wire[512]).toBe(0x0a);
    expect(wire[1023]).toBe(0x0d);
    expect(wire[1024]).toBe(0x00);
    const peer = await peers.open();
    await upload(peer, srv.port, "uploaded.txt", wire, { mode: "netascii" });
    expect(readFileSync(join(root, "uploaded.txt"), "latin1")).toBe(hostText);
  });
});

describe("RFC 1350 §4 transfer IDs", () => {
  let root: string;
  let srv: InProcessServer;
  const file = patternBytes(512 * 6 + 10, 3);

  beforeAll(async () => {
    root = tempDir();
    writeFile(root, "f.bin", file);
    srv = await startServer(root, { timeoutMs: 1000 });
  });
  afterAll(async () => {
    await srv.stop();
    removeDir(root);
  });

  test("every transfer gets its own server port, never the listen port", async () => {
    const a = await peers.open();
    const b = await peers.open();
    // Both transfers open at once: a server sharing one transfer socket cannot pass.
    a.send(rrq("f.bin"), srv.port, "127.0.0.1");
    b.send(rrq("f.bin"), srv.port, "127.0.0.1");
    const da = await a.nextData(1);
    const db = await b.nextData(1);
    expect(da.port).not.toBe(srv.port);
    expect(db.port).not.toBe(srv.port);
    expect(da.port).not.toBe(db.port);
    // finish both, each on its own port
    const finish = async (peer: typeof a, port: number): Promise<void> => {
      for (let block = 1; block <= 7; block++) {
        if (block > 1) expect((await peer.nextData(block)).port).toBe(port);
        peer.send(ack(block), port, "127.0.0.1");
      }
    };
    await Promise.all([finish(a, da.port), finish(b, db.port)]);
    const c = await download(await peers.open(), srv.port, "f.bin");
    expect(c.port).not.toBe(srv.port);
  });

  test("a datagram from a foreign TID gets ERROR 5 at that socket; the transfer goes on", async () => {
    const client = await peers.open();
    const intruder = await peers.open();
    client.send(rrq("f.bin"), srv.port, "127.0.0.1");
    const first = await client.nextData(1);
    client.send(ack(1), first.port, "127.0.0.1");
    const second = await client.nextData(2);

    intruder.send(ack(2), first.port, "127.0.0.1");
    const err = await intruder.nextError(5);
    expect(err.port).toBe(first.port);

    // the intruder's ACK 2 did not move the transfer: no DATA 3 reached the client
    await client.expectNothing(150);
    const chunks: Uint8Array[] = [first.packet.data, second.packet.data];
    client.send(ack(2), first.port, "127.0.0.1");
    for (let block = 3; block <= 7; block++) {
      chunks.push((await client.nextData(block)).packet.data);
      client.send(ack(block), first.port, "127.0.0.1");
    }
    expect(sha256(concat(chunks))).toBe(sha256(file));
    const record = await recordWhere(srv, (r) => r.client.endsWith(`:${client.port}`));
    expect(record.result).toBe("ok");
  });

  test("replies leave from the address the request arrived on (127.0.0.1 and 127.0.0.2, one port)", async () => {
    const port = await freePort(["127.0.0.1", "127.0.0.2"]);
    const two = await startServer(root, {
      listen: [
        { host: "127.0.0.1", port },
        { host: "127.0.0.2", port },
      ],
      timeoutMs: 1000,
    });
    try {
      expect(two.server.addresses.map((a) => `${a.host}:${a.port}`)).toEqual([`127.0.0.1:${port}`, `127.0.0.2:${port}`]);
      const viaTwo = await download(await peers.open(), port, "f.bin", { host: "127.0.0.2" });
      expect(viaTwo.address).toBe("127.0.0.2");
      expect(sha256(viaTwo.bytes)).toBe(sha256(file));
      const viaOne = await download(await peers.open(), port, "f.bin", { host: "127.0.0.1" });
      expect(viaOne.address).toBe("127.0.0.1");
    } finally {
      await two.stop();
    }
  });
});

describe("blocks: end of transfer and rollover", () => {
  let root: string;
  let srv: InProcessServer;
  // 65541 blocks of 8 bytes and 3 more: the wire number wraps 65535 → 0 and goes on to 5.
  const big = patternBytes(8 * 65541 + 3, 11);

  beforeAll(async () => {
    root = tempDir();
    writeFile(root, "short.bin", patternBytes(1000, 1));
    writeFile(root, "exact.bin", patternBytes(1024, 2));
    writeFile(root, "empty.bin", new Uint8Array(0));
    writeFile(root, "big.bin", big);
    srv = await startServer(root, { timeoutMs: 1000 });
  });
  afterAll(async () => {
    await srv.stop();
    removeDir(root);
  });

  test("the last block is shorter than blksize", async () => {
    const got = await download(await peers.open(), srv.port, "short.bin");
    expect(got.sizes).toEqual([512, 488]);
  });

  test("a file that is an exact multiple of blksize ends with a zero-length DATA", async () => {
    const got = await download(await peers.open(), srv.port, "exact.bin");
    expect(got.sizes).toEqual([512, 512, 0]);
    expect(sha256(got.bytes)).toBe(sha256(patternBytes(1024, 2)));
    expect((await recordWhere(srv, (r) => r.file === "exact.bin")).result).toBe("ok");
  });

  test("an empty file is one empty DATA block", async () => {
    const peer = await peers.open();
    peer.send(rrq("empty.bin"), srv.port, "127.0.0.1");
    const d = await peer.nextData(1);
    expect(d.packet.data.length).toBe(0);
    peer.send(ack(1), d.port, "127.0.0.1");
    expect((await recordWhere(srv, (r) => r.file === "empty.bin")).result).toBe("ok");
    await peer.expectNothing(100);
  });

  test("block numbers roll over 65535 → 0 (blksize 8, > 65536 blocks, lock-step)", async () => {
    const peer = await peers.open();
    peer.send(rrq("big.bin", "octet", [["blksize", "8"]]), srv.port, "127.0.0.1");
    const oack = await peer.nextOack();
    expect(oack.packet.options.get("blksize")).toBe("8");
    const tid = oack.port;
    peer.send(ack(0), tid, "127.0.0.1");
    const out = new Uint8Array(big.length);
    const wires: number[] = [];
    let at = 0;
    for (let block = 1; ; block++) {
      const d = await peer.next(2000);
      if (d.packet?.op !== Opcode.DATA) throw new Error(`block ${block}: not DATA`);
      if (d.packet.block !== (block & 0xffff)) throw new Error(`block ${block}: wire number ${d.packet.block}`);
      if (block >= 65534 && block <= 65538) wires.push(d.packet.block);
      out.set(d.packet.data, at);
      at += d.packet.data.length;
      peer.send(ack(d.packet.block), tid, "127.0.0.1");
      if (d.packet.data.length < 8) break;
    }
    expect(wires).toEqual([65534, 65535, 0, 1, 2]);
    expect(at).toBe(big.length);
    expect(sha256(out)).toBe(sha256(big));
    const record = await recordWhere(srv, (r) => r.file === "big.bin");
    expect(record.result).toBe("ok");
    expect(record.bytes).toBe(big.length);
  }, 20_000);
});

describe("block rollover with windows and uploads", () => {
  let root: string;
  let srv: InProcessServer;
  const big = patternBytes(8 * 65600 + 5, 13);

  beforeAll(async () => {
    root = tempDir();
    writeFile(root, "big.bin", big);
    srv = await startServer(root, { timeoutMs: 1000, write: "create" });
  });
  afterAll(async () => {
    await srv.stop();
    removeDir(root);
  });

  test("a windowed download (windowsize 16) crosses 65535 → 0 byte-exact, without retransmits", async () => {
    const got = await download(await peers.open(), srv.port, "big.bin", {
      options: [
        ["blksize", "8"],
        ["windowsize", "16"],
      ],
    });
    expect(got.oack?.get("windowsize")).toBe("16");
    expect(got.datagrams).toBe(65601);
    expect(sha256(got.bytes)).toBe(sha256(big));
    const record = await recordWhere(srv, (r) => r.file === "big.bin" && r.direction === "read");
    expect(record.result).toBe("ok");
    expect(record.retransmits).toBe(0);
  }, 20_000);

  test("an upload of > 65536 blocks (blksize 8) crosses 65535 → 0 and is stored byte-exact", async () => {
    await upload(await peers.open(), srv.port, "up-big.bin", big, {
      options: [["blksize", "8"]],
      timeoutMs: 2000,
    });
    expect(sha256(readFileSync(join(root, "up-big.bin")))).toBe(sha256(big));
    const record = await recordWhere(srv, (r) => r.file === "up-big.bin");
    expect(record.result).toBe("ok");
    expect(record.bytes).toBe(big.length);
  }, 20_000);
});

describe("IPv6", () => {
  test("a download over ::1 is answered from ::1 on a new port", async () => {
    const root = tempDir();
    const content = patternBytes(70_000, 17);
    writeFile(root, "v6.bin", content);
    const v6 = await startServer(root, { listen: [{ host: "::1", port: 0 }], timeoutMs: 1000 });
    try {
      const got = await download(await peers.open("::1"), v6.port, "v6.bin", {
        options: [
          ["blksize", "65464"],
          ["windowsize", "2"],
        ],
      });
      expect(got.address).toBe("::1");
      expect(got.port).not.toBe(v6.port);
      expect(got.sizes).toEqual([65464, 70_000 - 65464]);
      expect(sha256(got.bytes)).toBe(sha256(content));
    } finally {
      await v6.stop();
      removeDir(root);
    }
  });
});

describe("RFC 7440 windows, RFC 1123 §4.2.3.1 duplicate ACKs", () => {
  let root: string;
  let srv: InProcessServer;
  const file = patternBytes(512 * 20 + 7, 5);

  beforeAll(async () => {
    root = tempDir();
    writeFile(root, "w.bin", file);
    // a long retransmit timeout: any datagram within the test's silences is not a retransmit
    srv = await startServer(root, { timeoutMs: 2000 });
  });
  afterAll(async () => {
    await srv.stop();
    removeDir(root);
  });

  async function openWindowed(windowsize: number): Promise<{ peer: Awaited<ReturnType<typeof peers.open>>; tid: number }> {
    const peer = await peers.open();
    peer.send(rrq("w.bin", "octet", [["windowsize", String(windowsize)]]), srv.port, "127.0.0.1");
    const oack = await peer.nextOack();
    expect(oack.packet.options.get("windowsize")).toBe(String(windowsize));
    peer.send(ack(0), oack.port, "127.0.0.1");
    return { peer, tid: oack.port };
  }

  test("windowsize 4: four DATA, then the server waits for the ACK", async () => {
    const { peer, tid } = await openWindowed(4);
    for (let b = 1; b <= 4; b++) await peer.nextData(b);
    await peer.expectNothing(200);
    peer.send(ack(4), tid, "127.0.0.1");
    for (let b = 5; b <= 8; b++) await peer.nextData(b);
    await peer.expectNothing(200);
  });

  test("an ACK of block 2 inside a window of 4 makes the server resume at block 3", async () => {
    const { peer, tid } = await openWindowed(4);
    for (let b = 1; b <= 4; b++) await peer.nextData(b);
    peer.send(ack(2), tid, "127.0.0.1");
    for (let b = 3; b <= 6; b++) {
      const d = await peer.nextData(b);
      expect(Buffer.from(d.packet.data).equals(Buffer.from(file.subarray((b - 1) * 512, b * 512)))).toBe(true);
    }
    await peer.expectNothing(200);
  });

  test("windowsize 1 is lock-step", async () => {
    const { peer, tid } = await openWindowed(1);
    await peer.nextData(1);
    await peer.expectNothing(200);
    peer.send(ack(1), tid, "127.0.0.1");
    await peer.nextData(2);
    await peer.expectNothing(200);
  });

  test("a windowed download completes byte-exact", async () => {
    const got = await download(await peers.open(), srv.port, "w.bin", { options: [["windowsize", "4"]] });
    expect(sha256(got.bytes)).toBe(sha256(file));
    expect(got.datagrams).toBe(21);
  });

  // Silence is checked for less than RTO_MIN_MS: after quick round trips the server's own
  // retransmit timer may fire from then on, and that is not what these tests are about.
  test("a duplicate ACK never resends DATA (Sorcerer's Apprentice)", async () => {
    const peer = await peers.open();
    peer.send(rrq("w.bin"), srv.port, "127.0.0.1");
    const d1 = await peer.nextData(1);
    peer.send(ack(1), d1.port, "127.0.0.1");
    peer.send(ack(1), d1.port, "127.0.0.1");
    await peer.nextData(2);
    // the duplicate ACK 1 must not have produced a second DATA 2
    await peer.expectNothing(150);
    peer.send(ack(2), d1.port, "127.0.0.1");
    await peer.nextData(3);
    // a stale ACK 1 later on is ignored too
    peer.send(ack(1), d1.port, "127.0.0.1");
    await peer.expectNothing(150);
  });

  test("a duplicate ACK 0 (answer to the OACK) never resends DATA 1", async () => {
    const peer = await peers.open();
    peer.send(rrq("w.bin", "octet", [["blksize", "1024"]]), srv.port, "127.0.0.1");
    const oack = await peer.nextOack();
    peer.send(ack(0), oack.port, "127.0.0.1");
    peer.send(ack(0), oack.port, "127.0.0.1");
    await peer.nextData(1);
    await peer.expectNothing(150);
  });

  test("a duplicate window ACK never resends a window", async () => {
    const { peer, tid } = await openWindowed(4);
    for (let b = 1; b <= 4; b++) await peer.nextData(b);
    peer.send(ack(4), tid, "127.0.0.1");
    peer.send(ack(4), tid, "127.0.0.1");
    for (let b = 5; b <= 8; b++) await peer.nextData(b);
    await peer.expectNothing(150);
  });
});

describe("retransmission", () => {
  let root: string;
  let srv: InProcessServer;
  const file = patternBytes(3000, 9);

  beforeAll(async () => {
    root = tempDir();
    writeFile(root, "r.bin", file);
    srv = await startServer(root, { timeoutMs: 100, retries: 3 });
  });
  afterAll(async () => {
    await srv.stop();
    removeDir(root);
  });

  test("unacknowledged DATA comes again every timeout (the backoff never waits longer), a bounded number of times, then the transfer times out", async () => {
    const peer = await peers.open();
    peer.send(rrq("r.bin"), srv.port, "127.0.0.1");
    const d1 = await peer.nextData(1);
    // (before the client's first answer nothing is sent again on the timer: amplification.test.ts)
    peer.send(ack(1), d1.port, "127.0.0.1");
    const first = await peer.nextData(2);
    // the timeout is the configured 100 ms (a round trip on loopback would ask for less, but
    // never below RTO_MIN_MS), which is also the backoff's ceiling: copies at +100, +200,
    // +300; give-up at +400
    const copies = await peer.collect(900);
    expect(copies.length).toBeLessThan(10);
    for (const c of copies) {
      expect(c.port).toBe(first.port);
      expect(Buffer.from(c.bytes).equals(Buffer.from(first.bytes))).toBe(true);
    }
    const times = [first.at, ...copies.map((c) => c.at)];
    // the original and exactly `retries` copies
    expect(times.length).toBe(4);
    const gaps = times.slice(1).map((t, i) => t - times[i]!);
    for (const gap of gaps) {
      expect(gap).toBeGreaterThanOrEqual(80);
      expect(gap).toBeLessThan(180);
    }

    const record = await recordWhere(srv, (r) => r.client.endsWith(`:${peer.port}`));
    expect(record.result).toBe("timeout");
    await waitFor(() => srv.server.activeTransfers === 0, 2000, "the transfer slot to be freed");
    // a late ACK reaches a closed socket: nothing answers
    peer.send(ack(2), first.port, "127.0.0.1");
    await peer.expectNothing(200);
  });

  test("a lost ACK (client silent once) is recovered by the retransmitted DATA", async () => {
    const peer = await peers.open();
    peer.send(rrq("r.bin"), srv.port, "127.0.0.1");
    const d1 = await peer.nextData(1);
    peer.send(ack(1), d1.port, "127.0.0.1");
    const d2 = await peer.nextData(2);
    // do not ack: the same block must come again
    const again = await peer.nextData(2, 1000);
    expect(again.port).toBe(d1.port);
    peer.send(ack(2), d1.port, "127.0.0.1");
    const chunks = [d1.packet.data, d2.packet.data];
    for (let b = 3; b <= 6; b++) {
      const d = await peer.nextData(b);
      chunks.push(d.packet.data);
      peer.send(ack(b), d1.port, "127.0.0.1");
    }
    expect(sha256(concat(chunks))).toBe(sha256(file));
    const record = await recordWhere(srv, (r) => r.client.endsWith(`:${peer.port}`));
    expect(record.result).toBe("ok");
    expect(record.retransmits).toBeGreaterThan(0);
  });

  test("a client that vanishes mid-transfer (ICMP port unreachable) does not take the server down", async () => {
    const peer = await peers.open();
    peer.send(rrq("r.bin"), srv.port, "127.0.0.1");
    await peer.nextData(1);
    const gone = peer.port;
    peer.close(); // every retransmission now draws an ICMP port unreachable
    const record = await recordWhere(srv, (r) => r.client.endsWith(`:${gone}`), 3000);
    expect(record.result).toBe("timeout");
    const vanished = await peers.open();
    vanished.send(new Uint8Array([0, 9]), srv.port, "127.0.0.1"); // answered with ERROR 4 ...
    vanished.close(); // ... to a port that is already gone
    const got = await download(await peers.open(), srv.port, "r.bin");
    expect(sha256(got.bytes)).toBe(sha256(file));
  });

  test("a WRQ whose client goes silent also gives up and frees its slot", async () => {
    const up = await startServer(root, { timeoutMs: 100, retries: 2, write: "create" });
    try {
      const peer = await peers.open();
      peer.send(wrq("silent.bin"), up.port, "127.0.0.1");
      const a0 = await peer.nextAck(0);
      peer.send(data(1, patternBytes(512, 1)), a0.port, "127.0.0.1");
      await peer.nextAck(1);
      // now silence: the server re-sends ACK 1 a bounded number of times, then gives up
      const copies = await peer.collect(1500);
      expect(copies.length).toBe(2);
      for (const c of copies) expect(c.packet).toEqual({ op: Opcode.ACK, block: 1 });
      const record = await recordWhere(up, (r) => r.client.endsWith(`:${peer.port}`));
      expect(record.result).toBe("timeout");
      expect(up.server.activeTransfers).toBe(0);
    } finally {
      await up.stop();
    }
  });
});

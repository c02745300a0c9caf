import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { download } from "../../../src/client/download.ts";
import type { DownloadOptions } from "../../../src/client/types.ts";
import { encodeData, encodeError, encodeOack } from "../../../src/protocol/codec.ts";
import { toNetascii } from "../../../src/protocol/netascii.ts";
import { ErrorCode, Opcode, type Packet } from "../../../src/protocol/packet.ts";
import { pattern, Responder, type Endpoint } from "./responder.ts";

let r: Responder;
beforeEach(async () => {
  r = await Responder.start();
});
afterEach(() => r.close());

function opts(extra: Partial<DownloadOptions> = {}): DownloadOptions {
  return { host: r.host, port: r.port, remote: "file.bin", dallyMs: 0, retransmitMs: 2000, ...extra };
}

function same(a: Uint8Array | undefined, b: Uint8Array): boolean {
  return a !== undefined && Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b));
}

/** The next packet on `ep`, which must be of opcode `op`. */
async function expectPacket<O extends Packet["op"]>(ep: Endpoint, op: O, timeoutMs = 2000): Promise<Extract<Packet, { op: O }>> {
  const got = await ep.next(timeoutMs);
  expect(got.packet?.op).toBe(op);
  return got.packet as Extract<Packet, { op: O }>;
}

/** Hand-scripted start: RRQ in, transfer socket out. */
async function scripted(o: Partial<DownloadOptions> = {}) {
  const result = download(opts(o));
  const { request, peer } = await r.nextRequest();
  const ep = await r.open();
  return { result, request, peer, ep };
}

describe("plain RFC 1350 reads", () => {
  test("sizes around the block size: empty, short, exact multiples", async () => {
    for (const size of [0, 1, 511, 512, 513, 1024, 1536, 5000]) {
      const data = pattern(size, size + 1);
      const served = r.serveRead(data);
      const report = await download(opts());
      const stats = await served;
      expect(report.ok).toBe(true);
      expect(same(report.data, data)).toBe(true);
      expect(report.bytes).toBe(size);
      expect(report.blocks).toBe(Math.floor(size / 512) + 1);
      expect(report.blksize).toBe(512);
      expect(report.windowsize).toBe(1);
      expect(report.oack).toBeNull();
      expect(report.tsize).toBeNull();
      expect(report.retransmits).toBe(0);
      expect(report.firstResponseMs).toBeGreaterThanOrEqual(0);
      expect(report.durationMs).toBeGreaterThanOrEqual(report.firstResponseMs!);
      expect(stats.done).toBe(true);
    }
  });

  test("the request carries the name, mode and only the options asked for", async () => {
    const { result, request, ep, peer } = await scripted({ remote: "boot/grubx64.efi" });
    expect(request).toEqual({ op: Opcode.RRQ, filename: "boot/grubx64.efi", mode: "octet", options: new Map() });
    ep.send(encodeData(1, new Uint8Array(3)), peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(1);
    expect((await result).ok).toBe(true);

    const second = await scripted({ blksize: 1468, windowsize: 8, timeoutSeconds: 2, tsize: true });
    expect([...second.request.options]).toEqual([
      ["blksize", "1468"],
      ["timeout", "2"],
      ["tsize", "0"],
      ["windowsize", "8"],
    ]);
    second.ep.send(encodeError(ErrorCode.FILE_NOT_FOUND, "nope"), second.peer);
    await second.result;

    const third = await scripted({ timeoutSeconds: 2, sendTimeoutOption: false });
    expect(third.request.options.size).toBe(0);
    third.ep.send(encodeError(1, "nope"), third.peer);
    await third.result;
  });

  test("a server ERROR fails the transfer with its code and message, and is not answered", async () => {
    const { result, ep, peer } = await scripted();
    ep.send(encodeError(ErrorCode.FILE_NOT_FOUND, "File not found"), peer);
    const report = await result;
    expect(report.ok).toBe(false);
    expect(report.error).toEqual({ code: 1, message: "File not found", source: "server" });
    expect(report.firstResponseMs).not.toBeNull();
    expect(await ep.drain(50)).toEqual([]);
  });

  test("the server repeating a DATA block is re-ACKed (lock-step duplicate)", async () => {
    const { result, ep, peer } = await scripted();
    const full = new Uint8Array(512).fill(1);
    ep.send(encodeData(1, full), peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(1);
    ep.send(encodeData(1, full), peer); // our ACK "was lost"
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(1);
    ep.send(encodeData(2, new Uint8Array(0)), peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(2);
    const report = await result;
    expect(report.ok).toBe(true);
    expect(report.bytes).toBe(512);
    expect(report.retransmits).toBe(1);
  });

  test("IPv6 loopback", async () => {
    const r6 = await Responder.start("::1");
    try {
      const data = pattern(3000);
      const served = r6.serveRead(data);
      const report = await download({ host: "::1", port: r6.port, remote: "x", dallyMs: 0 });
      await served;
      expect(report.ok).toBe(true);
      expect(same(report.data, data)).toBe(true);
      // brackets are tolerated
      const again = r6.serveRead(data);
      expect((await download({ host: "[::1]", port: r6.port, remote: "x", dallyMs: 0 })).ok).toBe(true);
      await again;
    } finally {
      r6.close();
    }
  });
});

describe("options (RFC 2347/2348/2349/7440)", () => {
  test("acked options are used; tsize comes back in the report", async () => {
    const data = pattern(100_000);
    const served = r.serveRead(data);
    const report = await download(opts({ blksize: 1428, windowsize: 8, tsize: true, timeoutSeconds: 3 }));
    const stats = await served;
    expect(report.ok).toBe(true);
    expect(same(report.data, data)).toBe(true);
    expect(report.blksize).toBe(1428);
    expect(report.windowsize).toBe(8);
    expect(report.tsize).toBe(100_000);
    expect(report.oack).toEqual({ blksize: "1428", timeout: "3", tsize: "100000", windowsize: "8" });
    // one ACK 0, then one ACK per window of 8 blocks
    expect(stats.acks.length).toBe(1 + Math.ceil((Math.floor(100_000 / 1428) + 1) / 8));
  });

  test("options the server did not ack fall back to the defaults", async () => {
    const data = pattern(2000);
    const served = r.serveRead(data, { oack: () => [["tsize", "2000"]] });
    const report = await download(opts({ blksize: 1024, windowsize: 4, tsize: true }));
    await served;
    expect(report.ok).toBe(true);
    expect(report.blksize).toBe(512);
    expect(report.windowsize).toBe(1);
    expect(report.oack).toEqual({ tsize: "2000" });
    expect(same(report.data, data)).toBe(true);
  });

  test("a server that ignores options (DATA straight away) means all defaults", async () => {
    const data = pattern(1500);
    const served = r.serveRead(data, { oack: () => null });
    const report = await download(opts({ blksize: 1024, windowsize: 4 }));
    await served;
    expect(report.ok).toBe(true);
    expect(report.oack).toBeNull();
    expect([report.blksize, report.windowsize]).toEqual([512, 1]);
    expect(same(report.data, data)).toBe(true);
  });

  test("a smaller blksize than asked is honoured", async () => {
    const data = pattern(5000);
    const served = r.serveRead(data, { oack: () => [["blksize", "700"]] });
    const report = await download(opts({ blksize: 1400 }));
    await served;
    expect(report.blksize).toBe(700);
    expect(report.blocks).toBe(8);
    expect(same(report.data, data)).toBe(true);
  });

  test("an OACK with an option we did not ask for → ERROR 8 and failure", async () => {
    const { result, ep, peer } = await scripted({ blksize: 1024 });
    ep.send(
      encodeOack([
        ["blksize", "1024"],
        ["tsize", "12345"],
      ]),
      peer,
    );
    const err = await expectPacket(ep, Opcode.ERROR);
    expect(err.code).toBe(ErrorCode.OPTION_REFUSED);
    const report = await result;
    expect(report.ok).toBe(false);
    expect(report.error?.code).toBe(ErrorCode.OPTION_REFUSED);
    expect(report.error?.source).toBe("local");
    expect(report.error?.message).toContain("tsize");
  });

  test("an OACK to a request without options → ERROR 8", async () => {
    const { result, ep, peer } = await scripted();
    ep.send(encodeOack([["blksize", "512"]]), peer);
    expect((await expectPacket(ep, Opcode.ERROR)).code).toBe(ErrorCode.OPTION_REFUSED);
    expect((await result).error?.code).toBe(ErrorCode.OPTION_REFUSED);
  });

  test("an OACK with a larger blksize or windowsize than asked → ERROR 8", async () => {
    for (const [asked, answer] of [
      [{ blksize: 1024 }, ["blksize", "1025"]],
      [{ blksize: 1024 }, ["blksize", "7"]],
      [{ windowsize: 4 }, ["windowsize", "5"]],
      [{ windowsize: 4 }, ["windowsize", "zero"]],
      [{ tsize: true }, ["tsize", "-5"]],
      [{ timeoutSeconds: 2 }, ["timeout", "0"]],
    ] as const) {
      const { result, ep, peer } = await scripted(asked);
      ep.send(encodeOack([[answer[0], answer[1]]]), peer);
      expect((await expectPacket(ep, Opcode.ERROR)).code).toBe(ErrorCode.OPTION_REFUSED);
      const report = await result;
      expect(report.ok).toBe(false);
      expect(report.error?.code).toBe(8);
    }
  });

  test("a repeated OACK (our ACK 0 lost) is answered with ACK 0 again", async () => {
    const { result, ep, peer } = await scripted({ blksize: 16 });
    const oack = encodeOack([["blksize", "16"]]);
    ep.send(oack, peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(0);
    ep.send(oack, peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(0);
    ep.send(encodeData(1, new Uint8Array(5)), peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(1);
    const report = await result;
    expect(report.ok).toBe(true);
    expect(report.retransmits).toBe(1);
  });

  test("the negotiated timeout becomes the retransmit timeout", async () => {
    const { result, ep, peer } = await scripted({ timeoutSeconds: 1, retransmitMs: undefined, retries: 0 });
    ep.send(encodeOack([["timeout", "1"]]), peer);
    await expectPacket(ep, Opcode.ACK);
    const t0 = performance.now();
    const report = await result; // nothing more comes: gives up after 1 s
    const waited = performance.now() - t0;
    expect(report.error?.source).toBe("timeout");
    expect(waited).toBeGreaterThan(900);
    expect(waited).toBeLessThan(1500);
  });
});

describe("block number rollover", () => {
  test("lock-step, blksize 8: 65536 blocks, the last one numbered 0 on the wire", async () => {
    const data = pattern(65535 * 8 + 5); // block 65536 (wire 0) is the short one
    const served = r.serveRead(data);
    const report = await download(opts({ blksize: 8 }));
    const stats = await served;
    expect(report.ok).toBe(true);
    expect(report.blocks).toBe(65536);
    expect(same(report.data, data)).toBe(true);
    expect(stats.acks.at(-1)).toBe(0);
  });

  test("windowed, blksize 8: past the wrap", async () => {
    const data = pattern(70_000 * 8 + 3);
    const served = r.serveRead(data);
    const report = await download(opts({ blksize: 8, windowsize: 32 }));
    await served;
    expect(report.ok).toBe(true);
    expect(report.blocks).toBe(70_001);
    expect(same(report.data, data)).toBe(true);
  });

  test("windowed with losses across the wrap", async () => {
    const data = pattern(66_000 * 8);
    const lost = new Set([1, 65535, 65536, 65537, 65600]);
    const served = r.serveRead(data, { dropData: (block, attempt) => attempt === 1 && lost.has(block), timeoutMs: 30 });
    const report = await download(opts({ blksize: 8, windowsize: 16, retransmitMs: 50 }));
    await served;
    expect(report.ok).toBe(true);
    expect(report.blocks).toBe(66_001);
    expect(same(report.data, data)).toBe(true);
  });
});

describe("windows (RFC 7440)", () => {
  const full = (n: number): Uint8Array => new Uint8Array(8).fill(n);

  test("a gap is answered once with an ACK of the last in-order block", async () => {
    const { result, ep, peer } = await scripted({ blksize: 8, windowsize: 4 });
    ep.send(encodeOack([["blksize", "8"], ["windowsize", "4"]]), peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(0);

    ep.send(encodeData(1, full(1)), peer);
    ep.send(encodeData(2, full(2)), peer);
    // block 3 lost
    ep.send(encodeData(4, full(4)), peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(2);
    ep.send(encodeData(5, full(5)), peer); // more of the broken window: no second ACK
    ep.send(encodeData(6, full(6)), peer);
    expect(await ep.drain(80)).toEqual([]);

    // the sender restarts after 2
    for (const n of [3, 4, 5, 6]) ep.send(encodeData(n, full(n)), peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(6);

    // the whole previous window again (our ACK 6 "lost"): only its last block is re-ACKed
    for (const n of [3, 4, 5, 6]) ep.send(encodeData(n, full(n)), peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(6);
    expect(await ep.drain(80)).toEqual([]);

    ep.send(encodeData(7, new Uint8Array(3)), peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(7);
    const report = await result;
    expect(report.ok).toBe(true);
    expect(report.bytes).toBe(6 * 8 + 3);
    expect([...report.data!.subarray(0, 48)]).toEqual([1, 2, 3, 4, 5, 6].flatMap((n) => Array(8).fill(n)));
  });

  test("the final short block ends a window early", async () => {
    const { result, ep, peer } = await scripted({ blksize: 8, windowsize: 8 });
    ep.send(encodeOack([["blksize", "8"], ["windowsize", "8"]]), peer);
    await expectPacket(ep, Opcode.ACK);
    ep.send(encodeData(1, full(1)), peer);
    ep.send(encodeData(2, full(2)), peer);
    ep.send(encodeData(3, new Uint8Array(1)), peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(3);
    expect((await result).blocks).toBe(3);
  });

  test("a stalled window: on timeout the client ACKs the last in-order block", async () => {
    const { result, ep, peer } = await scripted({ blksize: 8, windowsize: 4, retransmitMs: 60 });
    ep.send(encodeOack([["blksize", "8"], ["windowsize", "4"]]), peer);
    await expectPacket(ep, Opcode.ACK);
    ep.send(encodeData(1, full(1)), peer);
    ep.send(encodeData(2, full(2)), peer);
    // blocks 3 and 4 lost: nothing shows a gap, so only the timer helps
    expect((await expectPacket(ep, Opcode.ACK, 1000)).block).toBe(2);
    ep.send(encodeData(3, new Uint8Array(0)), peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(3);
    const report = await result;
    expect(report.ok).toBe(true);
    expect(report.retransmits).toBe(1);
  });

  test("windowed download with a dropped block (automatic server)", async () => {
    const data = pattern(64 * 1024);
    const served = r.serveRead(data, { dropData: (block, attempt) => block === 10 && attempt === 1 });
    const report = await download(opts({ blksize: 512, windowsize: 16 }));
    const stats = await served;
    expect(report.ok).toBe(true);
    expect(same(report.data, data)).toBe(true);
    // ACK 0, then the gap ACK of block 9, then windows resuming from 10
    expect(stats.acks.slice(0, 3)).toEqual([0, 9, 25]);
  });
});

describe("transfer IDs (RFC 1350 §4)", () => {
  test("a packet from a foreign port gets ERROR 5 and the download completes", async () => {
    const { result, ep, peer } = await scripted();
    ep.send(encodeData(1, new Uint8Array(512).fill(7)), peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(1);

    const rogue = await r.open();
    rogue.send(encodeData(2, new Uint8Array(10)), peer);
    const e = await expectPacket(rogue, Opcode.ERROR);
    expect(e.code).toBe(ErrorCode.UNKNOWN_TID);
    expect(e.message).toBe("Unknown transfer ID");
    // an ERROR from a stranger is never answered (RFC 1350 §7) and changes nothing
    rogue.send(encodeError(0, "go away"), peer);
    expect(await rogue.drain(50)).toEqual([]);

    ep.send(encodeData(2, new Uint8Array(4).fill(9)), peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(2);
    const report = await result;
    expect(report.ok).toBe(true);
    expect(report.bytes).toBe(516);
    expect([...report.data!.subarray(512)]).toEqual([9, 9, 9, 9]);
    expect(await ep.drain(30)).toEqual([]); // the real server never saw an ERROR
  });

  test("a DATA other than block 1 before any reply (an earlier transfer to this port) does not lock the TID", async () => {
    const { result, ep, peer } = await scripted({ blksize: 1024, retransmitMs: 300 });
    const stale = await r.open();
    stale.send(encodeData(23, new Uint8Array(100).fill(9)), peer);
    // the stray is not answered as if it were this download's server
    await expect(stale.next(150)).rejects.toThrow();
    ep.send(encodeOack([["blksize", "1024"]]), peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(0);
    ep.send(encodeData(1, new Uint8Array(10).fill(1)), peer);
    const report = await result;
    expect(report.ok).toBe(true);
    expect(report.blksize).toBe(1024);
    expect(report.bytes).toBe(10);
  });

  test("two servers answer: the first reply locks the TID, the second gets ERROR 5", async () => {
    const { result, ep, peer } = await scripted();
    const other = await r.open();
    ep.send(encodeData(1, new Uint8Array(512).fill(1)), peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(1);
    other.send(encodeData(1, new Uint8Array(512).fill(2)), peer);
    expect((await expectPacket(other, Opcode.ERROR)).code).toBe(ErrorCode.UNKNOWN_TID);
    ep.send(encodeData(2, new Uint8Array(0)), peer);
    const report = await result;
    expect(report.ok).toBe(true);
    expect(report.data?.[0]).toBe(1);
  });
});

describe("timeouts", () => {
  test("no answer: the request is sent retries+1 times with exponential backoff, then give up", async () => {
    const started = performance.now();
    const result = download(opts({ retransmitMs: 25, retries: 4 }));
    const times: number[] = [];
    for (let i = 0; i < 5; i++) {
      await r.nextRequest(2000);
      times.push(performance.now() - started);
    }
    const report = await result;
    expect(report.ok).toBe(false);
    expect(report.error?.source).toBe("timeout");
    expect(report.error?.message).toBe(`no response from 127.0.0.1:${r.port} after 5 tries`);
    expect(report.retransmits).toBe(4);
    expect(report.firstResponseMs).toBeNull();
    expect(await r.listener.drain(60)).toEqual([]);
    const gaps = times.slice(1).map((t, i) => t - times[i]!);
    // 25, 50, 100, 200 ms
    expect(gaps[0]!).toBeGreaterThan(15);
    expect(gaps[1]!).toBeGreaterThan(40);
    expect(gaps[2]!).toBeGreaterThan(85);
    expect(gaps[3]!).toBeGreaterThan(180);
  });

  test("backoff is capped at 8× the base", async () => {
    const started = performance.now();
    const result = download(opts({ retransmitMs: 10, retries: 6 }));
    for (let i = 0; i < 7; i++) await r.nextRequest(2000);
    const report = await result;
    const total = performance.now() - started;
    // 10+20+40+80+80+80+80 = 390 ms; uncapped it would be 1270 ms
    expect(report.error?.source).toBe("timeout");
    expect(total).toBeGreaterThan(370);
    expect(total).toBeLessThan(900);
  });

  test("backoff: false resends every base timeout, as PXE ROMs with a fixed schedule do", async () => {
    const started = performance.now();
    const result = download(opts({ retransmitMs: 40, retries: 4, backoff: false }));
    const times: number[] = [];
    for (let i = 0; i < 5; i++) {
      await r.nextRequest(2000);
      times.push(performance.now() - started);
    }
    const report = await result;
    expect(report.error?.message).toBe(`no response from 127.0.0.1:${r.port} after 5 tries`);
    const gaps = times.slice(1).map((t, i) => t - times[i]!);
    for (const gap of gaps) {
      expect(gap).toBeGreaterThan(30);
      expect(gap).toBeLessThan(75);
    }
    // give-up one base timeout after the last try: 5 × 40 ms in all (doubling would take 1.2 s)
    expect(performance.now() - started).toBeLessThan(400);
  });

  test("retries: 0 means one try", async () => {
    const result = download(opts({ retransmitMs: 20, retries: 0 }));
    await r.nextRequest();
    const report = await result;
    expect(report.error?.message).toContain("after 1 tries");
    expect(await r.listener.drain(50)).toEqual([]);
  });

  test("a silent server mid-transfer: the last ACK is resent, then give up and tell the server", async () => {
    const { result, ep, peer } = await scripted({ retransmitMs: 20, retries: 2 });
    ep.send(encodeData(1, new Uint8Array(512)), peer);
    const acks = [];
    for (let i = 0; i < 3; i++) acks.push((await expectPacket(ep, Opcode.ACK)).block);
    expect(acks).toEqual([1, 1, 1]);
    const err = await expectPacket(ep, Opcode.ERROR);
    expect(err.code).toBe(0);
    const report = await result;
    expect(report.error?.source).toBe("timeout");
    expect(report.bytes).toBe(512);
  });

  test("progress resets the retry budget", async () => {
    const { result, ep, peer } = await scripted({ retransmitMs: 30, retries: 1 });
    for (let block = 1; block <= 5; block++) {
      ep.send(encodeData(block, new Uint8Array(block === 5 ? 1 : 512)), peer);
      expect((await expectPacket(ep, Opcode.ACK)).block).toBe(block);
      if (block === 5) break;
      // one retransmission per block (the whole budget), never two in a row
      expect((await expectPacket(ep, Opcode.ACK)).block).toBe(block);
    }
    const report = await result;
    expect(report.ok).toBe(true);
    expect(report.retransmits).toBe(4);
  });
});

describe("the final ACK and the dally", () => {
  test("a repeated final block is re-ACKed during the dally; the promise resolves at once", async () => {
    const { result, ep, peer } = await scripted({ dallyMs: 300 });
    const last = encodeData(1, new Uint8Array(10));
    ep.send(last, peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(1);
    const report = await result;
    expect(report.ok).toBe(true);
    ep.send(last, peer);
    expect((await expectPacket(ep, Opcode.ACK)).block).toBe(1);
    await Bun.sleep(350);
    ep.send(last, peer); // the socket is closed now
    expect(await ep.drain(50)).toEqual([]);
  });
});

describe("sinks", () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "tftpd-client-"));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  test("onData gets every chunk in order with host offsets", async () => {
    const data = pattern(2000);
    const served = r.serveRead(data);
    const seen: [number, number][] = [];
    const copy = new Uint8Array(2000);
    const report = await download(
      opts({
        onData: (chunk, offset) => {
          seen.push([offset, chunk.length]);
          copy.set(chunk, offset);
        },
      }),
    );
    await served;
    expect(report.ok).toBe(true);
    expect(report.data).toBeUndefined();
    expect(seen).toEqual([
      [0, 512],
      [512, 512],
      [1024, 512],
      [1536, 464],
    ]);
    expect(same(copy, data)).toBe(true);
  });

  test("an onData that throws fails the transfer and tells the server", async () => {
    const { result, ep, peer } = await scripted({
      onData: () => {
        throw new Error("sink broke");
      },
    });
    ep.send(encodeData(1, new Uint8Array(10)), peer);
    expect((await expectPacket(ep, Opcode.ERROR)).message).toBe("sink broke");
    expect((await result).error).toEqual({ code: 0, message: "sink broke", source: "local" });
  });

  test("file: written through a temporary file and renamed", async () => {
    const data = pattern(10_000);
    const file = join(dir, "out.bin");
    const served = r.serveRead(data);
    const report = await download(opts({ file }));
    await served;
    expect(report.ok).toBe(true);
    expect(Buffer.from(readFileSync(file)).equals(Buffer.from(data))).toBe(true);
    expect(readdirSync(dir)).toEqual(["out.bin"]);
  });

  test("file: a failed download leaves no file, not even a partial one", async () => {
    const file = join(dir, "out.bin");
    const { result, ep, peer } = await scripted({ file });
    ep.send(encodeData(1, new Uint8Array(512)), peer);
    await expectPacket(ep, Opcode.ACK);
    ep.send(encodeError(ErrorCode.ACCESS_VIOLATION, "denied"), peer);
    const report = await result;
    expect(report.ok).toBe(false);
    expect(existsSync(file)).toBe(false);
    expect(readdirSync(dir)).toEqual([]);
  });

  test("file: an unwritable destination fails before anything is sent", async () => {
    const report = await download(opts({ file: join(dir, "missing-dir", "out.bin") }));
    expect(report.ok).toBe(false);
    expect(report.error?.source).toBe("local");
    expect(await r.listener.drain(30)).toEqual([]);
  });

  test("netascii: CR LF → LF, CR NUL → CR, across block boundaries", async () => {
    const host = new TextEncoder().encode(`${"line\n".repeat(300)}carriage\rreturn\n${"x".repeat(509)}\n\r`);
    const wire = toNetascii(host);
    const served = r.serveRead(wire);
    const report = await download(opts({ mode: "netascii" }));
    await served;
    expect(report.ok).toBe(true);
    expect(report.bytes).toBe(wire.length);
    expect(same(report.data, host)).toBe(true);
  });

  test("netascii: a CR exactly at a block end pairs with the next block", async () => {
    const host = new TextEncoder().encode(`${"a".repeat(511)}\nb`);
    const wire = toNetascii(host); // CR is byte 512: the last of block 1
    expect(wire[511]).toBe(0x0d);
    const served = r.serveRead(wire);
    const report = await download(opts({ mode: "netascii" }));
    await served;
    expect(same(report.data, host)).toBe(true);
  });
});

describe("abort and bad arguments", () => {
  test("abort before the server answers", async () => {
    const ac = new AbortController();
    const result = download(opts({ signal: ac.signal }));
    await r.nextRequest();
    ac.abort();
    const report = await result;
    expect(report.ok).toBe(false);
    expect(report.error).toEqual({ code: 0, message: "aborted", source: "local" });
  });

  test("abort mid-transfer tells the server", async () => {
    const ac = new AbortController();
    const { result, ep, peer } = await scripted({ signal: ac.signal });
    ep.send(encodeData(1, new Uint8Array(512)), peer);
    await expectPacket(ep, Opcode.ACK);
    ac.abort();
    const e = await expectPacket(ep, Opcode.ERROR);
    expect(e.code).toBe(0);
    expect((await result).error?.message).toBe("aborted");
  });

  test("an already-aborted signal sends nothing", async () => {
    const report = await download(opts({ signal: AbortSignal.abort() }));
    expect(report.error?.message).toBe("aborted");
    expect(await r.listener.drain(30)).toEqual([]);
  });

  test("bad options fail locally without sending", async () => {
    for (const bad of [
      { blksize: 7 },
      { blksize: 65465 },
      { windowsize: 0 },
      { timeoutSeconds: 256 },
      { host: "tftp.example" },
      { port: 0 },
      { remote: "" },
      { retries: -1 },
    ]) {
      const report = await download(opts(bad));
      expect(report.ok).toBe(false);
      expect(report.error?.source).toBe("local");
    }
    expect(await r.listener.drain(30)).toEqual([]);
  });

  test("nobody listening: ICMP port unreachable fails fast", async () => {
    const closed = await r.open();
    const port = closed.port;
    closed.close();
    const started = performance.now();
    const report = await download({ host: "127.0.0.1", port, remote: "x", retransmitMs: 5000 });
    expect(report.ok).toBe(false);
    expect(report.error?.message).toContain("connection refused");
    expect(performance.now() - started).toBeLessThan(1000);
  });
});

describe("loss hook", () => {
  test("drop('in') loses received DATA; the transfer recovers by retransmission", async () => {
    const data = pattern(3000);
    const served = r.serveRead(data, { timeoutMs: 40 });
    let dropped = 0;
    const report = await download(
      opts({
        retransmitMs: 40,
        drop: (dir, packet) => {
          if (dir === "in" && packet[1] === Opcode.DATA && packet[3] === 3 && dropped === 0) {
            dropped++;
            return true;
          }
          return false;
        },
      }),
    );
    await served;
    expect(dropped).toBe(1);
    expect(report.ok).toBe(true);
    expect(same(report.data, data)).toBe(true);
  });

  test("drop('out') loses our ACKs", async () => {
    const data = pattern(3000);
    const served = r.serveRead(data, { timeoutMs: 30 });
    let n = 0;
    // Every third ACK before the final one is lost. (A lost final ACK is answered only while
    // the client dallies; after that the responder would wait forever, which is TFTP, not a bug.)
    const isEarlyAck = (p: Uint8Array): boolean => p[1] === Opcode.ACK && ((p[2]! << 8) | p[3]!) < 6;
    const report = await download(
      opts({ retransmitMs: 30, drop: (dir, packet) => dir === "out" && isEarlyAck(packet) && n++ % 3 === 1 }),
    );
    expect(n).toBeGreaterThan(3);
    await served;
    expect(report.ok).toBe(true);
    expect(same(report.data, data)).toBe(true);
  });
});


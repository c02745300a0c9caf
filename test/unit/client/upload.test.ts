import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { upload } from "../../../src/client/upload.ts";
import type { UploadOptions } from "../../../src/client/types.ts";
import { encodeAck, encodeError, encodeOack } from "../../../src/protocol/codec.ts";
import { toNetascii } from "../../../src/protocol/netascii.ts";
import { ErrorCode, Opcode, type Packet } from "../../../src/protocol/packet.ts";
import { pattern, Responder, type Endpoint } from "./responder.ts";

let r: Responder;
beforeEach(async () => {
  r = await Responder.start();
});
afterEach(() => r.close());

function opts(source: Uint8Array | string, extra: Partial<UploadOptions> = {}): UploadOptions {
  return { host: r.host, port: r.port, remote: "up.bin", source, retransmitMs: 2000, ...extra };
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a).equals(Buffer.from(b));
}

async function expectPacket<O extends Packet["op"]>(ep: Endpoint, op: O, timeoutMs = 2000): Promise<Extract<Packet, { op: O }>> {
  const got = await ep.next(timeoutMs);
  expect(got.packet?.op).toBe(op);
  return got.packet as Extract<Packet, { op: O }>;
}

async function scripted(source: Uint8Array, o: Partial<UploadOptions> = {}) {
  const result = upload(opts(source, o));
  const { request, peer } = await r.nextRequest();
  const ep = await r.open();
  return { result, request, peer, ep };
}

describe("plain RFC 1350 writes", () => {
  test("sizes around the block size: empty, short, exact multiples", async () => {
    for (const size of [0, 1, 511, 512, 513, 1024, 1536, 5000]) {
      const data = pattern(size, size + 7);
      const served = r.serveWrite();
      const report = await upload(opts(data));
      const stats = await served;
      expect(report.ok).toBe(true);
      expect(same(stats.received, data)).toBe(true);
      const blocks = Math.floor(size / 512) + 1; // a multiple of 512 ends with an empty block
      expect(report.blocks).toBe(blocks);
      expect(stats.dataSends).toBe(blocks);
      expect(report.bytes).toBe(size);
      expect(report.retransmits).toBe(0);
    }
  });

  test("an empty upload is one empty DATA", async () => {
    const { result, ep, peer } = await scripted(new Uint8Array(0));
    ep.send(encodeAck(0), peer);
    const d = await expectPacket(ep, Opcode.DATA);
    expect(d.block).toBe(1);
    expect(d.data.length).toBe(0);
    ep.send(encodeAck(1), peer);
    const report = await result;
    expect(report.ok).toBe(true);
    expect(report.blocks).toBe(1);
  });

  test("the request carries the name, mode and options; tsize states the real size", async () => {
    const { result, request, ep, peer } = await scripted(pattern(1234), { blksize: 1024, windowsize: 4, tsize: true });
    expect(request.op).toBe(Opcode.WRQ);
    expect(request.filename).toBe("up.bin");
    expect([...request.options]).toEqual([
      ["blksize", "1024"],
      ["tsize", "1234"],
      ["windowsize", "4"],
    ]);
    ep.send(encodeError(ErrorCode.DISK_FULL, "Disk full"), peer);
    const report = await result;
    expect(report.error).toEqual({ code: 3, message: "Disk full", source: "server" });
    expect(await ep.drain(30)).toEqual([]);
  });

  test("a local file as the source", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tftpd-put-"));
    try {
      const data = pattern(70_000);
      const path = join(dir, "in.bin");
      writeFileSync(path, data);
      const served = r.serveWrite();
      const report = await upload(opts(path, { blksize: 1400, windowsize: 8, tsize: true }));
      const stats = await served;
      expect(report.ok).toBe(true);
      expect(report.tsize).toBe(70_000);
      expect(same(stats.received, data)).toBe(true);

      const missing = await upload(opts(join(dir, "nope")));
      expect(missing.ok).toBe(false);
      expect(missing.error?.source).toBe("local");
      const isDir = await upload(opts(dir));
      expect(isDir.error?.message).toContain("not a regular file");
      expect(await r.listener.drain(30)).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("netascii: converted before sending, tsize is the converted size", async () => {
    const host = new TextEncoder().encode("one\ntwo\rthree\n".repeat(100));
    const wire = toNetascii(host);
    const { result, request, ep, peer } = await scripted(host, { mode: "netascii", tsize: true });
    expect(request.mode).toBe("netascii");
    expect(request.options.get("tsize")).toBe(String(wire.length));
    ep.send(encodeOack([["tsize", String(wire.length)]]), peer);
    const got: number[] = [];
    for (let block = 1; ; block++) {
      const d = await expectPacket(ep, Opcode.DATA);
      got.push(...d.data);
      ep.send(encodeAck(block), peer);
      if (d.data.length < 512) break;
    }
    expect((await result).ok).toBe(true);
    expect(same(Uint8Array.from(got), wire)).toBe(true);
  });
});

describe("Sorcerer's Apprentice (RFC 1123 §4.2.3.1)", () => {
  test("a duplicate ACK never causes a resend", async () => {
    const data = pattern(1500);
    const { result, ep, peer } = await scripted(data);
    ep.send(encodeAck(0), peer);
    expect((await expectPacket(ep, Opcode.DATA)).block).toBe(1);
    ep.send(encodeAck(1), peer);
    ep.send(encodeAck(1), peer); // delayed duplicate
    ep.send(encodeAck(0), peer); // and an older one
    expect((await expectPacket(ep, Opcode.DATA)).block).toBe(2);
    expect(await ep.drain(100)).toEqual([]); // exactly one DATA 2
    ep.send(encodeAck(2), peer);
    ep.send(encodeAck(2), peer);
    expect((await expectPacket(ep, Opcode.DATA)).block).toBe(3);
    expect(await ep.drain(100)).toEqual([]);
    ep.send(encodeAck(3), peer);
    const report = await result;
    expect(report.ok).toBe(true);
    expect(report.retransmits).toBe(0);
  });

  test("a repeated OACK does not cause a resend either", async () => {
    const { result, ep, peer } = await scripted(pattern(600), { blksize: 512 });
    const oack = encodeOack([["blksize", "512"]]);
    ep.send(oack, peer);
    expect((await expectPacket(ep, Opcode.DATA)).block).toBe(1);
    ep.send(oack, peer);
    expect(await ep.drain(80)).toEqual([]);
    ep.send(encodeAck(1), peer);
    expect((await expectPacket(ep, Opcode.DATA)).block).toBe(2);
    ep.send(encodeAck(2), peer);
    expect((await result).ok).toBe(true);
  });

  test("only the timer resends", async () => {
    const { result, ep, peer } = await scripted(pattern(100), { retransmitMs: 40 });
    ep.send(encodeAck(0), peer);
    expect((await expectPacket(ep, Opcode.DATA)).block).toBe(1);
    expect((await expectPacket(ep, Opcode.DATA, 500)).block).toBe(1); // after ~40 ms
    ep.send(encodeAck(1), peer);
    const report = await result;
    expect(report.ok).toBe(true);
    expect(report.retransmits).toBe(1);
  });
});

describe("windows (RFC 7440)", () => {
  test("windows of W blocks; an ACK inside the window resumes right after it", async () => {
    const data = pattern(100); // blksize 8: 12 full blocks + a 4-byte one = 13 blocks
    const { result, ep, peer } = await scripted(data, { blksize: 8, windowsize: 4 });
    ep.send(encodeOack([["blksize", "8"], ["windowsize", "4"]]), peer);
    const take = async (n: number): Promise<number[]> => {
      const blocks = [];
      for (let i = 0; i < n; i++) blocks.push((await expectPacket(ep, Opcode.DATA)).block);
      return blocks;
    };
    expect(await take(4)).toEqual([1, 2, 3, 4]);
    ep.send(encodeAck(2), peer); // the receiver saw a gap after 2
    expect(await take(4)).toEqual([3, 4, 5, 6]);
    ep.send(encodeAck(6), peer);
    expect(await take(4)).toEqual([7, 8, 9, 10]);
    ep.send(encodeAck(8), peer);
    ep.send(encodeAck(8), peer); // duplicate of the gap ACK: ignored
    expect(await take(4)).toEqual([9, 10, 11, 12]);
    expect(await ep.drain(50)).toEqual([]);
    ep.send(encodeAck(12), peer);
    const last = await expectPacket(ep, Opcode.DATA);
    expect(last.block).toBe(13);
    expect(last.data.length).toBe(4);
    ep.send(encodeAck(13), peer);
    const report = await result;
    expect(report.ok).toBe(true);
    expect(report.blocks).toBe(13);
    expect(report.retransmits).toBe(0);
  });

  test("an ACK beyond what was sent is ignored", async () => {
    const { result, ep, peer } = await scripted(pattern(40), { blksize: 8, windowsize: 2 });
    ep.send(encodeOack([["blksize", "8"], ["windowsize", "2"]]), peer);
    await expectPacket(ep, Opcode.DATA);
    await expectPacket(ep, Opcode.DATA);
    ep.send(encodeAck(5), peer);
    expect(await ep.drain(50)).toEqual([]);
    ep.send(encodeAck(2), peer);
    expect((await expectPacket(ep, Opcode.DATA)).block).toBe(3);
    ep.send(encodeError(0, "enough"), peer);
    expect((await result).error?.source).toBe("server");
  });

  test("on timeout the whole unacknowledged window is resent", async () => {
    const { result, ep, peer } = await scripted(pattern(64), { blksize: 8, windowsize: 3, retransmitMs: 40 });
    ep.send(encodeOack([["blksize", "8"], ["windowsize", "3"]]), peer);
    const blocks = [];
    for (let i = 0; i < 6; i++) blocks.push((await expectPacket(ep, Opcode.DATA, 1000)).block);
    expect(blocks).toEqual([1, 2, 3, 1, 2, 3]);
    ep.send(encodeError(0, "stop"), peer);
    const report = await result;
    expect(report.retransmits).toBe(3);
  });

  test("exact multiple of blksize × windowsize ends with an empty block", async () => {
    const data = pattern(8 * 8);
    const served = r.serveWrite();
    const report = await upload(opts(data, { blksize: 8, windowsize: 4 }));
    const stats = await served;
    expect(report.ok).toBe(true);
    expect(report.blocks).toBe(9);
    expect(same(stats.received, data)).toBe(true);
  });

  test("ACK 0 instead of an OACK: the server ignored the options, defaults apply", async () => {
    const data = pattern(1200);
    const served = r.serveWrite({ oack: () => null });
    const report = await upload(opts(data, { blksize: 1024, windowsize: 4 }));
    const stats = await served;
    expect(report.ok).toBe(true);
    expect([report.blksize, report.windowsize, report.oack]).toEqual([512, 1, null]);
    expect(same(stats.received, data)).toBe(true);
  });

  test("an OACK with an option we did not ask for → ERROR 8", async () => {
    const { result, ep, peer } = await scripted(pattern(10), { blksize: 512 });
    ep.send(encodeOack([["blksize", "512"], ["windowsize", "4"]]), peer);
    expect((await expectPacket(ep, Opcode.ERROR)).code).toBe(ErrorCode.OPTION_REFUSED);
    expect((await result).error?.code).toBe(ErrorCode.OPTION_REFUSED);
  });

  test("an unexpected first ACK or a DATA packet → ERROR 4", async () => {
    const first = await scripted(pattern(10));
    first.ep.send(encodeAck(3), first.peer);
    expect((await expectPacket(first.ep, Opcode.ERROR)).code).toBe(ErrorCode.ILLEGAL_OPERATION);
    expect((await first.result).ok).toBe(false);
  });
});

describe("block number rollover", () => {
  test("lock-step, blksize 8: 65536 blocks, the last one numbered 0 on the wire", async () => {
    const data = pattern(65535 * 8 + 5);
    const served = r.serveWrite();
    const report = await upload(opts(data, { blksize: 8 }));
    const stats = await served;
    expect(report.ok).toBe(true);
    expect(report.blocks).toBe(65536);
    expect(stats.acks.at(-1)).toBe(0);
    expect(same(stats.received, data)).toBe(true);
  });

  test("windowed, blksize 8, past the wrap", async () => {
    const data = pattern(70_000 * 8);
    const served = r.serveWrite();
    const report = await upload(opts(data, { blksize: 8, windowsize: 32 }));
    const stats = await served;
    expect(report.ok).toBe(true);
    expect(report.blocks).toBe(70_001);
    expect(same(stats.received, data)).toBe(true);
  });
});

describe("timeouts, transfer IDs, loss hook, abort", () => {
  test("no answer to the WRQ: bounded tries, then give up", async () => {
    const result = upload(opts(pattern(10), { retransmitMs: 15, retries: 3 }));
    for (let i = 0; i < 4; i++) await r.nextRequest();
    const report = await result;
    expect(report.error?.source).toBe("timeout");
    expect(report.error?.message).toContain("after 4 tries");
    expect(await r.listener.drain(50)).toEqual([]);
  });

  test("an ACK from a foreign port gets ERROR 5 and is not taken", async () => {
    const { result, ep, peer } = await scripted(pattern(600));
    ep.send(encodeAck(0), peer);
    expect((await expectPacket(ep, Opcode.DATA)).block).toBe(1);
    const rogue = await r.open();
    rogue.send(encodeAck(1), peer);
    expect((await expectPacket(rogue, Opcode.ERROR)).code).toBe(ErrorCode.UNKNOWN_TID);
    expect(await ep.drain(50)).toEqual([]); // the rogue ACK did not advance the window
    ep.send(encodeAck(1), peer);
    expect((await expectPacket(ep, Opcode.DATA)).block).toBe(2);
    ep.send(encodeAck(2), peer);
    expect((await result).ok).toBe(true);
  });

  test("drop('out') loses DATA; the timer recovers", async () => {
    const data = pattern(5000);
    const served = r.serveWrite();
    let dropped = 0;
    const report = await upload(
      opts(data, {
        retransmitMs: 30,
        drop: (dir, packet) => {
          if (dir === "out" && packet[1] === Opcode.DATA && packet[3] === 4 && dropped < 2) {
            dropped++;
            return true;
          }
          return false;
        },
      }),
    );
    const stats = await served;
    expect(dropped).toBe(2);
    expect(report.ok).toBe(true);
    expect(report.retransmits).toBe(2);
    expect(same(stats.received, data)).toBe(true);
  });

  test("abort mid-upload tells the server", async () => {
    const ac = new AbortController();
    const { result, ep, peer } = await scripted(pattern(5000), { signal: ac.signal });
    ep.send(encodeAck(0), peer);
    await expectPacket(ep, Opcode.DATA);
    ac.abort();
    expect((await expectPacket(ep, Opcode.ERROR)).code).toBe(0);
    expect((await result).error).toEqual({ code: 0, message: "aborted", source: "local" });
  });

  test("onProgress reports acknowledged bytes against the size", async () => {
    const data = pattern(2000);
    const served = r.serveWrite();
    const seen: [number, number | null][] = [];
    const report = await upload(opts(data, { onProgress: (b, t) => seen.push([b, t]) }));
    await served;
    expect(report.ok).toBe(true);
    expect(seen).toEqual([
      [512, 2000],
      [1024, 2000],
      [1536, 2000],
      [2000, 2000],
    ]);
  });
});

import { describe, expect, test } from "bun:test";
import {
  decodePacket,
  encodeAck,
  encodeData,
  encodeError,
  encodeOack,
  encodeRequest,
  MAX_REQUEST_SIZE,
  peekOpcode,
  writeDataHeader,
  type DecodeResult,
} from "../../../src/protocol/codec.ts";
import { DATA_HEADER_SIZE, ErrorCode, Opcode, type Packet } from "../../../src/protocol/packet.ts";

const enc = new TextEncoder();

/** Builds a datagram from an opcode and raw parts (strings are UTF-8, numbers are bytes). */
function bytes(...parts: (string | number | number[])[]): Uint8Array {
  const out: number[] = [];
  for (const p of parts) {
    if (typeof p === "string") out.push(...enc.encode(p));
    else if (typeof p === "number") out.push(p);
    else out.push(...p);
  }
  return Uint8Array.from(out);
}

function ok(result: DecodeResult): Packet {
  if (!result.ok) throw new Error(`expected a packet, got failure: ${result.message}`);
  return result.packet;
}

function failure(result: DecodeResult): { reply: number | null; message: string } {
  if (result.ok) throw new Error(`expected a failure, got op ${result.packet.op}`);
  return result;
}

describe("round trips", () => {
  test("RRQ and WRQ with and without options", () => {
    for (const op of [Opcode.RRQ, Opcode.WRQ] as const) {
      for (const mode of ["octet", "netascii"] as const) {
        const options: [string, string][] = [
          ["blksize", "1468"],
          ["tsize", "0"],
          ["windowsize", "16"],
          ["timeout", "3"],
        ];
        const p = ok(decodePacket(encodeRequest(op, "pxelinux.cfg/default", mode, options)));
        expect(p).toEqual({ op, filename: "pxelinux.cfg/default", mode, options: new Map(options) });
        const bare = ok(decodePacket(encodeRequest(op, "a", mode)));
        expect(bare).toEqual({ op, filename: "a", mode, options: new Map() });
      }
    }
  });

  test("RRQ wire format is opcode, filename NUL, mode NUL, name NUL value NUL", () => {
    expect([...encodeRequest(Opcode.RRQ, "f", "octet", [["blksize", "8"]])]).toEqual([
      ...bytes(0, 1, "f", 0, "octet", 0, "blksize", 0, "8", 0),
    ]);
    expect([...encodeRequest(Opcode.WRQ, "f", "netascii")]).toEqual([...bytes(0, 2, "f", 0, "netascii", 0)]);
  });

  test("request file names keep UTF-8 and spaces", () => {
    const p = ok(decodePacket(encodeRequest(Opcode.RRQ, "boot/ü file.efi", "octet")));
    expect(p.op === Opcode.RRQ && p.filename).toBe("boot/ü file.efi");
  });

  test("DATA of every interesting size and block number", () => {
    for (const block of [0, 1, 255, 256, 65534, 65535]) {
      for (const size of [0, 1, 511, 512, 1468, 65464]) {
        const payload = new Uint8Array(size).map((_, i) => (i * 7 + block) & 0xff);
        const wire = encodeData(block, payload);
        expect(wire.length).toBe(DATA_HEADER_SIZE + size);
        const p = ok(decodePacket(wire));
        expect(p.op).toBe(Opcode.DATA);
        if (p.op !== Opcode.DATA) continue;
        expect(p.block).toBe(block);
        expect(Buffer.from(p.data).equals(Buffer.from(payload))).toBe(true);
      }
    }
  });

  test("DATA payload is a view into the datagram, not a copy", () => {
    const wire = encodeData(7, bytes("hello"));
    const p = ok(decodePacket(wire));
    if (p.op !== Opcode.DATA) throw new Error("not DATA");
    expect(p.data.buffer).toBe(wire.buffer);
    expect(p.data.byteOffset).toBe(wire.byteOffset + DATA_HEADER_SIZE);
  });

  test("block numbers are 16-bit on the wire", () => {
    expect([...encodeAck(65536)]).toEqual([0, 4, 0, 0]);
    expect([...encodeAck(65537)]).toEqual([0, 4, 0, 1]);
    expect([...encodeData(65536 + 258, new Uint8Array(0))]).toEqual([0, 3, 1, 2]);
    const buf = new Uint8Array(8);
    writeDataHeader(buf, 0x1234);
    expect([...buf.subarray(0, 4)]).toEqual([0, 3, 0x12, 0x34]);
    writeDataHeader(buf, 65536 + 5);
    expect([...buf.subarray(0, 4)]).toEqual([0, 3, 0, 5]);
  });

  test("ACK", () => {
    for (const block of [0, 1, 256, 65535]) {
      expect(ok(decodePacket(encodeAck(block)))).toEqual({ op: Opcode.ACK, block });
    }
  });

  test("ERROR with every code and a message", () => {
    for (const code of Object.values(ErrorCode)) {
      const wire = encodeError(code, `message ${code}`);
      expect(wire[wire.length - 1]).toBe(0);
      expect(ok(decodePacket(wire))).toEqual({ op: Opcode.ERROR, code, message: `message ${code}` });
    }
    expect(ok(decodePacket(encodeError(0, "")))).toEqual({ op: Opcode.ERROR, code: 0, message: "" });
  });

  test("OACK keeps option order", () => {
    const options: [string, string][] = [
      ["windowsize", "8"],
      ["tsize", "123"],
      ["blksize", "1024"],
    ];
    const p = ok(decodePacket(encodeOack(options)));
    expect(p.op).toBe(Opcode.OACK);
    if (p.op !== Opcode.OACK) return;
    expect([...p.options]).toEqual(options);
  });

  test("peekOpcode", () => {
    expect(peekOpcode(new Uint8Array(0))).toBe(0);
    expect(peekOpcode(bytes(0))).toBe(0);
    expect(peekOpcode(encodeAck(1))).toBe(Opcode.ACK);
    expect(peekOpcode(encodeError(1, "x"))).toBe(Opcode.ERROR);
    expect(peekOpcode(bytes(0x12, 0x34))).toBe(0x1234);
  });
});

describe("malformed input", () => {
  test("empty and 1-byte datagrams are dropped silently", () => {
    expect(failure(decodePacket(new Uint8Array(0))).reply).toBeNull();
    expect(failure(decodePacket(bytes(0))).reply).toBeNull();
    expect(failure(decodePacket(bytes(1))).reply).toBeNull();
  });

  test("unknown opcodes get ERROR 4", () => {
    for (const op of [0, 7, 8, 255, 256, 0xffff]) {
      const f = failure(decodePacket(bytes(op >> 8, op & 0xff, "x", 0)));
      expect(f.reply).toBe(ErrorCode.ILLEGAL_OPERATION);
    }
    expect(failure(decodePacket(bytes(0, 0))).reply).toBe(ErrorCode.ILLEGAL_OPERATION);
  });

  test("requests without their NULs get ERROR 4", () => {
    const cases = [
      bytes(0, 1), // opcode only
      bytes(0, 1, "file"), // no NUL at all
      bytes(0, 1, "file", 0), // no mode
      bytes(0, 1, "file", 0, "octet"), // mode not terminated
      bytes(0, 2, "file", 0, "octet"),
    ];
    for (const wire of cases) expect(failure(decodePacket(wire)).reply).toBe(ErrorCode.ILLEGAL_OPERATION);
  });

  test("an empty file name gets ERROR 4", () => {
    expect(failure(decodePacket(bytes(0, 1, 0, "octet", 0))).reply).toBe(ErrorCode.ILLEGAL_OPERATION);
  });

  test("bad modes get ERROR 4; mail and binary are not supported", () => {
    for (const mode of ["mail", "binary", "", "octets", "net ascii", "octet\u0001"]) {
      const f = failure(decodePacket(bytes(0, 1, "f", 0, mode, 0)));
      expect(f.reply).toBe(ErrorCode.ILLEGAL_OPERATION);
    }
  });

  test("a hostile mode is not echoed at length", () => {
    const f = failure(decodePacket(bytes(0, 1, "f", 0, "x".repeat(500), 0)));
    expect(f.message.length).toBeLessThan(80);
  });

  test("mode names are case-insensitive and come back lower-case", () => {
    for (const [raw, mode] of [
      ["OCTET", "octet"],
      ["Octet", "octet"],
      ["oCtEt", "octet"],
      ["NETASCII", "netascii"],
      ["NetAscii", "netascii"],
    ]) {
      const p = ok(decodePacket(bytes(0, 1, "f", 0, raw!, 0)));
      expect(p.op === Opcode.RRQ && p.mode).toBe(mode as "octet");
    }
  });

  test("file name case is kept", () => {
    const p = ok(decodePacket(bytes(0, 1, "PXELinux.0", 0, "octet", 0)));
    expect(p.op === Opcode.RRQ && p.filename).toBe("PXELinux.0");
  });

  test(`requests longer than ${MAX_REQUEST_SIZE} bytes get ERROR 4; exactly ${MAX_REQUEST_SIZE} is fine`, () => {
    const head = bytes(0, 1);
    const tail = bytes(0, "octet", 0);
    const name = (n: number): string => "a".repeat(n - head.length - tail.length);
    const exact = bytes(0, 1, name(MAX_REQUEST_SIZE), 0, "octet", 0);
    expect(exact.length).toBe(MAX_REQUEST_SIZE);
    expect(decodePacket(exact).ok).toBe(true);
    const over = bytes(0, 1, name(MAX_REQUEST_SIZE + 1), 0, "octet", 0);
    expect(over.length).toBe(MAX_REQUEST_SIZE + 1);
    expect(failure(decodePacket(over)).reply).toBe(ErrorCode.ILLEGAL_OPERATION);
    const wrq = bytes(0, 2, name(MAX_REQUEST_SIZE + 1), 0, "octet", 0);
    expect(failure(decodePacket(wrq)).reply).toBe(ErrorCode.ILLEGAL_OPERATION);
  });

  test("an odd option count drops the dangling name", () => {
    const p = ok(decodePacket(bytes(0, 1, "f", 0, "octet", 0, "blksize", 0, "1024", 0, "tsize", 0)));
    expect(p.op === Opcode.RRQ && [...p.options]).toEqual([["blksize", "1024"]]);
  });

  test("an unterminated trailing option is ignored", () => {
    const p = ok(decodePacket(bytes(0, 1, "f", 0, "octet", 0, "blksize", 0, "1024")));
    expect(p.op === Opcode.RRQ && [...p.options]).toEqual([]);
  });

  test("NUL padding after the mode is tolerated", () => {
    const p = ok(decodePacket(bytes(0, 1, "f", 0, "octet", 0, 0, 0, 0, 0)));
    expect(p.op === Opcode.RRQ && p.options.size).toBe(0);
  });

  test("duplicate option names: the first wins", () => {
    const p = ok(decodePacket(bytes(0, 1, "f", 0, "octet", 0, "blksize", 0, "1024", 0, "BLKSIZE", 0, "8", 0)));
    expect(p.op === Opcode.RRQ && [...p.options]).toEqual([["blksize", "1024"]]);
  });

  test("upper-case option names are lower-cased, values kept as sent", () => {
    const p = ok(decodePacket(bytes(0, 1, "f", 0, "octet", 0, "BlkSize", 0, "512", 0, "X-Vendor", 0, "AbC", 0)));
    expect(p.op === Opcode.RRQ && [...p.options]).toEqual([
      ["blksize", "512"],
      ["x-vendor", "AbC"],
    ]);
  });

  test("garbage option values are passed through for negotiation to judge", () => {
    const p = ok(decodePacket(bytes(0, 1, "f", 0, "octet", 0, "blksize", 0, "lots", 0, "tsize", 0, "", 0)));
    expect(p.op === Opcode.RRQ && [...p.options]).toEqual([
      ["blksize", "lots"],
      ["tsize", ""],
    ]);
  });

  test("truncated DATA and ACK get ERROR 4", () => {
    expect(failure(decodePacket(bytes(0, 3))).reply).toBe(ErrorCode.ILLEGAL_OPERATION);
    expect(failure(decodePacket(bytes(0, 3, 0))).reply).toBe(ErrorCode.ILLEGAL_OPERATION);
    expect(failure(decodePacket(bytes(0, 4))).reply).toBe(ErrorCode.ILLEGAL_OPERATION);
    expect(failure(decodePacket(bytes(0, 4, 1))).reply).toBe(ErrorCode.ILLEGAL_OPERATION);
  });

  test("DATA with a header only is an empty block", () => {
    const p = ok(decodePacket(bytes(0, 3, 0, 9)));
    expect(p.op === Opcode.DATA && p.block).toBe(9);
    expect(p.op === Opcode.DATA && p.data.length).toBe(0);
  });

  test("a padded ACK is accepted", () => {
    expect(ok(decodePacket(bytes(0, 4, 0, 3, 0, 0, 0, 0)))).toEqual({ op: Opcode.ACK, block: 3 });
  });

  test("a truncated ERROR is dropped, never answered", () => {
    expect(failure(decodePacket(bytes(0, 5))).reply).toBeNull();
    expect(failure(decodePacket(bytes(0, 5, 0))).reply).toBeNull();
  });

  test("ERROR without its NUL or with trailing bytes", () => {
    expect(ok(decodePacket(bytes(0, 5, 0, 1, "nope")))).toEqual({ op: Opcode.ERROR, code: 1, message: "nope" });
    expect(ok(decodePacket(bytes(0, 5, 0, 2, "a", 0, "junk")))).toEqual({ op: Opcode.ERROR, code: 2, message: "a" });
    expect(ok(decodePacket(bytes(0, 5, 0, 99)))).toEqual({ op: Opcode.ERROR, code: 99, message: "" });
  });

  test("an empty OACK decodes to no options", () => {
    const p = ok(decodePacket(bytes(0, 6)));
    expect(p.op === Opcode.OACK && p.options.size).toBe(0);
  });

});

describe("file names are bytes: one name, one file", () => {
  // Each of these used to decode to U+FFFD and so name the same file.
  const INVALID_NAMES: [string, number[]][] = [
    ["an overlong '/' (C0 AF)", [0xc0, 0xaf]],
    ["bytes that are never UTF-8 (FF FE)", [0xff, 0xfe]],
    ["lone continuation bytes (80 80)", [0x80, 0x80]],
    ["a truncated sequence at the end (E2 82)", [0x62, 0x6f, 0x6f, 0x74, 0xe2, 0x82]],
    ["a UTF-16 surrogate (ED A0 80)", [0xed, 0xa0, 0x80]],
    ["a code point above U+10FFFF (F4 90 80 80)", [0xf4, 0x90, 0x80, 0x80]],
    ["Latin-1 (E9)", [0x63, 0x61, 0x66, 0xe9, 0x2e, 0x63, 0x66, 0x67]],
  ];

  for (const [what, name] of INVALID_NAMES) {
    test(`${what} in an RRQ or WRQ name is refused with ERROR 2`, () => {
      for (const op of [Opcode.RRQ, Opcode.WRQ]) {
        const f = failure(decodePacket(bytes(0, op, name, 0, "octet", 0)));
        expect(f.reply).toBe(ErrorCode.ACCESS_VIOLATION);
        expect(f.message).toBe("file name is not valid UTF-8");
      }
    });
  }

  test("valid multi-byte names decode exactly, U+FFFD itself included", () => {
    for (const name of ["é.cfg", "日本/boot.efi", "\uFFFD", "emoji-\u{1F680}.img", "a\u00A0b"]) {
      const p = ok(decodePacket(bytes(0, 2, name, 0, "octet", 0)));
      expect(p.op === Opcode.WRQ && p.filename).toBe(name);
    }
  });

  test("a leading byte-order mark is part of the name, not stripped", () => {
    const p = ok(decodePacket(bytes(0, 1, [0xef, 0xbb, 0xbf], "boot.cfg", 0, "octet", 0)));
    expect(p.op === Opcode.RRQ && p.filename).toBe("\uFEFFboot.cfg");
  });

  test("every two-byte name that decodes re-encodes to its own bytes: distinct bytes never meet", () => {
    const seen = new Map<string, string>();
    for (let a = 0x80; a < 0x100; a++) {
      for (const b of [0x80, 0xaf, 0xbf, 0x41]) {
        const wire = bytes(0, 1, [a, b], 0, "octet", 0);
        const r = decodePacket(wire);
        if (!r.ok) continue;
        const name = r.packet.op === Opcode.RRQ ? r.packet.filename : "";
        const key = `${a},${b}`;
        expect(seen.get(name) ?? key).toBe(key);
        seen.set(name, key);
        // what decodes re-encodes to the very same bytes
        expect([...enc.encode(name)]).toEqual([a, b]);
      }
    }
    expect(seen.size).toBeGreaterThan(0);
  });

  test("invalid UTF-8 in the mode is an unsupported mode (ERROR 4), shown at bounded length", () => {
    for (const mode of [[0x6f, 0x63, 0x74, 0x65, 0x74, 0xff], [0xef, 0xbb, 0xbf, 0x6f, 0x63, 0x74, 0x65, 0x74], new Array<number>(200).fill(0xff)]) {
      const f = failure(decodePacket(bytes(0, 1, "f", 0, mode, 0)));
      expect(f.reply).toBe(ErrorCode.ILLEGAL_OPERATION);
      expect(f.message.startsWith("unsupported mode")).toBe(true);
      expect(f.message.length).toBeLessThan(80);
    }
  });

  test("invalid UTF-8 in an option name or value never spells a known option or value", () => {
    const p = ok(
      decodePacket(
        bytes(0, 1, "f", 0, "octet", 0, "blk", [0xff], "size", 0, "1024", 0, "tsize", 0, [0x30, 0xc0], 0, [0xef, 0xbb, 0xbf], "windowsize", 0, "8", 0),
      ),
    );
    if (p.op !== Opcode.RRQ) throw new Error("expected an RRQ");
    expect(p.options.has("blksize")).toBe(false);
    expect(p.options.has("windowsize")).toBe(false);
    expect(p.options.get("tsize")).toBe("0\uFFFD");
  });

  test("an ERROR message with invalid UTF-8 still decodes (it is only shown)", () => {
    const p = ok(decodePacket(bytes(0, 5, 0, 1, [0x66, 0xff], 0)));
    expect(p.op === Opcode.ERROR && p.message).toBe("f\uFFFD");
  });
});

describe("fuzz", () => {
  /** mulberry32: small, seeded, good enough to explore byte patterns reproducibly. */
  function prng(seed: number): () => number {
    let a = seed >>> 0;
    return () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  test("20,000 random datagrams never throw and always give a well-formed result", () => {
    const rand = prng(0xc0ffee);
    const pieces = ["octet", "netascii", "OCTET", "blksize", "tsize", "timeout", "windowsize", "1468", "0", "x"];
    let packets = 0;
    let replies = 0;
    let drops = 0;
    for (let i = 0; i < 20_000; i++) {
      const kind = rand();
      let datagram: Uint8Array;
      if (kind < 0.4) {
        // pure noise, mostly short
        const len = Math.floor(rand() ** 3 * 1500);
        datagram = new Uint8Array(len);
        for (let j = 0; j < len; j++) datagram[j] = Math.floor(rand() * 256);
      } else {
        // plausible opcode + NUL-separated fragments, the shape parsers trip over
        const parts: number[] = [0, Math.floor(rand() * 8)];
        const n = Math.floor(rand() * 8);
        for (let j = 0; j < n; j++) {
          const r = rand();
          if (r < 0.5) parts.push(...enc.encode(pieces[Math.floor(rand() * pieces.length)]!));
          else if (r < 0.7) parts.push(Math.floor(rand() * 256));
          if (rand() < 0.8) parts.push(0);
        }
        if (rand() < 0.05) parts.push(...new Array<number>(1100).fill(65));
        datagram = Uint8Array.from(parts);
      }
      let result: DecodeResult;
      try {
        result = decodePacket(datagram);
      } catch (e) {
        throw new Error(`decodePacket threw on [${[...datagram.subarray(0, 32)]}…]: ${String(e)}`);
      }
      if (result.ok) {
        packets++;
        expect(result.packet.op).toBeGreaterThanOrEqual(1);
        expect(result.packet.op).toBeLessThanOrEqual(6);
      } else {
        expect(typeof result.message).toBe("string");
        if (result.reply === null) drops++;
        else if (result.reply === ErrorCode.ACCESS_VIOLATION) {
          // noise in the name field: the only failure answered with another code
          expect(result.message).toBe("file name is not valid UTF-8");
        } else {
          expect(result.reply).toBe(ErrorCode.ILLEGAL_OPERATION);
          replies++;
        }
      }
    }
    // the generator reaches every outcome
    expect(packets).toBeGreaterThan(1000);
    expect(replies).toBeGreaterThan(1000);
    expect(drops).toBeGreaterThan(100);
  });
});

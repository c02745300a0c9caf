import { describe, expect, test } from "bun:test";
import { decodePacket, encodeRequest } from "../../../src/protocol/codec.ts";
import {
  BLKSIZE_MAX,
  BLKSIZE_MIN,
  KNOWN_OPTIONS,
  negotiate,
  TIMEOUT_MAX,
  TIMEOUT_MIN,
  WINDOWSIZE_MAX,
  WINDOWSIZE_MIN,
  type NegotiationLimits,
  type NegotiationResult,
} from "../../../src/protocol/options.ts";
import { ErrorCode, Opcode, type RequestPacket, type TransferMode } from "../../../src/protocol/packet.ts";

const LIMITS: NegotiationLimits = {
  blksizeMax: BLKSIZE_MAX,
  windowsizeMax: 64,
  windowBytesMax: 1 << 30,
  uploadMax: 1_000_000,
};

function req(
  options: [string, string][],
  op: RequestPacket["op"] = Opcode.RRQ,
  mode: TransferMode = "octet",
): Pick<RequestPacket, "op" | "mode" | "options"> {
  return { op, mode, options: new Map(options) };
}

function accepted(result: NegotiationResult): Exclude<NegotiationResult, { ok: false }> {
  if (!result.ok) throw new Error(`negotiation failed: ${result.message}`);
  return result;
}

function oackOf(options: [string, string][], limits = LIMITS, size: number | null = 1000, op: RequestPacket["op"] = Opcode.RRQ) {
  return accepted(negotiate(req(options, op), limits, size)).oack;
}

describe("constants match the RFCs", () => {
  test("bounds", () => {
    expect([BLKSIZE_MIN, BLKSIZE_MAX]).toEqual([8, 65464]);
    expect([TIMEOUT_MIN, TIMEOUT_MAX]).toEqual([1, 255]);
    expect([WINDOWSIZE_MIN, WINDOWSIZE_MAX]).toEqual([1, 65535]);
    expect([...KNOWN_OPTIONS].sort()).toEqual(["blksize", "timeout", "tsize", "windowsize"]);
  });
});

describe("blksize (RFC 2348)", () => {
  test("7 and 65465 are out of range: not acked, default 512", () => {
    for (const v of ["7", "65465", "0", "100000"]) {
      const r = accepted(negotiate(req([["blksize", v]]), LIMITS, 10));
      expect(r.oack).toBeNull();
      expect(r.blksize).toBe(512);
      expect(r.requested).toEqual(["blksize"]);
    }
  });

  test("8 and 65464 are the inclusive bounds", () => {
    expect(oackOf([["blksize", "8"]])).toEqual([["blksize", "8"]]);
    expect(accepted(negotiate(req([["blksize", "8"]]), LIMITS, 10)).blksize).toBe(8);
    expect(oackOf([["blksize", "65464"]])).toEqual([["blksize", "65464"]]);
  });

  test("larger than the configured maximum is answered with the maximum", () => {
    const limits = { ...LIMITS, blksizeMax: 1468 };
    const r = accepted(negotiate(req([["blksize", "9000"]]), limits, 10));
    expect(r.blksize).toBe(1468);
    expect(r.oack).toEqual([["blksize", "1468"]]);
    const r2 = accepted(negotiate(req([["blksize", "65464"]]), limits, 10));
    expect(r2.oack).toEqual([["blksize", "1468"]]);
    // smaller than the maximum: as asked
    expect(oackOf([["blksize", "1024"]], limits)).toEqual([["blksize", "1024"]]);
  });

  test("garbage values are ignored", () => {
    for (const v of ["", "abc", "-512", "+512", " 512", "512 ", "1e3", "0x200", "512.0", "1".repeat(13)]) {
      const r = accepted(negotiate(req([["blksize", v]]), LIMITS, 10));
      expect(r.oack).toBeNull();
      expect(r.blksize).toBe(512);
    }
  });

  test("leading zeros are still decimal", () => {
    expect(oackOf([["blksize", "01024"]])).toEqual([["blksize", "1024"]]);
  });
});

describe("timeout (RFC 2349)", () => {
  test("out of range is omitted, not clamped", () => {
    for (const v of ["0", "256", "1000", "x", ""]) {
      const r = accepted(negotiate(req([["timeout", v]]), LIMITS, 10));
      expect(r.oack).toBeNull();
      expect(r.timeoutMs).toBeNull();
      expect(r.requested).toEqual(["timeout"]);
    }
  });

  test("1 and 255 are acked as sent", () => {
    for (const v of [1, 5, 255]) {
      const r = accepted(negotiate(req([["timeout", String(v)]]), LIMITS, 10));
      expect(r.oack).toEqual([["timeout", String(v)]]);
      expect(r.timeoutMs).toBe(v * 1000);
    }
  });
});

describe("tsize (RFC 2349)", () => {
  test("RRQ octet: answered with the file size whatever the client sent", () => {
    expect(oackOf([["tsize", "0"]], LIMITS, 123456)).toEqual([["tsize", "123456"]]);
    expect(oackOf([["tsize", "999"]], LIMITS, 0)).toEqual([["tsize", "0"]]);
  });

  test("RRQ netascii: not offered (the caller passes no size)", () => {
    const r = accepted(negotiate(req([["tsize", "0"]], Opcode.RRQ, "netascii"), LIMITS, null));
    expect(r.oack).toBeNull();
    expect(r.requested).toEqual(["tsize"]);
  });

  test("RRQ with a non-numeric tsize is ignored", () => {
    expect(oackOf([["tsize", "big"]], LIMITS, 5)).toBeNull();
  });

  test("WRQ: the client's size is echoed when within the upload limit", () => {
    expect(oackOf([["tsize", "1000000"]], LIMITS, null, Opcode.WRQ)).toEqual([["tsize", "1000000"]]);
    expect(oackOf([["tsize", "0"]], LIMITS, null, Opcode.WRQ)).toEqual([["tsize", "0"]]);
  });

  test("WRQ over the upload limit → ERROR 3", () => {
    const r = negotiate(req([["tsize", "1000001"]], Opcode.WRQ), LIMITS, null);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.code).toBe(ErrorCode.DISK_FULL);
  });

  test("WRQ with a garbage tsize is not acked", () => {
    expect(oackOf([["tsize", "-1"]], LIMITS, null, Opcode.WRQ)).toBeNull();
  });
});

describe("windowsize (RFC 7440)", () => {
  test("0 and 65536 are out of range", () => {
    for (const v of ["0", "65536", "x"]) {
      const r = accepted(negotiate(req([["windowsize", v]]), LIMITS, 10));
      expect(r.oack).toBeNull();
      expect(r.windowsize).toBe(1);
    }
  });

  test("within range and limits: as asked", () => {
    expect(oackOf([["windowsize", "1"]])).toEqual([["windowsize", "1"]]);
    expect(oackOf([["windowsize", "16"]])).toEqual([["windowsize", "16"]]);
    expect(oackOf([["windowsize", "016"]])).toEqual([["windowsize", "16"]]);
  });

  test("capped by the block limit", () => {
    const r = accepted(negotiate(req([["windowsize", "65535"]]), LIMITS, 10));
    expect(r.windowsize).toBe(64);
    expect(r.oack).toEqual([["windowsize", "64"]]);
  });

  test("capped by the byte limit, with the negotiated blksize", () => {
    const limits = { ...LIMITS, windowBytesMax: 64 * 1024 };
    const r = accepted(
      negotiate(
        req([
          ["windowsize", "64"],
          ["blksize", "8192"],
        ]),
        limits,
        10,
      ),
    );
    expect(r.blksize).toBe(8192);
    expect(r.windowsize).toBe(8);
    expect(r.oack).toEqual([
      ["windowsize", "8"],
      ["blksize", "8192"],
    ]);
    // the byte limit never takes the window below one block
    const tiny = accepted(negotiate(req([["windowsize", "4"], ["blksize", "65464"]]), { ...LIMITS, windowBytesMax: 1000 }, 10));
    expect(tiny.windowsize).toBe(1);
    // without blksize the byte limit divides by 512
    const dflt = accepted(negotiate(req([["windowsize", "64"]]), { ...LIMITS, windowBytesMax: 2048 }, 10));
    expect(dflt.windowsize).toBe(4);
  });
});

describe("the OACK as a whole (RFC 2347)", () => {
  test("unknown options are ignored and never acked", () => {
    const r = accepted(
      negotiate(
        req([
          ["multicast", ""],
          ["blksize", "1024"],
          ["rollover", "0"],
        ]),
        LIMITS,
        10,
      ),
    );
    expect(r.oack).toEqual([["blksize", "1024"]]);
    expect(r.requested).toEqual(["blksize"]);
  });

  test("no known options → no OACK (plain RFC 1350)", () => {
    const r = accepted(negotiate(req([["foo", "1"]]), LIMITS, 10));
    expect(r.oack).toBeNull();
    expect(r.requested).toEqual([]);
    expect(accepted(negotiate(req([]), LIMITS, 10)).oack).toBeNull();
    const d = accepted(negotiate(req([]), LIMITS, 10));
    expect([d.blksize, d.windowsize, d.timeoutMs]).toEqual([512, 1, null]);
  });

  test("only invalid known options → no OACK, defaults", () => {
    const r = accepted(negotiate(req([["blksize", "1"], ["timeout", "0"], ["windowsize", "0"]]), LIMITS, 10));
    expect(r.oack).toBeNull();
    expect(r.requested).toEqual(["blksize", "timeout", "windowsize"]);
  });

  test("the OACK follows the request's order", () => {
    const orders: [string, string][][] = [
      [["tsize", "0"], ["blksize", "1024"], ["timeout", "3"], ["windowsize", "4"]],
      [["windowsize", "4"], ["timeout", "3"], ["blksize", "1024"], ["tsize", "0"]],
      [["timeout", "3"], ["tsize", "0"], ["windowsize", "4"], ["blksize", "1024"]],
    ];
    for (const options of orders) {
      const oack = oackOf(options, LIMITS, 77)!;
      expect(oack.map(([name]) => name)).toEqual(options.map(([name]) => name));
    }
  });

  test("options decoded from the wire: upper-case names, duplicates (first wins)", () => {
    const wire = encodeRequest(Opcode.RRQ, "f", "octet", [
      ["BLKSIZE", "1024"],
      ["blksize", "8"],
      ["TSize", "0"],
    ]);
    const d = decodePacket(wire);
    if (!d.ok || d.packet.op !== Opcode.RRQ) throw new Error("decode failed");
    const r = accepted(negotiate(d.packet, LIMITS, 42));
    expect(r.oack).toEqual([
      ["blksize", "1024"],
      ["tsize", "42"],
    ]);
  });
});

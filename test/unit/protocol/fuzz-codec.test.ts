/**
 * Property-based fuzzing of the pure protocol code (fast-check): random and mutated datagrams
 * never make the codec throw, every undecodable datagram gets the ERROR code (or the silence)
 * the RFCs ask for, what is encoded decodes back to itself, option negotiation never grants
 * more than the server's limits or acknowledges what the client did not ask for, and netascii
 * survives any byte string cut into any blocks.
 *
 * Runs are seeded per test run by fast-check; a failure prints the seed and the shrunk input
 * to replay it (`fc.assert(..., { seed, path })`).
 */
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import fc from "fast-check";
import {
  decodePacket,
  encodeAck,
  encodeData,
  encodeError,
  encodeOack,
  encodeRequest,
  MAX_REQUEST_SIZE,
} from "../../../src/protocol/codec.ts";
import { fromNetascii, NetasciiDecoder, toNetascii } from "../../../src/protocol/netascii.ts";
import {
  BLKSIZE_MAX,
  BLKSIZE_MIN,
  KNOWN_OPTIONS,
  negotiate,
  TIMEOUT_MAX,
  TIMEOUT_MIN,
  WINDOWSIZE_MAX,
  type NegotiationLimits,
} from "../../../src/protocol/options.ts";
import { DEFAULT_BLKSIZE, ErrorCode, Opcode, type TransferMode } from "../../../src/protocol/packet.ts";

const RUNS = 2000;
// thousands of runs per property: seconds on a busy machine, not the default 5 s
setDefaultTimeout(30_000);
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function isUtf8(bytes: Uint8Array): boolean {
  try {
    strictUtf8.decode(bytes);
    return true;
  } catch {
    return false;
  }
}

/**
 * What the RFCs ask of an undecodable datagram, written from RFC 1350 §5 / RFC 2347 and the
 * codec's documented choices rather than from its code: the reply code, or null for silence.
 * Returns "packet" when the datagram is a well-formed packet.
 */
function expectedVerdict(bytes: Uint8Array): number | null | "packet" {
  if (bytes.length < 2) return null; // runt: nothing to answer
  const op = (bytes[0]! << 8) | bytes[1]!;
  if (op === Opcode.RRQ || op === Opcode.WRQ) {
    if (bytes.length > MAX_REQUEST_SIZE) return ErrorCode.ILLEGAL_OPERATION;
    const body = bytes.subarray(2);
    const firstNul = body.indexOf(0);
    if (firstNul < 0) return ErrorCode.ILLEGAL_OPERATION;
    const secondNul = body.indexOf(0, firstNul + 1);
    if (secondNul < 0) return ErrorCode.ILLEGAL_OPERATION;
    if (firstNul === 0) return ErrorCode.ILLEGAL_OPERATION; // empty name
    if (!isUtf8(body.subarray(0, firstNul))) return ErrorCode.ACCESS_VIOLATION;
    const mode = body.subarray(firstNul + 1, secondNul);
    const modeText = isUtf8(mode) ? strictUtf8.decode(mode).toLowerCase() : null;
    if (modeText !== "octet" && modeText !== "netascii") return ErrorCode.ILLEGAL_OPERATION;
    return "packet";
  }
  if (op === Opcode.DATA || op === Opcode.ACK) return bytes.length < 4 ? ErrorCode.ILLEGAL_OPERATION : "packet";
  if (op === Opcode.ERROR) return bytes.length < 4 ? null : "packet"; // never answer an ERROR
  if (op === Opcode.OACK) return "packet";
  return ErrorCode.ILLEGAL_OPERATION;
}

const modeArb = fc.constantFrom<TransferMode>("octet", "netascii");
/** Text without NUL (the field separator), over all of Unicode. */
const fieldText = (maxLength: number, minLength = 0) =>
  fc.string({ unit: "binary", minLength, maxLength }).filter((s) => !s.includes("\0"));
const optionName = fc.oneof(
  fc.constantFrom(...KNOWN_OPTIONS, "BLKSIZE", "TSize", "WindowSize", "multicast", "utimeout", "rollover"),
  fieldText(12, 1),
);
const optionValue = fc.oneof(
  fc.integer({ min: 0, max: 70000 }).map(String),
  fc.constantFrom("", "0", "-1", "08", "1e3", " 512", "512 ", "99999999999999", "4294967296", "NaN", "0x200"),
  fieldText(8),
);
const optionList = fc.array(fc.tuple(optionName, optionValue), { maxLength: 6 });

const requestArb = fc.record({
  op: fc.constantFrom(Opcode.RRQ, Opcode.WRQ),
  filename: fieldText(60, 1),
  mode: modeArb,
  options: optionList,
});

/** A valid datagram of any kind, as the codec would build it. */
const validDatagram = fc.oneof(
  requestArb.map((r) => encodeRequest(r.op, r.filename, r.mode, r.options)),
  fc.record({ block: fc.integer({ min: 0, max: 0xffff }), data: fc.uint8Array({ maxLength: 600 }) }).map((d) => encodeData(d.block, d.data)),
  fc.integer({ min: 0, max: 0xffff }).map(encodeAck),
  fc.record({ code: fc.integer({ min: 0, max: 0xffff }), message: fieldText(40) }).map((e) => encodeError(e.code, e.message)),
  optionList.map(encodeOack),
);

type Mutation =
  | { kind: "flip"; at: number; value: number }
  | { kind: "truncate"; at: number }
  | { kind: "insert"; at: number; bytes: Uint8Array }
  | { kind: "delete"; at: number; count: number }
  | { kind: "opcode"; value: number }
  | { kind: "repeat"; times: number };

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant("flip" as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ kind: fc.constant("truncate" as const), at: fc.nat() }),
  fc.record({ kind: fc.constant("insert" as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
  fc.record({ kind: fc.constant("delete" as const), at: fc.nat(), count: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ kind: fc.constant("opcode" as const), value: fc.integer({ min: 0, max: 0xffff }) }),
  fc.record({ kind: fc.constant("repeat" as const), times: fc.integer({ min: 2, max: 40 }) }),
);

/** Applies mutations in order (positions taken modulo the current length). */
function mutate(datagram: Uint8Array, mutations: readonly Mutation[]): Uint8Array {
  let bytes = Array.from(datagram);
  for (const m of mutations) {
    const at = bytes.length === 0 ? 0 : ("at" in m ? m.at % (bytes.length + 1) : 0);
    switch (m.kind) {
      case "flip":
        if (bytes.length > 0) bytes[at % bytes.length] = m.value;
        break;
      case "truncate":
        bytes = bytes.slice(0, at);
        break;
      case "insert":
        bytes.splice(at, 0, ...m.bytes);
        break;
      case "delete":
        bytes.splice(at, m.count);
        break;
      case "opcode":
        bytes[0] = m.value >>> 8;
        bytes[1] = m.value & 0xff;
        break;
      case "repeat":
        bytes = Array.from({ length: m.times }, () => bytes).flat();
        break;
    }
  }
  return Uint8Array.from(bytes);
}

const mutatedDatagram = fc.tuple(validDatagram, fc.array(mutationArb, { minLength: 1, maxLength: 4 })).map(([d, m]) => mutate(d, m));
/** Random bytes, biased towards the opcodes that exist so the deeper paths get reached. */
const randomDatagram = fc.oneof(
  fc.uint8Array({ maxLength: 1500 }),
  fc.tuple(fc.integer({ min: 0, max: 7 }), fc.uint8Array({ maxLength: 100 })).map(([op, rest]) => Uint8Array.of(0, op, ...rest)),
);
const anyDatagram = fc.oneof(randomDatagram, mutatedDatagram, validDatagram);

describe("decodePacket on hostile input", () => {
  test("never throws, and answers exactly what the RFCs ask: the right ERROR code, or silence", () => {
    fc.assert(
      fc.property(anyDatagram, (bytes) => {
        const result = decodePacket(bytes);
        const verdict = expectedVerdict(bytes);
        if (verdict === "packet") {
          expect(result.ok).toBe(true);
        } else {
          expect(result).toMatchObject({ ok: false, reply: verdict });
          if (!result.ok) expect(result.message.length).toBeGreaterThan(0);
        }
      }),
      { numRuns: RUNS * 3 },
    );
  });

  test("a decoded DATA is a view of the datagram's payload, and an ACK's block is its bytes 2-3", () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 4, maxLength: 700 }), fc.constantFrom(Opcode.DATA, Opcode.ACK), (raw, op) => {
        const bytes = Uint8Array.of(0, op, ...raw.subarray(2));
        const result = decodePacket(bytes);
        if (!result.ok) throw new Error(result.message);
        const block = (bytes[2]! << 8) | bytes[3]!;
        expect(result.packet).toMatchObject({ op, block });
        if (result.packet.op === Opcode.DATA) expect(result.packet.data).toEqual(bytes.subarray(4));
      }),
      { numRuns: RUNS },
    );
  });
});

describe("decode(encode(x)) round-trips", () => {
  test("requests: name, mode (any case), options with names folded to lower case, first one winning", () => {
    fc.assert(
      fc.property(requestArb, fc.boolean(), (request, upper) => {
        const wireMode = (upper ? request.mode.toUpperCase() : request.mode) as TransferMode;
        const bytes = encodeRequest(request.op, request.filename, wireMode, request.options);
        const result = decodePacket(bytes);
        if (bytes.length > MAX_REQUEST_SIZE) {
          expect(result).toMatchObject({ ok: false, reply: ErrorCode.ILLEGAL_OPERATION });
          return;
        }
        const expected = new Map<string, string>();
        // a trailing name without its value is no option; an empty name is none either
        for (const [name, value] of request.options) {
          const key = name.toLowerCase();
          if (key !== "" && !expected.has(key)) expected.set(key, value);
        }
        expect(result).toEqual({ ok: true, packet: { op: request.op, filename: request.filename, mode: request.mode, options: expected } });
      }),
      { numRuns: RUNS },
    );
  });

  test("DATA, ACK, ERROR and OACK", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 0xffff }),
        fc.uint8Array({ maxLength: 1500 }),
        fc.integer({ min: 0, max: 0xffff }),
        fieldText(80),
        fc.uniqueArray(fc.tuple(fieldText(12, 1), fieldText(12)), { maxLength: 6, selector: ([name]) => name.toLowerCase() }),
        (block, payload, code, message, options) => {
          expect(decodePacket(encodeData(block, payload))).toEqual({ ok: true, packet: { op: Opcode.DATA, block, data: payload } });
          expect(decodePacket(encodeAck(block))).toEqual({ ok: true, packet: { op: Opcode.ACK, block } });
          expect(decodePacket(encodeError(code, message))).toEqual({ ok: true, packet: { op: Opcode.ERROR, code, message } });
          const oack = decodePacket(encodeOack(options));
          expect(oack).toEqual({ ok: true, packet: { op: Opcode.OACK, options: new Map(options.map(([n, v]) => [n.toLowerCase(), v])) } });
        },
      ),
      { numRuns: RUNS },
    );
  });
});

describe("option negotiation never grants beyond the limits", () => {
  const limitsArb: fc.Arbitrary<NegotiationLimits> = fc.record({
    blksizeMax: fc.integer({ min: BLKSIZE_MIN, max: BLKSIZE_MAX }),
    windowsizeMax: fc.integer({ min: 1, max: WINDOWSIZE_MAX }),
    windowBytesMax: fc.integer({ min: 1, max: 1 << 26 }),
    uploadMax: fc.integer({ min: 0, max: 1 << 30 }),
    refused: fc.constantFrom<ReadonlySet<string>>(new Set(["tsize"]), new Set(["blksize", "windowsize"]), new Set<string>()),
  });

  test("granted values stay within the limits and the RFC ranges; only options asked for are acknowledged", () => {
    fc.assert(
      fc.property(
        requestArb,
        limitsArb,
        fc.option(fc.integer({ min: 0, max: 2 ** 40 }), { nil: null }),
        (request, limits, size) => {
          const options = new Map<string, string>();
          for (const [name, value] of request.options) if (!options.has(name.toLowerCase())) options.set(name.toLowerCase(), value);
          const result = negotiate({ op: request.op, mode: request.mode, options }, limits, size);
          if (!result.ok) {
            // the one refusal: an upload announced bigger than the server stores
            expect(request.op).toBe(Opcode.WRQ);
            expect(result.code).toBe(ErrorCode.DISK_FULL);
            expect(Number(options.get("tsize"))).toBeGreaterThan(limits.uploadMax);
            return;
          }
          const acked = new Map(result.oack ?? []);
          if (acked.has("blksize")) {
            expect(result.blksize).toBeGreaterThanOrEqual(BLKSIZE_MIN);
            expect(result.blksize).toBeLessThanOrEqual(Math.min(limits.blksizeMax, Number(options.get("blksize"))));
            expect(acked.get("blksize")).toBe(String(result.blksize));
          } else {
            expect(result.blksize).toBe(DEFAULT_BLKSIZE);
          }
          expect(result.windowsize).toBeGreaterThanOrEqual(1);
          if (acked.has("windowsize")) {
            expect(result.windowsize).toBeLessThanOrEqual(Math.min(limits.windowsizeMax, Number(options.get("windowsize"))));
            expect(result.windowsize === 1 || result.windowsize * result.blksize <= limits.windowBytesMax).toBe(true);
            expect(acked.get("windowsize")).toBe(String(result.windowsize));
          } else {
            expect(result.windowsize).toBe(1);
          }
          if (acked.has("timeout")) {
            expect(result.timeoutMs).toBe(Number(acked.get("timeout")) * 1000);
            expect(Number(acked.get("timeout"))).toBeGreaterThanOrEqual(TIMEOUT_MIN);
            expect(Number(acked.get("timeout"))).toBeLessThanOrEqual(TIMEOUT_MAX);
          } else {
            expect(result.timeoutMs).toBeNull();
          }
          if (acked.has("tsize")) {
            if (request.op === Opcode.RRQ) {
              // a read tells the real size of an octet transfer, and nothing when it is unknown
              expect(request.mode).toBe("octet");
              expect(acked.get("tsize")).toBe(String(size));
            } else {
              expect(Number(acked.get("tsize"))).toBeLessThanOrEqual(limits.uploadMax);
            }
          }
          for (const name of acked.keys()) {
            expect(options.has(name)).toBe(true);
            expect((KNOWN_OPTIONS as readonly string[]).includes(name)).toBe(true);
            expect(limits.refused?.has(name) ?? false).toBe(false);
            expect(acked.get(name)).toMatch(/^[0-9]+$/);
          }
          expect(result.oack === null || result.oack.length > 0).toBe(true);
        },
      ),
      { numRuns: RUNS * 2 },
    );
  });
});

describe("netascii", () => {
  test("host bytes survive the wire form, whatever blocks it is cut into", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 400 }).chain((b) => fc.tuple(fc.constant(b), fc.array(fc.nat(), { maxLength: 10 }))),
        ([host, cuts]) => {
          const wire = toNetascii(host);
          expect(fromNetascii(wire)).toEqual(host);
          const decoder = new NetasciiDecoder();
          const points = [...new Set(cuts.map((c) => c % (wire.length + 1)))].sort((a, b) => a - b);
          const pieces: number[] = [];
          let from = 0;
          for (const at of [...points, wire.length]) {
            pieces.push(...decoder.push(wire.subarray(from, at)));
            from = at;
          }
          pieces.push(...decoder.end());
          expect(Uint8Array.from(pieces)).toEqual(host);
        },
      ),
      { numRuns: RUNS },
    );
  });

  test("any bytes decode without throwing, the same cut or whole, and never grow", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), fc.nat(), (wire, cut) => {
        const whole = fromNetascii(wire);
        expect(whole.length).toBeLessThanOrEqual(wire.length);
        const at = cut % (wire.length + 1);
        const decoder = new NetasciiDecoder();
        const pieces = [...decoder.push(wire.subarray(0, at)), ...decoder.push(wire.subarray(at)), ...decoder.end()];
        expect(Array.from(whole)).toEqual(pieces);
      }),
      { numRuns: RUNS },
    );
  });
});

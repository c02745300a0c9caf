import { describe, expect, test } from "bun:test";
import { fromNetascii, NetasciiDecoder, toNetascii } from "../../../src/protocol/netascii.ts";

const CR = 0x0d;
const LF = 0x0a;
const NUL = 0;

const b = (...xs: (number | string)[]): Uint8Array =>
  Uint8Array.from(xs.flatMap((x) => (typeof x === "string" ? [...Buffer.from(x)] : [x])));
const arr = (u: Uint8Array): number[] => [...u];

/** Decodes `wire` fed in the given chunk lengths. */
function decodeChunked(wire: Uint8Array, cuts: number[]): Uint8Array {
  const d = new NetasciiDecoder();
  const out: number[] = [];
  let at = 0;
  for (const len of cuts) {
    out.push(...d.push(wire.subarray(at, at + len)));
    at += len;
  }
  out.push(...d.push(wire.subarray(at)));
  out.push(...d.end());
  return Uint8Array.from(out);
}

describe("toNetascii", () => {
  test("LF → CR LF", () => {
    expect(arr(toNetascii(b("a\nb\n")))).toEqual(arr(b("a", CR, LF, "b", CR, LF)));
  });

  test("bare CR → CR NUL", () => {
    expect(arr(toNetascii(b("a\rb")))).toEqual(arr(b("a", CR, NUL, "b")));
    expect(arr(toNetascii(b(CR)))).toEqual([CR, NUL]);
  });

  test("host CR LF becomes CR NUL CR LF (the CR is data)", () => {
    expect(arr(toNetascii(b("x\r\n")))).toEqual(arr(b("x", CR, NUL, CR, LF)));
  });

  test("no line ends: the same bytes come back", () => {
    const input = b("plain text\tno newline");
    expect(toNetascii(input)).toBe(input);
    expect(toNetascii(new Uint8Array(0)).length).toBe(0);
  });

  test("NUL and high bytes pass through", () => {
    expect(arr(toNetascii(b(0, 0xff, LF, 0x80)))).toEqual([0, 0xff, CR, LF, 0x80]);
  });
});

describe("NetasciiDecoder", () => {
  test("CR LF → LF and CR NUL → CR", () => {
    const d = new NetasciiDecoder();
    expect(arr(d.push(b("a", CR, LF, "b", CR, NUL, "c")))).toEqual(arr(b("a\nb\rc")));
    expect(d.end().length).toBe(0);
  });

  test("a CR split from its LF across chunks", () => {
    const d = new NetasciiDecoder();
    expect(arr(d.push(b("ab", CR)))).toEqual(arr(b("ab")));
    expect(arr(d.push(b(LF, "cd")))).toEqual(arr(b("\ncd")));
    expect(d.end().length).toBe(0);
  });

  test("a CR split from its NUL across chunks", () => {
    const d = new NetasciiDecoder();
    expect(arr(d.push(b(CR)))).toEqual([]);
    expect(arr(d.push(b(NUL)))).toEqual([CR]);
  });

  test("an empty chunk keeps a pending CR pending", () => {
    const d = new NetasciiDecoder();
    d.push(b("x", CR));
    expect(arr(d.push(new Uint8Array(0)))).toEqual([]);
    expect(arr(d.push(b(LF)))).toEqual([LF]);
  });

  test("a lone CR at the very end is flushed by end()", () => {
    const d = new NetasciiDecoder();
    expect(arr(d.push(b("end", CR)))).toEqual(arr(b("end")));
    expect(arr(d.end())).toEqual([CR]);
    expect(d.end().length).toBe(0);
  });

  test("invalid CR + other byte keeps both bytes", () => {
    expect(arr(fromNetascii(b(CR, "x")))).toEqual(arr(b(CR, "x")));
    expect(arr(decodeChunked(b(CR, "x"), [1]))).toEqual(arr(b(CR, "x")));
  });

  test("every chunking of a tricky input decodes the same", () => {
    const wire = b(CR, LF, CR, NUL, CR, "q", CR, CR, LF, "z", CR);
    const whole = arr(fromNetascii(wire));
    for (let i = 0; i <= wire.length; i++) {
      for (let j = 0; i + j <= wire.length; j++) {
        expect(arr(decodeChunked(wire, [i, j]))).toEqual(whole);
      }
    }
    expect(arr(decodeChunked(wire, Array(wire.length).fill(1)))).toEqual(whole);
  });

  test("round trip: fromNetascii(toNetascii(x)) == x for random bytes, any chunking", () => {
    let seed = 12345;
    const rand = (): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed >>> 16;
    };
    const alphabet = [CR, LF, NUL, 0x41, 0x0d, 0x0a, 0xff];
    for (let round = 0; round < 300; round++) {
      const n = rand() % 200;
      const host = Uint8Array.from({ length: n }, () => alphabet[rand() % alphabet.length]!);
      const wire = toNetascii(host);
      expect(arr(fromNetascii(wire))).toEqual(arr(host));
      const cuts = Array.from({ length: 5 }, () => rand() % 17);
      expect(arr(decodeChunked(wire, cuts))).toEqual(arr(host));
    }
  });

  test("block-sized chunks with the CR on a block boundary", () => {
    // 511 'a' then "\n": on the wire CR is byte 512 (end of block 1), LF starts block 2
    const host = b("a".repeat(511), LF, "tail");
    const wire = toNetascii(host);
    expect(wire[511]).toBe(CR);
    expect(wire[512]).toBe(LF);
    expect(arr(decodeChunked(wire, [512]))).toEqual(arr(host));
  });
});

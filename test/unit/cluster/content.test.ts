/** The shared cache's pure parts: chunking, per-chunk compression, verification, manifests. */
import { describe, expect, test } from "bun:test";
import { decodeChunk, encodeChunks, parseManifest, sha256Hex } from "../../../src/cluster/content.ts";
import { patternBytes } from "../../helpers/files.ts";

const off = { enabled: false, level: 6, minSize: 1024 };
const gzip = { enabled: true, level: 6, minSize: 1024 };

describe("encodeChunks / decodeChunk", () => {
  test("splits at the chunk size and decodes back to the same bytes", () => {
    const bytes = patternBytes(10_000, 3);
    const { refs, payloads } = encodeChunks(bytes, 4096, off);
    expect(refs.map((r) => r.stored)).toEqual([4096, 4096, 1808]);
    const back = Buffer.concat(refs.map((r, i) => decodeChunk(r, payloads[i]!)));
    expect(back.equals(Buffer.from(bytes))).toBe(true);
    expect(refs[0]!.sha256).toBe(sha256Hex(bytes.subarray(0, 4096)));
  });

  test("an empty file has no chunks", () => {
    expect(encodeChunks(new Uint8Array(0), 4096, gzip).refs).toEqual([]);
  });

  test("gzip only where it makes a chunk smaller, and never below min_size", () => {
    const text = new TextEncoder().encode("kernel vmlinuz initrd=initrd.img\n".repeat(300)); // ~10 KB, compresses
    const random = patternBytes(8192, 9); // does not compress
    const tiny = new TextEncoder().encode("a".repeat(500)); // compresses, but under min_size
    expect(encodeChunks(text, 65536, gzip).refs[0]!.encoding).toBe("gzip");
    expect(encodeChunks(text, 65536, gzip).refs[0]!.stored).toBeLessThan(text.length / 10);
    expect(encodeChunks(random, 65536, gzip).refs[0]!.encoding).toBe("raw");
    expect(encodeChunks(tiny, 65536, gzip).refs[0]!.encoding).toBe("raw");
    expect(encodeChunks(text, 65536, off).refs[0]!.encoding).toBe("raw");
    const { refs, payloads } = encodeChunks(text, 4096, gzip);
    expect(Buffer.concat(refs.map((r, i) => decodeChunk(r, payloads[i]!))).equals(Buffer.from(text))).toBe(true);
  });

  test("a changed byte, a truncated chunk or broken gzip is refused", () => {
    const bytes = patternBytes(5000, 4);
    const { refs, payloads } = encodeChunks(bytes, 8192, off);
    const flipped = Uint8Array.from(payloads[0]!);
    flipped[10] = flipped[10]! ^ 1;
    expect(() => decodeChunk(refs[0]!, flipped)).toThrow("does not match its sha256");
    expect(() => decodeChunk(refs[0]!, payloads[0]!.subarray(0, 4000))).toThrow("does not match its sha256");
    const text = new TextEncoder().encode("x".repeat(5000));
    const z = encodeChunks(text, 8192, gzip);
    expect(() => decodeChunk(z.refs[0]!, z.payloads[0]!.subarray(0, 10))).toThrow("corrupt (gzip)");
  });
});

describe("parseManifest", () => {
  const fields = {
    name: "boot/initrd.img",
    size: "5000",
    sha256: "ab".repeat(32),
    mtime: "1700000000000",
    chunk_size: "4096",
    compression: "gzip",
    chunks: JSON.stringify([["cd".repeat(32), "gzip", 300], ["ef".repeat(32), "raw", 904]]),
    stored: "1204",
    published_at: "1700000001000",
    ttl: "0",
  };

  test("reads every field", () => {
    const m = parseManifest(fields)!;
    expect(m.size).toBe(5000);
    expect(m.chunks).toEqual([
      { sha256: "cd".repeat(32), encoding: "gzip", stored: 300 },
      { sha256: "ef".repeat(32), encoding: "raw", stored: 904 },
    ]);
    expect(m.ttlS).toBe(0);
    expect(m.compression).toBe("gzip");
  });

  test("a missing or damaged hash is no manifest", () => {
    expect(parseManifest({})).toBeNull();
    expect(parseManifest({ ...fields, chunks: "[not json" })).toBeNull();
    expect(parseManifest({ ...fields, sha256: "" })).toBeNull();
  });
});

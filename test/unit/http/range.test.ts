import { describe, expect, test } from "bun:test";
import { rangeFor } from "../../../src/http/range.ts";
import { contentTypeOf, etagOf } from "../../../src/http/validators.ts";

const ETAG = '"1-2-3-4-5"';

describe("rangeFor", () => {
  test("no Range: the whole file", () => {
    expect(rangeFor(null, null, ETAG, 100)).toEqual({ kind: "whole" });
  });
  test("a closed range, clipped to the end", () => {
    expect(rangeFor("bytes=10-19", null, ETAG, 100)).toEqual({ kind: "part", start: 10, end: 19 });
    expect(rangeFor("bytes=90-200", null, ETAG, 100)).toEqual({ kind: "part", start: 90, end: 99 });
  });
  test("an open range and a suffix", () => {
    expect(rangeFor("bytes=95-", null, ETAG, 100)).toEqual({ kind: "part", start: 95, end: 99 });
    expect(rangeFor("bytes=-5", null, ETAG, 100)).toEqual({ kind: "part", start: 95, end: 99 });
    expect(rangeFor("bytes=-500", null, ETAG, 100)).toEqual({ kind: "part", start: 0, end: 99 });
  });
  test("unsatisfiable: starting at or past the end, an empty suffix, any range of an empty file", () => {
    expect(rangeFor("bytes=100-", null, ETAG, 100)).toEqual({ kind: "unsatisfiable" });
    expect(rangeFor("bytes=-0", null, ETAG, 100)).toEqual({ kind: "unsatisfiable" });
    expect(rangeFor("bytes=0-", null, ETAG, 0)).toEqual({ kind: "unsatisfiable" });
  });
  test("ignored (the whole file): several ranges, another unit, a reversed range, garbage", () => {
    for (const h of ["bytes=0-1,5-6", "items=0-1", "bytes=9-1", "bytes=-", "bytes=a-b", ""]) {
      expect({ h, r: rangeFor(h, null, ETAG, 100) }).toEqual({ h, r: { kind: "whole" } });
    }
  });
  test("If-Range: only the current strong ETag keeps the range", () => {
    expect(rangeFor("bytes=0-9", ETAG, ETAG, 100)).toEqual({ kind: "part", start: 0, end: 9 });
    expect(rangeFor("bytes=0-9", '"other"', ETAG, 100)).toEqual({ kind: "whole" });
    expect(rangeFor("bytes=0-9", `W/${ETAG}`, ETAG, 100)).toEqual({ kind: "whole" });
    expect(rangeFor("bytes=0-9", "Sat, 05 Dec 2026 10:00:00 GMT", ETAG, 100)).toEqual({ kind: "whole" });
    // a source without an ETag never resumes across versions
    expect(rangeFor("bytes=0-9", ETAG, null, 100)).toEqual({ kind: "whole" });
  });
});

describe("validators", () => {
  const identity = { dev: 2049, ino: 1234, size: 100, mtimeMs: 1_700_000_000_123.5, ctimeMs: 1_700_000_000_200 };
  test("the ETag changes with every part of the version identity", () => {
    const base = etagOf(identity)!;
    expect(base).toMatch(/^"[0-9a-f-]+"$/);
    for (const change of [{ ino: 1235 }, { size: 101 }, { mtimeMs: identity.mtimeMs + 0.001 }, { ctimeMs: identity.ctimeMs + 1 }, { dev: 2050 }]) {
      expect(etagOf({ ...identity, ...change })).not.toBe(base);
    }
    expect(etagOf({ ...identity })).toBe(base);
  });
  test("bytes made in memory have no ETag", () => {
    expect(etagOf({ dev: 0, ino: 0, size: 10, mtimeMs: 0, ctimeMs: 0 })).toBeNull();
  });
  test("content types by extension, case-insensitive; none for dotfiles and names without one", () => {
    const types = { ".efi": "application/efi", ".ipxe": "text/plain" };
    expect(contentTypeOf("bios/ipxe.EFI", types)).toBe("application/efi");
    expect(contentTypeOf("boot.ipxe", types)).toBe("text/plain");
    expect(contentTypeOf("pxelinux.0", types)).toBe("application/octet-stream");
    expect(contentTypeOf("dir.d/.efi", types)).toBe("application/octet-stream");
    expect(contentTypeOf("vmlinuz", types)).toBe("application/octet-stream");
  });
});

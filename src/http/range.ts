/**
 * What part of a file an HTTP GET answers (RFC 9110 §14): the whole file, one byte range
 * (206), or none the file can satisfy (416). Only single ranges: a multi-range request is
 * answered whole, which the RFC allows and boot clients never send. `If-Range` with the
 * current strong ETag keeps the range; any other value (a stale ETag, a date, a weak ETag)
 * answers the whole file, so a client resuming a download never splices two versions.
 */
export type RangeAnswer =
  | { readonly kind: "whole" }
  | { readonly kind: "part"; readonly start: number; readonly end: number }
  | { readonly kind: "unsatisfiable" };

const WHOLE: RangeAnswer = { kind: "whole" };

export function rangeFor(range: string | null, ifRange: string | null, etag: string | null, size: number): RangeAnswer {
  if (range === null) return WHOLE;
  if (ifRange !== null && (etag === null || ifRange.trim() !== etag)) return WHOLE;
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(range);
  if (!m) return WHOLE; // not a single byte range we understand: ignored, as the RFC allows
  const [first, last] = [m[1]!, m[2]!];
  if (first === "" && last === "") return WHOLE;
  if (first === "") {
    // the last N bytes
    const n = Number(last);
    if (n === 0 || size === 0) return { kind: "unsatisfiable" };
    return { kind: "part", start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(first);
  if (last !== "" && Number(last) < start) return WHOLE; // invalid: ignored
  if (start >= size) return { kind: "unsatisfiable" };
  const end = last === "" ? size - 1 : Math.min(Number(last), size - 1);
  return { kind: "part", start, end };
}

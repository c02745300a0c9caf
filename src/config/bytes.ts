// Byte sizes in config files: an integer number of bytes, or a string with an optional unit.
//
//   512, "512", "512B"        512 bytes
//   "64K", "64KB", "64kB"     64 * 1000        (SI, powers of 1000)
//   "64Ki", "64KiB"           64 * 1024        (IEC, powers of 1024)
//   "1.5Gi"                   1610612736       (fractions allowed when the result is whole bytes)
//
// Units: K, M, G, T, P (case-insensitive letter), optional "i" for binary, optional "B".
// Spaces between number and unit are allowed ("10 MB").

export type ByteSizeResult = { ok: true; bytes: number } | { ok: false; error: string };

const POWERS: Record<string, number> = { "": 0, K: 1, M: 2, G: 3, T: 4, P: 5 };

const PATTERN = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kmgtp]?)(i?)(b?)\s*$/i;

export const BYTE_SIZE_HINT = 'a byte size (an integer, or a string like "512", "64Ki", "32Gi", "10MB")';

/** Parse a byte size; never throws. */
export function parseByteSize(input: unknown): ByteSizeResult {
  let bytes: number;
  if (typeof input === "number") {
    bytes = input;
  } else if (typeof input === "string") {
    const m = PATTERN.exec(input);
    if (!m) return { ok: false, error: `expected ${BYTE_SIZE_HINT}, got ${JSON.stringify(input)}` };
    const [, num = "", unitRaw = "", binary = "", bSuffix = ""] = m;
    const unit = unitRaw.toUpperCase();
    // "5i" or "5iB" without a unit letter is not a size; "B" alone is fine.
    if (binary && !unit) return { ok: false, error: `expected ${BYTE_SIZE_HINT}, got ${JSON.stringify(input)}` };
    void bSuffix;
    const base = binary ? 1024 : 1000;
    const power = POWERS[unit] ?? 0;
    bytes = Number(num) * base ** power;
    // Tolerate float noise from decimal fractions ("1.1K" = 1100.0000000000002).
    const rounded = Math.round(bytes);
    if (Math.abs(bytes - rounded) < 1e-6 * Math.max(1, bytes)) bytes = rounded;
  } else {
    return { ok: false, error: `expected ${BYTE_SIZE_HINT}, got ${describeValue(input)}` };
  }
  if (!Number.isFinite(bytes) || !Number.isInteger(bytes)) {
    return { ok: false, error: `expected a whole number of bytes, got ${describeValue(input)}` };
  }
  if (bytes < 0) return { ok: false, error: `expected a byte size >= 0, got ${describeValue(input)}` };
  if (!Number.isSafeInteger(bytes)) return { ok: false, error: `byte size too large: ${describeValue(input)}` };
  return { ok: true, bytes };
}

/** Format bytes with the largest exact binary unit: 4294967296 -> "4Gi", 1000 -> "1000". */
export function formatByteSize(bytes: number): string {
  const units = ["", "Ki", "Mi", "Gi", "Ti", "Pi"];
  let n = bytes;
  let i = 0;
  while (n !== 0 && n % 1024 === 0 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return i === 0 ? String(bytes) : `${n}${units[i]}`;
}

/** Short rendering of any value for error messages. */
export function describeValue(v: unknown): string {
  if (v === undefined) return "nothing";
  if (v === null) return "null";
  if (typeof v === "string") {
    const s = JSON.stringify(v);
    return s.length > 64 ? `${s.slice(0, 60)}..."` : s;
  }
  if (typeof v === "number" || typeof v === "boolean" || typeof v === "bigint") return String(v);
  if (Array.isArray(v)) return "an array";
  if (typeof v === "object") return "an object";
  return typeof v;
}

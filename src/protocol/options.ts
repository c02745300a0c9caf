/**
 * Option negotiation (RFC 2347) for blksize (RFC 2348), timeout and tsize (RFC 2349) and
 * windowsize (RFC 7440). Pure: the caller passes the request, the server's bounds and,
 * for reads, the size of what will be sent.
 */
import { DEFAULT_BLKSIZE, ErrorCode, type RequestPacket } from "./packet.ts";

export interface NegotiationLimits {
  /** Largest blksize the server will answer (configured, ≤ 65464). */
  blksizeMax: number;
  /** Largest windowsize in blocks. */
  windowsizeMax: number;
  /** Largest window in bytes: windowsize × blksize never exceeds it. */
  windowBytesMax: number;
  /** Largest upload accepted, for a WRQ's tsize. */
  uploadMax: number;
  /**
   * Options never acknowledged (some boot ROMs break on one): treated as unknown (RFC 2347),
   * still listed in `requested`.
   */
  refused?: ReadonlySet<string>;
}

export interface Negotiated {
  blksize: number;
  windowsize: number;
  /** Retransmit timeout the client fixed with the timeout option, else null. */
  timeoutMs: number | null;
  /** Options to send back in an OACK, in the client's order; null means no OACK (RFC 1350). */
  oack: [string, string][] | null;
  /** Known options the client asked for, for metrics (even when not acknowledged). */
  requested: string[];
}

export type NegotiationResult =
  | ({ ok: true } & Negotiated)
  | { ok: false; code: ErrorCode; message: string };

/** RFC 2348: "valid values range between 8 and 65464 octets, inclusive". */
export const BLKSIZE_MIN = 8;
export const BLKSIZE_MAX = 65464;
/** RFC 2349: "valid values range between 1 and 255 seconds, inclusive". */
export const TIMEOUT_MIN = 1;
export const TIMEOUT_MAX = 255;
/** RFC 7440 §3: "valid values range between 1 and 65535 blocks, inclusive". */
export const WINDOWSIZE_MIN = 1;
export const WINDOWSIZE_MAX = 65535;

export const KNOWN_OPTIONS = ["blksize", "timeout", "tsize", "windowsize"] as const;

/** Option values are decimal ASCII numbers; anything else is not a value we can honour. */
function parseDecimal(value: string): number | null {
  if (!/^[0-9]{1,12}$/.test(value)) return null;
  return Number(value);
}

/**
 * @param size bytes that a read will send, or null when it is unknown (netascii: the
 *   converted length is not known up front, so tsize is not offered — RFC 2349 §"Transfer
 *   Size Option" defines tsize for octet transfers).
 */
export function negotiate(
  request: Pick<RequestPacket, "op" | "mode" | "options">,
  limits: NegotiationLimits,
  size: number | null,
): NegotiationResult {
  const isRead = request.op === 1;
  let blksize = DEFAULT_BLKSIZE;
  let windowsize = 1;
  let timeoutMs: number | null = null;
  const accepted = new Map<string, string>();
  const requested: string[] = [];

  for (const [name, raw] of request.options) {
    if (limits.refused?.has(name)) {
      if ((KNOWN_OPTIONS as readonly string[]).includes(name)) requested.push(name);
      continue;
    }
    const value = parseDecimal(raw);
    switch (name) {
      case "blksize":
        requested.push(name);
        // RFC 2348: a server may answer a smaller size, never a larger one; out of range → ignore.
        if (value !== null && value >= BLKSIZE_MIN && value <= BLKSIZE_MAX) {
          blksize = Math.min(value, limits.blksizeMax);
          accepted.set(name, String(blksize));
        }
        break;
      case "timeout":
        requested.push(name);
        // RFC 2349: out-of-range timeouts are not acknowledged (and not clamped).
        if (value !== null && value >= TIMEOUT_MIN && value <= TIMEOUT_MAX) {
          timeoutMs = value * 1000;
          accepted.set(name, String(value));
        }
        break;
      case "tsize":
        requested.push(name);
        if (value === null) break;
        if (isRead) {
          if (size !== null && request.mode === "octet") accepted.set(name, String(size));
        } else {
          // RFC 2349: on a WRQ the client states the size; refuse what we would not store.
          if (value > limits.uploadMax) {
            return { ok: false, code: ErrorCode.DISK_FULL, message: "file too large" };
          }
          accepted.set(name, String(value));
        }
        break;
      case "windowsize":
        requested.push(name);
        if (value !== null && value >= WINDOWSIZE_MIN && value <= WINDOWSIZE_MAX) {
          windowsize = value;
          accepted.set(name, raw);
        }
        break;
      default:
        // RFC 2347: unknown options are ignored, never acknowledged.
        break;
    }
  }

  if (accepted.has("windowsize")) {
    // RFC 7440 §3: the server may answer a smaller window. Bound it by blocks and by bytes.
    const byBytes = Math.max(1, Math.floor(limits.windowBytesMax / blksize));
    windowsize = Math.max(1, Math.min(windowsize, limits.windowsizeMax, byBytes));
    accepted.set("windowsize", String(windowsize));
  }

  return {
    ok: true,
    blksize,
    windowsize,
    timeoutMs,
    oack: accepted.size > 0 ? [...accepted] : null,
    requested,
  };
}

/**
 * Pure TFTP packet codec: bytes in, packets out, and back. No sockets, no files.
 *
 * Decoding is total: every input yields either a packet or a DecodeFailure that says whether
 * the sender deserves an ERROR reply (and which code) or the datagram is simply dropped.
 *
 * Text in requests is UTF-8, and how strictly it is read depends on what the text names:
 *  - the file name must be valid UTF-8, or the request is refused (ERROR 2, like every other
 *    name the server will not map onto a file). Names become file-system paths, and a lossy
 *    decode would fold different byte strings (`\xc0\xaf`, `\xff\xfe`) into one replacement
 *    character, i.e. one file; a refusal keeps names one to one with files. Keeping the raw
 *    bytes instead would need byte paths through remap, confinement, the cache and the fleet;
 *    boot names are ASCII, so nothing real is lost;
 *  - the mode must be valid UTF-8 too: invalid bytes can never spell a mode (ERROR 4, as for
 *    any unsupported mode);
 *  - option names and values are read leniently: an invalid byte becomes U+FFFD, which never
 *    spells a known option nor parses as a value, so such an option is ignored exactly like
 *    any other unknown option or bad value (RFC 2347), and a boot does not fail over padding;
 *  - ERROR messages and OACKs are read leniently: they are only shown, never looked up.
 * A leading byte-order mark is kept everywhere (never stripped), so it never makes two
 * different byte strings read the same.
 */
import {
  DATA_HEADER_SIZE,
  ErrorCode,
  Opcode,
  type OptionMap,
  type Packet,
  type RequestPacket,
  type TransferMode,
} from "./packet.ts";

export interface DecodeFailure {
  ok: false;
  /** ERROR code to answer with, or null when the datagram must be dropped silently. */
  reply: ErrorCode | null;
  message: string;
}
export type DecodeResult = { ok: true; packet: Packet } | DecodeFailure;

/**
 * RFC 2347 §"Packet Formats": a request must not exceed 512 octets. Real firmware stays
 * well inside it; we tolerate up to this many bytes before calling a request malformed.
 */
export const MAX_REQUEST_SIZE = 1024;

const lenient = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
const strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const encoder = new TextEncoder();

/** The text of `bytes` when they are valid UTF-8, else null (never throws). */
function decodeExact(bytes: Uint8Array): string | null {
  try {
    return strict.decode(bytes);
  } catch {
    return null;
  }
}

const drop = (message: string): DecodeFailure => ({ ok: false, reply: null, message });
const illegal = (message: string): DecodeFailure => ({
  ok: false,
  reply: ErrorCode.ILLEGAL_OPERATION,
  message,
});
/** A well-formed request for a name no file can have: code 2, like the names resolve.ts refuses. */
const refusedName = (message: string): DecodeFailure => ({
  ok: false,
  reply: ErrorCode.ACCESS_VIOLATION,
  message,
});

function readU16(bytes: Uint8Array, at: number): number {
  return ((bytes[at] ?? 0) << 8) | (bytes[at + 1] ?? 0);
}

/** The NUL-terminated fields from `start`, as views; a trailing unterminated piece is left out. */
function splitFields(bytes: Uint8Array, start: number): Uint8Array[] {
  const fields: Uint8Array[] = [];
  let from = start;
  for (let i = start; i < bytes.length; i++) {
    if (bytes[i] === 0) {
      fields.push(bytes.subarray(from, i));
      from = i + 1;
    }
  }
  return fields;
}

/**
 * RFC 2347: options follow the mode as name/value pairs, names case-insensitive.
 * A dangling name without a value, empty names and repeated names are ignored (first wins):
 * firmware pads requests with NULs and we must not refuse a boot over it.
 */
function parseOptions(fields: Uint8Array[]): OptionMap {
  const options: OptionMap = new Map();
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const name = lenient.decode(fields[i]).toLowerCase();
    if (name === "" || options.has(name)) continue;
    options.set(name, lenient.decode(fields[i + 1]));
  }
  return options;
}

function decodeRequest(op: RequestPacket["op"], bytes: Uint8Array): DecodeResult {
  if (bytes.length > MAX_REQUEST_SIZE) return illegal("request too long");
  const fields = splitFields(bytes, 2);
  // RFC 1350 §5: filename NUL mode NUL; both terminators are mandatory.
  const [nameBytes, modeBytes] = fields;
  if (nameBytes === undefined || modeBytes === undefined) return illegal("malformed request");
  if (nameBytes.length === 0) return illegal("empty file name");
  const filename = decodeExact(nameBytes);
  if (filename === null) return refusedName("file name is not valid UTF-8");
  const rawMode = decodeExact(modeBytes);
  const mode = rawMode?.toLowerCase(); // RFC 1350 §5: mode names in any combination of case
  if (mode !== "octet" && mode !== "netascii") {
    return illegal(`unsupported mode "${(rawMode ?? lenient.decode(modeBytes)).slice(0, 32)}"`);
  }
  return {
    ok: true,
    packet: { op, filename, mode, options: parseOptions(fields.slice(2)) },
  };
}

export function decodePacket(bytes: Uint8Array): DecodeResult {
  if (bytes.length < 2) return drop("runt datagram");
  const op = readU16(bytes, 0);
  switch (op) {
    case Opcode.RRQ:
    case Opcode.WRQ:
      return decodeRequest(op, bytes);
    case Opcode.DATA:
      if (bytes.length < DATA_HEADER_SIZE) return illegal("truncated DATA");
      return {
        ok: true,
        packet: { op, block: readU16(bytes, 2), data: bytes.subarray(DATA_HEADER_SIZE) },
      };
    case Opcode.ACK:
      // Some stacks pad short datagrams; anything past the block number is ignored.
      if (bytes.length < 4) return illegal("truncated ACK");
      return { ok: true, packet: { op, block: readU16(bytes, 2) } };
    case Opcode.ERROR: {
      // Never answer an ERROR (RFC 1350 §7): a malformed one is dropped.
      if (bytes.length < 4) return drop("truncated ERROR");
      const end = bytes.indexOf(0, 4);
      const message = lenient.decode(bytes.subarray(4, end < 0 ? bytes.length : end));
      return { ok: true, packet: { op, code: readU16(bytes, 2), message } };
    }
    case Opcode.OACK: {
      return { ok: true, packet: { op, options: parseOptions(splitFields(bytes, 2)) } };
    }
    default:
      return illegal("illegal TFTP operation");
  }
}

function cstrings(parts: readonly string[], head: Uint8Array): Uint8Array {
  const encoded = parts.map((p) => encoder.encode(p));
  const size = head.length + encoded.reduce((n, e) => n + e.length + 1, 0);
  const out = new Uint8Array(size);
  out.set(head, 0);
  let at = head.length;
  for (const e of encoded) {
    out.set(e, at);
    at += e.length + 1; // the NUL is already there: Uint8Array starts zeroed
  }
  return out;
}

function opHeader(op: Opcode, second?: number): Uint8Array {
  const head = new Uint8Array(second === undefined ? 2 : 4);
  head[1] = op;
  if (second !== undefined) {
    head[2] = (second >>> 8) & 0xff;
    head[3] = second & 0xff;
  }
  return head;
}

export function encodeRequest(
  op: RequestPacket["op"],
  filename: string,
  mode: TransferMode,
  options: Iterable<[string, string]> = [],
): Uint8Array {
  const parts = [filename, mode];
  for (const [name, value] of options) parts.push(name, value);
  return cstrings(parts, opHeader(op));
}

export function encodeAck(block: number): Uint8Array {
  return opHeader(Opcode.ACK, block & 0xffff);
}

export function encodeError(code: number, message: string): Uint8Array {
  return cstrings([message], opHeader(Opcode.ERROR, code));
}

export function encodeOack(options: Iterable<[string, string]>): Uint8Array {
  const parts: string[] = [];
  for (const [name, value] of options) parts.push(name, value);
  return cstrings(parts, opHeader(Opcode.OACK));
}

/** Writes a DATA header in place, so the payload can be read straight into the same buffer. */
export function writeDataHeader(packet: Uint8Array, block: number): void {
  packet[0] = 0;
  packet[1] = Opcode.DATA;
  packet[2] = (block >>> 8) & 0xff;
  packet[3] = block & 0xff;
}

export function encodeData(block: number, payload: Uint8Array): Uint8Array {
  const packet = new Uint8Array(DATA_HEADER_SIZE + payload.length);
  writeDataHeader(packet, block & 0xffff);
  packet.set(payload, DATA_HEADER_SIZE);
  return packet;
}

/** Cheap peek used on hot paths before a full decode. */
export function peekOpcode(bytes: Uint8Array): number {
  return bytes.length < 2 ? 0 : readU16(bytes, 0);
}

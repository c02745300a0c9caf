/**
 * TFTP packet types. RFC 1350 §5 defines the five opcodes; RFC 2347 adds OACK (6).
 * Packets are a discriminated union on `op`; the codec in codec.ts turns bytes into these
 * and back without touching any I/O.
 */

export const Opcode = {
  RRQ: 1,
  WRQ: 2,
  DATA: 3,
  ACK: 4,
  ERROR: 5,
  OACK: 6,
} as const;
export type Opcode = (typeof Opcode)[keyof typeof Opcode];

/** RFC 1350 Appendix "Error Codes", plus 8 from RFC 2347. */
export const ErrorCode = {
  NOT_DEFINED: 0,
  FILE_NOT_FOUND: 1,
  ACCESS_VIOLATION: 2,
  DISK_FULL: 3,
  ILLEGAL_OPERATION: 4,
  UNKNOWN_TID: 5,
  FILE_EXISTS: 6,
  NO_SUCH_USER: 7,
  OPTION_REFUSED: 8,
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export type TransferMode = "octet" | "netascii";

/** Options as they appear on the wire: names lower-cased (RFC 2347: case-insensitive). */
export type OptionMap = Map<string, string>;

export interface RequestPacket {
  op: typeof Opcode.RRQ | typeof Opcode.WRQ;
  filename: string;
  mode: TransferMode;
  options: OptionMap;
}

export interface DataPacket {
  op: typeof Opcode.DATA;
  block: number;
  /** A view into the received datagram: valid only until the next receive. */
  data: Uint8Array;
}

export interface AckPacket {
  op: typeof Opcode.ACK;
  block: number;
}

export interface ErrorPacket {
  op: typeof Opcode.ERROR;
  code: number;
  message: string;
}

export interface OackPacket {
  op: typeof Opcode.OACK;
  options: OptionMap;
}

export type Packet = RequestPacket | DataPacket | AckPacket | ErrorPacket | OackPacket;

/** RFC 1350 §4: DATA carries a 2-byte opcode and a 2-byte block number before the payload. */
export const DATA_HEADER_SIZE = 4;

/** RFC 1350: the default block size when no blksize option is negotiated. */
export const DEFAULT_BLKSIZE = 512;

/**
 * The DATA blocks that carry `size` bytes. RFC 1350 §6: a block shorter than blksize ends the
 * transfer, so a size that is an exact multiple needs one more, empty block; an empty file is a
 * single empty block.
 */
export function blockCount(size: number, blksize: number): number {
  return Math.floor(size / blksize) + 1;
}

/**
 * Public types of the TFTP client engine shared by `tftpd get`, `tftpd put` and `tftpd bench`.
 */
import type { TransferMode } from "../protocol/packet.ts";

export type { TransferMode };

/** Where a failure came from: the server's ERROR packet, our retransmit timer, or us. */
export type ErrorSource = "server" | "timeout" | "local";

export interface TransferError {
  /** TFTP error code (RFC 1350 / 2347): the server's, or the one we sent / would send. */
  code: number;
  message: string;
  source: ErrorSource;
}

export interface TransferOptions {
  /** IPv4 or IPv6 literal (brackets tolerated). Resolve names before calling the engine. */
  host: string;
  port: number;
  /** File name as sent in the request. */
  remote: string;
  /** Default "octet". */
  mode?: TransferMode;
  /** RFC 2348 blksize to ask for (8..65464). Not sent when undefined. */
  blksize?: number;
  /** RFC 7440 windowsize to ask for (1..65535). Not sent when undefined. */
  windowsize?: number;
  /**
   * RFC 2349 timeout in seconds (1..255). Sent as the `timeout` option unless
   * `sendTimeoutOption` is false; it is also the first retransmit timeout.
   */
  timeoutSeconds?: number;
  /** Default true: put `timeoutSeconds` on the wire as the timeout option. */
  sendTimeoutOption?: boolean;
  /** RFC 2349 tsize: ask `tsize 0` on a read, state the real size on a write. */
  tsize?: boolean;
  /** Retransmissions of one packet before giving up (default 5: 6 sends in all). */
  retries?: number;
  /**
   * Default true: each retransmission doubles the wait (up to 8× the base timeout); false
   * resends every base timeout, the fixed schedule of many PXE ROMs.
   */
  backoff?: boolean;
  /**
   * Base retransmit timeout in ms. Default: the negotiated timeout option, else
   * `timeoutSeconds` when it is not sent, else 1000. Backoff doubles it, capped at 8×.
   */
  retransmitMs?: number;
  /**
   * Download only: after the final ACK keep the socket this long to re-ACK a repeated final
   * block (default: the base retransmit timeout; 0 closes at once). The promise resolves
   * before the dally; the socket and its timer are unref'd meanwhile.
   */
  dallyMs?: number;
  /** Called on every advance: bytes on the wire so far, total if known (tsize / upload size). */
  onProgress?: (bytes: number, total: number | null) => void;
  signal?: AbortSignal;
  /**
   * Called once the transfer's socket is open, just before the request is sent; the request
   * waits for the returned promise (a load generator lines up many sessions and releases
   * them at one instant). A rejection fails the transfer locally. `durationMs` then counts
   * from the end of the wait.
   */
  beforeRequest?: () => void | Promise<void>;
  /**
   * Test hook: return true to lose a datagram. Consulted before each send ("out") and
   * after each receive ("in").
   */
  drop?: (direction: "in" | "out", packet: Uint8Array) => boolean;
}

export interface DownloadOptions extends TransferOptions {
  /**
   * Receives the downloaded bytes in order (after netascii decoding), `offset` counting host
   * bytes. `chunk` is only valid during the call. Exceptions fail the transfer.
   */
  onData?: (chunk: Uint8Array, offset: number) => void;
  /**
   * Write the file here: through a temporary file beside it, renamed into place on success
   * and removed on failure, so a failed download never leaves a partial file.
   */
  file?: string;
  /* With neither onData nor file, the bytes are collected into `DownloadReport.data`. */
}

export interface UploadOptions extends TransferOptions {
  /** The bytes to send, or the path of a local file. */
  source: Uint8Array | string;
}

export interface TransferReport {
  ok: boolean;
  /** DATA payload bytes transferred (wire bytes: netascii-encoded in netascii mode). */
  bytes: number;
  /** DATA blocks transferred (absolute count, not the 16-bit wire number). */
  blocks: number;
  blksize: number;
  windowsize: number;
  /** tsize from the OACK, or null. */
  tsize: number | null;
  /** Options the server acknowledged, in OACK order, or null when there was no OACK. */
  oack: Record<string, string> | null;
  /** Request sent → first OACK/DATA/ACK/ERROR back; null when nothing came back. */
  firstResponseMs: number | null;
  durationMs: number;
  /** Packets sent again (requests, ACKs, DATA blocks). */
  retransmits: number;
  error?: TransferError;
}

export interface DownloadReport extends TransferReport {
  /** The downloaded bytes, when neither `onData` nor `file` was given. */
  data?: Uint8Array;
}

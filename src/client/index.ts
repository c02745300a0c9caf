/**
 * The TFTP client engine: `download` (RRQ) and `upload` (WRQ), shared by `tftpd get`,
 * `tftpd put` and `tftpd bench`.
 */
export { download } from "./download.ts";
export { upload } from "./upload.ts";
export { checkTransferOptions, DEFAULT_RETRANSMIT_MS, DEFAULT_RETRIES } from "./session.ts";
export { DEFAULT_TFTP_PORT, formatHostPort, parseHostPort, type HostPort } from "../net/address.ts";
export type {
  DownloadOptions,
  DownloadReport,
  ErrorSource,
  TransferError,
  TransferMode,
  TransferOptions,
  TransferReport,
  UploadOptions,
} from "./types.ts";

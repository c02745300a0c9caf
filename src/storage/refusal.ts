/**
 * Refusals: the storage layer's answer when it will not serve or accept a file.
 *
 * A refusal is a value, never an exception: the transfer state machine turns it into a TFTP
 * ERROR packet as is (`code` is the RFC 1350 error code, `message` the short ASCII text that
 * goes into the packet). Exceptions are kept for programming errors only.
 */

import { ErrorCode } from "../protocol/packet.ts";

export { ErrorCode };
export type TftpErrorCode = ErrorCode;

export interface Refusal {
  readonly ok: false;
  readonly code: TftpErrorCode;
  readonly message: string;
}

export function refuse(code: TftpErrorCode, message: string): Refusal {
  return { ok: false, code, message };
}

/** The errno name (`"ENOENT"`, …) of a Node/Bun fs error, if it has one. */
export function errnoOf(err: unknown): string | undefined {
  if (typeof err === "object" && err !== null && "code" in err) {
    const code = (err as { code: unknown }).code;
    if (typeof code === "string") return code;
  }
  return undefined;
}

/**
 * Map a filesystem error to the refusal a client should see. `operation` names what failed
 * ("open", "write", …) and only appears for errors with no better TFTP meaning (code 0).
 * The text never contains a server-side path.
 */
export function refusalFromFsError(err: unknown, operation: string): Refusal {
  const errno = errnoOf(err);
  switch (errno) {
    case "ENOENT":
    case "ENOTDIR":
      return refuse(ErrorCode.FILE_NOT_FOUND, "file not found");
    case "EACCES":
    case "EPERM":
      return refuse(ErrorCode.ACCESS_VIOLATION, "permission denied");
    case "ELOOP":
      return refuse(ErrorCode.ACCESS_VIOLATION, "access violation: symbolic link");
    case "EISDIR":
      return refuse(ErrorCode.ACCESS_VIOLATION, "is a directory");
    case "ENXIO":
    case "ENODEV":
      return refuse(ErrorCode.ACCESS_VIOLATION, "not a regular file");
    case "ENAMETOOLONG":
      return refuse(ErrorCode.ACCESS_VIOLATION, "name too long");
    case "EROFS":
      return refuse(ErrorCode.ACCESS_VIOLATION, "read-only file system");
    case "ENOSPC":
    case "EDQUOT":
      return refuse(ErrorCode.DISK_FULL, "disk full");
    case "EFBIG":
      return refuse(ErrorCode.DISK_FULL, "file too large");
    case "EEXIST":
      return refuse(ErrorCode.FILE_EXISTS, "file already exists");
    case "EMFILE":
    case "ENFILE":
      return refuse(ErrorCode.NOT_DEFINED, "too many open files");
    default:
      return refuse(ErrorCode.NOT_DEFINED, `${operation} failed: ${errno ?? "unknown error"}`);
  }
}

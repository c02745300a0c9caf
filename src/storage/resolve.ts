/**
 * Root confinement: from the name a client asked for to an open, regular file inside the root.
 *
 * Two steps, so the rules stay testable and the I/O stays small:
 *  1. `resolveRequestPath` — pure string normalisation (no I/O): backslashes become `/`,
 *     leading `/` means the root, `.` and empty segments vanish, `..` is refused outright (never
 *     "resolved"), control bytes and over-long names are refused.
 *  2. `openForRead` — realpath (so symlinks are followed), then the real path must lie inside the
 *     real root (prefix test with a trailing separator: /srv/tftp2 is not inside /srv/tftp), then
 *     open it O_RDONLY|O_NOFOLLOW|O_NONBLOCK and fstat the descriptor: only a regular file is
 *     served, and a fifo can never block the event loop. On Linux the opened descriptor is checked
 *     once more through /proc/self/fd, which catches a directory swapped for a symlink between
 *     the realpath and the open.
 *
 * Uploads use the same confinement, in upload.ts (`prepareUpload`).
 *
 * Names arrive exactly as the client's bytes spelled them: the codec refuses a name that is not
 * valid UTF-8 rather than folding it into U+FFFD, so two different names never reach one file.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { ErrorCode, errnoOf, refuse, refusalFromFsError, type Refusal } from "./refusal.ts";
import { fdSource, type FdFileSource } from "./source.ts";

/** Longest request name accepted, in bytes (UTF-8), like PATH_MAX. */
export const MAX_NAME_BYTES = 4096;
/** Longest single path segment accepted, in bytes (UTF-8), like NAME_MAX. */
export const MAX_SEGMENT_BYTES = 255;
/** Suffix of the temporary files uploads are written to; such names are never served. */
export const TEMP_SUFFIX = ".tftpd-part";

export interface ResolvedPath {
  readonly ok: true;
  /** Normalised path below the root: segments joined with `/`, no leading `/`, never empty. */
  readonly relative: string;
  /** `root` joined with `relative` (a string join: no symlink was looked at). */
  readonly absolute: string;
}

const encoder = new TextEncoder();
function byteLength(s: string): number {
  // Fast path: pure ASCII/Latin-1 strings rarely need the encoder.
  for (let i = 0; i < s.length; i++) {
    if (s.charCodeAt(i) > 0x7f) return encoder.encode(s).length;
  }
  return s.length;
}

/** True for the names of in-progress upload files (`.<name>.<random>.tftpd-part`). */
export function isTempName(segment: string): boolean {
  return segment.startsWith(".") && segment.endsWith(TEMP_SUFFIX) && segment.length > TEMP_SUFFIX.length + 1;
}

/**
 * Normalise a requested file name to a path relative to `root`. Pure: touches no file.
 *
 * Refusals (all TFTP code 2, access violation):
 *  - a NUL or any control character (< 0x20, or DEL 0x7f) anywhere in the name;
 *  - more than MAX_NAME_BYTES in total or a segment longer than MAX_SEGMENT_BYTES;
 *  - any `..` segment (after backslashes became `/`);
 *  - nothing left after normalisation (the root itself): "is a directory";
 *  - a last segment shaped like an upload temporary file (`.x.<random>.tftpd-part`).
 */
export function resolveRequestPath(root: string, requested: string): ResolvedPath | Refusal {
  for (let i = 0; i < requested.length; i++) {
    const c = requested.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) {
      return refuse(ErrorCode.ACCESS_VIOLATION, "access violation: control character in name");
    }
  }
  if (byteLength(requested) > MAX_NAME_BYTES) {
    return refuse(ErrorCode.ACCESS_VIOLATION, "name too long");
  }
  const segments: string[] = [];
  for (const segment of requested.replaceAll("\\", "/").split("/")) {
    if (segment === "" || segment === ".") continue;
    if (segment === "..") return refuse(ErrorCode.ACCESS_VIOLATION, "access violation: '..' in path");
    if (byteLength(segment) > MAX_SEGMENT_BYTES) {
      return refuse(ErrorCode.ACCESS_VIOLATION, "name too long");
    }
    segments.push(segment);
  }
  const last = segments[segments.length - 1];
  if (last === undefined) return refuse(ErrorCode.ACCESS_VIOLATION, "is a directory");
  if (isTempName(last)) return refuse(ErrorCode.ACCESS_VIOLATION, "access violation: reserved name");
  const relative = segments.join("/");
  return { ok: true, relative, absolute: path.join(root, relative) };
}

/**
 * The real path of a TFTP root, for `openForRead`/`prepareUpload`. Throws (with the path in the
 * message) when it does not exist or is not a directory: the server cannot run without it.
 */
export function realRoot(root: string): string {
  let real: string;
  try {
    real = fs.realpathSync(root);
  } catch (err) {
    throw new Error(`tftp.root: ${root}: ${errnoOf(err) === "ENOENT" ? "no such directory" : (err as Error).message}`);
  }
  if (!fs.statSync(real).isDirectory()) throw new Error(`tftp.root: ${root}: not a directory`);
  return real;
}

/** True when `candidate` lies strictly below `rootReal` (both absolute, normalised). */
export function isInside(rootReal: string, candidate: string): boolean {
  const prefix = rootReal.endsWith(path.sep) ? rootReal : rootReal + path.sep;
  return candidate.length > prefix.length && candidate.startsWith(prefix);
}

/**
 * Where an open descriptor really points, via /proc/self/fd (Linux). `undefined` when that
 * cannot be known (no /proc, or the file was unlinked meanwhile).
 */
export function openedPath(fd: number): string | undefined {
  try {
    const target = fs.readlinkSync(`/proc/self/fd/${fd}`);
    if (!target.startsWith("/") || target.endsWith(" (deleted)")) return undefined;
    return target;
  } catch {
    return undefined;
  }
}

function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    // nothing useful to do: the descriptor is gone either way
  }
}

const READ_FLAGS = fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK;

/**
 * Open `relative` (as produced by `resolveRequestPath`) below `rootReal` (a real path, see
 * `realRoot`) for reading.
 *
 * Refusals: missing file or missing directory on the way → 1 "file not found"; real path
 * outside the root → 2 "access violation: outside root"; a directory → 2 "is a directory";
 * a fifo, socket or device → 2 "not a regular file"; EACCES/EPERM → 2 "permission denied".
 * The source's size is the fstat size at open time.
 */
export async function openForRead(
  rootReal: string,
  relative: string,
): Promise<{ ok: true; source: FdFileSource } | Refusal> {
  let real: string;
  try {
    // Synchronous on purpose: on a local root it takes microseconds, while a trip through the
    // I/O thread pool waits behind the event loop's other work and doubles first-response time.
    real = fs.realpathSync.native(path.join(rootReal, relative));
  } catch (err) {
    return refusalFromFsError(err, "resolve");
  }
  if (real === rootReal) return refuse(ErrorCode.ACCESS_VIOLATION, "is a directory");
  if (!isInside(rootReal, real)) return refuse(ErrorCode.ACCESS_VIOLATION, "access violation: outside root");

  let fd: number;
  try {
    fd = fs.openSync(real, READ_FLAGS);
  } catch (err) {
    return refusalFromFsError(err, "open");
  }
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) {
      closeQuietly(fd);
      return refuse(ErrorCode.ACCESS_VIOLATION, stat.isDirectory() ? "is a directory" : "not a regular file");
    }
    const opened = openedPath(fd);
    if (opened !== undefined && !isInside(rootReal, opened)) {
      closeQuietly(fd);
      return refuse(ErrorCode.ACCESS_VIOLATION, "access violation: outside root");
    }
    return { ok: true, source: fdSource(fd, stat) };
  } catch (err) {
    closeQuietly(fd);
    return refusalFromFsError(err, "stat");
  }
}

/**
 * The names in the directory of `relative` (below the real root), or undefined when it cannot
 * be read or lies outside the root. Only ever used to say "not there": a name it lists is
 * still opened through openForRead.
 */
export function listDirectory(rootReal: string, relative: string): string[] | undefined {
  try {
    const dir = fs.realpathSync.native(path.dirname(path.join(rootReal, relative)));
    if (dir !== rootReal && !isInside(rootReal, dir)) return undefined;
    return fs.readdirSync(dir);
  } catch {
    return undefined;
  }
}

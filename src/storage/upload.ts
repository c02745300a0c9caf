/**
 * Atomic uploads (WRQ): a client's bytes go to a temporary file next to the target, and only a
 * complete, fsync'd file is ever published under the requested name. A reader sees the old
 * file or the new one, never a partial one; an aborted or refused upload leaves nothing behind.
 *
 * Temporary file: `.<basename>.<12 hex>.tftpd-part` in the target's directory, created
 * O_CREAT|O_EXCL|O_WRONLY|O_NOFOLLOW with mode 0644 (minus the process umask). Such names are
 * refused by `resolveRequestPath`, so clients can neither read nor clobber them. The upload
 * holds an exclusive flock on it until the file is published or removed: a process that dies
 * (kill -9, a crash, a power cut) loses the lock, and the start-up sweep (upload-sweep.ts)
 * removes the temporary files nobody holds.
 *
 * Publishing (publish, its waits for the disk off the event loop): fdatasync the temporary file, then
 *  - policy "create":    link(tmp, final) — fails atomically with EEXIST (→ ERROR 6) if someone
 *                        created the name meanwhile — then unlink(tmp). On a filesystem without
 *                        hard links (EPERM/ENOTSUP) it falls back to check-then-rename, which
 *                        has a small race;
 *  - policy "overwrite": rename(tmp, final);
 * then close it (dropping the lock only once the temporary name is gone) and fsync the
 * directory so the new name survives a crash.
 *
 * Decisions: a missing parent directory is ERROR 1 "no such directory" (tftpd-hpa also answers
 * "file not found" there); directories are never created.
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { tryLockExclusive } from "./file-lock.ts";
import { ErrorCode, errnoOf, refuse, refusalFromFsError, type Refusal } from "./refusal.ts";
import { isInside, MAX_SEGMENT_BYTES, openedPath, TEMP_SUFFIX } from "./resolve.ts";

export type UploadPolicy = "off" | "create" | "overwrite";

export interface UploadSink {
  /** Append bytes. On a refusal the upload is already aborted (temporary file removed). */
  write(bytes: Uint8Array): Refusal | null;
  /**
   * Make the file durable and publish it under its final name. On a refusal nothing is
   * published — except when only the final directory fsync fails (code 0 "sync failed: …"):
   * the complete file is then visible but its durability is unknown. The waits for the disk
   * (fdatasync of the file, fsync of its directory) run on a thread of Bun's pool: the event
   * loop, and every transfer on it, goes on while the disk works.
   */
  publish(): Promise<Refusal | null>;
  /** Discard the upload: close and remove the temporary file. Idempotent; a no-op after publish. */
  abort(): void;
  /** Bytes accepted so far. */
  readonly written: number;
  /** The final (real) path the file is published under. */
  readonly path: string;
  /** The temporary file being written. */
  readonly tempPath: string;
}

const TEMP_FLAGS =
  fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY | fs.constants.O_NOFOLLOW;
const TEMP_MODE = 0o644;
const TEMP_ATTEMPTS = 8;
/** Room for the leading dot, `.`, 12 hex digits and the suffix. */
const TEMP_BASE_MAX_BYTES = MAX_SEGMENT_BYTES - (2 + 12 + TEMP_SUFFIX.length);

const encoder = new TextEncoder();
/** The longest prefix of `s` within `maxBytes` of UTF-8, cut between code points. */
function truncateBytes(s: string, maxBytes: number): string {
  const points = [...s];
  while (encoder.encode(points.join("")).length > maxBytes) points.pop();
  return points.join("");
}

function tempName(base: string): string {
  return `.${truncateBytes(base, TEMP_BASE_MAX_BYTES)}.${randomBytes(6).toString("hex")}${TEMP_SUFFIX}`;
}

/** Exactly the names `tempName` makes: what the start-up sweep may remove. */
const TEMP_NAME = new RegExp(`^\\..+\\.[0-9a-f]{12}${TEMP_SUFFIX.replaceAll(".", "\\.")}$`, "s");

/** True for a name this server gives its temporary upload files (`.<base>.<12 hex>.tftpd-part`). */
export function isUploadTempName(name: string): boolean {
  return TEMP_NAME.test(name);
}

/**
 * Temporary files of this process's running uploads. The sweep skips them whatever their lock
 * says: where flock is emulated with POSIX record locks (NFS), a process never conflicts with
 * its own locks, and closing any descriptor of the file would drop them.
 */
const liveTempPaths = new Set<string>();

/** True while an upload of this process is writing `tempPath`. */
export function isLiveUpload(tempPath: string): boolean {
  return liveTempPaths.has(tempPath);
}

/** Free bytes for an unprivileged writer on the file system of `dir`, or null when unknown. */
function freeBytes(dir: string): number | null {
  try {
    const stats = fs.statfsSync(dir);
    return stats.bavail * stats.bsize;
  } catch {
    return null;
  }
}

function unlinkQuietly(p: string): void {
  try {
    fs.unlinkSync(p);
  } catch {
    // already gone, or nothing more we can do
  }
}

function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    // the descriptor is released either way
  }
}

const NO_HARD_LINKS = new Set(["EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS"]);
const NO_DIR_FSYNC = new Set(["EINVAL", "ENOTSUP", "EOPNOTSUPP", "EBADF", "EISDIR"]);

/**
 * Check that `relative` (from `resolveRequestPath`) may be written below `rootReal` (a real
 * path) under `policy`, and create the temporary file for it.
 *
 * Refusals: policy "off" → 2 "uploads are disabled"; parent missing → 1 "no such directory";
 * parent (after symlinks) outside the root → 2 "access violation: outside root"; target is a
 * symlink → 2 "access violation: symbolic link"; target is a directory / not a regular file → 2;
 * target exists under "create" → 6 "file already exists"; EACCES → 2 "permission denied";
 * ENOSPC/EDQUOT → 3 "disk full".
 * `maxBytes` bounds the upload (Infinity for none). `declaredBytes` is the size the client
 * announced (RFC 2349 tsize on a WRQ), or null: more than `maxBytes` → 3 "file too large", more
 * than the free space of the target's file system → 3 "disk full: not enough free space" —
 * refused before any byte is written, rather than failing half-way.
 */
export async function prepareUpload(
  rootReal: string,
  relative: string,
  policy: UploadPolicy,
  maxBytes: number,
  declaredBytes: number | null = null,
): Promise<{ ok: true; sink: UploadSink } | Refusal> {
  if (policy === "off") return refuse(ErrorCode.ACCESS_VIOLATION, "uploads are disabled");
  if (!(maxBytes >= 0)) throw new RangeError(`prepareUpload: bad maxBytes ${maxBytes}`);
  if (declaredBytes !== null && declaredBytes > maxBytes) return refuse(ErrorCode.DISK_FULL, "file too large");

  const requested = path.join(rootReal, relative);
  const base = path.basename(requested);
  let parentReal: string;
  try {
    parentReal = await fs.promises.realpath(path.dirname(requested));
  } catch (err) {
    const errno = errnoOf(err);
    if (errno === "ENOENT" || errno === "ENOTDIR") return refuse(ErrorCode.FILE_NOT_FOUND, "no such directory");
    return refusalFromFsError(err, "resolve");
  }
  if (parentReal !== rootReal && !isInside(rootReal, parentReal)) {
    return refuse(ErrorCode.ACCESS_VIOLATION, "access violation: outside root");
  }
  if (!fs.statSync(parentReal, { throwIfNoEntry: false })?.isDirectory()) {
    return refuse(ErrorCode.FILE_NOT_FOUND, "no such directory");
  }

  const finalPath = path.join(parentReal, base);
  let existing: fs.Stats | undefined;
  try {
    existing = fs.lstatSync(finalPath, { throwIfNoEntry: false });
  } catch (err) {
    return refusalFromFsError(err, "stat");
  }
  if (existing !== undefined) {
    if (existing.isSymbolicLink()) return refuse(ErrorCode.ACCESS_VIOLATION, "access violation: symbolic link");
    if (existing.isDirectory()) return refuse(ErrorCode.ACCESS_VIOLATION, "is a directory");
    if (!existing.isFile()) return refuse(ErrorCode.ACCESS_VIOLATION, "not a regular file");
    if (policy === "create") return refuse(ErrorCode.FILE_EXISTS, "file already exists");
  }
  if (declaredBytes !== null) {
    // The temporary file and the file it replaces coexist until the rename: no credit for it.
    const free = freeBytes(parentReal);
    if (free !== null && declaredBytes > free) return refuse(ErrorCode.DISK_FULL, "disk full: not enough free space");
  }

  let fd = -1;
  let tempPath = "";
  for (let attempt = 0; fd < 0; attempt++) {
    tempPath = path.join(parentReal, tempName(base));
    try {
      fd = fs.openSync(tempPath, TEMP_FLAGS, TEMP_MODE);
    } catch (err) {
      if (errnoOf(err) === "EEXIST" && attempt + 1 < TEMP_ATTEMPTS) continue;
      return refusalFromFsError(err, "create");
    }
    if (!claimed(fd)) {
      closeQuietly(fd);
      unlinkQuietly(tempPath);
      fd = -1;
      if (attempt + 1 >= TEMP_ATTEMPTS) return refuse(ErrorCode.NOT_DEFINED, "create failed: temporary file taken");
    }
  }
  // The parent directory may have been swapped for a symlink after the realpath above.
  const opened = openedPath(fd);
  if (opened !== undefined && !isInside(rootReal, opened)) {
    closeQuietly(fd);
    unlinkQuietly(tempPath);
    return refuse(ErrorCode.ACCESS_VIOLATION, "access violation: outside root");
  }
  liveTempPaths.add(tempPath);
  return { ok: true, sink: new FileUploadSink(fd, tempPath, finalPath, parentReal, policy, maxBytes) };
}

/**
 * Locks a temporary file just created. False when a sweep of another process got to the
 * file first (between our create and our lock, it looked abandoned): that process holds it
 * or has already unlinked it, and the caller takes a new name. Where locks are unavailable
 * the file stays unlocked, and sweeps judge it by its age instead.
 */
function claimed(fd: number): boolean {
  const lock = tryLockExclusive(fd);
  if (lock === "held") return false;
  if (lock === "unsupported") return true;
  try {
    return fs.fstatSync(fd).nlink > 0;
  } catch {
    return false;
  }
}

type SinkState = "open" | "committed" | "aborted";

class FileUploadSink implements UploadSink {
  #fd: number;
  #state: SinkState = "open";
  #written = 0;

  constructor(
    fd: number,
    readonly tempPath: string,
    readonly path: string,
    private readonly dir: string,
    private readonly policy: "create" | "overwrite",
    private readonly maxBytes: number,
  ) {
    this.#fd = fd;
  }

  get written(): number {
    return this.#written;
  }

  write(bytes: Uint8Array): Refusal | null {
    if (this.#state !== "open") return refuse(ErrorCode.NOT_DEFINED, "upload already finished");
    if (this.#written + bytes.length > this.maxBytes) {
      this.abort();
      return refuse(ErrorCode.DISK_FULL, "upload exceeds size limit");
    }
    try {
      let done = 0;
      while (done < bytes.length) {
        done += fs.writeSync(this.#fd, bytes, done, bytes.length - done);
      }
    } catch (err) {
      this.abort();
      return refusalFromFsError(err, "write");
    }
    this.#written += bytes.length;
    return null;
  }

  async publish(): Promise<Refusal | null> {
    if (this.#state !== "open") return refuse(ErrorCode.NOT_DEFINED, "upload already finished");
    // (the state stays open meanwhile: an abort now, a cancelled transfer's, removes the file,
    // and the fdatasync then fails on a closed descriptor or syncs a file nobody will publish)
    try {
      await fdatasyncOffLoop(this.#fd);
    } catch (err) {
      this.abort();
      return refusalFromFsError(err, "sync");
    }
    if (this.#state !== "open") return refuse(ErrorCode.NOT_DEFINED, "upload aborted");
    return this.#link() ?? (await syncDirectoryOffLoop(this.dir));
  }

  /**
   * Gives the durable temporary file its final name. The descriptor (and so the lock) is kept
   * until the temporary name is gone: a sweep of another process must not take a finished
   * file for an abandoned one before it is published.
   */
  #link(): Refusal | null {
    let published: Refusal | null;
    try {
      published = this.policy === "create" ? this.#publishNew() : this.#publishOver();
    } catch (err) {
      published = refusalFromFsError(err, "publish");
    }
    if (published !== null) {
      this.abort();
      return published;
    }
    this.#state = "committed";
    this.#release();
    return null;
  }

  abort(): void {
    if (this.#state !== "open") return;
    this.#state = "aborted";
    unlinkQuietly(this.tempPath);
    this.#release();
  }

  /** Closes the descriptor (dropping the lock) once the temporary name is gone. */
  #release(): void {
    liveTempPaths.delete(this.tempPath);
    if (this.#fd >= 0) {
      closeQuietly(this.#fd);
      this.#fd = -1;
    }
  }

  /** Policy "create": never replaces a file that appeared since prepareUpload. */
  #publishNew(): Refusal | null {
    try {
      fs.linkSync(this.tempPath, this.path);
    } catch (err) {
      const errno = errnoOf(err);
      if (errno === "EEXIST") return refuse(ErrorCode.FILE_EXISTS, "file already exists");
      if (errno === undefined || !NO_HARD_LINKS.has(errno)) return refusalFromFsError(err, "link");
      // No hard links on this filesystem: check, then rename (racy, but the best available).
      if (fs.lstatSync(this.path, { throwIfNoEntry: false }) !== undefined) {
        return refuse(ErrorCode.FILE_EXISTS, "file already exists");
      }
      return this.#publishOver();
    }
    unlinkQuietly(this.tempPath);
    return null;
  }

  /** Policy "overwrite": atomically replaces whatever regular file has the name. */
  #publishOver(): Refusal | null {
    try {
      fs.renameSync(this.tempPath, this.path);
      return null;
    } catch (err) {
      return refusalFromFsError(err, "rename");
    }
  }
}

/** fdatasync on a thread of Bun's pool. */
function fdatasyncOffLoop(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

/** fsync of the directory on a thread of Bun's pool, so a new name survives a crash. */
async function syncDirectoryOffLoop(dir: string): Promise<Refusal | null> {
  let handle: fs.promises.FileHandle | null = null;
  try {
    handle = await fs.promises.open(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    await handle.sync();
    return null;
  } catch (err) {
    const errno = errnoOf(err);
    if (errno !== undefined && NO_DIR_FSYNC.has(errno)) return null; // the filesystem cannot do it
    return refusalFromFsError(err, "sync");
  } finally {
    await handle?.close().catch(() => {});
  }
}

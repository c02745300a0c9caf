/**
 * FileSource: what a read transfer pulls its bytes from.
 *
 * It is deliberately tiny so that wrappers (netascii conversion, caches) can implement it too:
 * a fixed `size`, a positional `read` that fills a caller-owned buffer (no allocation per
 * block), and `close`. Sources never grow: `size` is fixed when the source is made and
 * `read` never returns bytes past it, so a file appended to during a transfer still yields
 * exactly the announced tsize.
 */
import * as fs from "node:fs";
import { ReadAhead } from "./disk-io.ts";

/** Who the bytes belong to: lets caches notice that a file was replaced or modified. */
export interface FileIdentity {
  readonly dev: number;
  readonly ino: number;
  readonly size: number;
  readonly mtimeMs: number;
  /** changes on every write and cannot be set back (unlike mtime with `cp -p` or `touch -r`) */
  readonly ctimeMs: number;
}

export interface FileSource {
  /** Total number of bytes the source yields. */
  readonly size: number;
  readonly identity: FileIdentity;
  /**
   * Copy up to `length` bytes starting at byte `position` of the source into
   * `into[offset..]`; returns the number of bytes copied: `length`, or fewer only at the end
   * of the source (0 at or past the end). Synchronous (pread on a file descriptor).
   */
  read(position: number, into: Uint8Array, offset: number, length: number): number;
  /** Release the underlying resource. Idempotent. `read` after `close` throws. */
  close(): void;
  /**
   * For a source whose bytes are still arriving (a file being fetched from the fleet's
   * cache): null when bytes [0, end) can be read now, else a promise that resolves once they
   * can, or rejects when they never will. Absent: every byte can always be read.
   */
  whenReadable?(end: number): Promise<void> | null;
  /**
   * How another thread of this process can read the same bytes while this source stays open
   * here: a cached copy's memfd, or the open file's descriptor.
   */
  readonly share?: SourceShare;
  /**
   * All of the source's bytes, when they are in memory and never change (a sealed cached
   * copy's mapping, a generated file): a reader may hand views of them on instead of copying
   * them out with `read`. A view keeps the memory alive, even past `close`.
   */
  readonly bytes?: Uint8Array;
}

export type SourceShare =
  /** a sealed cached copy */
  | { readonly kind: "memfd"; readonly id: number; readonly fd: number }
  /**
   * a cached copy still being made: bytes [0, readable) are in; the cache tells the other
   * threads as more arrive, and when the copy is sealed or has failed
   */
  | { readonly kind: "filling"; readonly id: number; readonly fd: number; readonly readable: number }
  /** the open file itself (a file the cache does not hold) */
  | { readonly kind: "fd"; readonly fd: number };

/**
 * True while `stat` (an fstat of the open file) still describes the version `identity` names:
 * a read that is followed by this check holds bytes of that version only, since a write moves
 * mtime and ctime before it changes a byte.
 */
export function sameVersion(identity: FileIdentity, stat: { size: number; mtimeMs: number; ctimeMs: number; nlink: number }): boolean {
  if (stat.size !== identity.size || stat.mtimeMs !== identity.mtimeMs) return false;
  // A file renamed over or deleted also gets a new ctime (its link count changed) while the
  // bytes of the open inode stay as they were; a file still linked whose ctime moved may have
  // been rewritten with its mtime set back (cp -p, touch -r).
  return stat.ctimeMs === identity.ctimeMs || stat.nlink === 0;
}

/**
 * Whether a stat of a path finds the very version `identity` describes (same device, inode,
 * size, mtime and ctime): a cached copy of it may be served for that path.
 */
export function atVersion(identity: FileIdentity, stat: { dev: number; ino: number; size: number; mtimeMs: number; ctimeMs: number }): boolean {
  return (
    stat.ino === identity.ino && stat.dev === identity.dev && stat.size === identity.size && stat.mtimeMs === identity.mtimeMs && stat.ctimeMs === identity.ctimeMs
  );
}

/** The version of a file a stat describes. */
export function identityOf(stat: fs.Stats): FileIdentity {
  return { dev: stat.dev, ino: stat.ino, size: stat.size, mtimeMs: stat.mtimeMs, ctimeMs: stat.ctimeMs };
}

/** What a read of a file that changed under it throws: the transfer ends with this ERROR. */
export const FILE_CHANGED = "file changed during transfer";

function checkReadArgs(position: number, into: Uint8Array, offset: number, length: number): void {
  if (!Number.isSafeInteger(position) || position < 0) {
    throw new RangeError(`read: bad position ${position}`);
  }
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new RangeError(`read: bad offset/length ${offset}/${length}`);
  }
  if (offset + length > into.length) {
    throw new RangeError(`read: ${offset}+${length} exceeds buffer of ${into.length}`);
  }
}

/** A source reading an open file; the cache copies from `fd`. */
export interface FdFileSource extends FileSource {
  readonly fd: number;
}

/**
 * A source over an open file descriptor, which it owns (closes). `size` and `identity` come
 * from an fstat the caller already did. Every read checks that the file is still that version
 * and throws FILE_CHANGED when it is not.
 */
export function fdSource(fd: number, stat: fs.Stats): FdFileSource {
  const identity = identityOf(stat);
  return { ...descriptorSource(fd, identity, () => fs.closeSync(fd)), fd, share: { kind: "fd", fd } };
}

/**
 * A source reading a descriptor that someone else owns and closes (a worker thread reading
 * a file the main thread opened): `close` only ends this source's use of it.
 */
export function borrowedFdSource(fd: number, identity: FileIdentity): FileSource {
  return descriptorSource(fd, identity, () => {});
}

function descriptorSource(fd: number, identity: FileIdentity, release: () => void): FileSource {
  let open = true;
  const size = identity.size;
  // io.read_ahead: the bytes after these are asked of the disk before a transfer needs them
  const ahead = new ReadAhead(fd, size);
  return {
    size,
    identity,
    read(position, into, offset, length) {
      if (!open) throw new Error("read on a closed FileSource");
      checkReadArgs(position, into, offset, length);
      const wanted = Math.min(length, Math.max(0, size - position));
      ahead.before(position, wanted);
      let done = 0;
      while (done < wanted) {
        const n = fs.readSync(fd, into, offset + done, wanted - done, position + done);
        if (n === 0) break; // the file shrank under us: report what we have
        done += n;
      }
      // Bytes read from a file that changed meanwhile may be of either version: never serve them.
      if (!sameVersion(identity, fs.fstatSync(fd))) throw new Error(FILE_CHANGED);
      return done;
    },
    close() {
      if (!open) return;
      open = false;
      release();
    },
  };
}

/**
 * A source over bytes built in memory (generated configs, cached blobs). The bytes are not
 * copied: the caller must not modify them while the source is in use.
 */
export function memorySource(bytes: Uint8Array, identity?: Partial<FileIdentity>): FileSource {
  let open = true;
  const size = bytes.length;
  // Buffer#copy copies without creating a view object per block (subarray does, per call).
  const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  return {
    size,
    bytes,
    identity: {
      dev: identity?.dev ?? 0,
      ino: identity?.ino ?? 0,
      size,
      mtimeMs: identity?.mtimeMs ?? 0,
      ctimeMs: identity?.ctimeMs ?? 0,
    },
    read(position, into, offset, length) {
      if (!open) throw new Error("read on a closed FileSource");
      checkReadArgs(position, into, offset, length);
      if (position >= size) return 0;
      const end = Math.min(size, position + length);
      return view.copy(into, offset, position, end);
    },
    close() {
      open = false;
    },
  };
}

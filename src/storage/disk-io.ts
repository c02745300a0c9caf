/**
 * How this thread reads files from disk (the `io` section): posix_fadvise read-ahead for
 * files served straight from disk, and O_DIRECT for the file cache's copies. Set once per
 * thread at start (the main thread by the server, each transfer worker from its init): they
 * are properties of the host's disks, not of a request.
 *
 * posix_fadvise comes through bun:ffi (Node's fs has none); where libc is out of reach the
 * advice is skipped and the kernel's own read-ahead is all there is.
 */
import { dlopen, FFIType } from "bun:ffi";
import * as fs from "node:fs";
import type { RangeCopier } from "./copy-pool.ts";

const POSIX_FADV_WILLNEED = 3;
const POSIX_FADV_DONTNEED = 4;

export interface DiskIoSettings {
  /**
   * io.read_ahead: bytes of a file served from disk asked of the kernel ahead of where a
   * transfer reads (POSIX_FADV_WILLNEED), so the window after next is in memory when it is
   * sent; 0: only the kernel's own read-ahead
   */
  readAheadBytes: number;
  /** io.direct_io: the file cache copies files with O_DIRECT, past the page cache */
  directFills: boolean;
  /**
   * io.async_io: threads of the file I/O pool (copy-pool.ts) that make the file cache's copies,
   * io.io_threads capped by performance.cpu.thread_pool_size; 0: copies on this thread
   */
  ioThreads: number;
}

const settings: DiskIoSettings & { copier: RangeCopier | null } = { readAheadBytes: 0, directFills: false, ioThreads: 0, copier: null };

export function setDiskIo(next: Partial<DiskIoSettings & { copier: RangeCopier | null }>): void {
  Object.assign(settings, next);
}

export function diskIo(): Readonly<DiskIoSettings & { copier: RangeCopier | null }> {
  return settings;
}

let fadvise: ((fd: number, offset: number, length: number, advice: number) => number) | null | undefined;

function loadFadvise(): typeof fadvise {
  if (fadvise !== undefined) return fadvise;
  try {
    const { symbols } = dlopen("libc.so.6", {
      posix_fadvise: { args: [FFIType.i32, FFIType.i64, FFIType.i64, FFIType.i32], returns: FFIType.i32 },
    });
    fadvise = (fd, offset, length, advice) => symbols.posix_fadvise(fd, offset, length, advice);
  } catch {
    fadvise = null;
  }
  return fadvise;
}

/** Asks the kernel to start reading bytes [offset, offset + length) of `fd` into memory. */
export function adviseWillNeed(fd: number, offset: number, length: number): void {
  loadFadvise()?.(fd, offset, length, POSIX_FADV_WILLNEED);
}

/** Drops the clean cached pages of `fd` (tests and benchmarks start a read cold with it). */
export function adviseDontNeed(fd: number): boolean {
  return loadFadvise()?.(fd, 0, 0, POSIX_FADV_DONTNEED) === 0;
}

/**
 * Read-ahead for one reader of a file from disk: before a read, the bytes up to readAhead past
 * it are asked for, in steps of half of it, so the advice costs one call per half window of
 * bytes sent, not one per block.
 */
export class ReadAhead {
  private advisedTo = 0;

  constructor(
    private readonly fd: number,
    private readonly size: number,
    private readonly bytes = settings.readAheadBytes,
  ) {}

  before(position: number, length: number): void {
    const bytes = this.bytes;
    if (bytes <= 0 || position + length + bytes / 2 <= this.advisedTo) return;
    const from = Math.max(position, this.advisedTo);
    const to = Math.min(this.size, position + length + bytes);
    if (to > from) adviseWillNeed(this.fd, from, to - from);
    this.advisedTo = to;
  }
}

/**
 * Opens the file behind `fd` again for the cache's copy: O_DIRECT when io.direct_io is set and
 * the file system takes it, else a plain descriptor.
 */
export function openForCopy(fd: number): number {
  const path = `/proc/self/fd/${fd}`;
  const direct = fs.constants.O_DIRECT;
  if (settings.directFills && direct !== undefined) {
    try {
      return fs.openSync(path, fs.constants.O_RDONLY | direct);
    } catch {
      // EINVAL: this file system has no O_DIRECT; the copy goes through the page cache
    }
  }
  return fs.openSync(path, fs.constants.O_RDONLY);
}

/**
 * Whether the file system of `root` takes O_DIRECT, tried on the first regular file found
 * in it: false when it refuses (EINVAL: tmpfs before Linux 6.6, ramfs, some FUSE file
 * systems), null when that cannot be told (no file to try, or no O_DIRECT on this platform).
 */
export function takesDirectIo(root: string): boolean | null {
  const direct = fs.constants.O_DIRECT;
  if (direct === undefined) return null;
  let names: fs.Dirent[];
  try {
    names = fs.readdirSync(root, { withFileTypes: true });
  } catch {
    return null;
  }
  const file = names.find((entry) => entry.isFile());
  if (!file) return null;
  try {
    fs.closeSync(fs.openSync(`${root}/${file.name}`, fs.constants.O_RDONLY | direct));
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EINVAL" ? false : null;
  }
}

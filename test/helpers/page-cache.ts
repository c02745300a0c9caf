/**
 * The page cache as the kernel has it for one file: how many of its bytes are in memory
 * (mmap + mincore through libc: the mapping touches no page, so reading this changes nothing),
 * and a way to drop them (fdatasync, then POSIX_FADV_DONTNEED on that file only: no machine
 * setting is touched), so a test can start a read cold.
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import * as fs from "node:fs";
import { adviseDontNeed } from "../../src/storage/disk-io.ts";

const PAGE = 4096;
const PROT_READ = 1;
const MAP_SHARED = 1;

const { symbols: libc } = dlopen("libc.so.6", {
  mmap: { args: [FFIType.ptr, FFIType.u64, FFIType.i32, FFIType.i32, FFIType.i32, FFIType.i64], returns: FFIType.ptr },
  munmap: { args: [FFIType.ptr, FFIType.u64], returns: FFIType.i32 },
  mincore: { args: [FFIType.ptr, FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
});

/** Bytes of `path` in the page cache (whole pages). */
export function residentBytes(path: string): number {
  const size = fs.statSync(path).size;
  if (size === 0) return 0;
  const fd = fs.openSync(path, "r");
  try {
    const at = libc.mmap(null, size, PROT_READ, MAP_SHARED, fd, 0);
    if (at === null || Number(at) === -1) throw new Error(`mmap of ${path} failed`);
    try {
      const pages = Math.ceil(size / PAGE);
      const vector = new Uint8Array(new ArrayBuffer(pages));
      if (libc.mincore(at, size, ptr(vector)) !== 0) throw new Error(`mincore of ${path} failed`);
      let resident = 0;
      for (const page of vector) resident += page & 1;
      return resident * PAGE;
    } finally {
      libc.munmap(at, size);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes `path` to disk and drops its pages from the page cache. */
export function evictFromPageCache(path: string): void {
  const fd = fs.openSync(path, "r+");
  try {
    fs.fdatasyncSync(fd);
    if (!adviseDontNeed(fd)) throw new Error(`posix_fadvise(DONTNEED) of ${path} failed`);
  } finally {
    fs.closeSync(fd);
  }
}

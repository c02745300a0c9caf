/**
 * Sealed in-memory copies of files (Linux memfd), mapped with Bun.mmap.
 *
 * Why not map the served file itself: Bun.mmap opens it read-write (EACCES on a read-only
 * file after a privilege drop, and a bug could write into a boot image), and a file truncated
 * while mapped kills the process with SIGBUS — an operator who `cp`s a new initrd over the old
 * one would crash the server. A memfd copy is ours alone: the kernel copies the bytes
 * (sendfile, no trip through JS), then the memfd is sealed against writes, shrinking and
 * growing, so nothing can truncate or change it, and it is mapped private.
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import { writeSync } from "node:fs";

const MFD_CLOEXEC = 1;
const MFD_ALLOW_SEALING = 2;
const F_ADD_SEALS = 1033;
const F_SEAL_SEAL = 1;
const F_SEAL_SHRINK = 2;
const F_SEAL_GROW = 4;
const F_SEAL_WRITE = 8;
/** Linux transfers at most this much per sendfile call. */
const SENDFILE_MAX = 0x7ffff000;

interface Libc {
  memfd_create(name: Uint8Array, flags: number): number;
  sendfile(out: number, input: number, offset: BigInt64Array, count: number): number;
  fcntl(fd: number, cmd: number, arg: number): number;
  close(fd: number): number;
}

let libc: Libc | null | undefined;

function loadLibc(): Libc | null {
  if (libc !== undefined) return libc;
  try {
    const lib = dlopen("libc.so.6", {
      memfd_create: { args: [FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
      sendfile: { args: [FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i64 },
      fcntl: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
      close: { args: [FFIType.i32], returns: FFIType.i32 },
    });
    libc = {
      memfd_create: (name, flags) => lib.symbols.memfd_create(ptr(name), flags),
      sendfile: (out, input, offset, count) => Number(lib.symbols.sendfile(out, input, ptr(offset), count)),
      fcntl: (fd, cmd, arg) => lib.symbols.fcntl(fd, cmd, arg),
      close: (fd) => lib.symbols.close(fd),
    };
  } catch {
    libc = null;
  }
  return libc;
}

/**
 * sendfile of bytes [start, end) of `input` to `out`'s own file position; `offset` is the
 * caller's scratch for the input position. Also called on the file I/O pool's threads
 * (copy-worker.ts): a descriptor names the same open file in every thread of the process.
 */
function copyRange(lib: Libc, offset: BigInt64Array, out: number, input: number, start: number, end: number): void {
  let at = start;
  while (at < end) {
    offset[0] = BigInt(at);
    const n = lib.sendfile(out, input, offset, Math.min(end - at, SENDFILE_MAX));
    // 0: the file ended early (truncated while we copied); <0: an I/O error.
    if (n <= 0) throw new Error(n === 0 ? "file changed while it was being cached" : "read error while caching");
    at += n;
  }
}

/** copyRange with this thread's libc: throws what copyRange throws, or that libc is out of reach. */
export function sendfileRange(out: number, input: number, start: number, end: number): void {
  const lib = loadLibc();
  if (!lib) throw new Error("memfd is not available on this system");
  copyRange(lib, new BigInt64Array(1), out, input, start, end);
}

/** True when this system can make sealed memfd copies (Linux with a reachable libc). */
export function memfdAvailable(): boolean {
  return process.platform === "linux" && loadLibc() !== null;
}

export interface SealedCopy {
  /** the memfd; other threads of this process can map `/proc/self/fd/<fd>` */
  fd: number;
  bytes: Uint8Array;
  close(): void;
}

const NAME = new TextEncoder().encode("tftpd-cache\0");

/**
 * A copy being made: a new memfd of `size` bytes, written in place (`write`, for bytes that
 * arrive out of order from the fleet) or copied from an open file by the kernel (`copyFrom`,
 * sendfile: no trip through JS), then `seal()`ed. Errors are thrown and leave the memfd open:
 * readers of the bytes already in may still be reading it (other threads read it by its
 * descriptor number, which must not be reused under them), so its owner calls `abort()` once
 * they are done.
 */
export class MemfdFiller {
  private readonly lib: Libc;
  private readonly offset = new BigInt64Array(1);
  readonly fd: number;

  constructor(readonly size: number) {
    const lib = loadLibc();
    if (!lib) throw new Error("memfd is not available on this system");
    this.lib = lib;
    this.fd = lib.memfd_create(NAME, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (this.fd < 0) throw new Error("memfd_create failed");
  }

  /** Writes `bytes` at `offset` of the copy (before it is sealed). */
  write(bytes: Uint8Array, offset: number): void {
    if (offset < 0 || offset + bytes.length > this.size) throw new RangeError(`write of ${bytes.length} bytes at ${offset} past ${this.size}`);
    let done = 0;
    while (done < bytes.length) done += writeSync(this.fd, bytes, done, bytes.length - done, offset + done);
  }

  /**
   * Copies bytes [start, end) of `sourceFd` to the same place in the copy. Calls must follow
   * each other (start = the previous end): sendfile writes at the memfd's own file position.
   */
  copyFrom(sourceFd: number, start: number, end: number): void {
    copyRange(this.lib, this.offset, this.fd, sourceFd, start, end);
  }

  /** Seals the copy (no write, shrink or grow, ever) and maps it. */
  seal(): SealedCopy {
    const seals = F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
    if (this.lib.fcntl(this.fd, F_ADD_SEALS, seals) !== 0) throw new Error("could not seal the cached copy");
    // An empty file cannot be mapped; it needs no bytes anyway.
    const bytes = this.size === 0 ? new Uint8Array(0) : Bun.mmap(`/proc/self/fd/${this.fd}`, { shared: false });
    const fd = this.fd;
    const lib = this.lib;
    let open = true;
    return {
      fd,
      bytes,
      close() {
        if (!open) return;
        open = false;
        // The mapping stays valid until the bytes are garbage-collected; the descriptor goes now.
        lib.close(fd);
      },
    };
  }

  /** Closes an unsealed copy. Once only; never after seal() succeeded (the copy owns the fd then). */
  abort(): void {
    this.lib.close(this.fd);
  }
}

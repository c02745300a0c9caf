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
 * A filler that copies `size` bytes of `sourceFd` into a new memfd in steps of `chunk` bytes,
 * so a large initrd does not stall the event loop in one go. Call `step()` until it returns
 * true, then `seal()`; on any error the memfd is closed and the error thrown. Without a
 * source descriptor (`null`), the bytes come through `write()` instead (a file fetched from
 * the cluster cache).
 */
export class MemfdFiller {
  private readonly lib: Libc;
  private readonly offset = new BigInt64Array(1);
  private copied = 0;
  readonly fd: number;

  constructor(
    private readonly sourceFd: number | null,
    readonly size: number,
    private readonly chunk = 64 << 20,
  ) {
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

  /** Copies the next chunk; true when the whole file is in. */
  step(): boolean {
    if (this.sourceFd === null) throw new Error("this copy is filled through write()");
    const end = Math.min(this.size, this.copied + this.chunk);
    while (this.copied < end) {
      this.offset[0] = BigInt(this.copied);
      const n = this.lib.sendfile(this.fd, this.sourceFd, this.offset, Math.min(end - this.copied, SENDFILE_MAX));
      if (n <= 0) {
        this.abort();
        // 0: the file ended early (truncated while we copied); <0: an I/O error.
        throw new Error(n === 0 ? "file changed while it was being cached" : "read error while caching");
      }
      this.copied += n;
    }
    return this.copied >= this.size;
  }

  /** Seals the copy (no write, shrink or grow, ever) and maps it. */
  seal(): SealedCopy {
    const seals = F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
    if (this.lib.fcntl(this.fd, F_ADD_SEALS, seals) !== 0) {
      this.abort();
      throw new Error("could not seal the cached copy");
    }
    // An empty file cannot be mapped; it needs no bytes anyway.
    let bytes: Uint8Array;
    try {
      bytes = this.size === 0 ? new Uint8Array(0) : Bun.mmap(`/proc/self/fd/${this.fd}`, { shared: false });
    } catch (error) {
      this.abort(); // the memfd would leak otherwise
      throw error;
    }
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

  abort(): void {
    this.lib.close(this.fd);
  }
}

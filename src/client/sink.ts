/**
 * Where downloaded bytes go: a callback, memory, or a file written through a temporary name
 * and renamed into place only on success.
 */
import { closeSync, fsyncSync, openSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { basename, dirname, join } from "node:path";

export interface Sink {
  /** Host bytes in order; `chunk` is only valid during the call. */
  write(chunk: Uint8Array): void;
  /** Success: make the result durable/visible. Returns collected bytes, if any. */
  commit(): Uint8Array | undefined;
  /** Failure: drop everything. Idempotent; never throws. */
  discard(): void;
}

export class CallbackSink implements Sink {
  private offset = 0;
  constructor(private readonly onData: (chunk: Uint8Array, offset: number) => void) {}
  write(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.onData(chunk, this.offset);
    this.offset += chunk.length;
  }
  commit(): undefined {
    return undefined;
  }
  discard(): void {}
}

/** Largest buffer allocated up front from a tsize; beyond it the buffer grows by doubling. */
const PREALLOC_MAX = 256 * 1024 * 1024;

export class MemorySink implements Sink {
  private buf: Uint8Array;
  private length = 0;
  constructor(sizeHint = 0) {
    this.buf = new Uint8Array(Math.min(Math.max(sizeHint, 0), PREALLOC_MAX));
  }
  /** A tsize arrived: allocate once instead of growing. */
  reserve(size: number): void {
    if (this.length === 0 && size > this.buf.length) this.buf = new Uint8Array(Math.min(size, PREALLOC_MAX));
  }
  write(chunk: Uint8Array): void {
    const need = this.length + chunk.length;
    if (need > this.buf.length) {
      const grown = new Uint8Array(Math.max(need, this.buf.length * 2, 64 * 1024));
      grown.set(this.buf.subarray(0, this.length));
      this.buf = grown;
    }
    this.buf.set(chunk, this.length);
    this.length = need;
  }
  commit(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }
  discard(): void {
    this.buf = new Uint8Array(0);
    this.length = 0;
  }
}

export class FileSink implements Sink {
  private fd: number | null;
  private readonly temp: string;

  constructor(private readonly path: string) {
    const rand = Math.random().toString(36).slice(2, 10);
    this.temp = join(dirname(path), `.${basename(path)}.${process.pid}.${rand}.part`);
    try {
      this.fd = openSync(this.temp, "wx", 0o644);
    } catch (e) {
      throw new Error(`cannot create ${path}: ${describeFsError(e)}`);
    }
  }

  write(chunk: Uint8Array): void {
    if (this.fd === null) throw new Error("file sink closed");
    let at = 0;
    while (at < chunk.length) at += writeSync(this.fd, chunk, at, chunk.length - at);
  }

  commit(): undefined {
    if (this.fd === null) throw new Error("file sink closed");
    const fd = this.fd;
    this.fd = null;
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(this.temp, this.path);
    return undefined;
  }

  discard(): void {
    if (this.fd !== null) {
      try {
        closeSync(this.fd);
      } catch {
        // already failing
      }
      this.fd = null;
    }
    try {
      unlinkSync(this.temp);
    } catch {
      // gone already, or renamed
    }
  }
}

/** "no such file or directory" from a Node fs error, without the syscall noise. */
export function describeFsError(e: unknown): string {
  const err = e as { code?: string; message?: string };
  const known: Record<string, string> = {
    ENOENT: "no such file or directory",
    EACCES: "permission denied",
    EPERM: "operation not permitted",
    EISDIR: "is a directory",
    ENOTDIR: "not a directory",
    EROFS: "read-only file system",
    ENOSPC: "no space left on device",
    EEXIST: "file exists",
  };
  return (err.code && known[err.code]) ?? err.message ?? String(e);
}

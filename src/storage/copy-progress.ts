/**
 * A copy still being made, as its readers see it, in whichever thread: which of its bytes can
 * be read, a wait for the others, and the read itself (from the copy's memfd, by position).
 */
import * as fs from "node:fs";
import { memorySource, type FileIdentity, type FileSource, type SourceShare } from "./source.ts";

/**
 * Reads bytes [position, position + length) of a copy still being filled, from its memfd; they
 * must lie below `readable` (or the copy's end, once complete).
 */
export function readFilled(fd: number, readable: number, size: number, position: number, into: Uint8Array, offset: number, length: number): number {
  const end = Math.min(size, position + length);
  if (end > readable && end > position) throw new Error("read past the bytes copied so far");
  let done = 0;
  while (position + done < end) {
    const n = fs.readSync(fd, into, offset + done, end - position - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/**
 * Which bytes of a copy written out of order are in: the readable prefix, the ranges written
 * past it, and the readers waiting for more. The last byte becomes readable only when the
 * fill completes (the whole copy checked): a transfer never ends on a copy that fails.
 */
export class FillProgress {
  /** bytes [0, readable) can be read */
  readable = 0;
  /** bytes [0, written) are in */
  written = 0;
  private readonly ahead = new Map<number, number>();
  private waiters: { end: number; resolve: () => void; reject: (error: Error) => void }[] = [];
  private failure: Error | null = null;

  constructor(private readonly size: number) {}

  wrote(start: number, end: number): void {
    if (start !== this.written) {
      this.ahead.set(start, end);
      return;
    }
    this.written = end;
    for (let next = this.ahead.get(this.written); next !== undefined; next = this.ahead.get(this.written)) {
      this.ahead.delete(this.written);
      this.written = next;
    }
    this.advance(Math.min(this.written, this.size - 1));
  }

  /** Bytes [0, readable) are in (told by the thread that fills the copy). */
  advance(readable: number): void {
    if (readable <= this.readable) return;
    this.readable = readable;
    this.wake();
  }

  whenReadable(end: number): Promise<void> | null {
    if (end <= this.readable) return null;
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => this.waiters.push({ end, resolve, reject }));
  }

  complete(): void {
    this.advance(Number.MAX_SAFE_INTEGER);
  }

  fail(error: Error): void {
    this.failure = error;
    for (const w of this.waiters.splice(0)) w.reject(error);
  }

  private wake(): void {
    if (this.waiters.length === 0) return;
    const still: typeof this.waiters = [];
    for (const w of this.waiters) {
      if (w.end <= this.readable) w.resolve();
      else still.push(w);
    }
    this.waiters = still;
  }
}

/** A copy being made, as one thread knows it. */
export interface CopyView {
  /** the copy's memfd: open for as long as this thread has readers of it */
  readonly fd: number;
  readonly progress: FillProgress;
  /** the sealed copy's bytes, once it is sealed (null before) */
  sealedBytes(): Uint8Array | null;
  /** why the copy failed, or null */
  failure(): string | null;
}

/**
 * A source that follows a copy being made: bytes already in are read from the memfd,
 * `whenReadable` says when the others are, and once the copy is sealed reads move onto its
 * mapping. `share`: how another thread takes it over, asked when it does.
 */
export function followingSource(view: CopyView, identity: FileIdentity, release: () => void, share?: () => SourceShare | undefined): FileSource {
  let mapped: FileSource | null = null;
  let closed = false;
  const onCopy = (): FileSource | null => {
    if (mapped === null) {
      const bytes = view.sealedBytes();
      if (bytes) mapped = memorySource(bytes, identity);
    }
    return mapped;
  };
  return {
    size: identity.size,
    identity,
    get share() {
      return share?.();
    },
    read(position, into, offset, length) {
      if (closed) throw new Error("read on a closed FileSource");
      const copy = onCopy();
      if (copy) return copy.read(position, into, offset, length);
      const failure = view.failure();
      if (failure !== null) throw new Error(failure);
      return readFilled(view.fd, view.progress.readable, identity.size, position, into, offset, length);
    },
    whenReadable: (end) => (onCopy() ? null : view.progress.whenReadable(end)),
    close() {
      if (closed) return;
      closed = true;
      mapped?.close();
      release();
    },
  };
}

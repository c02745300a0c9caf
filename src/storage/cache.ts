/**
 * The file cache: every transfer of the same file version reads the same in-memory bytes,
 * copied once per version into a sealed memfd and mapped with Bun.mmap (see memfd.ts for
 * why the served file itself is never mapped). Memory is the kernel's shared memory, not the
 * JS heap.
 *
 * A version is (device, inode, size, mtime, ctime): a file replaced by rename or rewritten in place
 * is a new version on the next request, while transfers already running keep the bytes they
 * started with. Bounded by `maxBytes` with least-recently-used eviction of versions no
 * transfer is reading. Concurrent requests for one version share one fill.
 */
import * as fs from "node:fs";
import { MemfdFiller, memfdAvailable, type SealedCopy } from "./memfd.ts";
import { memorySource, type FdFileSource, type FileIdentity, type FileSource } from "./source.ts";

export interface CacheStats {
  hits: number;
  misses: number;
  /** requests served from disk because the file does not fit or caching failed */
  bypasses: number;
  evictions: number;
  /** bytes held by cached versions */
  bytes: number;
  entries: number;
}

interface Entry {
  /** unique for the life of the process, unlike the memfd's descriptor number */
  id: number;
  key: string;
  identity: FileIdentity;
  copy: SealedCopy | null;
  /** set while the copy is being made; every requester of this version awaits it */
  filling: Promise<void> | null;
  failed: boolean;
  /** why the copy could not be made, for the requests that waited for it */
  failure: string | null;
  /** while a copy is written out of order (acquireFilled): which bytes are in, and its memfd */
  progress: FillProgress | null;
  /** bytes counted against the cache size for this version */
  charged: number;
  readers: number;
  lastUsed: number;
}

function versionKey(id: FileIdentity): string {
  return `${id.dev}:${id.ino}:${id.size}:${id.mtimeMs}:${id.ctimeMs}`;
}

/**
 * Requests for a file up to this size wait for its copy (a few ms at most). A larger file is
 * copied once a second transfer wants it or the first one ends, not while a single transfer
 * would pay for it; until the copy is ready, readers read the open file and move onto the copy
 * when it is.
 */
export const WAIT_FOR_FILL_MAX_BYTES = 16 << 20;

/** Yields to the event loop between fill chunks so running transfers keep moving. */
const yieldToLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

export class FileCache {
  private readonly entries = new Map<string, Entry>();
  /** the version last served for each request path (stale ones are checked on use) */
  private readonly byPath = new Map<string, Entry>();
  private bytes = 0;
  private lastId = 0;
  /** told when a cached copy is gone, so other threads drop their mappings of it */
  onRelease: ((id: number) => void) | null = null;
  /** told when a copy is ready, so other threads can map it and move their readers onto it */
  onFilled: ((id: number, memfd: number, size: number) => void) | null = null;
  private readonly counters = { hits: 0, misses: 0, bypasses: 0, evictions: 0 };
  readonly enabled: boolean;

  /** @param fillChunkBytes bytes copied between two yields to the event loop during a fill */
  constructor(
    private readonly maxBytes: number,
    private readonly fillChunkBytes = 8 << 20,
  ) {
    this.enabled = maxBytes > 0 && memfdAvailable();
  }

  get stats(): CacheStats {
    return { ...this.counters, bytes: this.bytes, entries: this.entries.size };
  }

  /**
   * Trades an open file for a cached source of the same version. Takes ownership of `file`:
   * it is closed once the cached copy exists, or kept as the source when the version cannot be
   * cached (too large for the cache, or the copy failed).
   */
  async acquire(file: FdFileSource, path?: string): Promise<FileSource> {
    const key = versionKey(file.identity);
    const source = await this.acquireVersion(file, key);
    if (path !== undefined) {
      const entry = this.entries.get(key);
      if (entry) this.byPath.set(path, entry);
    }
    return source;
  }

  /**
   * The cached copy of the file at `path` (as given to acquire) when it is ready and still
   * matches `facts` (size, mtime, ctime from a metadata cache); null otherwise. No disk access.
   */
  acquireKnown(path: string, facts: { size: number; mtimeMs: number; ctimeMs: number }): FileSource | null {
    const entry = this.byPath.get(path);
    if (!entry || this.entries.get(entry.key) !== entry || !entry.copy) return null;
    const id = entry.identity;
    if (id.size !== facts.size || id.mtimeMs !== facts.mtimeMs || id.ctimeMs !== facts.ctimeMs) return null;
    return this.readReady(entry);
  }

  private async acquireVersion(file: FdFileSource, key: string): Promise<FileSource> {
    const fd = file.fd;
    if (!this.enabled || file.size > this.maxBytes) {
      this.counters.bypasses++;
      return file;
    }
    let entry = this.entries.get(key);
    if (entry && !entry.failed) {
      if (!entry.copy && file.size > WAIT_FOR_FILL_MAX_BYTES) {
        // A second reader of a large file: now the copy pays off. Until it is ready, read the
        // open file.
        if (!entry.filling) this.startFill(entry, fd);
        this.counters.bypasses++;
        return this.promotingSource(file, entry);
      }
      this.counters.hits++;
    } else {
      this.counters.misses++;
      if (!this.makeRoom(file.size)) {
        this.counters.bypasses++;
        return file;
      }
      const created: Entry = { id: ++this.lastId, key, identity: file.identity, copy: null, filling: null, failed: false, failure: null, progress: null, charged: file.size, readers: 0, lastUsed: 0 };
      this.entries.set(key, created);
      this.bytes += created.charged;
      entry = created;
      if (file.size > WAIT_FOR_FILL_MAX_BYTES) {
        // Copying hundreds of MiB costs tens of ms of CPU, worth it only for a file read more
        // than once: the first reader reads the open file, and the copy starts with the second.
        this.counters.bypasses++;
        return this.promotingSource(file, entry);
      }
      this.startFill(created, fd);
    }
    entry.readers++;
    entry.lastUsed = performance.now();
    if (entry.filling) await entry.filling;
    if (!entry.copy) {
      if (--entry.readers === 0) this.release(entry);
      this.counters.bypasses++;
      return file;
    }
    file.close();
    return this.sourceOf(entry);
  }

  /**
   * A file this node's disk does not hold (one fetched from the cluster cache): `fill` writes
   * its bytes into a sealed copy like any other cached version, once per `key` however many
   * requests wait for it; `identity.size` must be its exact size. Throws, with the fill's
   * error, when no copy could be made; the next request for the key tries again.
   */
  async acquireFilled(
    key: string,
    identity: FileIdentity,
    fill: (write: (bytes: Uint8Array, offset: number) => void) => Promise<void>,
    options: { stream?: boolean } = {},
  ): Promise<FileSource> {
    if (!this.enabled) throw new Error("the local file cache is off (performance.memory.cache_size 0 or cache.enabled false)");
    if (identity.size > this.maxBytes) throw new Error(`file of ${identity.size} bytes exceeds performance.memory.cache_size`);
    const entryKey = `filled:${key}`;
    let entry = this.entries.get(entryKey);
    if (entry && !entry.failed) {
      this.counters.hits++;
    } else {
      this.counters.misses++;
      if (!this.makeRoom(identity.size)) throw new Error("the local file cache is full of files being served");
      const created: Entry = { id: ++this.lastId, key: entryKey, identity, copy: null, filling: null, failed: false, failure: null, progress: null, charged: identity.size, readers: 0, lastUsed: 0 };
      this.entries.set(entryKey, created);
      this.bytes += created.charged;
      created.filling = this.fillFrom(created, fill).then(() => {
        created.filling = null;
      });
      entry = created;
    }
    // streaming: the transfer starts on the first bytes and waits, window by window, for the rest
    if (options.stream && entry.progress && !entry.copy) return this.fillingSource(entry);
    entry.readers++;
    entry.lastUsed = performance.now();
    if (entry.filling) await entry.filling;
    if (!entry.copy) {
      if (--entry.readers === 0) this.release(entry);
      throw new Error(entry.failure ?? "the file could not be cached");
    }
    return this.sourceOf(entry);
  }

  /**
   * A source over a copy still being filled: bytes already written are read from the memfd,
   * `whenReadable` says when the others arrive, and once the copy is sealed reads move onto
   * its mapping. Read on this thread only (no share for workers until the copy is ready).
   */
  private fillingSource(entry: Entry): FileSource {
    const progress = entry.progress!;
    const size = entry.identity.size;
    entry.readers++;
    entry.lastUsed = performance.now();
    let copy: FileSource | null = null;
    let released = false;
    return {
      size,
      identity: entry.identity,
      read: (position, into, offset, length) => {
        if (released) throw new Error("read on a closed FileSource");
        if (!copy && entry.copy) copy = memorySource(entry.copy.bytes, entry.identity);
        if (copy) return copy.read(position, into, offset, length);
        // failed is set before the memfd is closed: its descriptor number is never read after
        if (entry.failed) throw new Error(entry.failure ?? "the file could not be fetched");
        const end = Math.min(size, position + length);
        if (end > progress.readable) throw new Error("read past the bytes fetched so far");
        let done = 0;
        while (position + done < end) {
          const n = fs.readSync(progress.fd, into, offset + done, end - position - done, position + done);
          if (n === 0) break;
          done += n;
        }
        return done;
      },
      whenReadable: (end) => (entry.copy ? null : progress.whenReadable(end)),
      close: () => {
        if (released) return;
        released = true;
        this.unread(entry);
      },
    };
  }

  /** True when a copy for `key` (of acquireFilled) is ready now. */
  holdsFilled(key: string): boolean {
    return this.entries.get(`filled:${key}`)?.copy != null;
  }

  /** The ready copy for `key` (of acquireFilled), or null; never starts a fill. */
  acquireHeld(key: string): FileSource | null {
    const entry = this.entries.get(`filled:${key}`);
    return entry?.copy ? this.readReady(entry) : null;
  }

  /** A hit on a ready copy, served at once. */
  private readReady(entry: Entry): FileSource {
    this.counters.hits++;
    entry.readers++;
    entry.lastUsed = performance.now();
    return this.sourceOf(entry);
  }

  private async fillFrom(entry: Entry, fill: (write: (bytes: Uint8Array, offset: number) => void) => Promise<void>): Promise<void> {
    let filler: MemfdFiller | null = null;
    try {
      filler = new MemfdFiller(null, entry.identity.size);
      const target = filler;
      const progress = new FillProgress(target.fd, entry.identity.size);
      entry.progress = progress;
      await fill((bytes, offset) => {
        target.write(bytes, offset);
        progress.wrote(offset, offset + bytes.length);
      });
      // seal() closes the memfd itself when it fails
      filler = null;
      entry.copy = target.seal();
      progress.complete();
      this.onFilled?.(entry.id, entry.copy.fd, entry.identity.size);
    } catch (error) {
      entry.failed = true;
      entry.failure = (error as Error).message;
      entry.progress?.fail(new Error(entry.failure));
      filler?.abort();
      this.drop(entry);
    } finally {
      entry.progress = null;
    }
  }

  private startFill(entry: Entry, fd: number): void {
    // fill() can finish before it returns (a file of one chunk is copied without yielding), so
    // the marker is cleared only after it was set: otherwise the entry would look busy forever
    // and never be evicted.
    entry.filling = this.fill(entry, fd).then(() => {
      entry.filling = null;
    });
  }

  private async fill(entry: Entry, fd: number): Promise<void> {
    // The filler reads through its own descriptor: the requester's may be closed before we finish.
    let own: number | null = null;
    try {
      own = fs.openSync(`/proc/self/fd/${fd}`, fs.constants.O_RDONLY);
      const filler = new MemfdFiller(own, entry.identity.size, this.fillChunkBytes);
      // A large file's first reader is answered before the copy starts taking the thread.
      if (entry.identity.size > WAIT_FOR_FILL_MAX_BYTES) await yieldToLoop();
      while (!filler.step()) await yieldToLoop();
      const after = fs.fstatSync(own);
      if (after.size !== entry.identity.size || after.mtimeMs !== entry.identity.mtimeMs || after.ctimeMs !== entry.identity.ctimeMs) {
        filler.abort();
        throw new Error("file changed while it was being cached");
      }
      entry.copy = filler.seal();
      this.onFilled?.(entry.id, entry.copy.fd, entry.identity.size);
    } catch {
      entry.failed = true;
      this.drop(entry);
    } finally {
      if (own !== null) fs.closeSync(own);
    }
  }

  private sourceOf(entry: Entry): FileSource {
    const inner = memorySource(entry.copy!.bytes, entry.identity);
    let released = false;
    return {
      size: inner.size,
      identity: inner.identity,
      share: { kind: "memfd", id: entry.id, fd: entry.copy!.fd },
      read: (position, into, offset, length) => inner.read(position, into, offset, length),
      close: () => {
        if (released) return;
        released = true;
        inner.close();
        this.unread(entry);
      },
    };
  }

  /**
   * Reads the open file until the copy of its version exists, then the copy: the first
   * request for a large file starts at once and reaches memory speed within milliseconds.
   */
  private promotingSource(file: FdFileSource, entry: Entry): FileSource {
    entry.readers++;
    entry.lastUsed = performance.now();
    let copy: FileSource | null = null;
    let released = false;
    return {
      size: file.size,
      identity: file.identity,
      share: { kind: "fd", fd: file.fd, pendingId: entry.id },
      read: (position, into, offset, length) => {
        if (!copy && entry.copy) copy = memorySource(entry.copy.bytes, entry.identity);
        return (copy ?? file).read(position, into, offset, length);
      },
      close: () => {
        if (released) return;
        released = true;
        // A boot file read once is read again: copy it now, while this reader's descriptor is
        // still open and before the next reader has to wait for it.
        if (!entry.copy && !entry.filling && !entry.failed && this.entries.get(entry.key) === entry) this.startFill(entry, file.fd);
        file.close();
        this.unread(entry);
      },
    };
  }

  private unread(entry: Entry): void {
    entry.readers--;
    entry.lastUsed = performance.now();
    // A version replaced on disk is dropped as soon as its last reader is done.
    if (entry.readers === 0 && this.entries.get(entry.key) !== entry) this.release(entry);
  }

  /** Evicts idle versions, oldest first, until `size` more bytes fit. */
  private makeRoom(size: number): boolean {
    if (this.bytes + size <= this.maxBytes) return true;
    const idle = [...this.entries.values()].filter((e) => e.readers === 0 && !e.filling).sort((a, b) => a.lastUsed - b.lastUsed);
    for (const entry of idle) {
      this.drop(entry);
      this.counters.evictions++;
      if (this.bytes + size <= this.maxBytes) return true;
    }
    return false;
  }

  private drop(entry: Entry): void {
    if (this.entries.get(entry.key) === entry) this.entries.delete(entry.key);
    for (const [path, held] of this.byPath) if (held === entry) this.byPath.delete(path);
    if (entry.readers === 0) this.release(entry);
  }

  private release(entry: Entry): void {
    if (entry.copy) {
      entry.copy.close();
      entry.copy = null;
      this.onRelease?.(entry.id);
    }
    this.bytes -= entry.charged;
    entry.charged = 0;
  }
}

/**
 * Which bytes of a copy written out of order are in: the readable prefix, the ranges written
 * past it, and the readers waiting for more. The last byte becomes readable only when the
 * fill completes (the whole copy checked): a transfer never ends on a copy that fails.
 */
class FillProgress {
  /** bytes [0, readable) are written */
  readable = 0;
  private written = 0;
  private readonly ahead = new Map<number, number>();
  private waiters: { end: number; resolve: () => void; reject: (error: Error) => void }[] = [];
  private failure: Error | null = null;

  constructor(
    readonly fd: number,
    private readonly size: number,
  ) {}

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
    this.readable = Math.min(this.written, this.size - 1);
    this.wake();
  }

  whenReadable(end: number): Promise<void> | null {
    if (end <= this.readable) return null;
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => this.waiters.push({ end, resolve, reject }));
  }

  complete(): void {
    this.readable = Number.MAX_SAFE_INTEGER;
    this.wake();
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

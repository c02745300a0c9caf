/**
 * The file cache: every transfer of the same file version reads the same in-memory bytes,
 * copied once per version into a sealed memfd and mapped with Bun.mmap (see memfd.ts for
 * why the served file itself is never mapped). Memory is the kernel's shared memory, not the
 * JS heap.
 *
 * An entry is one version of one file and is always in one of four states:
 *
 *   filling ──(every byte in, checked)──▶ ready ──(a newer version was seen)──▶ stale
 *      │
 *      └──(the version changed under the copy, a fetch failed)──▶ failed
 *
 * - filling: the copy is being made by a filler (from the disk, or from the fleet's shared
 *   cache). Readers start at once on the bytes already in and wait, window by window, for
 *   the others; the last byte becomes readable only once the whole copy is in and checked.
 * - ready: the sealed copy; nothing can change it.
 * - stale: a lookup found another version under the entry's name (or none). No new reader
 *   gets it; the readers it has finish on it, and it is released when the last one is done.
 * - failed: the copy could not be made whole. Its readers' next wait rejects, so a transfer
 *   ends with an ERROR rather than ever mixing bytes of two versions; the next request for the
 *   file starts again from the file as it is then.
 *
 * Entries that are not filling and have no reader are evicted least recently used first when
 * a new version needs the room (`maxBytes`).
 */
import * as fs from "node:fs";
import { FillProgress, followingSource, type CopyView } from "./copy-progress.ts";
import { diskIo, openForCopy } from "./disk-io.ts";
import { MemfdFiller, memfdAvailable, type SealedCopy } from "./memfd.ts";
import { memorySource, sameVersion, type FileIdentity, type FileSource, type SourceShare } from "./source.ts";

export interface CacheStats {
  hits: number;
  misses: number;
  /** requests served without the cache: the file does not fit, or the cache is off */
  bypasses: number;
  evictions: number;
  /** bytes held by cached versions */
  bytes: number;
  entries: number;
}

/** Where the bytes of a copy go while it is being made. */
export interface FillTarget {
  readonly size: number;
  /** writes bytes at `offset` (any order) and makes them readable */
  write(bytes: Uint8Array, offset: number): void;
  /**
   * copies bytes [start, end) of an open file into the same place (calls in order, from 0),
   * on the file I/O pool when there is one; they become readable only with `copied`, once the
   * caller has checked them
   */
  copyFrom(fd: number, start: number, end: number): Promise<void> | void;
  /** bytes [0, end) copied with copyFrom are good: make them readable */
  copied(end: number): void;
}

/** Makes a whole copy; rejects when it cannot (the entry then fails, its readers with it). */
export type Filler = (target: FillTarget) => Promise<void>;

/** What other threads reading the cache's copies are told (the worker pool relays it). */
export interface CacheEvents {
  /** more bytes of a filling copy are readable */
  progress?(id: number, readable: number): void;
  /** a copy is sealed: map it (readers of the filling copy move onto the mapping) */
  filled?(id: number, memfd: number, size: number): void;
  /** a filling copy failed: its readers stop */
  failed?(id: number, reason: string): void;
  /** a copy's memfd was closed: drop any mapping of it */
  released?(id: number): void;
}

type State =
  | { readonly kind: "filling"; readonly memfd: MemfdFiller; readonly progress: FillProgress; readonly done: Promise<void> }
  | { readonly kind: "ready"; readonly copy: SealedCopy }
  | { readonly kind: "stale"; readonly copy: SealedCopy }
  | { readonly kind: "failed"; readonly reason: string; readonly memfd: MemfdFiller | null };

interface Entry {
  /** unique for the life of the process, unlike the memfd's descriptor number */
  readonly id: number;
  readonly key: string;
  readonly identity: FileIdentity;
  state: State;
  /** bytes counted against the cache size; 0 once released */
  charged: number;
  readers: number;
  lastUsed: number;
}

/** A version of a file on disk: device, inode, size, mtime and ctime. */
export function versionKey(id: FileIdentity): string {
  return `${id.dev}:${id.ino}:${id.size}:${id.mtimeMs}:${id.ctimeMs}`;
}

/**
 * Requests for a file up to this size wait for its whole copy (a few ms at most) and get a
 * sealed copy any worker can map. A larger file's first readers start on the bytes already
 * copied and follow the copy.
 */
export const WAIT_FOR_FILL_MAX_BYTES = 16 << 20;

/** The first bytes of a disk copy come in a small step, so the first DATA leaves at once. */
const FIRST_STEP_BYTES = 1 << 20;

/** Yields to the event loop between fill steps so running transfers keep moving. */
const yieldToLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

export class FileCache {
  /** the current entry of each key: filling, ready or failed (stale entries have left it) */
  private readonly entries = new Map<string, Entry>();
  /** the version last seen under each request path, so a lookup notices a change */
  private readonly byPath = new Map<string, Entry>();
  private bytes = 0;
  private lastId = 0;
  private events: CacheEvents = {};
  private readonly counters = { hits: 0, misses: 0, bypasses: 0, evictions: 0 };
  readonly enabled: boolean;

  /**
   * Tells `events` what happens to the copies other threads read (the worker pool is the one
   * follower). Returns what stops it.
   */
  follow(events: CacheEvents): () => void {
    this.events = events;
    return () => {
      if (this.events === events) this.events = {};
    };
  }

  constructor(private readonly maxBytes: number) {
    this.enabled = maxBytes > 0 && memfdAvailable();
  }

  get stats(): CacheStats {
    return { ...this.counters, bytes: this.bytes, entries: this.entries.size };
  }

  /**
   * The one way in: a source over the cached copy of version `key`. A ready copy is a hit; a
   * copy being made is joined; otherwise `filler` makes one (a miss). Without a filler, only
   * a ready copy is returned. Null when the version is not cached and will not be: the cache
   * is off, the file does not fit, or every byte of it is being read.
   *
   * `mode`: "whole" returns only once the copy is sealed (readers that need every byte at
   * once); "stream" returns at once, while the copy fills; by default a file up to
   * WAIT_FOR_FILL_MAX_BYTES waits for its copy and a larger one streams. `path`: the
   * request path the version was found under; an older version seen under it becomes stale.
   * Throws the fill's error when a copy it waited for could not be made.
   */
  async acquire(
    key: string,
    identity: FileIdentity,
    filler: (() => Filler) | null,
    options: { mode?: "whole" | "stream"; path?: string } = {},
  ): Promise<FileSource | null> {
    let entry = this.entries.get(key);
    if (options.path !== undefined) this.noteVersion(options.path, entry ?? null, key);
    if (entry?.state.kind === "ready") return this.read(entry, true);
    if (!filler) return null;
    if (!this.enabled || identity.size > this.maxBytes) {
      this.counters.bypasses++;
      return null;
    }
    if (entry?.state.kind === "filling") {
      this.counters.hits++;
    } else {
      this.counters.misses++;
      if (!this.makeRoom(identity.size)) {
        this.counters.bypasses++;
        return null;
      }
      entry = this.startFill(key, identity, filler);
      if (options.path !== undefined) this.byPath.set(options.path, entry);
    }
    const state = entry.state;
    if (state.kind !== "filling") return this.settled(entry);
    const wait = options.mode === "whole" || (options.mode !== "stream" && identity.size <= WAIT_FOR_FILL_MAX_BYTES);
    if (!wait) return this.read(entry, false);
    // counted as a reader while it waits, so a copy that turns stale meanwhile is not released under it
    entry.readers++;
    try {
      await state.done;
      return this.settled(entry);
    } finally {
      this.unread(entry);
    }
  }

  /** The copy of `key` is ready now. */
  holds(key: string): boolean {
    return this.entries.get(key)?.state.kind === "ready";
  }

  /** The version last seen under `path` while it is cached and ready, else null. No disk access. */
  /**
   * A request served from the copy of version `key` by a thread that maps it itself (a worker
   * taking requests, fast-path.ts): a hit, and the copy is recently used.
   */
  servedElsewhere(key: string): void {
    const entry = this.entries.get(key);
    if (!entry || entry.state.kind !== "ready") return;
    this.counters.hits++;
    entry.lastUsed = performance.now();
  }

  versionAt(path: string): { key: string; identity: FileIdentity } | null {
    const entry = this.byPath.get(path);
    return entry && entry.state.kind === "ready" ? { key: entry.key, identity: entry.identity } : null;
  }

  /** A lookup found nothing under `path`: the version cached for it is stale. */
  forget(path: string): void {
    const entry = this.byPath.get(path);
    if (!entry) return;
    this.byPath.delete(path);
    this.retire(entry);
  }

  /** A filling entry that finished while a requester waited: a ready copy, or its error. */
  private settled(entry: Entry): FileSource {
    const state = entry.state;
    if (state.kind === "failed") throw new Error(state.reason);
    return this.read(entry, false);
  }

  /** `path` now names version `key`: what it named before is stale. */
  private noteVersion(path: string, entry: Entry | null, key: string): void {
    const previous = this.byPath.get(path);
    if (previous === undefined || previous.key === key) return;
    if (entry) this.byPath.set(path, entry);
    else this.byPath.delete(path);
    this.retire(previous);
  }

  /** Takes an entry out of the index; a ready copy turns stale and lives on for its readers. */
  private retire(entry: Entry): void {
    if (this.entries.get(entry.key) !== entry) return;
    this.entries.delete(entry.key);
    for (const [path, held] of this.byPath) if (held === entry) this.byPath.delete(path);
    if (entry.state.kind === "ready") entry.state = { kind: "stale", copy: entry.state.copy };
    if (entry.readers === 0 && entry.state.kind !== "filling") this.release(entry);
  }

  private startFill(key: string, identity: FileIdentity, makeFiller: () => Filler): Entry {
    const memfd = new MemfdFiller(identity.size);
    let filler: Filler;
    try {
      filler = makeFiller();
    } catch (error) {
      memfd.abort();
      throw error;
    }
    const progress = new FillProgress(identity.size);
    const entry: Entry = { id: ++this.lastId, key, identity, state: null!, charged: identity.size, readers: 0, lastUsed: performance.now() };
    this.entries.set(key, entry);
    this.bytes += entry.charged;
    const target: FillTarget = {
      size: identity.size,
      write: (bytes, offset) => {
        memfd.write(bytes, offset);
        this.wrote(entry, progress, offset, offset + bytes.length);
      },
      copyFrom: (fd, start, end) => {
        const copier = diskIo().copier;
        return copier ? copier.copy(memfd.fd, fd, start, end) : memfd.copyFrom(fd, start, end);
      },
      copied: (end) => this.wrote(entry, progress, progress.written, end),
    };
    const done = Promise.resolve()
      .then(() => filler(target))
      .then(
        () => this.sealed(entry, memfd, progress),
        (error: unknown) => this.fillFailed(entry, memfd, progress, (error as Error).message),
      );
    entry.state = { kind: "filling", memfd, progress, done };
    return entry;
  }

  private wrote(entry: Entry, progress: FillProgress, start: number, end: number): void {
    const before = progress.readable;
    progress.wrote(start, end);
    if (progress.readable > before) this.events.progress?.(entry.id, progress.readable);
  }

  private sealed(entry: Entry, memfd: MemfdFiller, progress: FillProgress): void {
    let copy: SealedCopy;
    try {
      copy = memfd.seal();
    } catch (error) {
      this.fillFailed(entry, memfd, progress, (error as Error).message);
      return;
    }
    const current = this.entries.get(entry.key) === entry;
    entry.state = current ? { kind: "ready", copy } : { kind: "stale", copy };
    progress.complete();
    this.events.filled?.(entry.id, copy.fd, entry.identity.size);
    if (!current && entry.readers === 0) this.release(entry);
  }

  private fillFailed(entry: Entry, memfd: MemfdFiller, progress: FillProgress, reason: string): void {
    entry.state = { kind: "failed", reason, memfd };
    progress.fail(new Error(reason));
    this.events.failed?.(entry.id, reason);
    if (this.entries.get(entry.key) === entry) this.entries.delete(entry.key);
    for (const [path, held] of this.byPath) if (held === entry) this.byPath.delete(path);
    if (entry.readers === 0) this.release(entry);
  }

  /**
   * A source over the entry's copy, ready or filling: while it fills, bytes already in are read
   * from the memfd and `whenReadable` says when the others are; once sealed, reads move onto
   * the mapping.
   */
  private read(entry: Entry, hit: boolean): FileSource {
    if (hit) this.counters.hits++;
    entry.readers++;
    entry.lastUsed = performance.now();
    const { identity } = entry;
    const state = entry.state;
    if (state.kind === "ready" || state.kind === "stale") {
      const copy = memorySource(state.copy.bytes, identity);
      let closed = false;
      const close = (): void => {
        if (closed) return;
        closed = true;
        copy.close();
        this.unread(entry);
      };
      return { size: identity.size, identity, share: { kind: "memfd", id: entry.id, fd: state.copy.fd }, bytes: state.copy.bytes, read: copy.read, close };
    }
    if (state.kind !== "filling") throw new Error("read of a failed copy");
    const { progress, memfd } = state;
    const view: CopyView = {
      fd: memfd.fd,
      progress,
      sealedBytes: () => (entry.state.kind === "ready" || entry.state.kind === "stale" ? entry.state.copy.bytes : null),
      // a failed copy's memfd stays open while it has readers: its descriptor is never reused under them
      failure: () => (entry.state.kind === "failed" ? entry.state.reason : null),
    };
    // as the copy is when another thread takes the source over: the events that follow tell it the rest
    const share = (): SourceShare | undefined => {
      const now = entry.state;
      if (now.kind === "ready" || now.kind === "stale") return { kind: "memfd", id: entry.id, fd: now.copy.fd };
      if (now.kind === "filling") return { kind: "filling", id: entry.id, fd: memfd.fd, readable: progress.readable };
      return undefined; // failed: read here, where the read says why
    };
    return followingSource(view, identity, () => this.unread(entry), share);
  }

  private unread(entry: Entry): void {
    entry.readers--;
    entry.lastUsed = performance.now();
    if (entry.readers > 0) return;
    const kind = entry.state.kind;
    if (kind === "stale" || kind === "failed") this.release(entry);
  }

  /** Evicts idle versions, oldest first, until `size` more bytes fit. */
  private makeRoom(size: number): boolean {
    if (this.bytes + size <= this.maxBytes) return true;
    const idle = [...this.entries.values()].filter((e) => e.readers === 0 && e.state.kind === "ready").sort((a, b) => a.lastUsed - b.lastUsed);
    for (const entry of idle) {
      this.retire(entry);
      this.counters.evictions++;
      if (this.bytes + size <= this.maxBytes) return true;
    }
    return false;
  }

  private release(entry: Entry): void {
    if (entry.charged === 0) return;
    const state = entry.state;
    if (state.kind === "ready" || state.kind === "stale") state.copy.close();
    else if (state.kind === "failed") state.memfd?.abort();
    if (state.kind === "failed") entry.state = { kind: "failed", reason: state.reason, memfd: null };
    this.events.released?.(entry.id);
    this.bytes -= entry.charged;
    entry.charged = 0;
  }
}

/**
 * The filler of a version read from disk: copies it through a descriptor of its own (the
 * requester's may be closed before the copy is done) in steps, yielding to the event loop
 * between them, and checks after every step that the file is still the version it started
 * from. A file rewritten, truncated or touched while it is copied fails the copy: no byte of
 * the new version is ever readable from it.
 */
export function diskFiller(fd: number, identity: FileIdentity, stepBytes = 8 << 20): Filler {
  // io.direct_io: O_DIRECT, so a large copy does not push the host's other files out of memory
  const own = openForCopy(fd);
  return async (target) => {
    try {
      const size = identity.size;
      // A large file's first reader is answered before the copy starts taking the thread.
      if (size > WAIT_FOR_FILL_MAX_BYTES) await yieldToLoop();
      for (let at = 0, step = Math.min(stepBytes, FIRST_STEP_BYTES); at < size; step = stepBytes) {
        const end = Math.min(size, at + step);
        await target.copyFrom(own, at, end);
        if (!sameVersion(identity, fs.fstatSync(own))) throw new Error("file changed while it was being cached");
        target.copied(end);
        at = end;
        if (at < size) await yieldToLoop();
      }
    } finally {
      fs.closeSync(own);
    }
  };
}

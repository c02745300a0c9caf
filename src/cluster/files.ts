/**
 * Files a node serves from the fleet's shared cache: the `RemoteFiles` behind the local root.
 *
 * One request costs one Redis round trip (the manifest, which also marks the file as served);
 * the bytes are fetched once per node and file version into the local file cache, and every
 * later transfer reads them from memory. The first transfers start on the first checked chunk
 * and follow the fetch window by window (concurrent requests share it); every chunk is checked
 * against its sha256 before a byte of it leaves, and the whole file against the manifest
 * before the last block does.
 *
 * When Redis cannot answer, a file this node fetched before is still served from its local
 * copy (the last version it saw); any other file gets a clear ERROR after at most one
 * command timeout.
 */
import { ErrorCode, refuse, type Refusal } from "../storage/refusal.ts";
import type { FileCache, Filler } from "../storage/cache.ts";
import type { FileIdentity, FileSource } from "../storage/source.ts";
import type { RemoteFiles } from "../storage/remote.ts";
import { fetchContent, lookup, type Manifest } from "./content.ts";
import type { ClusterStats } from "../ops/metrics.ts";
import type { RedisLink } from "./redis.ts";

export interface ClusterFileEvents {
  /** a file's bytes were fetched from the cluster into the local cache */
  filled?(name: string, bytes: number, ms: number): void;
  /** a fetch failed (missing or damaged chunk, Redis gone mid-fetch) */
  fillFailed?(name: string, error: string): void;
  /** served from the local copy because Redis did not answer */
  servedStale?(name: string, error: string): void;
}

/** Longest a request for a file this node holds waits for Redis before it gets the local copy. */
const STALE_AFTER_MS = 250;

interface KnownCopy {
  key: string;
  identity: FileIdentity;
}

export class ClusterFiles implements RemoteFiles {
  /** the version of each name this node last fetched: what it can serve while Redis is away */
  private readonly known = new Map<string, KnownCopy>();
  readonly stats: Omit<ClusterStats, "redisUp"> = { lookups: 0, fills: 0, fillFailures: 0, staleServes: 0, unavailable: 0 };

  constructor(
    private readonly link: RedisLink,
    private readonly cache: FileCache,
    private readonly events: ClusterFileEvents = {},
  ) {}

  async open(name: string, options: { whole?: boolean } = {}): Promise<{ ok: true; source: FileSource } | Refusal> {
    let manifest: Manifest | null;
    try {
      this.stats.lookups++;
      manifest = await this.lookupWithin(name);
    } catch (error) {
      return this.withoutRedis(name, (error as Error).message);
    }
    if (!manifest) {
      this.known.delete(name);
      return refuse(ErrorCode.FILE_NOT_FOUND, "file not found");
    }
    const copy: KnownCopy = {
      key: `cluster:${manifest.sha256}:${manifest.size}`,
      identity: { dev: 0, ino: 0, size: manifest.size, mtimeMs: manifest.mtimeMs, ctimeMs: manifest.publishedAt },
    };
    const fetched = manifest;
    try {
      const fill = (): Filler => async (target) => {
        const started = performance.now();
        this.stats.fills++;
        try {
          await fetchContent(this.link, fetched, (bytes, offset) => target.write(bytes, offset));
        } catch (error) {
          this.stats.fillFailures++;
          this.events.fillFailed?.(name, (error as Error).message);
          throw error;
        }
        this.events.filled?.(name, fetched.size, performance.now() - started);
      };
      const source = await this.cache.acquire(copy.key, copy.identity, fill, { mode: options.whole ? "whole" : "stream" });
      if (!source) return refuse(ErrorCode.NOT_DEFINED, "cluster cache: the local file cache cannot hold this file (performance.memory.cache_size, cache.enabled)");
      this.known.set(name, copy);
      return { ok: true, source };
    } catch (error) {
      return refuse(ErrorCode.NOT_DEFINED, `cluster cache: ${(error as Error).message}`);
    }
  }

  /**
   * The manifest, waiting at most STALE_AFTER_MS when this node holds a copy of the file: a
   * master failing over stalls its slots for seconds, and a ROM should not wait that long
   * for a file the node has in memory. Without a copy, the lookup gets its full time.
   */
  private lookupWithin(name: string): Promise<Manifest | null> {
    const pending = lookup(this.link, name);
    const copy = this.known.get(name);
    if (!copy || !this.cache.holds(copy.key)) return pending;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`redis did not answer within ${STALE_AFTER_MS} ms`)), STALE_AFTER_MS);
    });
    pending.catch(() => {}); // a lookup that loses the race may still fail later
    return Promise.race([pending, late]).finally(() => clearTimeout(timer));
  }

  private async withoutRedis(name: string, why: string): Promise<{ ok: true; source: FileSource } | Refusal> {
    const copy = this.known.get(name);
    const source = copy ? await this.cache.acquire(copy.key, copy.identity, null) : null;
    if (source) {
      this.stats.staleServes++;
      this.events.servedStale?.(name, why);
      return { ok: true, source };
    }
    this.stats.unavailable++;
    return refuse(ErrorCode.NOT_DEFINED, "file not on this node and the cluster cache is unavailable");
  }
}

/**
 * The fleet's shared file cache in Redis: boot files published once (`tftpd cache put`) and
 * fetched by any node that lacks them in its own root.
 *
 * A file is a manifest (a hash under the `{files}` tag: size, sha256, mtime, chunk size,
 * compression, the chunk list) plus content-addressed chunks: each chunk's key is the sha256
 * of its raw bytes and its encoding, so the chunks spread over every master of the cluster and
 * a file published twice, or two files sharing bytes, store them once. A chunk is gzipped
 * when compression is on, the chunk is at least `min_size`, and gzip makes it smaller.
 *
 * Every chunk is checked against its address when fetched, and the whole file against the
 * manifest's sha256: a tampered or truncated chunk fails the fetch, it is never served.
 *
 * Published names are indexed in a sorted set scored by when each was last served: when a
 * publish would take the cache past `max_size`, the least recently served files go first.
 */
import type { RedisLink } from "./redis.ts";

export type ChunkEncoding = "raw" | "gzip";

export interface ChunkRef {
  sha256: string;
  encoding: ChunkEncoding;
  /** bytes held in Redis (after compression) */
  stored: number;
}

export interface Manifest {
  name: string;
  size: number;
  sha256: string;
  mtimeMs: number;
  chunkSize: number;
  /** what the publisher asked for; each chunk says what it got */
  compression: "none" | "gzip";
  chunks: ChunkRef[];
  /** bytes of all chunks as stored */
  stored: number;
  publishedAt: number;
  /** seconds the file stays published; 0 keeps it until removed or evicted */
  ttlS: number;
}

export interface PublishOptions {
  chunkSize: number;
  ttlS: number;
  maxSizeBytes: number;
  compression: { enabled: boolean; level: number; minSize: number };
  mtimeMs?: number;
}

export interface PublishResult {
  manifest: Manifest;
  /** names removed to make room, least recently served first */
  evicted: string[];
}

export interface CachedFile {
  name: string;
  size: number;
  stored: number;
  sha256: string;
  compression: string;
  chunks: number;
  /** when a node last served it (ms since the epoch), or null when never */
  lastServedMs: number | null;
  publishedAt: number;
  /** seconds until it expires, or null when it is kept */
  expiresInS: number | null;
}

/** Chunks fetched or stored at once: enough to keep every master busy, bounded in memory. */
const PARALLEL_CHUNKS = 8;
/**
 * Chunks outlive their manifest by this much, so a fetch that read the manifest just before it
 * expired still finds every chunk.
 */
const CHUNK_TTL_MARGIN_S = 60;

export const DEFAULT_CHUNK_SIZE = 1 << 20;

export function sha256Hex(bytes: Uint8Array): string {
  return new Bun.CryptoHasher("sha256").update(bytes).digest("hex");
}

/** Runs `work` over `items` with at most `limit` in flight, in order of start. */
async function inParallel<T>(items: readonly T[], limit: number, work: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const index = next++;
      await work(items[index]!, index);
    }
  });
  await Promise.all(lanes);
}

/** Splits and encodes a file's bytes: pure, no Redis. */
export function encodeChunks(
  bytes: Uint8Array,
  chunkSize: number,
  compression: PublishOptions["compression"],
): { refs: ChunkRef[]; payloads: Uint8Array[] } {
  const refs: ChunkRef[] = [];
  const payloads: Uint8Array[] = [];
  for (let offset = 0; offset < bytes.length; offset += chunkSize) {
    const raw = bytes.subarray(offset, Math.min(bytes.length, offset + chunkSize));
    let payload: Uint8Array = raw;
    let encoding: ChunkEncoding = "raw";
    if (compression.enabled && raw.length >= compression.minSize) {
      const gz = Bun.gzipSync(raw as Uint8Array<ArrayBuffer>, { level: compression.level as 1 });
      if (gz.length < raw.length) {
        payload = gz;
        encoding = "gzip";
      }
    }
    refs.push({ sha256: sha256Hex(raw), encoding, stored: payload.length });
    payloads.push(payload);
  }
  return { refs, payloads };
}

/** A chunk as fetched, back to its raw bytes; throws when they do not match its address. */
export function decodeChunk(ref: ChunkRef, payload: Uint8Array): Uint8Array {
  let raw: Uint8Array;
  try {
    raw = ref.encoding === "gzip" ? Bun.gunzipSync(payload as Uint8Array<ArrayBuffer>) : payload;
  } catch {
    throw new Error(`chunk ${ref.sha256.slice(0, 12)} is corrupt (gzip)`);
  }
  if (sha256Hex(raw) !== ref.sha256) throw new Error(`chunk ${ref.sha256.slice(0, 12)} does not match its sha256`);
  return raw;
}

function manifestFields(m: Manifest): Record<string, string> {
  return {
    name: m.name,
    size: String(m.size),
    sha256: m.sha256,
    mtime: String(m.mtimeMs),
    chunk_size: String(m.chunkSize),
    compression: m.compression,
    chunks: JSON.stringify(m.chunks.map((c) => [c.sha256, c.encoding, c.stored])),
    stored: String(m.stored),
    published_at: String(m.publishedAt),
    ttl: String(m.ttlS),
  };
}

/** A manifest from its hash; null when the hash is missing or not one of ours. */
export function parseManifest(fields: Record<string, string>): Manifest | null {
  if (!fields.sha256 || !fields.chunks || fields.size === undefined) return null;
  try {
    const chunks = (JSON.parse(fields.chunks) as [string, ChunkEncoding, number][]).map(([sha256, encoding, stored]) => ({ sha256, encoding, stored }));
    return {
      name: fields.name ?? "",
      size: Number(fields.size),
      sha256: fields.sha256,
      mtimeMs: Number(fields.mtime ?? 0),
      chunkSize: Number(fields.chunk_size ?? DEFAULT_CHUNK_SIZE),
      compression: fields.compression === "gzip" ? "gzip" : "none",
      chunks,
      stored: Number(fields.stored ?? 0),
      publishedAt: Number(fields.published_at ?? 0),
      ttlS: Number(fields.ttl ?? 0),
    };
  } catch {
    return null;
  }
}

async function readManifests(link: RedisLink): Promise<{ manifests: Manifest[]; scores: Map<string, number>; ttls: Map<string, number> }> {
  const { client, keys } = link;
  const flat = await client.zrange(keys.fileIndex, 0, "-1", "WITHSCORES");
  const names: string[] = [];
  const scores = new Map<string, number>();
  for (let i = 0; i < flat.length; i += 2) {
    names.push(flat[i]!);
    scores.set(flat[i]!, Number(flat[i + 1]));
  }
  if (names.length === 0) return { manifests: [], scores, ttls: new Map() };
  // manifests and the index share the {files} slot: one pipeline reads them all
  const pipeline = client.pipeline();
  for (const name of names) pipeline.hgetall(keys.manifest(name)).pttl(keys.manifest(name));
  const replies = (await pipeline.exec()) ?? [];
  const manifests: Manifest[] = [];
  const ttls = new Map<string, number>();
  const gone: string[] = [];
  names.forEach((name, i) => {
    const [hashError, hash] = replies[i * 2] ?? [null, null];
    const [, pttl] = replies[i * 2 + 1] ?? [null, -2];
    const manifest = hashError ? null : parseManifest((hash ?? {}) as Record<string, string>);
    if (!manifest) {
      gone.push(name);
      return;
    }
    manifests.push(manifest);
    ttls.set(name, Number(pttl));
  });
  // an expired manifest leaves its name in the index: forget it
  if (gone.length > 0) await client.zrem(keys.fileIndex, ...gone);
  return { manifests, scores, ttls };
}

/** The published files, most recently served first. */
export async function listFiles(link: RedisLink): Promise<CachedFile[]> {
  const { manifests, scores, ttls } = await readManifests(link);
  return manifests
    .map((m) => {
      const score = scores.get(m.name) ?? 0;
      const pttl = ttls.get(m.name) ?? -1;
      return {
        name: m.name,
        size: m.size,
        stored: m.stored,
        sha256: m.sha256,
        compression: m.compression,
        chunks: m.chunks.length,
        // the index scores a name with its publish time until a node serves it
        lastServedMs: score > m.publishedAt ? score : null,
        publishedAt: m.publishedAt,
        expiresInS: pttl >= 0 ? Math.ceil(pttl / 1000) : null,
      };
    })
    .sort((a, b) => (b.lastServedMs ?? b.publishedAt) - (a.lastServedMs ?? a.publishedAt));
}

/** Deletes chunks that no remaining manifest names. */
async function collectGarbage(link: RedisLink, candidates: ChunkRef[]): Promise<void> {
  if (candidates.length === 0) return;
  const { manifests } = await readManifests(link);
  const used = new Set<string>();
  for (const m of manifests) for (const c of m.chunks) used.add(link.keys.chunk(c.sha256, c.encoding));
  const orphans = [...new Set(candidates.map((c) => link.keys.chunk(c.sha256, c.encoding)))].filter((k) => !used.has(k));
  await inParallel(orphans, PARALLEL_CHUNKS, async (key) => {
    await link.client.del(key);
  });
}

/**
 * Publishes `bytes` under `name`, replacing an earlier file of that name. Chunks are written
 * before the manifest, so a reader never sees a manifest whose chunks are not there yet.
 */
export async function publish(link: RedisLink, name: string, bytes: Uint8Array, options: PublishOptions): Promise<PublishResult> {
  const { client, keys } = link;
  const { refs, payloads } = encodeChunks(bytes, options.chunkSize, options.compression);
  const stored = refs.reduce((sum, r) => sum + r.stored, 0);
  if (stored > options.maxSizeBytes) {
    throw new Error(`${name}: ${stored} bytes stored exceed cache.max_size (${options.maxSizeBytes} bytes)`);
  }

  const { manifests, scores } = await readManifests(link);
  const previous = manifests.find((m) => m.name === name) ?? null;
  let total = manifests.reduce((sum, m) => sum + (m.name === name ? 0 : m.stored), 0);
  const evicted: Manifest[] = [];
  const byLastServed = manifests.filter((m) => m.name !== name).sort((a, b) => (scores.get(a.name) ?? 0) - (scores.get(b.name) ?? 0));
  for (const victim of byLastServed) {
    if (total + stored <= options.maxSizeBytes) break;
    evicted.push(victim);
    total -= victim.stored;
  }
  if (evicted.length > 0) {
    const multi = client.multi();
    for (const victim of evicted) multi.del(keys.manifest(victim.name)).zrem(keys.fileIndex, victim.name);
    await multi.exec();
  }

  // A chunk may already be there for another file with a longer life: never shorten it.
  const chunkTtl = options.ttlS === 0 ? 0 : options.ttlS + CHUNK_TTL_MARGIN_S;
  await inParallel(refs, PARALLEL_CHUNKS, async (ref, i) => {
    const key = keys.chunk(ref.sha256, ref.encoding);
    const existing = await client.ttl(key);
    // -2 missing, -1 kept forever
    const keepForever = chunkTtl === 0 || existing === -1;
    const ttl = keepForever ? 0 : Math.max(existing, chunkTtl);
    // always rewritten: publishing a file again repairs a chunk that was damaged in Redis
    if (ttl === 0) await client.set(key, Buffer.from(payloads[i]!.buffer, payloads[i]!.byteOffset, payloads[i]!.length));
    else await client.set(key, Buffer.from(payloads[i]!.buffer, payloads[i]!.byteOffset, payloads[i]!.length), "EX", ttl);
  });

  const now = Date.now();
  const manifest: Manifest = {
    name,
    size: bytes.length,
    sha256: sha256Hex(bytes),
    mtimeMs: options.mtimeMs ?? now,
    chunkSize: options.chunkSize,
    compression: options.compression.enabled ? "gzip" : "none",
    chunks: refs,
    stored,
    publishedAt: now,
    ttlS: options.ttlS,
  };
  const multi = client.multi().del(keys.manifest(name)).hset(keys.manifest(name), manifestFields(manifest));
  if (options.ttlS > 0) multi.expire(keys.manifest(name), options.ttlS);
  multi.zadd(keys.fileIndex, now, name);
  await multi.exec();

  await collectGarbage(link, [...(previous?.chunks ?? []), ...evicted.flatMap((m) => m.chunks)]);
  return { manifest, evicted: evicted.map((m) => m.name) };
}

/** Removes a published file; false when there was none of that name. */
export async function remove(link: RedisLink, name: string): Promise<boolean> {
  const { client, keys } = link;
  const manifest = parseManifest((await client.hgetall(keys.manifest(name))) as Record<string, string>);
  const [[, deleted] = [null, 0]] = ((await client.multi().del(keys.manifest(name)).zrem(keys.fileIndex, name).exec()) ?? []) as [Error | null, number][];
  if (manifest) await collectGarbage(link, manifest.chunks);
  return deleted === 1 && manifest !== null;
}

/**
 * The manifest of `name`, or null when nothing of that name is published. Marks the name as
 * served in the same round trip: the eviction order follows what the fleet actually boots.
 */
export async function lookup(link: RedisLink, name: string): Promise<Manifest | null> {
  const { client, keys } = link;
  const replies = await client.pipeline().hgetall(keys.manifest(name)).zadd(keys.fileIndex, "XX", Date.now(), name).exec();
  const [error, hash] = replies?.[0] ?? [new Error("no reply"), null];
  if (error) throw error;
  return parseManifest((hash ?? {}) as Record<string, string>);
}

/**
 * Fetches every chunk of `manifest`, checks each against its address and the whole against
 * the manifest's sha256, and hands the raw bytes to `write` at their offsets (in any order).
 * Throws on a missing or damaged chunk: nothing of a file that fails is ever served.
 */
export async function fetchContent(
  link: RedisLink,
  manifest: Manifest,
  write: (bytes: Uint8Array, offset: number) => void,
): Promise<void> {
  const whole = new Bun.CryptoHasher("sha256");
  // chunks arrive out of order; the whole-file hash needs them in order
  const pending = new Map<number, Uint8Array>();
  let hashed = 0;
  let total = 0;
  await inParallel(manifest.chunks, PARALLEL_CHUNKS, async (ref, index) => {
    const payload = await link.client.getBuffer(link.keys.chunk(ref.sha256, ref.encoding));
    if (!payload) throw new Error(`chunk ${index} of ${manifest.name} is missing from the cluster cache`);
    const raw = decodeChunk(ref, payload);
    write(raw, index * manifest.chunkSize);
    total += raw.length;
    pending.set(index, raw);
    while (pending.has(hashed)) {
      whole.update(pending.get(hashed)!);
      pending.delete(hashed++);
    }
  });
  if (total !== manifest.size) throw new Error(`${manifest.name}: chunks hold ${total} bytes, the manifest says ${manifest.size}`);
  if (whole.digest("hex") !== manifest.sha256) throw new Error(`${manifest.name} does not match its sha256`);
}

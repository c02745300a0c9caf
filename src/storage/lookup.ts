/**
 * Where the bytes of a file to read come from: a chain of links asked in order, each answering
 * with a source, a refusal, or "not mine" (null: ask the next). The server's chain is
 * generated files → metadata cache → local root (through the file cache) → fleet; a root of a
 * per-network rule has the local link alone. What all links said no to is not found.
 */
import type { FileCache } from "./cache.ts";
import { cachePath, openCached } from "./local.ts";
import type { MetadataCache, PathFacts } from "./metadata.ts";
import { ErrorCode, refuse, type Refusal } from "./refusal.ts";
import type { RemoteFiles } from "./remote.ts";
import { listDirectory, openForRead } from "./resolve.ts";
import type { FileIdentity, FileSource } from "./source.ts";

export type Opened = { ok: true; source: FileSource } | Refusal;

/** Who asks, for files made per request (generated files): the pipeline says. */
export interface Requester {
  /** the client's address */
  readonly ip: string;
  /** its MAC from the kernel's neighbour tables, when it is on a local link */
  mac(): Promise<string | null>;
  /** what the request carries beside the name (an HTTP query string: iPXE's uuid, serial, arch) */
  readonly params: Readonly<Record<string, string>>;
  /** where this server is, as the client reached it (for URLs in generated files) */
  readonly server: { readonly http_base: string | null; readonly tftp_base: string | null };
}

/** One file asked for, and what the links learnt of it on the way. */
export interface Wanted {
  /** normalised and confined, below the chain's root */
  readonly relative: string;
  /** the caller reads the whole file at once (netascii): no streaming, no cache needed */
  readonly whole: boolean;
  /** what the metadata cache knows of the path (set by its link, read by the local one) */
  facts: PathFacts | null;
  /** who asks, when the caller knows (generated files need it) */
  readonly requester?: Requester;
}

export interface LookupLink {
  open(wanted: Wanted): Promise<Opened | null>;
}

export class FileLookup {
  constructor(private readonly links: readonly LookupLink[]) {}

  async open(relative: string, whole: boolean, requester?: Requester): Promise<Opened> {
    const wanted: Wanted = { relative, whole, facts: null, ...(requester ? { requester } : {}) };
    for (const link of this.links) {
      const answer = await link.open(wanted);
      if (answer) return answer;
    }
    return refuse(ErrorCode.FILE_NOT_FOUND, "file not found");
  }
}

/** The metadata cache's facts describe this version of a file. */
function isVersion(facts: PathFacts, id: FileIdentity): boolean {
  return facts.kind === "file" && facts.size === id.size && facts.mtimeMs === id.mtimeMs && facts.ctimeMs === id.ctimeMs;
}

/**
 * What is known of a path without asking the disk: a file the metadata cache knows, held in
 * the file cache at that version, is served from memory; anything else is the next link's.
 */
export function metadataLink(metadata: MetadataCache, cache: FileCache, rootReal: string): LookupLink {
  return {
    async open(wanted) {
      if (wanted.whole) return null;
      wanted.facts = await metadata.lookup(wanted.relative);
      if (wanted.facts?.kind !== "file") return null;
      const held = cache.versionAt(cachePath(rootReal, wanted.relative));
      if (!held || !isVersion(wanted.facts, held.identity)) return null;
      const known = await cache.acquire(held.key, held.identity, null);
      return known ? { ok: true, source: known } : null;
    },
  };
}

/**
 * The local root, through the file cache (a whole read opens the file itself). A name the
 * metadata cache knows to be missing is not looked for; what the disk says is remembered
 * there. Not found here is the next link's; any other refusal is final.
 */
export function localRootLink(rootReal: string, cache: FileCache, metadata: MetadataCache | null): LookupLink {
  return {
    async open(wanted) {
      const { relative, facts } = wanted;
      if (facts?.kind === "missing") return null;
      const opened = wanted.whole ? await openForRead(rootReal, relative) : await openCached(cache, rootReal, relative);
      if (opened.ok) {
        const identity = opened.source.identity;
        // what the metadata cache already says needs no write
        if (metadata && !(facts && isVersion(facts, identity))) {
          metadata.remember(relative, { kind: "file", size: identity.size, mtimeMs: identity.mtimeMs, ctimeMs: identity.ctimeMs });
        }
        return opened;
      }
      if (opened.code !== ErrorCode.FILE_NOT_FOUND) return opened;
      metadata?.remember(relative, { kind: "missing" }, listDirectory(rootReal, relative));
      return null;
    },
  };
}

/** Files the root lacks, from elsewhere (the fleet's shared cache): its answer is final. */
export function remoteLink(remote: RemoteFiles): LookupLink {
  return { open: (wanted) => remote.open(wanted.relative, { whole: wanted.whole }) };
}

/** The server's chain for its own root: generated → metadata → local root → fleet, each when there is one. */
export function rootLookup(rootReal: string, cache: FileCache, metadata: MetadataCache | null, remote: RemoteFiles | null, generated: LookupLink | null = null): FileLookup {
  const links: LookupLink[] = [];
  if (generated) links.push(generated);
  if (metadata) links.push(metadataLink(metadata, cache, rootReal));
  links.push(localRootLink(rootReal, cache, metadata));
  if (remote) links.push(remoteLink(remote));
  return new FileLookup(links);
}

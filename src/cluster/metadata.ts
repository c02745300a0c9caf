/**
 * The metadata cache in Redis (`cache.metadata_ttl`): what a node learnt of its root — a file's
 * size and times, a missing name, a directory's names — kept for the ttl so the next request
 * needs no realpath/open/fstat on a slow or network-mounted root. A change on disk is seen
 * once the entry expires.
 *
 * Scope "node" keeps each node's facts apart (nodes with trees of their own); "fleet" shares
 * them between nodes that mount the same tree at the same path, so one node's look at the
 * disk serves them all.
 *
 * Lookups never hold a request up: one that Redis does not answer within LOOKUP_BUDGET_MS
 * counts as "unknown", and the disk is asked as if there were no cache.
 */
import { hostname } from "node:os";
import { posix } from "node:path";
import type { MetadataCache, PathFacts } from "../storage/metadata.ts";
import type { RedisLink } from "./redis.ts";

/** A metadata lookup exists to save time: past this, asking the disk is faster. */
const LOOKUP_BUDGET_MS = 50;

export class RedisMetadataCache implements MetadataCache {
  private readonly namespace: string;
  readonly stats = { hits: 0, misses: 0, skipped: 0 };

  constructor(
    private readonly link: RedisLink,
    rootReal: string,
    private readonly ttlS: number,
    scope: "node" | "fleet",
  ) {
    this.namespace = scope === "node" ? `${hostname()}:${rootReal}` : rootReal;
  }

  async lookup(relative: string): Promise<PathFacts | null> {
    if (!this.link.up) {
      this.stats.skipped++;
      return null;
    }
    const { client, keys } = this.link;
    const dir = posix.dirname(relative);
    const asked = Promise.all([client.get(keys.metadata(this.namespace, relative)), client.get(keys.listing(this.namespace, dir))]);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<null>((resolve) => {
      timer = setTimeout(() => resolve(null), LOOKUP_BUDGET_MS);
    });
    const replies = await Promise.race([asked.catch(() => null), late]).finally(() => clearTimeout(timer));
    if (!replies) {
      this.stats.skipped++;
      return null;
    }
    const facts = decide(replies[0], replies[1], posix.basename(relative));
    if (facts) this.stats.hits++;
    else this.stats.misses++;
    return facts;
  }

  remember(relative: string, facts: PathFacts, listing?: readonly string[]): void {
    if (!this.link.up) return;
    const { client, keys } = this.link;
    const writes: Promise<unknown>[] = [];
    if (listing && facts.kind === "missing") {
      // the listing answers for every missing name in that directory
      writes.push(client.set(keys.listing(this.namespace, posix.dirname(relative)), JSON.stringify(listing), "EX", this.ttlS));
    } else {
      writes.push(client.set(keys.metadata(this.namespace, relative), JSON.stringify(facts), "EX", this.ttlS));
    }
    // a lost write only means the disk is asked again next time
    Promise.all(writes).catch(() => {});
  }
}

/** What the cached path entry and directory listing say of a name: pure. */
export function decide(entry: string | null, listing: string | null, name: string): PathFacts | null {
  if (entry !== null) {
    try {
      const facts = JSON.parse(entry) as PathFacts;
      if (facts.kind === "missing" || (facts.kind === "file" && Number.isFinite(facts.size))) return facts;
    } catch {
      // not ours: unknown
    }
  }
  if (listing !== null) {
    try {
      const names = JSON.parse(listing) as unknown;
      if (Array.isArray(names) && !names.includes(name)) return { kind: "missing" };
    } catch {
      // unknown
    }
  }
  return null;
}

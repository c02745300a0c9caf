/**
 * Every Redis key the fleet writes, in one place. All start with `cache.redis.key_prefix`.
 * Keys that one command or script must touch together share a hash tag (`{…}`), so they live
 * in one slot of the cluster; the file chunks carry none, so they spread over every master.
 */
export class KeySpace {
  constructor(readonly prefix: string) {}

  /** the manifest of a published file (a hash) */
  manifest(name: string): string {
    return `${this.prefix}{files}:manifest:${name}`;
  }

  /** published names, scored by when each was last served (ms): the eviction order */
  get fileIndex(): string {
    return `${this.prefix}{files}:index`;
  }

  /** a chunk of file bytes, addressed by the sha256 of its raw bytes and its encoding */
  chunk(sha256: string, encoding: "raw" | "gzip"): string {
    return `${this.prefix}chunk:${sha256}:${encoding}`;
  }

  /** a node's heartbeat (a hash that expires when the node stops beating) */
  node(id: string): string {
    return `${this.prefix}{fleet}:node:${id}`;
  }

  /** every node ever seen, scored by its last heartbeat (ms): how dead nodes are listed */
  get nodeIndex(): string {
    return `${this.prefix}{fleet}:nodes`;
  }

  /** the configuration pushed to the fleet (a hash: version, json, pushed_at, pushed_by) */
  get config(): string {
    return `${this.prefix}{fleet}:config`;
  }

  /** leases of every running transfer in the fleet, scored by their expiry (ms) */
  get leasesTotal(): string {
    return `${this.prefix}{leases}:total`;
  }

  /** leases of the transfers of one client address, scored by their expiry (ms) */
  leasesOfIp(address: string): string {
    return `${this.prefix}{leases:${address}}:ip`;
  }

  /** cached metadata of one path below a root (a string with an expiry) */
  metadata(root: string, relative: string): string {
    return `${this.prefix}meta:${root}:${relative}`;
  }

  /** cached listing of one directory below a root (a string with an expiry) */
  listing(root: string, directory: string): string {
    return `${this.prefix}dir:${root}:${directory}`;
  }
}

/**
 * The seam for a metadata cache in front of the root: what is known of a path (a file of this
 * size and times, or nothing there) without asking the disk. A root on a slow or network
 * mount costs a realpath, an open and an fstat per request; PXE firmware probes a dozen
 * missing names per boot (pxelinux.cfg/01-<mac>, C0A80101, …). The cache answers both, and
 * the disk is asked again once an entry expires.
 */
export type PathFacts =
  | { readonly kind: "file"; readonly size: number; readonly mtimeMs: number; readonly ctimeMs: number }
  | { readonly kind: "missing" };

export interface MetadataCache {
  /** what is known of `relative`, or null when nothing is (then the disk is asked) */
  lookup(relative: string): Promise<PathFacts | null>;
  /**
   * What the disk said of `relative`. `listing`: the names in its directory, when they were
   * read, so later requests for other missing names there need no disk either.
   */
  remember(relative: string, facts: PathFacts, listing?: readonly string[]): void;
}

/**
 * The validators of a file's version for HTTP: a strong ETag from the version identity the
 * cache and the integrity checks use (device, inode, size, mtime, ctime), so a file rewritten
 * in place or renamed over gets a new one, and Last-Modified. A source with no identity of a
 * file (bytes made in memory) has no ETag: a range of it is never resumed across versions.
 */
import type { FileIdentity } from "../storage/source.ts";

export function etagOf(identity: FileIdentity): string | null {
  if (identity.ino === 0 && identity.mtimeMs === 0 && identity.ctimeMs === 0) return null;
  const hex = (n: number): string => Math.round(n).toString(16);
  return `"${[identity.dev, identity.ino, identity.size, identity.mtimeMs * 1000, identity.ctimeMs * 1000].map(hex).join("-")}"`;
}

export function lastModifiedOf(identity: FileIdentity): string | null {
  return identity.mtimeMs > 0 ? new Date(identity.mtimeMs).toUTCString() : null;
}

/** The content type of `name` by its extension (lower-cased), `types` over the defaults. */
export function contentTypeOf(name: string, types: Readonly<Record<string, string>>): string {
  const slash = name.lastIndexOf("/");
  const dot = name.lastIndexOf(".");
  if (dot <= slash + 1 || dot === name.length - 1) return "application/octet-stream";
  return types[name.slice(dot).toLowerCase()] ?? "application/octet-stream";
}

/**
 * Files of the local root as transfers read them: the version found now, through the file
 * cache when it takes the file, else the open file itself (whose reads stop with an ERROR if
 * the file changes).
 */
import * as fs from "node:fs";
import { diskFiller, versionKey, type FileCache } from "./cache.ts";
import { ErrorCode, refuse, type Refusal } from "./refusal.ts";
import { openForRead } from "./resolve.ts";
import { atVersion, type FileSource } from "./source.ts";

/** The name the file cache knows a path by: one cache serves several roots (per-network rules). */
export function cachePath(rootReal: string, relative: string): string {
  return `${rootReal}/${relative}`;
}

/**
 * Opens `relative` below `rootReal` and trades the open file for its cached copy. A version
 * that changes while its copy is made is looked up once more: the request gets the newer one.
 * `stepBytes`: bytes copied between two yields to the event loop while the copy is made.
 */
export async function openCached(
  cache: FileCache,
  rootReal: string,
  relative: string,
  stepBytes?: number,
): Promise<{ ok: true; source: FileSource } | Refusal> {
  const held = await openHeld(cache, rootReal, relative);
  if (held) return { ok: true, source: held };
  for (let attempt = 1; ; attempt++) {
    const opened = await openForRead(rootReal, relative);
    if (!opened.ok) {
      // nothing there any more: the copy of what was there is stale
      if (opened.code === ErrorCode.FILE_NOT_FOUND) cache.forget(cachePath(rootReal, relative));
      return opened;
    }
    const file = opened.source;
    try {
      const cached = await cache.acquire(versionKey(file.identity), file.identity, () => diskFiller(file.fd, file.identity, stepBytes), { path: cachePath(rootReal, relative) });
      if (!cached) return opened;
      file.close();
      return { ok: true, source: cached };
    } catch (error) {
      file.close();
      if (attempt === 2) return refuse(ErrorCode.NOT_DEFINED, (error as Error).message);
    }
  }
}

/**
 * The cached copy of `relative`, when one stat of its path finds the very version the cache
 * holds for it (same device, inode, size, mtime and ctime); else null, and the caller opens
 * the file. A request for a file already served costs one system call instead of a realpath,
 * open, fstat, /proc check and close. Confinement still holds: the path leads to the inode
 * that a full open found inside the root, unchanged since: a link added or removed, a chmod
 * or a write all move its ctime, and a path that now leads anywhere else finds another inode.
 */
async function openHeld(cache: FileCache, rootReal: string, relative: string): Promise<FileSource | null> {
  const path = cachePath(rootReal, relative);
  const held = cache.versionAt(path);
  if (!held) return null;
  let stat: fs.Stats | undefined;
  try {
    stat = fs.statSync(path, { throwIfNoEntry: false });
  } catch {
    return null;
  }
  if (!stat?.isFile() || !atVersion(held.identity, stat)) return null;
  return cache.acquire(held.key, held.identity, null);
}

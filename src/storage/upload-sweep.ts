/**
 * Crash-only uploads: at start-up, remove the temporary upload files an earlier process left
 * behind (killed mid-upload, crashed, the machine lost power). A running server removes those
 * of the uploads it ends itself (UploadSink.abort); this sweep is for the ones no process will
 * ever finish.
 *
 * Which files: only regular files whose names are exactly the temporary names uploads make
 * (`.<base>.<12 hex>.tftpd-part`, see upload.ts), anywhere below the root. Directories are
 * walked without following symbolic links, so the sweep never leaves the root, and each
 * candidate is opened O_NOFOLLOW and checked to lie inside the root before it is removed.
 *
 * Which of them are abandoned: the root may be shared with a live server — a restart that
 * overlaps the old process draining its transfers, or several servers on one NFS root. A live
 * upload holds an exclusive flock on its temporary file (upload.ts), and the kernel releases it
 * when the writer dies, however it dies. So:
 *  - the lock is free → no live process writes the file: removed at once (the crash case);
 *  - the lock is held → a live process will publish or remove it: kept;
 *  - locks cannot be taken there (no libc access, NFS without a lock manager) → removed only
 *    when not modified for longer than a live upload may stay idle (`staleAfterMs`): a server
 *    ends a transfer that long without progress and removes its file itself.
 * Age alone was not enough: it would keep a file of a process killed a second ago until the
 * next restart. A pid in the name was not either: pids mean nothing across the hosts of an NFS
 * root, and are reused.
 *
 * Bounded: at most `maxEntries` directory entries are looked at (the report says when the walk
 * stopped early); only candidates are opened; directories are streamed, never read whole.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { tryLockExclusive } from "./file-lock.ts";
import { errnoOf } from "./refusal.ts";
import { isInside, openedPath } from "./resolve.ts";
import { isLiveUpload, isUploadTempName } from "./upload.ts";

export interface SweepOptions {
  /**
   * Where locks are unavailable, a temporary file untouched for longer than this is
   * abandoned: more than the longest a live upload may go without writing.
   */
  staleAfterMs: number;
  /** Directory entries looked at, at most (a bound for a huge root). */
  maxEntries?: number;
}

export interface SweepReport {
  /** temporary files of dead uploads, removed */
  removed: number;
  /** temporary files a live upload holds (or too recent to judge), kept */
  inUse: number;
  /** abandoned files that could not be removed (permissions, I/O errors) */
  failed: number;
  /** directory entries looked at */
  entries: number;
  /** false when the walk stopped at `maxEntries` */
  complete: boolean;
}

const SWEEP_MAX_ENTRIES = 1_000_000;

const CANDIDATE_FLAGS = fs.constants.O_RDWR | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK;

type Verdict = "removed" | "in-use" | "failed" | "gone";

/** Walks `root` and removes the temporary upload files no live process writes. */
export async function sweepAbandonedUploads(root: string, options: SweepOptions): Promise<SweepReport> {
  const rootReal = fs.realpathSync(root);
  const maxEntries = options.maxEntries ?? SWEEP_MAX_ENTRIES;
  const report: SweepReport = { removed: 0, inUse: 0, failed: 0, entries: 0, complete: true };
  const pending = [rootReal];
  for (let dir = pending.pop(); dir !== undefined; dir = pending.pop()) {
    let handle: fs.Dir;
    try {
      handle = await fs.promises.opendir(dir, { bufferSize: 256 });
    } catch {
      continue; // gone, or not readable: nothing we could remove there either
    }
    try {
      for await (const entry of handle) {
        if (++report.entries > maxEntries) {
          report.entries = maxEntries;
          report.complete = false;
          return report;
        }
        const full = path.join(dir, entry.name);
        const kind = kindOf(entry, full);
        if (kind === "directory") pending.push(full);
        else if (kind === "file" && isUploadTempName(entry.name)) {
          const verdict = judge(rootReal, full, options.staleAfterMs);
          if (verdict === "removed") report.removed++;
          else if (verdict === "in-use") report.inUse++;
          else if (verdict === "failed") report.failed++;
        }
      }
    } catch {
      // the directory went away or failed mid-read: what was seen of it counts
    } finally {
      await handle.close().catch(() => undefined);
    }
  }
  return report;
}

/** A directory to descend into, a regular file, or anything else (symbolic links included). */
function kindOf(entry: fs.Dirent, full: string): "directory" | "file" | "other" {
  if (entry.isDirectory()) return "directory";
  if (entry.isFile()) return "file";
  if (entry.isSymbolicLink() || entry.isFIFO() || entry.isSocket() || entry.isBlockDevice() || entry.isCharacterDevice()) {
    return "other";
  }
  // The file system did not say (DT_UNKNOWN): ask, without following a link.
  const stat = fs.lstatSync(full, { throwIfNoEntry: false });
  return stat?.isDirectory() ? "directory" : stat?.isFile() ? "file" : "other";
}

/** Removes `file` when no live upload writes it. */
function judge(rootReal: string, file: string, staleAfterMs: number): Verdict {
  if (isLiveUpload(file)) return "in-use";
  let fd: number;
  try {
    fd = fs.openSync(file, CANDIDATE_FLAGS);
  } catch (err) {
    return errnoOf(err) === "ENOENT" ? "gone" : "failed";
  }
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) return "gone";
    const opened = openedPath(fd);
    if (opened !== undefined && !isInside(rootReal, opened)) return "gone"; // a directory was swapped for a link
    const lock = tryLockExclusive(fd);
    if (lock === "held") return "in-use";
    if (lock === "unsupported" && Date.now() - stat.mtimeMs <= staleAfterMs) return "in-use";
    // Remove the file we judged, not one that took its name meanwhile.
    const now = fs.lstatSync(file, { throwIfNoEntry: false });
    if (now === undefined || now.ino !== stat.ino || now.dev !== stat.dev) return "gone";
    fs.unlinkSync(file);
    return "removed";
  } catch (err) {
    return errnoOf(err) === "ENOENT" ? "gone" : "failed";
  } finally {
    try {
      fs.closeSync(fd);
    } catch {
      // released either way
    }
  }
}

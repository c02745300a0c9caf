/**
 * FileCache against real files: one fill per version, shared by concurrent requests; a file
 * rewritten in place or replaced by rename is a new version while earlier sources keep the old
 * bytes; truncating the served file cannot crash the process (checked in a child process, next
 * to a control that maps the file itself and does die); read-only files are cached without
 * opening them for writing (checked as `nobody` when running as root); the cached copy is
 * sealed; LRU eviction never touches a version in use; big files bypass; empty files work.
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { FileCache, WAIT_FOR_FILL_MAX_BYTES, type Filler } from "../../../src/storage/cache.ts";
import { openCached } from "../../../src/storage/local.ts";
import { MemfdFiller } from "../../../src/storage/memfd.ts";
import type { FileSource } from "../../../src/storage/source.ts";
import { patternBytes, sha256 } from "../../helpers/files.ts";
import { cleanupTempDirs, runProbe, storageModule, tempDir } from "./helpers.ts";

setDefaultTimeout(60_000);
afterEach(cleanupTempDirs);

const MiB = 1 << 20;

/** `name` as the server opens it: through the cache (copied in steps of `stepBytes`), or from disk. */
async function acquire(cache: FileCache, root: string, name: string, stepBytes?: number): Promise<FileSource> {
  const r = await openCached(cache, root, name, stepBytes);
  if (!r.ok) throw new Error(`${name}: ${r.message}`);
  return r.source;
}

/** Reads `source` from `from` to its end in uneven chunks, into `into` (default: a new buffer). */
function readRange(source: FileSource, from: number, to: number, into: Uint8Array = new Uint8Array(source.size)): Uint8Array {
  let at = from;
  while (at < to) {
    const n = source.read(at, into, at, Math.min(65_521, to - at));
    if (n <= 0) throw new Error(`short read at ${at} of ${source.size}`);
    at += n;
  }
  return into;
}

function readAll(source: FileSource): Uint8Array {
  const bytes = readRange(source, 0, source.size);
  expect(source.read(source.size, new Uint8Array(16), 0, 16)).toBe(0);
  return bytes;
}

/** Descriptors of this process that are the cache's memfds. */
function cacheMemfds(): number[] {
  const fds: number[] = [];
  for (const name of fs.readdirSync("/proc/self/fd")) {
    try {
      if (fs.readlinkSync(`/proc/self/fd/${name}`).startsWith("/memfd:tftpd-cache")) fds.push(Number(name));
    } catch {
      // the descriptor readdir itself used, gone by now
    }
  }
  return fds;
}

function errnoOf(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    return (error as NodeJS.ErrnoException).code ?? String(error);
  }
  return "no error";
}

test("the cache is enabled on this system (every test below depends on it)", () => {
  expect(process.platform).toBe("linux");
  expect(new FileCache(MiB).enabled).toBe(true);
  expect(new FileCache(0).enabled).toBe(false);
});

describe("hits and misses", () => {
  test("a hit returns the file's bytes; two acquires of one version are 1 miss + 1 hit, bytes counted once", async () => {
    const root = tempDir();
    const content = patternBytes(MiB + 3, 1);
    fs.writeFileSync(path.join(root, "f"), content);
    const cache = new FileCache(64 * MiB);

    const a = await acquire(cache, root, "f");
    expect(cache.stats).toEqual({ hits: 0, misses: 1, bypasses: 0, evictions: 0, bytes: content.length, entries: 1 });
    const b = await acquire(cache, root, "f");
    expect(cache.stats).toEqual({ hits: 1, misses: 1, bypasses: 0, evictions: 0, bytes: content.length, entries: 1 });
    expect(a.size).toBe(content.length);
    expect(sha256(readAll(a))).toBe(sha256(content));
    expect(sha256(readAll(b))).toBe(sha256(content));
    a.close();
    b.close();
    a.close(); // idempotent: must not release the version twice
    expect(cache.stats.bytes).toBe(content.length);
    expect(() => a.read(0, new Uint8Array(1), 0, 1)).toThrow();
  });

  test("20 concurrent acquires share one fill, even when the fill yields to the event loop", async () => {
    const root = tempDir();
    // Eight fill steps of 1 MiB, so the fill is still running when the others arrive.
    const content = patternBytes(8 * MiB + 4096, 2);
    fs.writeFileSync(path.join(root, "big"), content);
    const cache = new FileCache(128 * MiB);
    const first = acquire(cache, root, "big", MiB);
    await Bun.sleep(0);
    const sources = await Promise.all([first, ...Array.from({ length: 19 }, () => acquire(cache, root, "big", MiB))]);
    expect(cache.stats).toEqual({ hits: 19, misses: 1, bypasses: 0, evictions: 0, bytes: content.length, entries: 1 });
    const want = sha256(content);
    const buffer = new Uint8Array(content.length);
    for (const source of sources) {
      expect(source.share?.kind).toBe("memfd");
      buffer.fill(0);
      expect(sha256(readRange(source, 0, source.size, buffer))).toBe(want);
      source.close();
    }
  });

  test("a file larger than WAIT_FOR_FILL_MAX_BYTES is read from its copy while the copy is made, then from the sealed copy", async () => {
    const root = tempDir();
    const content = patternBytes(WAIT_FOR_FILL_MAX_BYTES + 4096, 4);
    fs.writeFileSync(path.join(root, "initrd"), content);
    const cache = new FileCache(128 * MiB);
    const first = await acquire(cache, root, "initrd", MiB);
    // not waited for: a source over the copy being made comes back at once
    expect(first.share).toMatchObject({ kind: "filling" });
    expect(first.whenReadable).toBeDefined();
    expect(cache.stats).toMatchObject({ misses: 1, bypasses: 0, entries: 1 });
    const second = await acquire(cache, root, "initrd", MiB);
    expect(cache.stats).toMatchObject({ hits: 1, misses: 1 });
    // the first bytes are readable soon; the last byte only once the copy is sealed
    await first.whenReadable!(MiB);
    const head = new Uint8Array(MiB);
    expect(first.read(0, head, 0, MiB)).toBe(MiB);
    expect(sha256(head)).toBe(sha256(content.subarray(0, MiB)));
    await first.whenReadable!(first.size);
    second.close();
    const later = await acquire(cache, root, "initrd");
    expect(later.share?.kind).toBe("memfd");
    later.close();
    // The copy is sealed: emptying the file on disk changes nothing for the first reader.
    fs.truncateSync(path.join(root, "initrd"), 0);
    const buffer = new Uint8Array(content.length);
    expect(sha256(readRange(first, 0, first.size, buffer))).toBe(sha256(content));
    first.close();
  });
});

describe("a file that changes while its copy is made is never served mixed", () => {
  test("rewritten in place during the copy: the readers' next wait rejects; the next request gets the new version", async () => {
    const root = tempDir();
    const file = path.join(root, "initrd");
    const oldBytes = patternBytes(WAIT_FOR_FILL_MAX_BYTES + MiB, 40);
    const newBytes = patternBytes(oldBytes.length, 41);
    fs.writeFileSync(file, oldBytes);
    const cache = new FileCache(128 * MiB);
    const reader = await acquire(cache, root, "initrd", MiB);
    await reader.whenReadable!(MiB);
    const head = new Uint8Array(MiB);
    expect(reader.read(0, head, 0, MiB)).toBe(MiB);
    expect(sha256(head)).toBe(sha256(oldBytes.subarray(0, MiB)));
    // in place: same inode, same size (what `cp new old` does)
    const fd = fs.openSync(file, "r+");
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, newBytes as Uint8Array<ArrayBuffer>, 0, newBytes.length, 0);
    fs.closeSync(fd);
    await expect(reader.whenReadable!(reader.size) as Promise<void>).rejects.toThrow("file changed");
    // and it reads nothing more: its transfer ends with an ERROR
    expect(() => reader.read(0, head, 0, MiB)).toThrow("file changed");
    reader.close();
    expect(cache.stats).toMatchObject({ entries: 0, bytes: 0 });
    const next = await acquire(cache, root, "initrd", MiB);
    await next.whenReadable?.(next.size);
    expect(sha256(readAll(next))).toBe(sha256(newBytes));
    next.close();
  });

  test("a file the cache does not hold is read from disk, and a read after it changed throws", async () => {
    const root = tempDir();
    const file = path.join(root, "big");
    fs.writeFileSync(file, patternBytes(2 * MiB, 42));
    const cache = new FileCache(MiB);
    const source = await acquire(cache, root, "big");
    expect(source.share?.kind).toBe("fd");
    expect(source.read(0, new Uint8Array(4096), 0, 4096)).toBe(4096);
    const fd = fs.openSync(file, "r+");
    fs.writeSync(fd, patternBytes(4096, 43) as Uint8Array<ArrayBuffer>, 0, 4096, MiB);
    fs.closeSync(fd);
    expect(() => source.read(MiB, new Uint8Array(4096), 0, 4096)).toThrow("file changed during transfer");
    source.close();
  });

  test("renamed over or deleted: the open version is intact, so reads go on", async () => {
    const root = tempDir();
    const file = path.join(root, "big");
    const oldBytes = patternBytes(2 * MiB, 44);
    fs.writeFileSync(file, oldBytes);
    const cache = new FileCache(MiB);
    const source = await acquire(cache, root, "big");
    fs.writeFileSync(`${file}.new`, patternBytes(2 * MiB, 45));
    fs.renameSync(`${file}.new`, file);
    expect(sha256(readAll(source))).toBe(sha256(oldBytes));
    source.close();
  });
});

describe("a deleted or replaced file leaves the cache when a lookup notices", () => {
  test("deleted: the next request is ERROR 1 and the copy is released", async () => {
    const root = tempDir();
    fs.writeFileSync(path.join(root, "gone"), patternBytes(MiB, 46));
    const cache = new FileCache(64 * MiB);
    const before = new Set(cacheMemfds());
    (await acquire(cache, root, "gone")).close();
    expect(cache.stats).toMatchObject({ entries: 1, bytes: MiB });
    fs.unlinkSync(path.join(root, "gone"));
    const r = await openCached(cache, root, "gone");
    expect(r.ok).toBe(false);
    expect(cache.stats).toMatchObject({ entries: 0, bytes: 0 });
    expect(cacheMemfds().filter((fd) => !before.has(fd))).toHaveLength(0);
  });

  test("replaced: the old version is released once its last reader is done", async () => {
    const root = tempDir();
    const file = path.join(root, "f");
    fs.writeFileSync(file, patternBytes(MiB, 47));
    const cache = new FileCache(64 * MiB);
    const held = await acquire(cache, root, "f");
    fs.writeFileSync(`${file}.new`, patternBytes(2 * MiB, 48));
    fs.renameSync(`${file}.new`, file);
    (await acquire(cache, root, "f")).close();
    // the new version is the only entry; the old one is stale, still counted while read
    expect(cache.stats).toMatchObject({ entries: 1, bytes: 3 * MiB });
    held.close();
    expect(cache.stats).toMatchObject({ entries: 1, bytes: 2 * MiB });
  });
});

describe("a file already cached is checked with one stat of its path", () => {
  test("unchanged: the cached copy again (a hit, no new copy)", async () => {
    const root = tempDir();
    fs.writeFileSync(path.join(root, "f"), patternBytes(MiB, 60));
    const cache = new FileCache(64 * MiB);
    (await acquire(cache, root, "f")).close();
    const again = await acquire(cache, root, "f");
    expect(sha256(readAll(again))).toBe(sha256(patternBytes(MiB, 60)));
    again.close();
    expect(cache.stats).toMatchObject({ misses: 1, hits: 1, entries: 1 });
  });

  test("chmod after caching moves the ctime: the file is opened again (a new version), not served from the copy", async () => {
    const root = tempDir();
    const file = path.join(root, "f");
    fs.writeFileSync(file, patternBytes(64 * 1024, 61));
    const cache = new FileCache(64 * MiB);
    (await acquire(cache, root, "f")).close();
    const ctime = fs.statSync(file).ctimeMs;
    while (fs.statSync(file).ctimeMs === ctime) fs.chmodSync(file, fs.statSync(file).mode & 0o7777 ^ 0o004);
    (await acquire(cache, root, "f")).close();
    expect(cache.stats).toMatchObject({ misses: 2, hits: 0 });
  });

  test("a directory on the path swapped for a symlink out of the root: refused, though the copy is held", async () => {
    const top = tempDir();
    const root = path.join(top, "root");
    const outside = path.join(top, "outside");
    fs.mkdirSync(path.join(root, "boot"), { recursive: true });
    fs.mkdirSync(outside);
    fs.writeFileSync(path.join(root, "boot", "f"), patternBytes(4096, 62));
    fs.writeFileSync(path.join(outside, "f"), "secret");
    const cache = new FileCache(64 * MiB);
    (await acquire(cache, root, "boot/f")).close();
    fs.renameSync(path.join(root, "boot"), path.join(root, "boot.old"));
    fs.symlinkSync(outside, path.join(root, "boot"));
    const r = await openCached(cache, root, "boot/f");
    expect(r).toMatchObject({ ok: false, code: 2, message: "access violation: outside root" });
  });

  test("the file swapped for a symlink to a file outside the root: refused", async () => {
    const top = tempDir();
    const root = path.join(top, "root");
    fs.mkdirSync(root);
    fs.writeFileSync(path.join(root, "f"), patternBytes(4096, 63));
    fs.writeFileSync(path.join(top, "secret"), "secret");
    const cache = new FileCache(64 * MiB);
    (await acquire(cache, root, "f")).close();
    fs.rmSync(path.join(root, "f"));
    fs.symlinkSync(path.join(top, "secret"), path.join(root, "f"));
    const r = await openCached(cache, root, "f");
    expect(r).toMatchObject({ ok: false, code: 2, message: "access violation: outside root" });
  });
});

describe("a changed file is a new version; earlier sources keep the old bytes", () => {
  const changes = [
    [
      "rewritten in place (same inode, same size, new mtime)",
      (file: string, bytes: Uint8Array) => {
        const before = fs.statSync(file);
        fs.writeFileSync(file, bytes);
        const later = new Date(before.mtimeMs + 10_000);
        fs.utimesSync(file, later, later);
        expect(fs.statSync(file).ino).toBe(before.ino);
      },
    ],
    [
      "replaced by rename (new inode)",
      (file: string, bytes: Uint8Array) => {
        const before = fs.statSync(file);
        fs.writeFileSync(`${file}.new`, bytes);
        fs.renameSync(`${file}.new`, file);
        expect(fs.statSync(file).ino).not.toBe(before.ino);
      },
    ],
  ] as const;

  for (const [how, change] of changes) {
    test(how, async () => {
      const root = tempDir();
      const file = path.join(root, "initrd");
      const oldBytes = patternBytes(2 * MiB, 3);
      const newBytes = patternBytes(2 * MiB, 4);
      fs.writeFileSync(file, oldBytes);
      const cache = new FileCache(64 * MiB);

      const early = await acquire(cache, root, "initrd");
      const half = oldBytes.length / 2;
      const got = readRange(early, 0, half);
      change(file, newBytes);

      const late = await acquire(cache, root, "initrd");
      // the old version is stale: out of the index, still read by `early`
      expect(cache.stats).toMatchObject({ hits: 0, misses: 2, bypasses: 0, entries: 1 });
      expect(sha256(readAll(late))).toBe(sha256(newBytes));
      // The source taken before the change reads the old version to its very end.
      readRange(early, half, early.size, got);
      expect(sha256(got)).toBe(sha256(oldBytes));
      expect(early.read(early.size, new Uint8Array(8), 0, 8)).toBe(0);

      // Another request for the new version is a hit on it.
      const again = await acquire(cache, root, "initrd");
      expect(cache.stats).toMatchObject({ hits: 1, misses: 2 });
      expect(sha256(readAll(again))).toBe(sha256(newBytes));
      for (const s of [early, late, again]) s.close();
    });
  }
});

/**
 * Child script: makes a 16 MiB file's bytes readable either through the cache ("cache") or by
 * mapping the file itself ("mmap", the control), then truncates the file to 0 and `cp`s a small
 * file over it, then reads every byte and prints their sha256. A SIGBUS kills the child only.
 */
const TRUNCATE_PROBE = `
import * as fs from "node:fs";
import { FileCache } from ${JSON.stringify(storageModule("cache.ts"))};
import { openCached } from ${JSON.stringify(storageModule("local.ts"))};
const [dir, mode] = process.argv.slice(2) as [string, string];
const file = dir + "/big.bin";
let bytes: () => Uint8Array;
if (mode === "cache") {
  const cache = new FileCache(64 << 20);
  const r = await openCached(cache, dir, "big.bin");
  if (!r.ok) throw new Error(r.message);
  const source = r.source;
  const s = cache.stats;
  if (s.misses !== 1 || s.bypasses !== 0 || s.entries !== 1) throw new Error("not cached: " + JSON.stringify(s));
  bytes = () => {
    const out = new Uint8Array(source.size);
    for (let at = 0; at < out.length; ) {
      const n = source.read(at, out, at, Math.min(65536, out.length - at));
      if (n <= 0) throw new Error("short read at " + at);
      at += n;
    }
    return out;
  };
} else {
  const mapped = Bun.mmap(file, { shared: false });
  bytes = () => mapped;
}
fs.truncateSync(file, 0);
const cp = Bun.spawnSync(["cp", dir + "/small.bin", file]);
if (cp.exitCode !== 0) throw new Error("cp failed: " + cp.stderr.toString());
if (fs.statSync(file).size !== fs.statSync(dir + "/small.bin").size) throw new Error("cp did not shrink the file");
console.log(new Bun.CryptoHasher("sha256").update(bytes()).digest("hex"));
`;

describe("truncating or overwriting the served file cannot crash the process", () => {
  test("a cached source still reads the original 16 MiB after truncate + cp; mapping the file itself dies (control)", () => {
    const dir = tempDir();
    const original = patternBytes(16 * MiB, 5);
    fs.writeFileSync(path.join(dir, "big.bin"), original);
    fs.writeFileSync(path.join(dir, "small.bin"), patternBytes(4096 + 17, 6));

    const cached = runProbe(dir, TRUNCATE_PROBE, [dir, "cache"], { timeoutMs: 30_000 });
    expect({ exitCode: cached.exitCode, signalCode: cached.signalCode, stderr: cached.stderr }).toEqual({
      exitCode: 0,
      signalCode: null,
      stderr: "",
    });
    expect(cached.stdout.trim()).toBe(sha256(original));

    // The control proves the check above can see the failure it guards against.
    fs.writeFileSync(path.join(dir, "big.bin"), original);
    const mapped = runProbe(dir, TRUNCATE_PROBE, [dir, "mmap"], { timeoutMs: 30_000 });
    expect(mapped.exitCode === 0 && mapped.signalCode === null).toBe(false);
    expect(mapped.signalCode === "SIGBUS" || mapped.exitCode === 128 + 7 || mapped.stderr.includes("Bus error")).toBe(true);
    expect(mapped.stdout).not.toContain(sha256(original));
  });
});

describe("read-only files", () => {
  test("a 0444 file is cached and served", async () => {
    const root = tempDir();
    const file = path.join(root, "ro.bin");
    const content = patternBytes(MiB + 9, 7);
    fs.writeFileSync(file, content);
    fs.chmodSync(file, 0o444);
    const cache = new FileCache(64 * MiB);
    const source = await acquire(cache, root, "ro.bin");
    expect(cache.stats).toMatchObject({ misses: 1, bypasses: 0, entries: 1, bytes: content.length });
    expect(sha256(readAll(source))).toBe(sha256(content));
    source.close();
  });

  test("without privileges: mapping the file is refused (EACCES) while the cache serves it", () => {
    const root = tempDir();
    const content = patternBytes(MiB + 9, 8);
    fs.writeFileSync(path.join(root, "ro.bin"), content);
    fs.chmodSync(path.join(root, "ro.bin"), 0o444);
    fs.chmodSync(root, 0o755); // readable by nobody

    let wrapper: string[] = [];
    if (process.getuid?.() === 0) {
      // Root reads and writes anything (CAP_DAC_OVERRIDE): prove it as an unprivileged user.
      const setpriv = Bun.which("setpriv");
      if (setpriv === null) {
        console.warn("running as root without setpriv: the unprivileged read-only check is skipped");
        return;
      }
      wrapper = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"];
    }
    const probe = runProbe(
      root,
      `import { FileCache } from ${JSON.stringify(storageModule("cache.ts"))};\n` +
        `import { openCached } from ${JSON.stringify(storageModule("local.ts"))};\n` +
        `const dir = process.argv[2]!;\n` +
        `let mmap = "mapped";\n` +
        `try { Bun.mmap(dir + "/ro.bin", { shared: false }); } catch (e) { mmap = (e as NodeJS.ErrnoException).code ?? String(e); }\n` +
        `const cache = new FileCache(64 << 20);\n` +
        `const r = await openCached(cache, dir, "ro.bin");\n` +
        `if (!r.ok) throw new Error(r.message);\n` +
        `const source = r.source;\n` +
        `const out = new Uint8Array(source.size);\n` +
        `for (let at = 0; at < out.length; ) { const n = source.read(at, out, at, out.length - at); if (n <= 0) throw new Error("short"); at += n; }\n` +
        `const { hits, misses, bypasses, entries } = cache.stats;\n` +
        `console.log(JSON.stringify({ uid: process.getuid!(), mmap, stats: { hits, misses, bypasses, entries }, ` +
        `sha: new Bun.CryptoHasher("sha256").update(out).digest("hex") }));\n`,
      [root],
      { wrapper },
    );
    expect(probe.stderr).toBe("");
    const result = JSON.parse(probe.stdout);
    if (wrapper.length > 0) expect(result.uid).toBe(65534);
    expect(result).toEqual({
      uid: result.uid,
      mmap: "EACCES",
      stats: { hits: 0, misses: 1, bypasses: 0, entries: 1 },
      sha: sha256(content),
    });
  });
});

describe("the cached copy is immutable", () => {
  test("its memfd refuses writes, shrinking and growing (EPERM); an unsealed memfd (control) accepts them", async () => {
    const root = tempDir();
    const content = patternBytes(MiB, 9);
    fs.writeFileSync(path.join(root, "f"), content);
    const cache = new FileCache(64 * MiB);
    const before = new Set(cacheMemfds());
    const source = await acquire(cache, root, "f");
    const added = cacheMemfds().filter((fd) => !before.has(fd));
    expect(added).toHaveLength(1);

    const attempts = (fd: number) => {
      const handle = fs.openSync(`/proc/self/fd/${fd}`, "r+");
      try {
        return {
          write: errnoOf(() => fs.writeSync(handle, new Uint8Array([0xff]), 0, 1, 0)),
          append: errnoOf(() => fs.writeSync(handle, new Uint8Array([0xff]), 0, 1, content.length)),
          shrink: errnoOf(() => fs.ftruncateSync(handle, 0)),
          grow: errnoOf(() => fs.ftruncateSync(handle, content.length + 4096)),
        };
      } finally {
        fs.closeSync(handle);
      }
    };
    expect(attempts(added[0]!)).toEqual({ write: "EPERM", append: "EPERM", shrink: "EPERM", grow: "EPERM" });
    expect(sha256(readAll(source))).toBe(sha256(content));
    source.close();

    // Control: the same attempts on a filled but unsealed memfd succeed, so the check above
    // would notice a copy that is not sealed.
    const donor = fs.openSync(path.join(root, "f"), "r");
    const filler = new MemfdFiller(content.length);
    try {
      filler.copyFrom(donor, 0, content.length);
      expect(attempts(filler.fd)).toEqual({ write: "no error", append: "no error", shrink: "no error", grow: "no error" });
    } finally {
      filler.abort();
      fs.closeSync(donor);
    }
  });
});

describe("eviction", () => {
  /** Five files of exactly 1 MiB each, f0..f5 (f5 for the bypass case). */
  function fiveFiles(): { root: string; contents: Uint8Array[] } {
    const root = tempDir();
    const contents = Array.from({ length: 6 }, (_, i) => patternBytes(MiB, 20 + i));
    contents.forEach((bytes, i) => fs.writeFileSync(path.join(root, `f${i}`), bytes));
    return { root, contents };
  }

  test("idle versions are evicted least-recently-used first, keeping bytes within maxBytes", async () => {
    const { root, contents } = fiveFiles();
    const cache = new FileCache(3 * MiB);
    const memfdsBefore = new Set(cacheMemfds());
    const use = async (i: number) => {
      const s = await acquire(cache, root, `f${i}`);
      expect(sha256(readAll(s))).toBe(sha256(contents[i]!));
      s.close();
      expect(cache.stats.bytes).toBeLessThanOrEqual(3 * MiB);
    };

    for (const i of [0, 1, 2, 3, 4]) await use(i);
    expect(cache.stats).toEqual({ hits: 0, misses: 5, bypasses: 0, evictions: 2, bytes: 3 * MiB, entries: 3 });
    // f0 and f1 went first; f2..f4 are still there.
    for (const i of [2, 3, 4]) await use(i);
    expect(cache.stats).toMatchObject({ hits: 3, misses: 5, evictions: 2 });

    // Recency, not age of the fill: touch f2, so f3 is now the least recently used.
    await use(2);
    await use(0); // miss: evicts f3
    expect(cache.stats).toMatchObject({ hits: 4, misses: 6, evictions: 3, entries: 3, bytes: 3 * MiB });
    await use(2);
    await use(4);
    expect(cache.stats).toMatchObject({ hits: 6, misses: 6, evictions: 3 });
    await use(3);
    expect(cache.stats).toMatchObject({ hits: 6, misses: 7, evictions: 4, bypasses: 0 });

    // Evicted copies give their memfd back: one descriptor per cached version, no more.
    expect(cacheMemfds().filter((fd) => !memfdsBefore.has(fd))).toHaveLength(cache.stats.entries);
  });

  test("a version being read is never evicted; a new file that does not fit then bypasses", async () => {
    const { root, contents } = fiveFiles();
    const cache = new FileCache(3 * MiB);

    const held0 = await acquire(cache, root, "f0");
    const got0 = readRange(held0, 0, MiB / 2);
    for (const i of [1, 2, 3, 4]) {
      const s = await acquire(cache, root, `f${i}`);
      expect(sha256(readAll(s))).toBe(sha256(contents[i]!));
      s.close();
      expect(cache.stats.bytes).toBeLessThanOrEqual(3 * MiB);
    }
    expect(cache.stats.evictions).toBeGreaterThanOrEqual(2);
    // f0 is the oldest, yet it is still cached because it is being read.
    const again0 = await acquire(cache, root, "f0");
    expect(cache.stats).toMatchObject({ hits: 1, misses: 5, bypasses: 0 });
    again0.close();

    // Fill every slot with versions in use, then ask for one more.
    const held1 = await acquire(cache, root, "f1");
    const held2 = await acquire(cache, root, "f2");
    const before = cache.stats;
    expect(before.bytes).toBe(3 * MiB);
    const bypassed = await acquire(cache, root, "f5");
    expect(cache.stats).toEqual({ ...before, misses: before.misses + 1, bypasses: before.bypasses + 1 });
    expect(sha256(readAll(bypassed))).toBe(sha256(contents[5]!));
    bypassed.close();

    readRange(held0, MiB / 2, MiB, got0);
    expect(sha256(got0)).toBe(sha256(contents[0]!));
    expect(sha256(readAll(held1))).toBe(sha256(contents[1]!));
    expect(sha256(readAll(held2))).toBe(sha256(contents[2]!));
    for (const s of [held0, held1, held2]) s.close();

    // Once they are idle, the new file is cached after all.
    const later = await acquire(cache, root, "f5");
    expect(cache.stats).toMatchObject({ bypasses: before.bypasses + 1, misses: before.misses + 2, entries: 3, bytes: 3 * MiB });
    expect(sha256(readAll(later))).toBe(sha256(contents[5]!));
    later.close();
  });
});

describe("sizes", () => {
  test("a file larger than maxBytes bypasses the cache and still reads correctly; one of exactly maxBytes is cached", async () => {
    const root = tempDir();
    const big = patternBytes(MiB + 1, 30);
    const exact = patternBytes(MiB, 31);
    fs.writeFileSync(path.join(root, "big"), big);
    fs.writeFileSync(path.join(root, "exact"), exact);
    const cache = new FileCache(MiB);

    const s = await acquire(cache, root, "big");
    expect(cache.stats).toEqual({ hits: 0, misses: 0, bypasses: 1, evictions: 0, bytes: 0, entries: 0 });
    expect(sha256(readAll(s))).toBe(sha256(big));
    s.close();

    const e = await acquire(cache, root, "exact");
    expect(cache.stats).toMatchObject({ misses: 1, bypasses: 1, bytes: MiB, entries: 1 });
    expect(sha256(readAll(e))).toBe(sha256(exact));
    e.close();
  });

  test("a cache of 0 bytes is off: every request bypasses", async () => {
    const root = tempDir();
    fs.writeFileSync(path.join(root, "f"), "abc");
    const cache = new FileCache(0);
    const s = await acquire(cache, root, "f");
    expect(new TextDecoder().decode(readAll(s))).toBe("abc");
    expect(cache.stats).toEqual({ hits: 0, misses: 0, bypasses: 1, evictions: 0, bytes: 0, entries: 0 });
    s.close();
  });

  test("an empty file is cached and reads as empty", async () => {
    const root = tempDir();
    fs.writeFileSync(path.join(root, "empty"), "");
    const cache = new FileCache(MiB);
    const a = await acquire(cache, root, "empty");
    const b = await acquire(cache, root, "empty");
    expect(a.size).toBe(0);
    expect(a.read(0, new Uint8Array(4), 0, 4)).toBe(0);
    expect(b.read(0, new Uint8Array(4), 0, 4)).toBe(0);
    expect(cache.stats).toEqual({ hits: 1, misses: 1, bypasses: 0, evictions: 0, bytes: 0, entries: 1 });
    a.close();
    b.close();
  });
});

describe("fillers of bytes that come from elsewhere (the fleet's cache)", () => {
  const identity = (size: number) => ({ dev: 0, ino: 0, size, mtimeMs: 1, ctimeMs: 2 });

  /** A fill the test drives: each call of `give` writes one range. */
  function controlledFill() {
    let write: ((bytes: Uint8Array, offset: number) => void) | null = null;
    let finish!: () => void;
    let fail!: (e: Error) => void;
    const done = new Promise<void>((resolve, reject) => {
      finish = resolve;
      fail = reject;
    });
    return {
      fill: (): Filler => (target) => {
        write = (bytes, offset) => target.write(bytes, offset);
        return done;
      },
      give: (bytes: Uint8Array, offset: number) => write!(bytes, offset),
      finish: () => finish(),
      fail: (e: Error) => fail(e),
    };
  }

  test("whole: returns once every byte is in, and later requests share the copy", async () => {
    const cache = new FileCache(1 << 20);
    const bytes = Uint8Array.from({ length: 3000 }, (_, i) => i & 0xff);
    const fill = controlledFill();
    const first = cache.acquire("a", identity(3000), fill.fill, { mode: "whole" });
    await Bun.sleep(0);
    fill.give(bytes.subarray(1000), 1000);
    fill.give(bytes.subarray(0, 1000), 0);
    fill.finish();
    const source = (await first)!;
    const out = new Uint8Array(3000);
    expect(source.read(0, out, 0, 3000)).toBe(3000);
    expect(out).toEqual(bytes);
    expect(cache.holds("a")).toBe(true);
    const again = (await cache.acquire("a", identity(3000), () => () => Promise.reject(new Error("no second fill"))))!;
    expect(again.size).toBe(3000);
    source.close();
    again.close();
  });

  test("stream: readable prefix grows as ranges arrive out of order; the last byte waits for the end", async () => {
    const cache = new FileCache(1 << 20);
    const bytes = Uint8Array.from({ length: 3000 }, (_, i) => (i * 7) & 0xff);
    const fill = controlledFill();
    const source = (await cache.acquire("s", identity(3000), fill.fill, { mode: "stream" }))!;
    await Bun.sleep(0);
    expect(source.whenReadable).toBeDefined();
    const wantFirst = source.whenReadable!(1000);
    expect(wantFirst).not.toBeNull();
    let firstIn = false;
    void wantFirst!.then(() => (firstIn = true));
    fill.give(bytes.subarray(1000, 2000), 1000); // out of order: nothing readable yet
    await Bun.sleep(1);
    expect(firstIn).toBe(false);
    fill.give(bytes.subarray(0, 1000), 0);
    await wantFirst;
    const out = new Uint8Array(2000);
    expect(source.read(0, out, 0, 2000)).toBe(2000);
    expect(out).toEqual(bytes.subarray(0, 2000));
    expect(() => source.read(2000, out, 0, 1000)).toThrow("past the bytes copied");
    fill.give(bytes.subarray(2000), 2000);
    // every byte written, but the copy is not complete: the end is not readable yet
    expect(source.whenReadable!(3000)).not.toBeNull();
    fill.finish();
    await source.whenReadable!(3000);
    const all = new Uint8Array(3000);
    expect(source.read(0, all, 0, 3000)).toBe(3000);
    expect(all).toEqual(bytes);
    source.close();
  });

  test("stream: a failed fill rejects the waiting readers, reads throw, and the next request tries again", async () => {
    const cache = new FileCache(1 << 20);
    const fill = controlledFill();
    const source = (await cache.acquire("f", identity(2000), fill.fill, { mode: "stream" }))!;
    await Bun.sleep(0);
    fill.give(new Uint8Array(1000).fill(9), 0);
    const waiting = source.whenReadable!(2000)!;
    fill.fail(new Error("chunk 1 does not match its sha256"));
    await expect(waiting).rejects.toThrow("does not match its sha256");
    await Bun.sleep(1);
    expect(() => source.read(0, new Uint8Array(10), 0, 10)).toThrow("does not match its sha256");
    source.close();
    expect(cache.holds("f")).toBe(false);
    expect(cache.stats).toMatchObject({ entries: 0, bytes: 0 });
    const retry = controlledFill();
    const next = cache.acquire("f", identity(2000), retry.fill, { mode: "whole" });
    await Bun.sleep(0);
    retry.give(new Uint8Array(2000).fill(1), 0);
    retry.finish();
    expect((await next)!.size).toBe(2000);
  });
});

/**
 * The lookup chain, link by link, against real files: each link answers a source, a refusal or
 * "not mine"; the chain asks in order and what no link takes is not found. The metadata cache
 * is the in-memory kind (the Redis one is tested with a real cluster in test/e2e/cluster).
 */
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { FileCache } from "../../../src/storage/cache.ts";
import { FileLookup, localRootLink, metadataLink, remoteLink, rootLookup, type LookupLink, type Opened, type Wanted } from "../../../src/storage/lookup.ts";
import type { MetadataCache, PathFacts } from "../../../src/storage/metadata.ts";
import { ErrorCode, refuse } from "../../../src/storage/refusal.ts";
import type { RemoteFiles } from "../../../src/storage/remote.ts";
import { memorySource } from "../../../src/storage/source.ts";
import { cleanupTempDirs, tempDir } from "./helpers.ts";

afterEach(cleanupTempDirs);

/** What a metadata cache holds, in memory, and what it was told. */
class MemoryMetadata implements MetadataCache {
  readonly facts = new Map<string, PathFacts>();
  lookups = 0;
  remembered: string[] = [];
  async lookup(relative: string): Promise<PathFacts | null> {
    this.lookups++;
    return this.facts.get(relative) ?? null;
  }
  remember(relative: string, facts: PathFacts): void {
    this.remembered.push(`${relative}:${facts.kind}`);
    this.facts.set(relative, facts);
  }
}

/** Files of a fleet held in memory, counting what was asked. */
class MemoryRemote implements RemoteFiles {
  asked: string[] = [];
  constructor(private readonly files: Record<string, string>) {}
  async open(name: string): Promise<Opened> {
    this.asked.push(name);
    const text = this.files[name];
    if (text === undefined) return refuse(ErrorCode.FILE_NOT_FOUND, "file not found");
    const bytes = new TextEncoder().encode(text);
    return { ok: true, source: memorySource(bytes, { dev: 0, ino: 0, size: bytes.length, mtimeMs: 0, ctimeMs: 0 }) };
  }
}

function rootWith(files: Record<string, string>): string {
  const root = fs.realpathSync(tempDir());
  for (const [name, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(root, name)), { recursive: true });
    fs.writeFileSync(path.join(root, name), text);
  }
  return root;
}

function text(opened: Opened): string {
  if (!opened.ok) throw new Error(`refused: ${opened.message}`);
  const bytes = new Uint8Array(opened.source.size);
  opened.source.read(0, bytes, 0, bytes.length);
  opened.source.close();
  return new TextDecoder().decode(bytes);
}

describe("FileLookup", () => {
  const answering = (answer: Opened | null, log: string[], name: string): LookupLink => ({
    async open() {
      log.push(name);
      return answer;
    },
  });

  test("asks the links in order and stops at the first answer", async () => {
    const log: string[] = [];
    const denied = refuse(ErrorCode.ACCESS_VIOLATION, "permission denied");
    const chain = new FileLookup([answering(null, log, "a"), answering(denied, log, "b"), answering(null, log, "c")]);
    expect(await chain.open("f", false)).toEqual(denied);
    expect(log).toEqual(["a", "b"]);
  });

  test("what no link takes is not found", async () => {
    const chain = new FileLookup([answering(null, [], "a")]);
    const opened = await chain.open("f", false);
    expect(opened.ok).toBe(false);
    if (!opened.ok) expect(opened.code).toBe(ErrorCode.FILE_NOT_FOUND);
  });
});

describe("localRootLink", () => {
  test("a file of the root is served through the cache", async () => {
    const root = rootWith({ "boot/a.efi": "kernel" });
    const cache = new FileCache(1 << 20);
    expect(text((await localRootLink(root, cache, null).open({ relative: "boot/a.efi", whole: false, facts: null }))!)).toBe("kernel");
    expect(cache.versionAt(`${root}/boot/a.efi`)).not.toBeNull();
  });

  test("a missing file is not its answer, and the metadata cache learns it is missing", async () => {
    const root = rootWith({});
    const metadata = new MemoryMetadata();
    expect(await localRootLink(root, new FileCache(1 << 20), metadata).open({ relative: "nope", whole: false, facts: null })).toBeNull();
    expect(metadata.remembered).toEqual(["nope:missing"]);
  });

  test("a name the metadata cache knows to be missing is not looked for on disk", async () => {
    const root = rootWith({ f: "there after all" });
    const answer = await localRootLink(root, new FileCache(1 << 20), null).open({ relative: "f", whole: false, facts: { kind: "missing" } });
    expect(answer).toBeNull();
  });

  test("any other refusal is final", async () => {
    const root = rootWith({ dir: "x" });
    fs.rmSync(path.join(root, "dir"));
    fs.mkdirSync(path.join(root, "dir"));
    const answer = await localRootLink(root, new FileCache(1 << 20), null).open({ relative: "dir", whole: false, facts: null });
    expect(answer?.ok).toBe(false);
    if (answer && !answer.ok) expect(answer.code).toBe(ErrorCode.ACCESS_VIOLATION);
  });

  test("what the disk says of a file is remembered once: the same facts again need no write", async () => {
    const root = rootWith({ f: "abc" });
    const metadata = new MemoryMetadata();
    const link = localRootLink(root, new FileCache(1 << 20), metadata);
    text((await link.open({ relative: "f", whole: false, facts: null }))!);
    expect(metadata.remembered).toEqual(["f:file"]);
    text((await link.open({ relative: "f", whole: false, facts: metadata.facts.get("f")! }))!);
    expect(metadata.remembered).toEqual(["f:file"]);
  });
});

describe("metadataLink", () => {
  test("a file known at the version held in memory is served without the disk", async () => {
    const root = rootWith({ f: "cached" });
    const cache = new FileCache(1 << 20);
    const metadata = new MemoryMetadata();
    const chain = rootLookup(root, cache, metadata, null);
    expect(text(await chain.open("f", false))).toBe("cached");
    // the disk copy goes away: the metadata cache and the file cache still know this version
    fs.rmSync(path.join(root, "f"));
    expect(text(await metadataLink(metadata, cache, root).open({ relative: "f", whole: false, facts: null }).then((a) => a!))).toBe("cached");
  });

  test("a version the file cache does not hold is the next link's", async () => {
    const metadata = new MemoryMetadata();
    metadata.facts.set("f", { kind: "file", size: 3, mtimeMs: 1, ctimeMs: 1 });
    const wanted: Wanted = { relative: "f", whole: false, facts: null };
    expect(await metadataLink(metadata, new FileCache(1 << 20), "/nowhere").open(wanted)).toBeNull();
    expect(wanted.facts).toEqual({ kind: "file", size: 3, mtimeMs: 1, ctimeMs: 1 });
  });

  test("a whole read (netascii) does not ask the metadata cache", async () => {
    const metadata = new MemoryMetadata();
    expect(await metadataLink(metadata, new FileCache(1 << 20), "/nowhere").open({ relative: "f", whole: true, facts: null })).toBeNull();
    expect(metadata.lookups).toBe(0);
  });
});

describe("rootLookup", () => {
  test("metadata → local root → fleet: a file the root lacks comes from the fleet", async () => {
    const root = rootWith({ local: "from disk" });
    const remote = new MemoryRemote({ local: "from the fleet", shared: "from the fleet" });
    const chain = rootLookup(root, new FileCache(1 << 20), new MemoryMetadata(), remote);
    expect(text(await chain.open("local", false))).toBe("from disk");
    expect(text(await chain.open("shared", false))).toBe("from the fleet");
    expect(remote.asked).toEqual(["shared"]);
  });

  test("a name known missing locally goes straight to the fleet, and the fleet's no is final", async () => {
    const root = rootWith({});
    const metadata = new MemoryMetadata();
    metadata.facts.set("gone", { kind: "missing" });
    fs.writeFileSync(path.join(root, "gone"), "on disk but known missing");
    const remote = new MemoryRemote({});
    const opened = await rootLookup(root, new FileCache(1 << 20), metadata, remote).open("gone", false);
    expect(opened.ok).toBe(false);
    expect(remote.asked).toEqual(["gone"]);
  });

  test("without a fleet a missing file is not found", async () => {
    const opened = await rootLookup(rootWith({}), new FileCache(1 << 20), null, null).open("x", false);
    expect(opened.ok ? 0 : opened.code).toBe(ErrorCode.FILE_NOT_FOUND);
  });

  test("remoteLink passes `whole` on", async () => {
    let whole: boolean | undefined;
    const remote: RemoteFiles = {
      async open(_name, options) {
        whole = options?.whole;
        return refuse(ErrorCode.FILE_NOT_FOUND, "file not found");
      },
    };
    await remoteLink(remote).open({ relative: "f", whole: true, facts: null });
    expect(whole).toBe(true);
  });
});

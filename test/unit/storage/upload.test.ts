import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { refusalFromFsError } from "../../../src/storage/refusal.ts";
import { resolveRequestPath } from "../../../src/storage/resolve.ts";
import { tryLockExclusive } from "../../../src/storage/file-lock.ts";
import { isLiveUpload, isUploadTempName, prepareUpload, type UploadPolicy, type UploadSink } from "../../../src/storage/upload.ts";
import { cleanupTempDirs, listing, rootWithSibling, tempDir } from "./helpers.ts";

afterEach(cleanupTempDirs);

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);
const TEMP_NAME = /^\.fw\.bin\.[0-9a-f]{12}\.tftpd-part$/;

async function sinkFor(
  root: string,
  relative: string,
  policy: UploadPolicy = "create",
  maxBytes = Number.POSITIVE_INFINITY,
): Promise<UploadSink> {
  const r = await prepareUpload(root, relative, policy, maxBytes);
  if (!r.ok) throw new Error(`expected an upload sink, got ${r.code} ${r.message}`);
  return r.sink;
}

describe("prepareUpload refusals", () => {
  test("policy off refuses every upload", async () => {
    const root = tempDir();
    expect(await prepareUpload(root, "fw.bin", "off", 1000)).toEqual({ ok: false, code: 2, message: "uploads are disabled" });
    expect(listing(root)).toEqual([]);
  });

  test("create on an existing file is ERROR 6 and leaves it alone", async () => {
    const root = tempDir();
    fs.writeFileSync(path.join(root, "fw.bin"), "original");
    expect(await prepareUpload(root, "fw.bin", "create", 1000)).toEqual({ ok: false, code: 6, message: "file already exists" });
    expect(fs.readFileSync(path.join(root, "fw.bin"), "utf8")).toBe("original");
    expect(listing(root)).toEqual(["fw.bin"]);
  });

  test("a missing parent directory is ERROR 1 'no such directory'", async () => {
    const root = tempDir();
    fs.writeFileSync(path.join(root, "file"), "");
    const refused = { ok: false, code: 1, message: "no such directory" } as const;
    expect(await prepareUpload(root, "nodir/fw.bin", "create", 1000)).toEqual(refused);
    expect(await prepareUpload(root, "file/fw.bin", "create", 1000)).toEqual(refused);
    expect(listing(root)).toEqual(["file"]);
  });

  test("a parent directory that resolves outside the root is refused", async () => {
    const { root, sibling, outside } = rootWithSibling();
    fs.symlinkSync(outside, path.join(root, "out"));
    fs.symlinkSync("../root2", path.join(root, "sib"));
    const refused = { ok: false, code: 2, message: "access violation: outside root" } as const;
    for (const policy of ["create", "overwrite"] as const) {
      expect(await prepareUpload(root, "out/fw.bin", policy, 1000)).toEqual(refused);
      expect(await prepareUpload(root, "sib/fw.bin", policy, 1000)).toEqual(refused);
    }
    expect(listing(outside)).toEqual([]);
    expect(listing(sibling)).toEqual([]);
  });

  test("the target may not be a symlink, a directory or a special file", async () => {
    const { root, outside } = rootWithSibling();
    fs.writeFileSync(path.join(outside, "victim"), "victim");
    fs.writeFileSync(path.join(root, "inside"), "inside");
    fs.symlinkSync(path.join(outside, "victim"), path.join(root, "to-outside"));
    fs.symlinkSync("inside", path.join(root, "to-inside"));
    fs.symlinkSync("nowhere", path.join(root, "dangling"));
    fs.mkdirSync(path.join(root, "dir"));
    expect(Bun.spawnSync(["mkfifo", path.join(root, "fifo")]).exitCode).toBe(0);
    for (const policy of ["create", "overwrite"] as const) {
      for (const name of ["to-outside", "to-inside", "dangling"]) {
        expect(await prepareUpload(root, name, policy, 1000)).toEqual({
          ok: false,
          code: 2,
          message: "access violation: symbolic link",
        });
      }
      expect(await prepareUpload(root, "dir", policy, 1000)).toEqual({ ok: false, code: 2, message: "is a directory" });
      expect(await prepareUpload(root, "fifo", policy, 1000)).toEqual({ ok: false, code: 2, message: "not a regular file" });
    }
    expect(fs.readFileSync(path.join(outside, "victim"), "utf8")).toBe("victim");
    expect(listing(root)).toEqual(["dangling", "dir", "fifo", "inside", "to-inside", "to-outside"]);
  });

  test("disk errors map to the TFTP codes", () => {
    const err = (code: string): Error => Object.assign(new Error(code), { code });
    expect(refusalFromFsError(err("ENOSPC"), "write")).toEqual({ ok: false, code: 3, message: "disk full" });
    expect(refusalFromFsError(err("EDQUOT"), "write")).toEqual({ ok: false, code: 3, message: "disk full" });
    expect(refusalFromFsError(err("EIO"), "write")).toEqual({ ok: false, code: 0, message: "write failed: EIO" });
    expect(refusalFromFsError(new Error("no code"), "write")).toEqual({ ok: false, code: 0, message: "write failed: unknown error" });
  });
});

describe("UploadSink", () => {
  test("data goes to a temporary file; the final name appears only on commit, complete", async () => {
    const root = tempDir();
    fs.mkdirSync(path.join(root, "firmware"));
    const dir = path.join(root, "firmware");
    const sink = await sinkFor(root, "firmware/fw.bin");
    expect(sink.path).toBe(path.join(dir, "fw.bin"));

    expect(sink.write(bytes("hello "))).toBeNull();
    expect(sink.write(bytes("world"))).toBeNull();
    expect(sink.written).toBe(11);

    const during = listing(dir);
    expect(during).toHaveLength(1);
    expect(during[0]).toMatch(TEMP_NAME);
    expect(path.join(dir, during[0]!)).toBe(sink.tempPath);
    expect(fs.readFileSync(sink.tempPath, "utf8")).toBe("hello world");
    expect(fs.existsSync(sink.path)).toBe(false);
    // Clients cannot ask for the temporary file by name.
    expect(resolveRequestPath(root, `firmware/${during[0]}`).ok).toBe(false);

    expect((await sink.publish())).toBeNull();
    expect(listing(dir)).toEqual(["fw.bin"]);
    expect(fs.readFileSync(sink.path, "utf8")).toBe("hello world");
    expect(fs.statSync(sink.path).mode & 0o777).toBe(0o644 & ~process.umask());
  });

  test("binary data survives byte for byte", async () => {
    const root = tempDir();
    const data = new Uint8Array(100_000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7919) & 0xff;
    const sink = await sinkFor(root, "blob");
    for (let off = 0; off < data.length; off += 1428) expect(sink.write(data.subarray(off, off + 1428))).toBeNull();
    expect((await sink.publish())).toBeNull();
    expect(new Uint8Array(fs.readFileSync(path.join(root, "blob")))).toEqual(data);
  });

  test("an empty upload publishes an empty file", async () => {
    const root = tempDir();
    const sink = await sinkFor(root, "empty");
    expect((await sink.publish())).toBeNull();
    expect(fs.readFileSync(path.join(root, "empty")).length).toBe(0);
    expect(listing(root)).toEqual(["empty"]);
  });

  test("abort leaves the directory exactly as before, and is idempotent", async () => {
    const root = tempDir();
    fs.writeFileSync(path.join(root, "keep"), "keep");
    const before = listing(root);
    const sink = await sinkFor(root, "fw.bin");
    expect(sink.write(bytes("partial"))).toBeNull();
    expect(listing(root)).not.toEqual(before);
    sink.abort();
    expect(listing(root)).toEqual(before);
    sink.abort();
    expect(listing(root)).toEqual(before);
    expect(sink.write(bytes("more"))).toEqual({ ok: false, code: 0, message: "upload already finished" });
    expect((await sink.publish())).toEqual({ ok: false, code: 0, message: "upload already finished" });
    expect(listing(root)).toEqual(before);
  });

  test("abort after commit keeps the published file", async () => {
    const root = tempDir();
    const sink = await sinkFor(root, "fw.bin");
    sink.write(bytes("done"));
    expect((await sink.publish())).toBeNull();
    sink.abort();
    expect(fs.readFileSync(path.join(root, "fw.bin"), "utf8")).toBe("done");
    expect((await sink.publish())).toEqual({ ok: false, code: 0, message: "upload already finished" });
  });

  test("exceeding the size limit is ERROR 3 and leaves nothing behind", async () => {
    const root = tempDir();
    const sink = await sinkFor(root, "fw.bin", "create", 10);
    expect(sink.write(bytes("123456"))).toBeNull();
    expect(sink.write(bytes("7890"))).toBeNull(); // exactly the limit is fine
    expect(sink.write(bytes("!"))).toEqual({ ok: false, code: 3, message: "upload exceeds size limit" });
    expect(listing(root)).toEqual([]);
    expect((await sink.publish())).toEqual({ ok: false, code: 0, message: "upload already finished" });
    expect(listing(root)).toEqual([]);
  });

  test("a single oversized write is refused before anything is written", async () => {
    const root = tempDir();
    const sink = await sinkFor(root, "fw.bin", "overwrite", 4);
    expect(sink.write(bytes("12345"))).toEqual({ ok: false, code: 3, message: "upload exceeds size limit" });
    expect(sink.written).toBe(0);
    expect(listing(root)).toEqual([]);
  });

  test("create loses a race to a file created after prepareUpload: ERROR 6, the other file untouched", async () => {
    const root = tempDir();
    const sink = await sinkFor(root, "fw.bin", "create");
    expect(sink.write(bytes("mine"))).toBeNull();
    fs.writeFileSync(path.join(root, "fw.bin"), "theirs");
    expect((await sink.publish())).toEqual({ ok: false, code: 6, message: "file already exists" });
    expect(fs.readFileSync(path.join(root, "fw.bin"), "utf8")).toBe("theirs");
    expect(listing(root)).toEqual(["fw.bin"]);
  });

  test("overwrite replaces atomically: an open reader keeps the old bytes", async () => {
    const root = tempDir();
    const target = path.join(root, "fw.bin");
    fs.writeFileSync(target, "old contents");
    const oldIno = fs.statSync(target).ino;
    const reader = fs.openSync(target, "r");
    try {
      const sink = await sinkFor(root, "fw.bin", "overwrite");
      expect(sink.write(bytes("new"))).toBeNull();
      expect(fs.readFileSync(target, "utf8")).toBe("old contents"); // nothing visible yet
      expect((await sink.publish())).toBeNull();
      expect(fs.readFileSync(target, "utf8")).toBe("new");
      expect(fs.statSync(target).ino).not.toBe(oldIno);
      expect(fs.readFileSync(reader, "utf8")).toBe("old contents");
      expect(listing(root)).toEqual(["fw.bin"]);
    } finally {
      fs.closeSync(reader);
    }
  });

  test("overwrite refuses when the name became a directory meanwhile, leaving nothing", async () => {
    const root = tempDir();
    const sink = await sinkFor(root, "fw.bin", "overwrite");
    sink.write(bytes("x"));
    fs.mkdirSync(path.join(root, "fw.bin"));
    const r = (await sink.publish());
    expect(r).not.toBeNull();
    expect(r?.code).toBe(2);
    expect(listing(root)).toEqual(["fw.bin"]);
    expect(fs.statSync(path.join(root, "fw.bin")).isDirectory()).toBe(true);
  });

  test("a parent symlinked inside the root is fine; the file lands in the real directory", async () => {
    const root = tempDir();
    fs.mkdirSync(path.join(root, "real"));
    fs.symlinkSync("real", path.join(root, "alias"));
    const sink = await sinkFor(root, "alias/fw.bin");
    sink.write(bytes("via alias"));
    expect((await sink.publish())).toBeNull();
    expect(fs.readFileSync(path.join(root, "real", "fw.bin"), "utf8")).toBe("via alias");
  });

  test("a 255-byte name still gets a valid temporary name", async () => {
    const root = tempDir();
    const name = "n".repeat(255);
    const sink = await sinkFor(root, name);
    expect(path.basename(sink.tempPath).length).toBeLessThanOrEqual(255);
    sink.write(bytes("long"));
    expect((await sink.publish())).toBeNull();
    expect(listing(root)).toEqual([name]);
  });

  test("two concurrent uploads of one name get distinct temporary files", async () => {
    const root = tempDir();
    const a = await sinkFor(root, "fw.bin", "create");
    const b = await sinkFor(root, "fw.bin", "create");
    expect(a.tempPath).not.toBe(b.tempPath);
    a.write(bytes("a"));
    b.write(bytes("b"));
    expect((await a.publish())).toBeNull();
    expect((await b.publish())).toEqual({ ok: false, code: 6, message: "file already exists" });
    expect(fs.readFileSync(path.join(root, "fw.bin"), "utf8")).toBe("a");
    expect(listing(root)).toEqual(["fw.bin"]);
  });
});

describe("a declared size (tsize) is checked before anything is written", () => {
  const free = (dir: string): number => {
    const st = fs.statfsSync(dir);
    return st.bavail * st.bsize;
  };

  test("more than the upload limit is ERROR 3 'file too large', nothing created", async () => {
    const root = tempDir();
    const r = await prepareUpload(root, "fw.bin", "create", 1000, 1001);
    expect(r).toEqual({ ok: false, code: 3, message: "file too large" });
    expect(listing(root)).toEqual([]);
  });

  test("more than the free space is ERROR 3 'disk full: not enough free space', nothing created", async () => {
    const root = tempDir();
    fs.mkdirSync(path.join(root, "sub"));
    for (const declared of [free(root) + 1024 * 1024 * 1024, 1e15]) {
      const r = await prepareUpload(root, "sub/fw.bin", "overwrite", Number.POSITIVE_INFINITY, declared);
      expect(r).toEqual({ ok: false, code: 3, message: "disk full: not enough free space" });
    }
    expect(listing(root)).toEqual(["sub"]);
    expect(listing(path.join(root, "sub"))).toEqual([]);
  });

  test("a size that fits is accepted, and so is an upload that declares none", async () => {
    const root = tempDir();
    const a = await prepareUpload(root, "a.bin", "create", Number.POSITIVE_INFINITY, 4096);
    const b = await prepareUpload(root, "b.bin", "create", Number.POSITIVE_INFINITY, null);
    expect(a.ok && b.ok).toBe(true);
    if (a.ok) a.sink.abort();
    if (b.ok) b.sink.abort();
    expect(listing(root)).toEqual([]);
  });
});

describe("temporary files: names and locks", () => {
  test("the names made are exactly the names the sweep recognises", async () => {
    const root = tempDir();
    for (const name of ["fw.bin", ".hidden", "x", "é".repeat(127), "日本語.efi".repeat(19), `abc${"\u{1F680}".repeat(63)}`]) {
      const sink = await sinkFor(root, name);
      const temp = path.basename(sink.tempPath);
      expect(isUploadTempName(temp)).toBe(true);
      expect(Buffer.byteLength(temp)).toBeLessThanOrEqual(255);
      // cut between code points: the name on disk is the very name made (no half character)
      expect(fs.readdirSync(root)).toEqual([temp]);
      sink.abort();
    }
    for (const name of [".fw.bin.tftpd-part", "fw.bin.0123456789ab.tftpd-part", ".fw.bin.0123456789AB.tftpd-part", ".fw.bin.0123456789a.tftpd-part", ".fw.0123456789ab.tftpd-part.x", "..0123456789ab.tftpd-part"]) {
      expect(isUploadTempName(name)).toBe(false);
    }
    expect(listing(root)).toEqual([]);
  });

  test("a running upload holds the lock on its temporary file; after commit or abort nothing is held", async () => {
    const root = tempDir();
    for (const end of ["commit", "abort"] as const) {
      const sink = await sinkFor(root, `${end}.bin`);
      sink.write(bytes("data"));
      expect(isLiveUpload(sink.tempPath)).toBe(true);
      const probe = fs.openSync(sink.tempPath, "r+");
      try {
        expect(tryLockExclusive(probe)).toBe("held");
      } finally {
        fs.closeSync(probe);
      }
      if (end === "commit") expect((await sink.publish())).toBeNull();
      else sink.abort();
      expect(isLiveUpload(sink.tempPath)).toBe(false);
      expect(fs.existsSync(sink.tempPath)).toBe(false);
    }
    expect(listing(root)).toEqual(["commit.bin"]);
    // the published file is not left locked either
    const fd = fs.openSync(path.join(root, "commit.bin"), "r+");
    try {
      expect(tryLockExclusive(fd)).toBe("locked");
    } finally {
      fs.closeSync(fd);
    }
  });
});

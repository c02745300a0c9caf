import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { refusalFromFsError } from "../../../src/storage/refusal.ts";
import {
  isInside,
  openForRead,
  realRoot,
  resolveRequestPath,
  type ResolvedPath,
} from "../../../src/storage/resolve.ts";
import type { FileSource } from "../../../src/storage/source.ts";
import { cleanupTempDirs, rootWithSibling, runProbe, storageModule, tempDir } from "./helpers.ts";

afterEach(cleanupTempDirs);

const ROOT = "/srv/tftp";

function resolved(requested: string): ResolvedPath {
  const r = resolveRequestPath(ROOT, requested);
  if (!r.ok) throw new Error(`expected ${JSON.stringify(requested)} to resolve, got ${r.message}`);
  return r;
}

function refusedWith(requested: string): { code: number; message: string } {
  const r = resolveRequestPath(ROOT, requested);
  if (r.ok) throw new Error(`expected ${JSON.stringify(requested)} to be refused, got ${r.relative}`);
  return { code: r.code, message: r.message };
}

async function openOk(root: string, relative: string): Promise<FileSource> {
  const r = await openForRead(root, relative);
  if (!r.ok) throw new Error(`expected ${relative} to open, got ${r.code} ${r.message}`);
  return r.source;
}

function readAll(source: FileSource): string {
  const buf = new Uint8Array(source.size);
  expect(source.read(0, buf, 0, buf.length)).toBe(source.size);
  return new TextDecoder().decode(buf);
}

describe("resolveRequestPath", () => {
  test("a plain name is relative to the root", () => {
    expect(resolved("pxelinux.0")).toEqual({ ok: true, relative: "pxelinux.0", absolute: "/srv/tftp/pxelinux.0" });
  });

  test("backslashes from Windows PXE clients become slashes", () => {
    expect(resolved("boot\\x64\\wdsnbp.com").relative).toBe("boot/x64/wdsnbp.com");
    expect(resolved("\\boot\\bcd").relative).toBe("boot/bcd");
  });

  test("leading slashes mean the root", () => {
    expect(resolved("/pxelinux.0").relative).toBe("pxelinux.0");
    expect(resolved("///boot/vmlinuz").absolute).toBe("/srv/tftp/boot/vmlinuz");
  });

  test("empty and '.' segments are dropped", () => {
    expect(resolved("boot//./efi/./grubx64.efi/.").relative).toBe("boot/efi/grubx64.efi");
  });

  test("any '..' segment is refused, never resolved", () => {
    for (const name of ["..", "../etc/passwd", "/../etc/passwd", "boot/../../etc", "boot/../pxelinux.0", "a\\..\\b", "a/.."]) {
      expect(refusedWith(name)).toEqual({ code: 2, message: "access violation: '..' in path" });
    }
  });

  test("names that merely contain dots are fine", () => {
    expect(resolved("...").relative).toBe("...");
    expect(resolved("a..b/..c/d..").relative).toBe("a..b/..c/d..");
  });

  test("NUL and control characters are refused", () => {
    for (const name of ["a\0b", "pxelinux.0\0", "\x01", "a\nb", "a\tb", "x\x1f", "x\x7f"]) {
      expect(refusedWith(name)).toEqual({ code: 2, message: "access violation: control character in name" });
    }
    expect(resolved("with space").relative).toBe("with space");
  });

  test("the root itself is refused as a directory", () => {
    for (const name of ["", "/", "//", "./", ".", "\\", "/./."]) {
      expect(refusedWith(name)).toEqual({ code: 2, message: "is a directory" });
    }
  });

  test("over-long names are refused (4096 bytes in total, 255 per segment)", () => {
    const seg = "a".repeat(255);
    const longest = Array.from({ length: 16 }, () => seg).join("/"); // 16*255 + 15 = 4095
    expect(resolved(`/${longest}`).relative).toBe(longest); // 4096 bytes as sent
    expect(refusedWith(`x/${longest}`)).toEqual({ code: 2, message: "name too long" }); // 4097
    expect(resolved(seg).relative).toBe(seg);
    expect(refusedWith(`${seg}a`)).toEqual({ code: 2, message: "name too long" });
    // Bytes, not characters: 128 × "é" is 256 bytes of UTF-8.
    expect(refusedWith("é".repeat(128)).code).toBe(2);
    expect(resolved("é".repeat(127)).relative).toBe("é".repeat(127));
  });

  test("upload temporary files cannot be named", () => {
    expect(refusedWith("boot/.vmlinuz.0123456789ab.tftpd-part")).toEqual({
      code: 2,
      message: "access violation: reserved name",
    });
    expect(resolved("notes.tftpd-part").relative).toBe("notes.tftpd-part");
  });
});

describe("isInside", () => {
  test("compares with a trailing separator", () => {
    expect(isInside("/srv/tftp", "/srv/tftp/a")).toBe(true);
    expect(isInside("/srv/tftp", "/srv/tftp2/a")).toBe(false);
    expect(isInside("/srv/tftp", "/srv/tftp")).toBe(false);
    expect(isInside("/", "/etc/passwd")).toBe(true);
  });
});

describe("openForRead", () => {
  test("serves a regular file with its size and identity", async () => {
    const root = tempDir();
    fs.mkdirSync(path.join(root, "boot"));
    fs.writeFileSync(path.join(root, "boot", "vmlinuz"), "kernel bytes");
    const source = await openOk(root, "boot/vmlinuz");
    const stat = fs.statSync(path.join(root, "boot", "vmlinuz"));
    expect(source.size).toBe(12);
    expect(source.identity).toEqual({ dev: stat.dev, ino: stat.ino, size: 12, mtimeMs: stat.mtimeMs, ctimeMs: stat.ctimeMs });
    expect(readAll(source)).toBe("kernel bytes");
    source.close();
  });

  test("a missing file is ERROR 1", async () => {
    const root = tempDir();
    fs.writeFileSync(path.join(root, "file"), "x");
    for (const rel of ["missing", "nodir/missing", "file/below-a-file"]) {
      expect(await openForRead(root, rel)).toEqual({ ok: false, code: 1, message: "file not found" });
    }
  });

  test("a directory is ERROR 2", async () => {
    const root = tempDir();
    fs.mkdirSync(path.join(root, "boot"));
    fs.symlinkSync(".", path.join(root, "self"));
    expect(await openForRead(root, "boot")).toEqual({ ok: false, code: 2, message: "is a directory" });
    expect(await openForRead(root, "self")).toEqual({ ok: false, code: 2, message: "is a directory" });
  });

  test("a symlink inside the root pointing inside works", async () => {
    const root = tempDir();
    fs.mkdirSync(path.join(root, "images"));
    fs.writeFileSync(path.join(root, "images", "initrd-6.1"), "initrd");
    fs.symlinkSync("images/initrd-6.1", path.join(root, "initrd"));
    fs.symlinkSync(path.join(root, "images"), path.join(root, "current")); // absolute target
    expect(readAll(await openOk(root, "initrd"))).toBe("initrd");
    expect(readAll(await openOk(root, "current/initrd-6.1"))).toBe("initrd");
  });

  test("a symlink pointing outside the root is refused", async () => {
    const { root, outside } = rootWithSibling();
    fs.writeFileSync(path.join(outside, "secret"), "secret");
    fs.symlinkSync(path.join(outside, "secret"), path.join(root, "file-link"));
    fs.symlinkSync("../outside", path.join(root, "dir-link"));
    fs.symlinkSync("/etc/passwd", path.join(root, "passwd"));
    const refused = { ok: false, code: 2, message: "access violation: outside root" } as const;
    expect(await openForRead(root, "file-link")).toEqual(refused);
    expect(await openForRead(root, "dir-link/secret")).toEqual(refused);
    expect(await openForRead(root, "passwd")).toEqual(refused);
  });

  test("a sibling directory sharing the root's name prefix is outside", async () => {
    const { root, sibling } = rootWithSibling();
    fs.writeFileSync(path.join(sibling, "secret"), "secret");
    fs.symlinkSync("../root2/secret", path.join(root, "link"));
    expect(await openForRead(root, "link")).toEqual({ ok: false, code: 2, message: "access violation: outside root" });
  });

  test("'..' smuggled past resolveRequestPath is still confined", async () => {
    const { root, outside } = rootWithSibling();
    fs.writeFileSync(path.join(outside, "secret"), "secret");
    expect(await openForRead(root, "../outside/secret")).toEqual({
      ok: false,
      code: 2,
      message: "access violation: outside root",
    });
  });

  test("a fifo is refused without blocking", () => {
    const root = tempDir();
    expect(Bun.spawnSync(["mkfifo", path.join(root, "fifo")]).exitCode).toBe(0);
    // In a child process: a blocking open would hang this whole test process otherwise.
    const child = runProbe(
      root,
      `import { openForRead } from ${JSON.stringify(storageModule("resolve.ts"))};\n` +
        `console.log(JSON.stringify(await openForRead(process.argv[2], "fifo")));\n`,
      [root],
      { timeoutMs: 5000 },
    );
    expect(child.signalCode).toBeNull(); // not killed by the timeout
    expect(child.stderr).toBe("");
    expect(JSON.parse(child.stdout)).toEqual({ ok: false, code: 2, message: "not a regular file" });
  });

  test("a unix socket is refused", async () => {
    const root = tempDir();
    const sock = path.join(root, "sock");
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(sock, resolve));
    try {
      expect(fs.statSync(sock).isSocket()).toBe(true);
      expect(await openForRead(root, "sock")).toEqual({ ok: false, code: 2, message: "not a regular file" });
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  test("EACCES maps to ERROR 2 'permission denied'", () => {
    const eacces = Object.assign(new Error("EACCES: permission denied, open"), { code: "EACCES" });
    expect(refusalFromFsError(eacces, "open")).toEqual({ ok: false, code: 2, message: "permission denied" });
  });

  test("an unreadable file is ERROR 2 'permission denied'", async () => {
    const root = tempDir();
    fs.chmodSync(root, 0o755);
    fs.writeFileSync(path.join(root, "private"), "private");
    fs.chmodSync(path.join(root, "private"), 0o000);

    if (process.getuid?.() !== 0) {
      expect(await openForRead(root, "private")).toEqual({ ok: false, code: 2, message: "permission denied" });
      return;
    }
    // As root, mode 000 does not stop reads (CAP_DAC_OVERRIDE): say so, then check the refusal
    // from an unprivileged child process (nobody) running the same code.
    expect(readAll(await openOk(root, "private"))).toBe("private");
    const setpriv = Bun.which("setpriv");
    if (setpriv === null) {
      console.warn("running as root without setpriv: the EACCES path is covered by the mapping test only");
      return;
    }
    const child = runProbe(
      root,
      `import { openForRead } from ${JSON.stringify(storageModule("resolve.ts"))};\n` +
        `const r = await openForRead(process.argv[2], "private");\n` +
        `console.log(JSON.stringify(r.ok ? { ok: true } : r));\n`,
      [root],
      { wrapper: [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"] },
    );
    expect(child.stderr).toBe("");
    expect(JSON.parse(child.stdout)).toEqual({ ok: false, code: 2, message: "permission denied" });
  });
});

describe("realRoot", () => {
  test("resolves symlinks and refuses a non-directory", () => {
    const base = tempDir();
    fs.mkdirSync(path.join(base, "real"));
    fs.symlinkSync("real", path.join(base, "link"));
    fs.writeFileSync(path.join(base, "file"), "");
    expect(realRoot(path.join(base, "link"))).toBe(path.join(base, "real"));
    expect(() => realRoot(path.join(base, "file"))).toThrow("not a directory");
    expect(() => realRoot(path.join(base, "missing"))).toThrow("no such directory");
  });
});

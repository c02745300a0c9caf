/**
 * The project's own client, `tftpd get` / `tftpd put`, run as a user runs it (a child process)
 * against the in-process server.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { patternBytes, removeDir, sha256, sha256File, tempDir, writeFile } from "../../helpers/files.ts";
import { tftpd } from "../../helpers/run.ts";
import { recordAfter, startServer, type InProcessServer } from "../../helpers/server.ts";

setDefaultTimeout(60_000);


const stderrLines = (text: string): string[] => text.split("\n").filter((l) => l !== "");

let root: string;
let out: string;
let server: InProcessServer;
const files = new Map<string, string>();

beforeAll(async () => {
  root = tempDir("tftpd-own-root-");
  out = tempDir("tftpd-own-out-");
  for (const size of [0, 511, 512, 513, (2 << 20) + 9]) {
    const bytes = patternBytes(size, 50 + size);
    writeFile(root, `images/f-${size}.bin`, bytes);
    files.set(`f-${size}.bin`, sha256(bytes));
  }
  server = await startServer(root, { write: "create", listen: [{ host: "127.0.0.1", port: 0 }] });
});

afterAll(async () => {
  await server?.stop();
  removeDir(root);
  removeDir(out);
});

describe("tftpd get", () => {
  for (const [size, blksize, windowsize] of [
    [0, null, null],
    [511, null, null],
    [512, 1468, 16],
    [513, 8, 1],
    [(2 << 20) + 9, null, null],
    [(2 << 20) + 9, 1468, 16],
    [(2 << 20) + 9, 8192, 4],
  ] as const) {
    const label = blksize === null ? "no options" : `--blksize ${blksize} --windowsize ${windowsize}`;
    test(`${size} bytes, ${label}, -o FILE`, async () => {
      const dest = join(out, `get-${size}-${blksize}-${windowsize}.bin`);
      const from = server.records.length;
      const extra = blksize === null ? [] : ["--blksize", String(blksize), "--windowsize", String(windowsize)];
      const r = await tftpd(["get", ...extra, "-o", dest, `127.0.0.1:${server.port}`, `images/f-${size}.bin`], { timeoutMs: 30_000 });
      expect(r.stderr).toBe("");
      expect(r.exitCode).toBe(0);
      expect(await sha256File(dest)).toBe(files.get(`f-${size}.bin`)!);
      const record = await recordAfter(server, from, (x) => x.file === `images/f-${size}.bin`);
      expect(record).toMatchObject({ result: "ok", bytes: size, blksize: blksize ?? 512, windowsize: windowsize ?? 1 });
    });
  }

  test("without -o the file is named after the remote basename, in the working directory", async () => {
    const cwd = tempDir("tftpd-own-cwd-");
    try {
      const r = await tftpd(["get", `127.0.0.1:${server.port}`, "images/f-513.bin"], { cwd, timeoutMs: 30_000 });
      expect(r.exitCode).toBe(0);
      expect(await sha256File(join(cwd, "f-513.bin"))).toBe(files.get("f-513.bin")!);
    } finally {
      removeDir(cwd);
    }
  });

  test("IPv6: [::1]:PORT", async () => {
    const v6 = await startServer(root, { listen: [{ host: "::1", port: 0 }] });
    try {
      const dest = join(out, "v6.bin");
      const r = await tftpd(["get", "--blksize", "1468", "--windowsize", "8", "-o", dest, `[::1]:${v6.port}`, `images/f-${(2 << 20) + 9}.bin`], { timeoutMs: 30_000 });
      expect(r.stderr).toBe("");
      expect(r.exitCode).toBe(0);
      expect(await sha256File(dest)).toBe(files.get(`f-${(2 << 20) + 9}.bin`)!);
      const record = await recordAfter(v6, 0, () => true);
      expect(record).toMatchObject({ result: "ok", windowsize: 8, blksize: 1468 });
      expect(record.client).toMatch(/^\[::1\]:\d+$/);
    } finally {
      await v6.stop();
    }
  });

  test("a missing file: exit 1, one stderr line naming the file and TFTP error 1, no local file left", async () => {
    const dir = tempDir("tftpd-own-missing-");
    try {
      const r = await tftpd(["get", "-o", join(dir, "x.bin"), `127.0.0.1:${server.port}`, "images/no-such-file.bin"], { timeoutMs: 30_000 });
      expect(r.exitCode).toBe(1);
      const lines = stderrLines(r.stderr);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain("images/no-such-file.bin");
      expect(lines[0]).toContain("TFTP error 1");
      expect(readdirSync(dir)).toEqual([]); // not even a temporary file
    } finally {
      removeDir(dir);
    }
  });
});

describe("tftpd put", () => {
  for (const [size, blksize, windowsize] of [
    [0, null, null],
    [512, null, null],
    [(1 << 20) + 3, 1468, 16],
  ] as const) {
    const label = blksize === null ? "no options" : `--blksize ${blksize} --windowsize ${windowsize}`;
    test(`${size} bytes, ${label}`, async () => {
      const local = writeFile(out, `local-${size}.bin`, patternBytes(size, 600 + size));
      const remote = `put-${size}-${blksize}.bin`;
      const from = server.records.length;
      const extra = blksize === null ? [] : ["--blksize", String(blksize), "--windowsize", String(windowsize)];
      const r = await tftpd(["put", ...extra, `127.0.0.1:${server.port}`, local, remote], { timeoutMs: 30_000 });
      expect(r.stderr).toBe("");
      expect(r.exitCode).toBe(0);
      expect(await sha256File(join(root, remote))).toBe(await sha256File(local));
      const record = await recordAfter(server, from, (x) => x.file === remote);
      expect(record).toMatchObject({ direction: "write", result: "ok", bytes: size, blksize: blksize ?? 512, windowsize: windowsize ?? 1 });
    });
  }

  test("REMOTE defaults to the basename of LOCAL", async () => {
    const local = writeFile(out, "sub/named-after-local.bin", patternBytes(2000, 9));
    const r = await tftpd(["put", `127.0.0.1:${server.port}`, local], { timeoutMs: 30_000 });
    expect(r.exitCode).toBe(0);
    expect(await sha256File(join(root, "named-after-local.bin"))).toBe(await sha256File(local));
  });

  test("IPv6: [::1]:PORT", async () => {
    const v6 = await startServer(root, { write: "create", listen: [{ host: "::1", port: 0 }] });
    try {
      const local = writeFile(out, "v6-up.bin", patternBytes(70_000, 61));
      const r = await tftpd(["put", `[::1]:${v6.port}`, local, "v6-up.bin"], { timeoutMs: 30_000 });
      expect(r.exitCode).toBe(0);
      expect(await sha256File(join(root, "v6-up.bin"))).toBe(await sha256File(local));
    } finally {
      await v6.stop();
    }
  });

  test("a refused upload (write off): exit 1, one stderr line with TFTP error 2, nothing stored", async () => {
    const off = await startServer(root, { write: "off" });
    try {
      const local = writeFile(out, "refused.bin", patternBytes(1000, 62));
      const r = await tftpd(["put", `127.0.0.1:${off.port}`, local, "refused.bin"], { timeoutMs: 30_000 });
      expect(r.exitCode).toBe(1);
      const lines = stderrLines(r.stderr);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain("refused.bin");
      expect(lines[0]).toContain("TFTP error 2");
      expect(existsSync(join(root, "refused.bin"))).toBe(false);
    } finally {
      await off.stop();
    }
  });
});

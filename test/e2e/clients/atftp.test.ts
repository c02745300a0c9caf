/**
 * The atftp client against the in-process server: RFC 7440 windowed downloads and uploads
 * (windowsize 16, blksize 1468), window-edge sizes, and a missing file.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { patternBytes, removeDir, sha256, sha256File, tempDir, writeFile } from "../../helpers/files.ts";
import { run } from "../../helpers/run.ts";
import { recordAfter, startServer, type InProcessServer } from "../../helpers/server.ts";

setDefaultTimeout(60_000);


const WINDOWED = ["--option", "windowsize 16", "--option", "blksize 1468"];

function atftp(port: number, args: string[]) {
  return run(["atftp", ...args, "127.0.0.1", String(port)], { timeoutMs: 30_000 });
}

let root: string;
let out: string;
let server: InProcessServer;

beforeAll(async () => {
  root = tempDir("tftpd-atftp-root-");
  out = tempDir("tftpd-atftp-out-");
  server = await startServer(root, { write: "create" });
});

afterAll(async () => {
  await server?.stop();
  removeDir(root);
  removeDir(out);
});

// 1468 × 16 = 23488: one full window, a window and one byte, a window less one block, etc.
const SIZES = [0, 1, 1467, 1468, 1469, 23488, 23489, 23488 - 1468, 5 * (1 << 20) + 11];

describe("atftp get, windowsize 16 / blksize 1468", () => {
  for (const size of SIZES) {
    test(`${size} bytes`, async () => {
      const bytes = patternBytes(size, 4000 + size);
      writeFile(root, `w-${size}.bin`, bytes);
      const dest = join(out, `w-${size}.bin`);
      const from = server.records.length;
      const r = await atftp(server.port, ["--get", "-r", `w-${size}.bin`, "-l", dest, ...WINDOWED]);
      expect(r.exitCode).toBe(0);
      expect(await sha256File(dest)).toBe(sha256(bytes));
      const record = await recordAfter(server, from, (x) => x.file === `w-${size}.bin`);
      expect(record).toMatchObject({ direction: "read", result: "ok", bytes: size, blksize: 1468, windowsize: 16 });
      expect(record.options).toEqual(expect.arrayContaining(["blksize", "windowsize"]));
    });
  }

  test("without options atftp falls back to lock-step 512", async () => {
    const bytes = patternBytes(70_000, 5);
    writeFile(root, "plain.bin", bytes);
    const dest = join(out, "plain.bin");
    const from = server.records.length;
    const r = await atftp(server.port, ["--get", "-r", "plain.bin", "-l", dest]);
    expect(r.exitCode).toBe(0);
    expect(await sha256File(dest)).toBe(sha256(bytes));
    const record = await recordAfter(server, from, (x) => x.file === "plain.bin");
    expect(record).toMatchObject({ result: "ok", blksize: 512, windowsize: 1 });
  });
});

describe("atftp put", () => {
  for (const [size, windowed] of [[0, true], [23489, true], [3 * (1 << 20) + 5, true], [100_000, false]] as const) {
    test(`${size} bytes${windowed ? ", windowsize 16 / blksize 1468" : ", no options"}`, async () => {
      const local = writeFile(out, `put-${size}.bin`, patternBytes(size, 77 + size));
      const from = server.records.length;
      const r = await atftp(server.port, ["--put", "-l", local, "-r", `put-${size}.bin`, ...(windowed ? WINDOWED : [])]);
      expect(r.exitCode).toBe(0);
      expect(await sha256File(join(root, `put-${size}.bin`))).toBe(await sha256File(local));
      const record = await recordAfter(server, from, (x) => x.file === `put-${size}.bin`);
      expect(record).toMatchObject({ direction: "write", result: "ok", bytes: size });
      if (windowed) expect(record).toMatchObject({ blksize: 1468, windowsize: 16 });
    });
  }
});

test("a missing file: atftp fails and reports the server's error", async () => {
  const dest = join(out, "missing.bin");
  const r = await atftp(server.port, ["--get", "-r", "missing.bin", "-l", dest, ...WINDOWED]);
  expect(r.exitCode).not.toBe(0);
  expect(`${r.stdout}${r.stderr}`).toMatch(/not found|error/i);
  expect(existsSync(join(root, "missing.bin"))).toBe(false);
});

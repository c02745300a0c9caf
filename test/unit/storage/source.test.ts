import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { openForRead } from "../../../src/storage/resolve.ts";
import { memorySource, type FileSource } from "../../../src/storage/source.ts";
import { cleanupTempDirs, tempDir } from "./helpers.ts";

afterEach(cleanupTempDirs);

async function fileSource(content: string): Promise<{ source: FileSource; file: string }> {
  const root = tempDir();
  const file = path.join(root, "f");
  fs.writeFileSync(file, content);
  const r = await openForRead(root, "f");
  if (!r.ok) throw new Error(r.message);
  return { source: r.source, file };
}

const text = (bytes: Uint8Array): string => new TextDecoder().decode(bytes);

describe.each([
  ["fd", async (content: string) => (await fileSource(content)).source],
  ["memory", async (content: string) => memorySource(new TextEncoder().encode(content))],
] as const)("%s source", (_kind, make) => {
  test("positional reads fill the caller's buffer at an offset", async () => {
    const source = await make("0123456789");
    const buf = new Uint8Array(8).fill(0x2e); // "."
    expect(source.read(3, buf, 2, 4)).toBe(4);
    expect(text(buf)).toBe("..3456..");
    source.close();
  });

  test("a read near the end is short, and past the end is 0", async () => {
    const source = await make("0123456789");
    const buf = new Uint8Array(8);
    expect(source.read(7, buf, 0, 8)).toBe(3);
    expect(text(buf.subarray(0, 3))).toBe("789");
    expect(source.read(10, buf, 0, 8)).toBe(0);
    expect(source.read(1000, buf, 0, 8)).toBe(0);
    source.close();
  });

  test("bad arguments throw; read after close throws; close is idempotent", async () => {
    const source = await make("abc");
    const buf = new Uint8Array(4);
    expect(() => source.read(-1, buf, 0, 1)).toThrow(RangeError);
    expect(() => source.read(0, buf, 2, 3)).toThrow(RangeError);
    source.close();
    source.close();
    expect(() => source.read(0, buf, 0, 1)).toThrow("closed");
  });
});

test("an fd source keeps the size it was opened with, and stops reading once the file changed (it grew)", async () => {
  const { source, file } = await fileSource("abc");
  const buf = new Uint8Array(16);
  expect(source.read(0, buf, 0, 16)).toBe(3);
  expect(source.read(3, buf, 0, 16)).toBe(0);
  // appended to, or truncated and being written again: the bytes read now may be of another version
  fs.appendFileSync(file, "def");
  expect(source.size).toBe(3);
  expect(() => source.read(0, buf, 0, 16)).toThrow("file changed during transfer");
  source.close();
});

test("an fd source serves the opened file even after it is replaced", async () => {
  const { source, file } = await fileSource("old");
  fs.writeFileSync(`${file}.new`, "new!");
  fs.renameSync(`${file}.new`, file);
  const buf = new Uint8Array(3);
  expect(source.read(0, buf, 0, 3)).toBe(3);
  expect(text(buf)).toBe("old");
  source.close();
});

test("a memory source has a synthetic identity", () => {
  const source = memorySource(new Uint8Array(5), { ino: 7 });
  expect(source.identity).toEqual({ dev: 0, ino: 7, size: 5, mtimeMs: 0, ctimeMs: 0 });
});

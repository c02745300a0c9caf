/**
 * The two 100 MiB transfers: lock-step blksize 512 with curl (204,800 blocks, so the 16-bit
 * block number rolls over three times), and blksize 1468 / windowsize 16 with atftp. The file is
 * generated at test time in a temp dir and compared by sha256.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { patternBytes, removeDir, sha256, sha256File, tempDir, writeFile } from "../../helpers/files.ts";
import { run } from "../../helpers/run.ts";
import { recordAfter, startServer, type InProcessServer } from "../../helpers/server.ts";

const SIZE = 100 * 1024 * 1024;
const TIMEOUT_MS = 240_000;


let root: string;
let out: string;
let server: InProcessServer;
let digest: string;

beforeAll(async () => {
  root = tempDir("tftpd-big-root-");
  out = tempDir("tftpd-big-out-");
  const bytes = patternBytes(SIZE, 100);
  digest = sha256(bytes);
  writeFile(root, "initrd-100M.img", bytes);
  server = await startServer(root, { timeoutMs: 1000 });
});

afterAll(async () => {
  await server?.stop();
  removeDir(root);
  removeDir(out);
});

test("100 MiB, blksize 512 lock-step (curl): block numbers roll over, file byte-exact", async () => {
  const dest = join(out, "curl-512.img");
  const from = server.records.length;
  const started = performance.now();
  const r = await run(["curl", "-sS", "--max-time", String(TIMEOUT_MS / 1000 - 10), "-o", dest, `tftp://127.0.0.1:${server.port}/initrd-100M.img`], {
    timeoutMs: TIMEOUT_MS - 5_000,
  });
  const seconds = (performance.now() - started) / 1000;
  console.log(`100 MiB blksize 512 lock-step (curl): ${seconds.toFixed(1)} s, ${((SIZE * 8) / seconds / 1e6).toFixed(0)} Mbit/s`);
  expect(r.stderr).toBe("");
  expect(r.exitCode).toBe(0);
  expect(statSync(dest).size).toBe(SIZE);
  expect(await sha256File(dest)).toBe(digest);
  rmSync(dest);
  const record = await recordAfter(server, from, (x) => x.file === "initrd-100M.img");
  expect(record).toMatchObject({ result: "ok", bytes: SIZE, blksize: 512, windowsize: 1 });
  // 204,801 blocks (the last one empty): every byte acknowledged means the wire block number
  // went 65535 → 0 three times and both sides followed it.
}, TIMEOUT_MS);

test("100 MiB, blksize 1468 windowsize 16 (atftp): file byte-exact", async () => {
  const dest = join(out, "atftp-1468x16.img");
  const from = server.records.length;
  const started = performance.now();
  const r = await run(
    ["atftp", "--get", "-r", "initrd-100M.img", "-l", dest, "--option", "blksize 1468", "--option", "windowsize 16", "127.0.0.1", String(server.port)],
    { timeoutMs: TIMEOUT_MS - 5_000 },
  );
  const seconds = (performance.now() - started) / 1000;
  console.log(`100 MiB blksize 1468 windowsize 16 (atftp): ${seconds.toFixed(1)} s, ${((SIZE * 8) / seconds / 1e6).toFixed(0)} Mbit/s`);
  expect(r.exitCode).toBe(0);
  expect(statSync(dest).size).toBe(SIZE);
  expect(await sha256File(dest)).toBe(digest);
  rmSync(dest);
  const record = await recordAfter(server, from, (x) => x.file === "initrd-100M.img");
  expect(record).toMatchObject({ result: "ok", bytes: SIZE, blksize: 1468, windowsize: 16 });
}, TIMEOUT_MS);

/**
 * 50 transfers at once against one in-process server: curl (lock-step, blksize 512 and 1468)
 * and atftp (windowsize 16) fetching 50 different files. Every file byte-exact, 50 "ok" records.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { patternBytes, removeDir, sha256, sha256File, tempDir, writeFile } from "../../helpers/files.ts";
import { run } from "../../helpers/run.ts";
import { startServer, type InProcessServer } from "../../helpers/server.ts";

const N = 50;

let root: string;
let out: string;
let server: InProcessServer;
const expected: string[] = [];

beforeAll(async () => {
  root = tempDir("tftpd-conc-root-");
  out = tempDir("tftpd-conc-out-");
  for (let i = 0; i < N; i++) {
    // 200 KiB .. ~2.1 MiB, odd sizes so no two files end on the same block boundary
    const bytes = patternBytes(200 * 1024 + i * 40_000 + i * 7, 10_000 + i);
    writeFile(root, `pool/file-${i}.bin`, bytes);
    expected.push(sha256(bytes));
  }
  server = await startServer(root, { timeoutMs: 1000 });
});

afterAll(async () => {
  await server?.stop();
  removeDir(root);
  removeDir(out);
});

function client(i: number, port: number): string[] {
  const remote = `pool/file-${i}.bin`;
  const dest = join(out, `file-${i}.bin`);
  switch (i % 3) {
    case 0:
      return ["curl", "-sS", "--max-time", "60", "-o", dest, `tftp://127.0.0.1:${port}/${remote}`];
    case 1:
      return ["curl", "-sS", "--max-time", "60", "--tftp-blksize", "1468", "-o", dest, `tftp://127.0.0.1:${port}/${remote}`];
    default:
      return ["atftp", "--get", "-r", remote, "-l", dest, "--option", "windowsize 16", "--option", "blksize 1468", "127.0.0.1", String(port)];
  }
}

test(`${N} concurrent transfers (curl and windowed atftp) are all byte-exact`, async () => {
  const started = performance.now();
  const results = await Promise.all(Array.from({ length: N }, (_, i) => run(client(i, server.port), { timeoutMs: 90_000 })));
  const elapsed = performance.now() - started;
  for (const [i, r] of results.entries()) {
    expect({ i, exitCode: r.exitCode, stderr: r.stderr.includes("rror") ? r.stderr : "" }).toEqual({ i, exitCode: 0, stderr: "" });
  }
  const hashes = await Promise.all(Array.from({ length: N }, (_, i) => sha256File(join(out, `file-${i}.bin`))));
  expect(hashes).toEqual(expected);

  const deadline = Date.now() + 10_000;
  while (server.records.length < N && Date.now() < deadline) await Bun.sleep(10);
  expect(server.records.length).toBe(N);
  expect(server.records.filter((r) => r.result === "ok").length).toBe(N);
  expect(new Set(server.records.map((r) => r.file)).size).toBe(N);
  const atftpCount = Array.from({ length: N }, (_, i) => i).filter((i) => i % 3 === 2).length;
  expect(server.records.filter((r) => r.windowsize === 16 && r.blksize === 1468).length).toBe(atftpCount);
  console.log(`${N} concurrent transfers: ${elapsed.toFixed(0)} ms`);
}, 120_000);

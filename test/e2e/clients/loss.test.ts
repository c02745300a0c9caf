/**
 * Loss with real clients against the real CLI server: TFTPD_TEST_DROP makes the server lose
 * chosen DATA packets; the clients must still get every byte and the transfer log line must
 * count the retransmissions.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { patternBytes, removeDir, sha256, sha256File, tempDir, writeFile } from "../../helpers/files.ts";
import { run } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

let root: string;
let out: string;
let digest: string;
const SIZE = 300_000;
const servers: ChildServer[] = [];

beforeAll(() => {
  root = tempDir("tftpd-loss-root-");
  out = tempDir("tftpd-loss-out-");
  const bytes = patternBytes(SIZE, 31);
  digest = sha256(bytes);
  writeFile(root, "kernel.img", bytes);
});

afterAll(async () => {
  for (const s of servers) await s.stop();
  removeDir(root);
  removeDir(out);
});

async function lossyServer(drop: string): Promise<ChildServer> {
  const s = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--timeout", "1", "--retries", "5"], { env: { TFTPD_TEST_DROP: drop } });
  servers.push(s);
  return s;
}

const isTransfer = (l: Record<string, unknown>): boolean => l.msg === "transfer";

test("curl (lock-step 512) gets the file byte-exact although DATA 5 and 9 are lost; the log counts ≥ 2 retransmits", async () => {
  const s = await lossyServer("out:data:5,out:data:9");
  expect(s.logs.some((l) => l.msg === "test loss injection is on")).toBe(true);
  const dest = join(out, "curl.img");
  // --connect-timeout 3 makes curl ask for a 1 s retransmit timeout (default: 6 s).
  const r = await run(["curl", "-sS", "--connect-timeout", "3", "--max-time", "40", "-o", dest, `tftp://127.0.0.1:${s.port}/kernel.img`], { timeoutMs: 45_000 });
  expect(r.stderr).toBe("");
  expect(r.exitCode).toBe(0);
  expect(await sha256File(dest)).toBe(digest);
  const line = await s.waitForLog(isTransfer, 15_000);
  expect(line).toMatchObject({ file: "kernel.img", direction: "read", result: "ok", bytes: SIZE, blksize: 512 });
  expect(line.retransmits as number).toBeGreaterThanOrEqual(2);
}, 60_000);

test("atftp (windowsize 16, blksize 1468) gets the file byte-exact although DATA 5 and 20 are lost", async () => {
  const s = await lossyServer("out:data:5,out:data:20");
  const dest = join(out, "atftp.img");
  const r = await run(
    ["atftp", "--get", "-r", "kernel.img", "-l", dest, "--option", "windowsize 16", "--option", "blksize 1468", "--option", "timeout 1", "127.0.0.1", String(s.port)],
    { timeoutMs: 45_000 },
  );
  expect(r.exitCode).toBe(0);
  expect(await sha256File(dest)).toBe(digest);
  const line = await s.waitForLog(isTransfer, 15_000);
  expect(line).toMatchObject({ file: "kernel.img", result: "ok", bytes: SIZE, blksize: 1468, windowsize: 16 });
  expect(line.retransmits as number).toBeGreaterThanOrEqual(2);
}, 60_000);

/**
 * Crash-only uploads, with the real server as a child process and a real client (curl):
 * kill -9 mid-upload leaves nothing under the final name; the restart removes the temporary
 * file and says so; the same upload then succeeds. And a server starting on a root another
 * live server is uploading into (a restart that overlaps the old process) leaves that upload alone.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { isUploadTempName } from "../../../src/storage/upload.ts";
import { patternBytes, removeDir, sha256, sha256File, tempDir } from "../../helpers/files.ts";
import { data, peerTracker, waitFor, wrq } from "../../helpers/raw.ts";
import { run } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

const peers = peerTracker();
const servers: ChildServer[] = [];
const dirs: string[] = [];
afterEach(async () => {
  peers.closeAll();
  for (const s of servers.splice(0)) await s.stop("SIGKILL");
  for (const d of dirs.splice(0)) removeDir(d);
});

const SIZE = 20 << 20;

function dir(): string {
  const d = tempDir();
  dirs.push(d);
  return d;
}

async function serve(root: string, extra: string[] = []): Promise<ChildServer> {
  const s = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--write", "create", "--no-tune", ...extra]);
  servers.push(s);
  return s;
}

const tempFiles = (root: string): string[] => readdirSync(root).filter(isUploadTempName);

describe("kill -9 during an upload", () => {
  test("a restart removes the temporary file, logs it, and the same upload then succeeds byte-exact", async () => {
    const root = dir();
    const local = join(dir(), "big.img");
    const content = patternBytes(SIZE, 45);
    writeFileSync(local, content);

    const first = await serve(root);
    const curl = Bun.spawn(["curl", "-sS", "--max-time", "30", "-T", local, `tftp://127.0.0.1:${first.port}/big.img`], {
      stdout: "ignore",
      stderr: "pipe",
    });
    try {
      // mid-upload: the temporary file holds some, not all, of the bytes
      let temp = "";
      await waitFor(
        () => {
          temp = tempFiles(root)[0] ?? "";
          return temp !== "" && (statSync(join(root, temp), { throwIfNoEntry: false })?.size ?? 0) >= 2 << 20;
        },
        15_000,
        "2 MiB in the temporary file",
      );
      first.proc.kill("SIGKILL");
      expect(await first.proc.exited).not.toBe(0);
    } finally {
      curl.kill("SIGKILL");
      await curl.exited;
    }

    expect(readdirSync(root)).toHaveLength(1);
    const [left] = tempFiles(root);
    expect(left).toBeDefined();
    expect(statSync(join(root, left!)).size).toBeLessThan(SIZE);

    const second = await serve(root);
    const line = await second.waitForLog((l) => l.msg === "removed temporary files of interrupted uploads");
    expect(line).toMatchObject({ removed: 1, in_use: 0, failed: 0 });
    expect(readdirSync(root)).toEqual([]);

    const again = await run(["curl", "-sS", "--max-time", "60", "--tftp-blksize", "1468", "-T", local, `tftp://127.0.0.1:${second.port}/big.img`], {
      timeoutMs: 70_000,
    });
    expect(again.stderr).toBe("");
    expect(again.exitCode).toBe(0);
    expect(readdirSync(root)).toEqual(["big.img"]);
    expect(await sha256File(join(root, "big.img"))).toBe(sha256(content));
  }, 60_000);
});

describe("two servers on one root", () => {
  test("a server starting while another is mid-upload leaves that upload alone; it then publishes", async () => {
    const root = dir();
    const content = patternBytes(3000, 46);
    const live = await serve(root);

    // the upload on the live server, paused after 2 blocks (waiting for its client)
    const peer = await peers.open();
    peer.send(wrq("shared.bin"), live.port, "127.0.0.1");
    const a0 = await peer.nextAck(0);
    for (let b = 1; b <= 2; b++) {
      peer.send(data(b, content.subarray((b - 1) * 512, b * 512)), a0.port, "127.0.0.1");
      await peer.nextAck(b);
    }
    const [temp] = tempFiles(root);
    expect(temp).toBeDefined();

    const starting = await serve(root, ["--log-level", "debug"]);
    const line = await starting.waitForLog((l) => l.msg === "no temporary files of interrupted uploads to remove");
    expect(line).toMatchObject({ removed: 0, in_use: 1, failed: 0 });
    expect(tempFiles(root)).toEqual([temp!]);

    for (let b = 3; b <= 6; b++) {
      peer.send(data(b, content.subarray((b - 1) * 512, b * 512)), a0.port, "127.0.0.1");
      await peer.nextAck(b);
    }
    expect(readdirSync(root)).toEqual(["shared.bin"]);
    expect(await sha256File(join(root, "shared.bin"))).toBe(sha256(content));
  });
});

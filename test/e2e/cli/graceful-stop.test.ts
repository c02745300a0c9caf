/** SIGTERM: the server stops taking requests, lets running transfers finish, then exits 0. */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { ack, concat, peerTracker, rrq } from "../../helpers/raw.ts";
import { spawnServer } from "../../helpers/server.ts";

let root: string;
const peers = peerTracker();
const content = patternBytes(512 * 30 + 100, 4);

beforeAll(() => {
  root = tempDir();
  writeFile(root, "f.bin", content);
});
afterAll(() => {
  peers.closeAll();
  removeDir(root);
});

test("a transfer running at SIGTERM completes; a new request is not taken; exit 0", async () => {
  const server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0"]);
  const peer = await peers.open();
  peer.send(rrq("f.bin"), server.port);
  const chunks: Uint8Array[] = [];
  const first = await peer.nextData(1);
  chunks.push(first.packet.data);
  server.proc.kill("SIGTERM");
  await server.waitForLog((l) => l.msg === "stopping");
  // a newcomer is not served any more
  const late = await peers.open();
  late.send(rrq("f.bin"), server.port);
  // the running transfer goes on to the end
  peer.send(ack(1), first.port, first.address);
  for (let block = 2; ; block++) {
    const got = await peer.nextData(block);
    chunks.push(got.packet.data);
    peer.send(ack(block), got.port, got.address);
    if (got.packet.data.length < 512) break;
  }
  expect(sha256(concat(chunks))).toBe(sha256(content));
  expect(await server.proc.exited).toBe(0);
  expect((await late.collect(100)).length).toBe(0);
});

/**
 * A large file's first transfer starts from the open file while the cached copy is made and
 * moves onto the copy when it is ready — also inside a worker thread, which maps the copy when
 * the main thread announces it. Proof: once the copy exists, the file on disk is emptied, and
 * the transfer still delivers every original byte.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { truncateSync } from "node:fs";
import { join } from "node:path";
import { WAIT_FOR_FILL_MAX_BYTES } from "../../../src/storage/cache.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { ack, concat, peerTracker, rrq } from "../../helpers/raw.ts";
import { startServer, type InProcessServer } from "../../helpers/server.ts";

const content = patternBytes(WAIT_FOR_FILL_MAX_BYTES + 3 * 8192 + 77, 11);
let root: string;
const peers = peerTracker();

beforeAll(() => {
  root = tempDir();
});
afterAll(() => {
  peers.closeAll();
  removeDir(root);
});

for (const workers of [1, 2]) {
  test(`workers ${workers}: the first transfer of a large file moves onto the cached copy`, async () => {
    writeFile(root, "initrd", content);
    const server: InProcessServer = await startServer(root, { workers, cacheBytes: 256 << 20 });
    try {
      const peer = await peers.open();
      peer.send(rrq("initrd", "octet", [["blksize", "8192"]]), server.port);
      const oack = await peer.nextOack();
      const tid = { port: oack.port, address: oack.address };
      peer.send(ack(0), tid.port, tid.address);
      const chunks: Uint8Array[] = [];
      // Take two blocks, then wait for the copy to exist before going on.
      for (let block = 1; block <= 2; block++) {
        const got = await peer.nextData(block);
        chunks.push(got.packet.data);
        if (block === 1) peer.send(ack(1), tid.port, tid.address);
      }
      const deadline = performance.now() + 5000;
      while (server.server.cache.stats.bytes === 0 || (await copyReady(server)) === false) {
        if (performance.now() > deadline) throw new Error("the copy was never made");
        await Bun.sleep(10);
      }
      await Bun.sleep(50); // the worker gets the announcement
      truncateSync(join(root, "initrd"), 0);
      peer.send(ack(2), tid.port, tid.address);
      for (let block = 3; ; block++) {
        const got = await peer.nextData(block & 0xffff);
        chunks.push(got.packet.data);
        peer.send(ack(block & 0xffff), tid.port, tid.address);
        if (got.packet.data.length < 8192) break;
      }
      expect(sha256(concat(chunks))).toBe(sha256(content));
    } finally {
      await server.stop();
    }
  });
}

/** The copy exists once a new request for the same version is a cache hit. */
async function copyReady(server: InProcessServer): Promise<boolean> {
  return server.server.cache.stats.entries > 0 && !(await isFilling(server));
}

async function isFilling(server: InProcessServer): Promise<boolean> {
  const before = server.server.cache.stats.hits;
  const peer = await peers.open();
  try {
    peer.send(rrq("initrd", "octet", [["blksize", "8192"]]), server.port);
    const oack = await peer.nextOack();
    peer.send(ack(0), oack.port, oack.address);
    await peer.nextData(1);
    peer.send(new Uint8Array([0, 5, 0, 0, 0]), oack.port, oack.address); // ERROR: stop
  } finally {
    peer.close();
  }
  return server.server.cache.stats.hits === before;
}

/**
 * A client port reused for a new request (a machine that rebooted mid-transfer, a ROM with a
 * fixed source port, a client whose last ACK was lost and whose port the OS handed out again)
 * must start a new transfer at once, not be taken for a duplicate of the stale one; a request
 * repeated quickly is still a duplicate (iPXE resends an unanswered request).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Opcode } from "../../../src/protocol/packet.ts";
import { patternBytes, removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { ack, peerTracker, rrq } from "../../helpers/raw.ts";
import { startServer } from "../../helpers/server.ts";

let root: string;
const peers = peerTracker();

beforeAll(() => {
  root = tempDir();
  writeFile(root, "old.bin", patternBytes(512 * 50, 1));
  writeFile(root, "new.bin", patternBytes(700, 2));
});
afterAll(() => {
  peers.closeAll();
  removeDir(root);
});

const modes = [
  { workers: 1, transferSockets: "shared" as const },
  { workers: 1, transferSockets: "per-transfer" as const },
  { workers: 2, transferSockets: "shared" as const },
];

for (const mode of modes) {
  test(`workers ${mode.workers}, ${mode.transferSockets}: a new request from a stale transfer's port starts a new transfer`, async () => {
    const server = await startServer(root, { ...mode, timeoutMs: 300, retries: 10 });
    try {
      const peer = await peers.open();
      peer.send(rrq("old.bin"), server.port);
      const d1 = await peer.nextData(1);
      peer.send(ack(1), d1.port, d1.address);
      await peer.nextData(2);
      // The client "reboots": it never answers again, and asks for another file from the same port.
      await Bun.sleep(350);
      await peer.collect(20); // drop the stale retransmissions
      peer.send(rrq("new.bin"), server.port);
      // The answer is DATA 1 of new.bin (700 bytes: a full block), not the stale transfer's block.
      let first = await peer.next(2000);
      while (first.packet?.op === Opcode.DATA && first.packet.block !== 1) first = await peer.next(2000);
      expect(first.packet?.op).toBe(Opcode.DATA);
      expect(first.packet?.op === Opcode.DATA && first.packet.data.length).toBe(512);
      peer.send(ack(1), first.port, first.address);
      const second = await peer.nextData(2);
      expect(second.packet.data.length).toBe(188);
      peer.send(ack(2), second.port, second.address);
      const deadline = performance.now() + 3000;
      while (server.records.length < 2 && performance.now() < deadline) await Bun.sleep(20);
      const stale = server.records.find((r) => r.file === "old.bin");
      const fresh = server.records.find((r) => r.file === "new.bin");
      // not a failure: no ERROR was sent (it would have reached the new session)
      expect(stale?.result).toBe("superseded");
      expect(stale?.error).toBeUndefined();
      expect(fresh?.result).toBe("ok");
    } finally {
      await server.stop();
    }
  });
}

test("a request repeated within the timeout is a duplicate: one transfer, one answer", async () => {
  const server = await startServer(root, { timeoutMs: 1000 });
  try {
    const peer = await peers.open();
    for (let i = 0; i < 3; i++) peer.send(rrq("new.bin"), server.port);
    const replies = await peer.collect(150);
    expect(replies.filter((r) => r.packet?.op === Opcode.DATA && r.packet.block === 1)).toHaveLength(1);
  } finally {
    await server.stop();
  }
});

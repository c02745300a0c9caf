/**
 * Clients that go away mid-transfer (their port closed: each datagram the server sends there
 * comes back as an ICMP port unreachable) must not cost the clients sharing a transfer socket
 * their datagrams. The pending ICMP error surfaces on the socket's next send: sendmmsg stops
 * there, and whatever else the batch held — other clients' DATA — would be lost unless sent
 * again.
 */
import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { patternBytes, removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { ack, peerTracker, recordWhere, rrq } from "../../helpers/raw.ts";
import { startServer } from "../../helpers/server.ts";

setDefaultTimeout(20_000);

const peers = peerTracker();
const FILE = patternBytes(512 * 300 + 7, 51);
let root: string;
beforeAll(() => {
  root = tempDir();
  writeFile(root, "f.bin", FILE);
});
afterAll(() => {
  peers.closeAll();
  removeDir(root);
});

test("a vanished client's retransmission and a live client's leave in one batch: the live one still arrives", async () => {
  const server = await startServer(root, { transferSockets: "shared", timeoutMs: 60, retries: 4 });
  try {
    const gone = await peers.open();
    const live = await peers.open();
    gone.send(rrq("f.bin"), server.port, "127.0.0.1");
    live.send(rrq("f.bin"), server.port, "127.0.0.1");
    const [goneFirst, liveFirst] = [await gone.nextData(1), await live.nextData(1)];
    // both clients answer in the same moment (a first answer starts the retransmit timer), so
    // their timers fire in the same turn of the event loop and their DATA leave in one
    // sendmmsg, the vanished client's first
    gone.send(ack(1), goneFirst.port, "127.0.0.1");
    live.send(ack(1), liveFirst.port, "127.0.0.1");
    await gone.nextData(2);
    gone.close();
    // the live client never ACKs block 2: every retransmission of DATA 2 must reach it. On the
    // shared port the first two come on the timer, in batches with the vanished client's (whose
    // port answers with an ICMP error that the socket reports on a later send): the resends its
    // request and first ACK earned (RetransmitPolicy.clientPaced); each further one follows the
    // live client's repeated ACK 1
    const copies = [await live.nextData(2), await live.nextData(2, 500), await live.nextData(2, 500)];
    for (let repeat = 0; repeat < 3; repeat++) {
      live.send(ack(1), liveFirst.port, "127.0.0.1");
      copies.push(await live.nextData(2, 500));
    }
    const record = await recordWhere(server, (r) => r.client === `127.0.0.1:${live.port}`);
    expect(record.result).toBe("timeout");
    expect(record.retransmits).toBe(5);
    expect(copies).toHaveLength(1 + record.retransmits);
  } finally {
    await server.stop();
  }
});

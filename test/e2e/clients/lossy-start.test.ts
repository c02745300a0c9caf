/**
 * A lossy network with a server that never resends a first packet on its own: a fifth of the
 * datagrams lost each way, requests and first answers included. A client that repeats its
 * request (and its first ACK) still completes every transfer, byte-exact: its repeats are what
 * recover the first packet now. The server gives up on a transfer only once its client has
 * been silent for the whole schedule, so no streak of bad luck ends one whose client is there.
 */
import { afterAll, afterEach, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import type { BenchResult } from "../../../src/bench/tally.ts";
import { LossPlan } from "../../../src/server/loss.ts";
import type { ServerOptions } from "../../../src/server/server.ts";
import { patternBytes, removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { tftpd } from "../../helpers/run.ts";
import { startServer, type InProcessServer } from "../../helpers/server.ts";

setDefaultTimeout(60_000);

const FILE = patternBytes(8 * 1024, 81);
let root: string;
let local: string;
const servers: InProcessServer[] = [];

beforeAll(() => {
  root = tempDir();
  local = tempDir("tftpd-lossy-local-");
  writeFile(root, "boot.img", FILE);
  writeFile(local, "boot.img", FILE);
});
afterEach(async () => {
  for (const s of servers.splice(0)) await s.stop();
});
afterAll(() => {
  removeDir(root);
  removeDir(local);
});

const modes: [string, Partial<ServerOptions>][] = [
  ["shared sockets", { transferSockets: "shared", workers: 1 }],
  ["per-transfer sockets, 2 workers", { transferSockets: "per-transfer", workers: 2 }],
];

for (const [label, mode] of modes) {
  test(`${label}: 20 % loss each way, 200 downloads by a client that repeats its request and its ACKs: all complete byte-exact`, async () => {
    // The server's timeout (1 s), and 8 retries: its patience is 9 s of silence from the client.
    // With 5 (6 s), a client repeating once a second through 20 % loss stays unheard for the
    // whole schedule at 0.2^6 per stall: over the ~600 stalls of 200 transfers, a few runs in a
    // hundred lose one transfer to bad luck, which is the schedule working, not a fault. At
    // 0.2^9 that is a few in ten thousand. The listener's requests are lost too.
    const server = await startServer(root, { ...mode, loss: LossPlan.parse("in:any%20,out:any%20,seed=7"), timeoutMs: 1000, retries: 8 });
    servers.push(server);
    const r = await tftpd(
      [
        "bench", `127.0.0.1:${server.port}`, "--concurrency", "50", "--total", "200", "--file", "boot.img",
        "--blksize", "1468", "--timeout", "1", "--retries", "12", "--no-backoff", "--verify", join(local, "boot.img"), "--json",
      ],
      { timeoutMs: 55_000 },
    );
    expect(r.timedOut).toBe(false);
    const result = JSON.parse(r.stdout) as BenchResult;
    expect(result.requested).toBe(200);
    expect(result.failures).toEqual({});
    expect(result.completed).toBe(200);
    // the server ended nothing with an ERROR to a client that had not answered yet
    expect(server.records.filter((rec) => rec.result === "dropped")).toEqual([]);
  });
}

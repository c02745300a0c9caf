/**
 * Garbage at the listen port is answered at a bounded rate: a flood of datagrams that are no
 * request (their sources may be forged) gets a bounded number of ERRORs back, so the listener
 * reflects no flood; the rest are dropped and counted. Valid requests are still served during
 * and after the flood.
 */
import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { parsePrometheus } from "../../../src/ops/summary.ts";
import { Opcode } from "../../../src/protocol/packet.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { download, peerTracker, rawPacket } from "../../helpers/raw.ts";
import { spawnServer, startServer } from "../../helpers/server.ts";

setDefaultTimeout(20_000);

const peers = peerTracker();
const FILE = patternBytes(5000, 41);
let root: string;
beforeAll(() => {
  root = tempDir();
  writeFile(root, "ok.bin", FILE);
});
afterAll(() => {
  peers.closeAll();
  removeDir(root);
});

/** Sends `count` datagrams that are no request (unknown opcode, a DATA, an ACK) to `port`. */
function flood(peer: { send(b: Uint8Array, port: number, host: string): void }, port: number, count: number): void {
  const kinds = [rawPacket(9, "junk"), rawPacket(Opcode.DATA, Uint8Array.of(0, 1, 2, 3)), rawPacket(Opcode.ACK, Uint8Array.of(0, 1))];
  for (let i = 0; i < count; i++) peer.send(kinds[i % kinds.length]!, port, "127.0.0.1");
}

test("2,000 garbage datagrams get a bounded number of ERRORs; a download during the flood works", async () => {
  const server = await startServer(root);
  try {
    const attacker = await peers.open();
    const started = performance.now();
    flood(attacker, server.port, 1000);
    const during = download(await peers.open(), server.port, "ok.bin");
    flood(attacker, server.port, 1000);
    const got = await during;
    expect(sha256(got.bytes)).toBe(sha256(FILE));
    const replies = await attacker.collect(300);
    const elapsedS = (performance.now() - started) / 1000;
    expect(replies.every((r) => r.packet?.op === Opcode.ERROR)).toBe(true);
    // the burst of 50, then 50 per second
    expect(replies.length).toBeGreaterThanOrEqual(40);
    expect(replies.length).toBeLessThanOrEqual(50 + Math.ceil(50 * elapsedS) + 1);
    // and once the budget refills, a mistaken datagram is answered again
    await Bun.sleep(100);
    attacker.send(rawPacket(9, "junk"), server.port, "127.0.0.1");
    expect((await attacker.nextError(4, 1000)).port).toBe(server.port);
  } finally {
    await server.stop();
  }
});

test("tftpd serve counts the garbage it left unanswered", async () => {
  const child = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--no-tune"]);
  try {
    const attacker = await peers.open();
    flood(attacker, child.port, 2000);
    const replies = await attacker.collect(500);
    const got = await download(await peers.open(), child.port, "ok.bin");
    expect(sha256(got.bytes)).toBe(sha256(FILE));
    const response = await fetch(`${child.metricsUrl}/metrics`, { signal: AbortSignal.timeout(3000) });
    const samples = parsePrometheus(await response.text());
    const unanswered = samples.find((s) => s.name === "tftpd_listener_garbage_unanswered_total")?.value ?? 0;
    const errors = samples.filter((s) => s.name === "tftpd_errors_sent_total" && s.labels.code === "4").reduce((n, s) => n + s.value, 0);
    expect(replies.length).toBeLessThan(200);
    // every datagram that reached the server was answered or counted (the kernel may drop some of a burst)
    expect(errors).toBe(replies.length);
    expect(unanswered).toBeGreaterThan(1000);
    expect(unanswered + errors).toBeLessThanOrEqual(2000);
  } finally {
    await child.stop();
  }
});

/**
 * Transfer workers taking the listen port's requests (requestsOnWorkers, network.epoll): the
 * real in-process server with two workers; clients on several loopback addresses download
 * byte-exact, each address's requests reach the worker its last bit picks (reuseport.ts) and
 * none is lost on the way to the request path; with a worker killed, its replacement takes its
 * share again and every download still succeeds; curl, a real client, is served the same way.
 * A file the main thread served from a sealed cached copy is then served by the workers
 * themselves (fast-path.ts), with the same record (a file too large to wait for its copy, from
 * the moment the copy is sealed); a changed file, an admission over a limit
 * the main thread's transfers count toward, and a request sent again all come out as on the
 * main thread's road.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { TftpServer, type ServerOptions } from "../../../src/server/server.ts";
import type { WorkerPool } from "../../../src/server/worker-pool.ts";
import { defaultOptions } from "../../helpers/server.ts";
import { RawPeer, ack, download, rrq, waitFor } from "../../helpers/raw.ts";
import { Opcode } from "../../../src/protocol/packet.ts";
import type { TransferRecord } from "../../../src/server/server.ts";
import { run } from "../../helpers/run.ts";

const dirs: string[] = [];
const servers: TftpServer[] = [];
const peers: RawPeer[] = [];
afterEach(async () => {
  for (const peer of peers.splice(0)) peer.close();
  for (const server of servers.splice(0)) await server.stop();
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function dir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  dirs.push(d);
  return d;
}

interface Served {
  server: TftpServer;
  pool: WorkerPool;
  port: number;
  refused: string[];
  exits: number[];
  records: TransferRecord[];
}

async function serve(root: string, options: Partial<ServerOptions> = {}): Promise<Served> {
  const refused: string[] = [];
  const exits: number[] = [];
  const records: TransferRecord[] = [];
  const server = new TftpServer(
    { ...defaultOptions(root), workers: 2, ioLoop: "epoll", requestsOnWorkers: true, transferSockets: "shared", ...options },
    { events: { requestsOnMainThread: (why) => refused.push(why), workerExit: (index) => exits.push(index), transferEnd: (r) => records.push(r) } },
  );
  servers.push(server);
  await server.start();
  const pool = server.workers;
  if (!pool) throw new Error("no worker pool");
  return { server, pool, port: server.addresses[0]!.port, refused, exits, records };
}

const FILE = new Uint8Array(300_000).map((_, i) => (i * 7 + 3) & 0xff);

/** A download from 127.0.0.<last>, byte-exact or it throws. */
async function downloadFrom(last: number, port: number, expected: Uint8Array = FILE): Promise<void> {
  const peer = await RawPeer.open(`127.0.0.${last}`);
  peers.push(peer);
  const got = await download(peer, port, "f.bin", { host: "127.0.0.1", options: [["blksize", "1468"]], timeoutMs: 3000 });
  expect(got.bytes).toEqual(expected);
}

describe("requests on workers", () => {
  test("each address's requests reach the worker its address picks, and every download is byte-exact", async () => {
    const root = dir("tftpd-row-");
    writeFileSync(join(root, "f.bin"), FILE);
    const s = await serve(root);
    expect(s.refused).toEqual([]);
    const evens = [2, 4, 6, 8];
    for (const last of evens) await downloadFrom(last, s.port);
    // 1 + (address mod 2): an even last byte to the first worker
    expect(s.pool.requestsTaken).toEqual([evens.length, 0]);
    const odds = [3, 5, 7];
    await Promise.all(odds.map((last) => downloadFrom(last, s.port)));
    expect(s.pool.requestsTaken).toEqual([evens.length, odds.length]);
  });

  test("curl is served through a worker's socket, and a killed worker's replacement takes its share again", async () => {
    const root = dir("tftpd-row-curl-");
    const out = dir("tftpd-row-out-");
    writeFileSync(join(root, "f.bin"), FILE);
    const s = await serve(root);
    const dest = join(out, "f.bin");
    const curled = await run(["curl", "-sS", "--max-time", "20", "-o", dest, `tftp://127.0.0.1:${s.port}/f.bin`], { timeoutMs: 25_000 });
    expect(curled.exitCode).toBe(0);
    expect(new Uint8Array(readFileSync(dest))).toEqual(FILE);
    // 127.0.0.1: odd, the second worker
    expect(s.pool.requestsTaken).toEqual([0, 1]);

    s.pool.kill(1);
    await waitFor(() => s.exits.length === 1, 5000, "the killed worker's exit");
    // its sockets left the groups with it: until the replacement joins, the main thread's socket hears its share
    await downloadFrom(3, s.port);
    await waitFor(() => s.pool.listening.every(Boolean), 5000, "the replacement in the groups");
    const before = s.pool.requestsTaken[1]!;
    await downloadFrom(5, s.port);
    expect(s.pool.requestsTaken[1]).toBe(before + 1);
  });

  test("a file the main thread served from its cache is then served by the workers themselves, each transfer recorded", async () => {
    const root = dir("tftpd-row-fast-");
    writeFileSync(join(root, "f.bin"), FILE);
    const s = await serve(root);
    await downloadFrom(2, s.port); // the main thread's road: the copy is made and published
    expect(s.pool.transfersStartedThere).toEqual([0, 0]);
    for (const last of [4, 6, 3, 5]) await downloadFrom(last, s.port);
    expect(s.pool.transfersStartedThere).toEqual([2, 2]);
    await waitFor(() => s.records.length === 5, 2000, "five records");
    for (const r of s.records) {
      expect(r).toMatchObject({ file: "f.bin", direction: "read", result: "ok", bytes: FILE.length, blksize: 1468, tsize: FILE.length });
      expect(r.acceptedMs).toBeGreaterThanOrEqual(0);
      expect(r.acceptedMs).toBeLessThanOrEqual(r.firstResponseMs + 1);
    }
    expect(s.records.map((r) => r.client.split(":")[0]).sort()).toEqual(["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"]);
  });

  test("a file too large to wait for its copy: the copy is published once sealed, and the file's next request is a worker's", async () => {
    const root = dir("tftpd-row-sealed-");
    // past WAIT_FOR_FILL_MAX_BYTES: the first reader streams the copy as it fills
    const big = new Uint8Array(17 * 1024 * 1024).map((_, i) => (i * 13 + 1) & 0xff);
    writeFileSync(join(root, "big.bin"), big);
    const s = await serve(root);
    const fetch = async (last: number): Promise<void> => {
      const peer = await RawPeer.open(`127.0.0.${last}`);
      peers.push(peer);
      const got = await download(peer, s.port, "big.bin", { host: "127.0.0.1", options: [["blksize", "8192"], ["windowsize", "8"]], timeoutMs: 3000 });
      expect(got.bytes.length).toBe(big.length);
      expect(Buffer.compare(got.bytes, big)).toBe(0);
    };
    await fetch(2); // the main thread's road, from the copy as it fills
    expect(s.pool.transfersStartedThere).toEqual([0, 0]);
    await fetch(3);
    expect(s.pool.transfersStartedThere.reduce((a, b) => a + b)).toBe(1);
  }, 30_000);

  test("a file changed since its copy was published goes the main thread's road, and the new version is served", async () => {
    const root = dir("tftpd-row-changed-");
    writeFileSync(join(root, "f.bin"), FILE);
    const s = await serve(root);
    await downloadFrom(2, s.port);
    await downloadFrom(4, s.port);
    expect(s.pool.transfersStartedThere[0]).toBe(1);
    const changed = FILE.map((b) => b ^ 0x5a);
    writeFileSync(join(root, "f.bin"), changed);
    await downloadFrom(6, s.port, changed);
    expect(s.pool.transfersStartedThere[0]).toBe(1);
    // the new copy is published in turn
    await downloadFrom(8, s.port, changed);
    expect(s.pool.transfersStartedThere[0]).toBe(2);
  });

  test("admission counts are the node's: a worker refuses past max per IP what the main thread holds (answered busy)", async () => {
    const root = dir("tftpd-row-admit-");
    writeFileSync(join(root, "f.bin"), FILE);
    const s = await serve(root, { limits: { maxTotal: 100, maxPerIp: 1, maxPerClient: 100, onLimit: "busy" } });
    await downloadFrom(2, s.port); // published
    // a transfer from 127.0.0.4 that stays open: its client never answers the OACK
    const holder = await RawPeer.open("127.0.0.4");
    peers.push(holder);
    holder.send(rrq("f.bin", "octet", [["blksize", "1468"]]), s.port, "127.0.0.1");
    expect((await holder.next(3000)).packet?.op).toBe(Opcode.OACK);
    // the same address again, from another port: over its one transfer
    const second = await RawPeer.open("127.0.0.4");
    peers.push(second);
    second.send(rrq("f.bin", "octet", [["blksize", "1468"]]), s.port, "127.0.0.1");
    const answer = await second.next(3000);
    expect(answer.packet?.op).toBe(Opcode.ERROR);
    expect(answer.port).toBe(s.port); // refused from the listen port, by the main thread's road
  });

  test("a request sent again while its transfer runs on a worker gets the first packet again, from the same port: no second transfer", async () => {
    const root = dir("tftpd-row-again-");
    writeFileSync(join(root, "f.bin"), FILE);
    const s = await serve(root, { timeoutMs: 2000 });
    await downloadFrom(2, s.port);
    const peer = await RawPeer.open("127.0.0.4");
    peers.push(peer);
    const request = rrq("f.bin", "octet", [["blksize", "1468"]]);
    peer.send(request, s.port, "127.0.0.1");
    const first = await peer.next(3000);
    expect(first.packet?.op).toBe(Opcode.OACK);
    // (its start record reaches the main thread at the end of the worker's turn)
    await waitFor(() => s.pool.transfersStartedThere[0] === 1, 2000, "the start record");
    // past RTO_MIN_MS (a copy sent sooner is ignored), within the server's own timeout of 2 s
    await Bun.sleep(300);
    peer.send(request, s.port, "127.0.0.1");
    const again = await peer.next(3000);
    expect(again.packet?.op).toBe(Opcode.OACK);
    expect(again.port).toBe(first.port);
    expect(s.pool.transfersStartedThere[0]).toBe(1);
    peer.send(ack(0), first.port, first.address);
    expect((await peer.next(3000)).packet?.op).toBe(Opcode.DATA);
  });
});

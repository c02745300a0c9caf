/**
 * Transfer workers taking the listen port's requests (requestsOnWorkers, network.epoll): the
 * real in-process server with two workers; clients on several loopback addresses download
 * byte-exact, each address's requests reach the worker its last bit picks (reuseport.ts) and
 * none is lost on the way to the request path; with a worker killed, its replacement takes its
 * share again and every download still succeeds; curl, a real client, is served the same way.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { TftpServer, type ServerOptions } from "../../../src/server/server.ts";
import type { WorkerPool } from "../../../src/server/worker-pool.ts";
import { defaultOptions } from "../../helpers/server.ts";
import { RawPeer, download, waitFor } from "../../helpers/raw.ts";
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

async function serve(root: string, options: Partial<ServerOptions> = {}): Promise<{ server: TftpServer; pool: WorkerPool; port: number; refused: string[]; exits: number[] }> {
  const refused: string[] = [];
  const exits: number[] = [];
  const server = new TftpServer(
    { ...defaultOptions(root), workers: 2, ioLoop: "epoll", requestsOnWorkers: true, transferSockets: "shared", ...options },
    { events: { requestsOnMainThread: (why) => refused.push(why), workerExit: (index) => exits.push(index) } },
  );
  servers.push(server);
  await server.start();
  const pool = server.workers;
  if (!pool) throw new Error("no worker pool");
  return { server, pool, port: server.addresses[0]!.port, refused, exits };
}

const FILE = new Uint8Array(300_000).map((_, i) => (i * 7 + 3) & 0xff);

/** A download from 127.0.0.<last>, byte-exact or it throws. */
async function downloadFrom(last: number, port: number): Promise<void> {
  const peer = await RawPeer.open(`127.0.0.${last}`);
  peers.push(peer);
  const got = await download(peer, port, "f.bin", { host: "127.0.0.1", options: [["blksize", "1468"]], timeoutMs: 3000 });
  expect(got.bytes).toEqual(FILE);
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
});

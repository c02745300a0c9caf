/**
 * Octet reads on worker threads (options.workers > 1), through the real in-process server on
 * loopback: concurrent curl and windowed atftp downloads are byte-exact and shared out over
 * every worker; uncached files reach the workers as the main thread's descriptor; consistent
 * hashing on client_ip keeps one address on one worker; a worker killed mid-transfer ends only
 * its own transfers (record "error"), is replaced, and the pool keeps serving; a file replaced
 * on disk is served new; stop() ends transfers in flight on workers promptly, telling clients;
 * loss injection reaches the workers.
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import { Opcode } from "../../../src/protocol/packet.ts";
import { LossPlan } from "../../../src/server/loss.ts";
import { TftpServer, type ServerOptions, type TransferRecord } from "../../../src/server/server.ts";
import type { WorkerExit, WorkerPool } from "../../../src/server/worker-pool.ts";
import { patternBytes, removeDir, sha256, sha256File, tempDir, writeFile } from "../../helpers/files.ts";
import { ack, concat, describeReceived, download, peerTracker, recordWhere, rrq, waitFor, within, type RawPeer } from "../../helpers/raw.ts";
import { run } from "../../helpers/run.ts";
import { defaultOptions } from "../../helpers/server.ts";

setDefaultTimeout(30_000);

const KiB = 1024;

const peers = peerTracker();
const servers: TftpServer[] = [];
const dirs: string[] = [];

afterEach(async () => {
  peers.closeAll();
  for (const s of servers.splice(0)) await s.stop();
  for (const d of dirs.splice(0)) removeDir(d);
});

function dir(prefix: string): string {
  const d = tempDir(prefix);
  dirs.push(d);
  return d;
}

interface Served {
  server: TftpServer;
  pool: WorkerPool;
  port: number;
  records: TransferRecord[];
  exits: ({ index: number } & WorkerExit)[];
}

/** The real server with its worker pool; records and worker exits are kept for the test. */
async function serveWith(root: string, options: Partial<ServerOptions>): Promise<Served> {
  const records: TransferRecord[] = [];
  const exits: Served["exits"] = [];
  const server = new TftpServer(
    { ...defaultOptions(root), workers: 2, ...options },
    {
      events: {
        transferEnd: (record) => records.push(record),
        workerExit: (index, exit) => exits.push({ index, ...exit }),
      },
    },
  );
  servers.push(server);
  await server.start();
  const pool = server.workers;
  if (!pool) throw new Error("no worker pool");
  return { server, pool, port: server.addresses[0]!.port, records, exits };
}

function curl(port: number, remote: string, dest: string, extra: string[] = []) {
  return run(["curl", "-sS", "--max-time", "20", ...extra, "-o", dest, `tftp://127.0.0.1:${port}/${remote}`], { timeoutMs: 25_000 });
}

function atftp(port: number, remote: string, dest: string) {
  return run(
    ["atftp", "--get", "-r", remote, "-l", dest, "--option", "windowsize 16", "--option", "blksize 1468", "127.0.0.1", String(port)],
    { timeoutMs: 25_000 },
  );
}

const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

interface Slow {
  peer: RawPeer;
  /** DATA received and kept so far */
  chunks: Uint8Array[];
  /** ACKs the held block and runs lock-step to the end; resolves with the whole file */
  resume(): Promise<Uint8Array>;
  /** skips DATA until the server's ERROR; resolves with its message */
  nextError(): Promise<string>;
}

/**
 * A lock-step RRQ at blksize 512 (no options) that ACKs blocks 1..hold-1, receives DATA
 * `hold` and stops there: the transfer stays in flight, the server retransmitting `hold`.
 */
async function slowRead(port: number, name: string, hold = 3): Promise<Slow> {
  const peer = await peers.open();
  peer.send(rrq(name), port, "127.0.0.1");
  const chunks: Uint8Array[] = [];
  let tid = { port: 0, address: "" };
  for (let block = 1; block <= hold; block++) {
    const r = await peer.nextData(block, 3000);
    tid = { port: r.port, address: r.address };
    chunks.push(r.packet.data);
    if (block < hold) peer.send(ack(block), tid.port, tid.address);
  }
  return {
    peer,
    chunks,
    async resume() {
      let expected = hold + 1;
      peer.send(ack(hold), tid.port, tid.address);
      for (;;) {
        const r = await peer.next(3000);
        if (r.packet?.op !== Opcode.DATA) throw new Error(`slow read of ${name}: ${describeReceived(r)}`);
        if (r.packet.block !== expected) continue; // a retransmission of a block we hold
        chunks.push(r.packet.data);
        peer.send(ack(expected), tid.port, tid.address);
        if (r.packet.data.length < 512) return concat(chunks);
        expected++;
      }
    },
    async nextError() {
      for (;;) {
        const r = await peer.next(3000);
        if (r.packet?.op === Opcode.ERROR) return r.packet.message;
        if (r.packet?.op !== Opcode.DATA) throw new Error(`slow read of ${name}: ${describeReceived(r)}`);
      }
    },
  };
}

// Both I/O loops of the workers: Bun's sockets, and the epoll loop through libc (network.epoll).
for (const ioLoop of ["bun", "epoll"] as const)
describe(`workers: 2, ${ioLoop} loop`, () => {
  const serve = (root: string, options: Partial<ServerOptions>): Promise<Served> => serveWith(root, { ioLoop, ...options });

  test("the workers run the loop asked for", async () => {
    const s = await serve(dir("tftpd-workers-loop-"), { workers: 2 });
    expect(s.pool.ioLoops).toEqual([ioLoop, ioLoop]);
  });

  test("40 concurrent curl and windowed atftp downloads: byte-exact, all ok, both workers used", async () => {
    const root = dir("tftpd-workers-root-");
    const out = dir("tftpd-workers-out-");
    const FILES = 5;
    const N = 40;
    const hashes: string[] = [];
    for (let f = 0; f < FILES; f++) {
      const bytes = patternBytes(150 * KiB + f * 97_003, 500 + f);
      writeFile(root, `img/f${f}.bin`, bytes);
      hashes.push(sha256(bytes));
    }
    const s = await serve(root, { workers: 2, balance: { algorithm: "round_robin", hashKey: "client_ip" }, timeoutMs: 1000 });

    let peakBoth = false;
    const sampler = setInterval(() => {
      const loads = s.pool.loads;
      if (loads.every((l) => l > 0)) peakBoth = true;
    }, 2);
    const results = await Promise.all(
      Array.from({ length: N }, (_, i) => {
        const dest = join(out, `d${i}.bin`);
        const remote = `img/f${i % FILES}.bin`;
        return i % 2 === 0 ? curl(s.port, remote, dest, ["--tftp-blksize", "1468"]) : atftp(s.port, remote, dest);
      }),
    );
    clearInterval(sampler);
    for (const [i, r] of results.entries()) expect({ i, exit: r.exitCode, err: r.exitCode === 0 ? "" : r.stderr }).toEqual({ i, exit: 0, err: "" });
    const got = await Promise.all(Array.from({ length: N }, (_, i) => sha256File(join(out, `d${i}.bin`))));
    expect(got).toEqual(Array.from({ length: N }, (_, i) => hashes[i % FILES]!));

    await waitFor(() => s.records.length === N, 5000, `${N} records`);
    expect(s.records.filter((r) => r.result === "ok").length).toBe(N);
    expect(s.records.filter((r) => r.windowsize === 16).length).toBe(N / 2);
    // every read went to a worker, and round robin shared them out evenly
    expect(s.pool.started).toEqual([N / 2, N / 2]);
    expect(peakBoth).toBe(true);
    await waitFor(() => s.server.activeTransfers === 0, 2000, "no active transfers");
    expect(s.pool.loads).toEqual([0, 0]);
  });

  test("uncached (cacheBytes 0): the workers read through the main thread's descriptor, byte-exact", async () => {
    const root = dir("tftpd-workers-nocache-");
    // more than LOCAL_READ_WINDOWS windows of 1400 × 8 each, whole blocks and not
    const files = [patternBytes(50 * 1400, 1), patternBytes(50 * 1400 - 1, 2), patternBytes(50 * 1400 + 1, 3), patternBytes(300 * KiB + 3, 4)];
    files.forEach((bytes, i) => writeFile(root, `u${i}.bin`, bytes));
    const s = await serve(root, { workers: 2, cacheBytes: 0 });
    expect(s.server.cache.enabled).toBe(false);
    for (let round = 0; round < 2; round++) {
      const got = await Promise.all(
        files.map(async (_, i) => {
          const peer = await peers.open();
          return (await download(peer, s.port, `u${i}.bin`, { options: [["blksize", "1400"], ["windowsize", "8"]] })).bytes;
        }),
      );
      got.forEach((bytes, i) => expect(sha256(bytes)).toBe(sha256(files[i]!)));
    }
    expect(s.pool.started).toEqual([4, 4]);
    await waitFor(() => s.records.length === 8, 3000, "8 records");
    expect(s.records.every((r) => r.result === "ok")).toBe(true);
  });

  test("a read of a few windows (a config file, a script) runs on the main thread, byte-exact; a longer one on a worker", async () => {
    const root = dir("tftpd-workers-local-");
    // windows of 512 × 1: 0 bytes and 511 take one, 2,048 (four whole blocks) five, 2,047 four
    const small = [patternBytes(0, 11), patternBytes(511, 12), patternBytes(2047, 13)];
    small.forEach((bytes, i) => writeFile(root, `s${i}.cfg`, bytes));
    writeFile(root, "s3.cfg", patternBytes(2048, 14));
    const s = await serve(root, { workers: 2 });
    for (const [i, bytes] of small.entries()) {
      const got = await download(await peers.open(), s.port, `s${i}.cfg`);
      expect(sha256(got.bytes)).toBe(sha256(bytes));
    }
    expect(s.pool.started).toEqual([0, 0]);
    const got = await download(await peers.open(), s.port, "s3.cfg");
    expect(sha256(got.bytes)).toBe(sha256(patternBytes(2048, 14)));
    expect(s.pool.started.reduce((a, b) => a + b, 0)).toBe(1);
    await waitFor(() => s.records.length === 4, 3000, "4 records");
    expect(s.records.every((r) => r.result === "ok")).toBe(true);
  });

  test("a file larger than the cache goes to the workers as a descriptor too", async () => {
    const root = dir("tftpd-workers-big-");
    const big = patternBytes(200 * KiB + 17, 9);
    writeFile(root, "big.bin", big);
    const s = await serve(root, { workers: 2, cacheBytes: 64 * KiB });
    for (let i = 0; i < 2; i++) {
      const peer = await peers.open();
      const r = await download(peer, s.port, "big.bin", { options: [["blksize", "1468"]] });
      expect(sha256(r.bytes)).toBe(sha256(big));
    }
    expect(s.pool.started).toEqual([1, 1]);
    expect(s.server.cache.stats.bypasses).toBe(2);
  });

  test("a cached file replaced on disk while workers serve it: the next downloads get the new bytes", async () => {
    const root = dir("tftpd-workers-replace-");
    const v1 = patternBytes(100 * KiB + 5, 21);
    const v2 = patternBytes(100 * KiB + 5, 22); // same size: only the version tells them apart
    const v3 = patternBytes(40 * KiB + 1, 23);
    writeFile(root, "boot.img", v1);
    const s = await serve(root, { workers: 2, timeoutMs: 1000, retries: 5 });
    const fetch = async (): Promise<string> => {
      const peer = await peers.open();
      return sha256((await download(peer, s.port, "boot.img", { options: [["blksize", "1468"], ["windowsize", "4"]] })).bytes);
    };
    // twice each, so both workers map every version
    expect([await fetch(), await fetch()]).toEqual([sha256(v1), sha256(v1)]);
    const inFlight = await slowRead(s.port, "boot.img"); // v1, held on a worker
    writeFile(root, "boot.img", v2);
    expect([await fetch(), await fetch()]).toEqual([sha256(v2), sha256(v2)]);
    // the transfer that started on v1 ends with v1, whole
    expect(sha256(await within(inFlight.resume(), 10_000, "held v1 transfer"))).toBe(sha256(v1));
    writeFile(root, "boot.img", v3);
    expect([await fetch(), await fetch()]).toEqual([sha256(v3), sha256(v3)]);
    expect([...s.pool.started].sort()).toEqual([3, 4]); // every version went through both workers
    expect(s.server.cache.stats.misses).toBe(3);
    await waitFor(() => s.records.length === 7, 2000, "7 records");
    expect(s.records.every((r) => r.result === "ok")).toBe(true);
  });

  test("a worker killed mid-transfer: its transfer ends 'error', the other worker's carries on, a replacement serves", async () => {
    const root = dir("tftpd-workers-crash-");
    const slowA = patternBytes(40 * KiB + 7, 31);
    const slowB = patternBytes(40 * KiB + 9, 32);
    writeFile(root, "slow-a.bin", slowA);
    writeFile(root, "slow-b.bin", slowB);
    const after = Array.from({ length: 6 }, (_, i) => patternBytes(60 * KiB + i * 1001, 40 + i));
    after.forEach((bytes, i) => writeFile(root, `after-${i}.bin`, bytes));
    // long retransmit timeouts: the held transfers must outlive the test's pauses
    const s = await serve(root, { workers: 2, timeoutMs: 1000, retries: 5 });

    const a = await slowRead(s.port, "slow-a.bin");
    await waitFor(() => sum(s.pool.loads) === 1, 2000, "A on a worker");
    const victim = s.pool.loads.indexOf(1);
    const b = await slowRead(s.port, "slow-b.bin");
    await waitFor(() => sum(s.pool.loads) === 2, 2000, "B on a worker");
    const survivor = 1 - victim;
    expect(s.pool.loads).toEqual([1, 1]); // round robin: B went to the other worker
    expect(s.server.activeTransfers).toBe(2);
    const startedBefore = s.pool.started;

    s.pool.kill(victim);

    const recA = await recordWhere(s, (r) => r.file === "slow-a.bin", 3000);
    expect(recA.result).toBe("error");
    expect(recA.error?.from).toBe("server");
    await waitFor(() => s.exits.length === 1, 3000, "workerExit");
    expect(s.exits).toEqual([{ index: victim, reason: "exited", endedWithError: 0, lost: 1 }]);
    await waitFor(() => s.server.activeTransfers === 1, 2000, "only B active");
    expect(s.pool.size).toBe(2);
    expect(s.pool.loads[survivor]).toBe(1);
    expect(s.pool.loads[victim]).toBe(0);
    expect(s.records.some((r) => r.file === "slow-b.bin")).toBe(false);

    // new downloads go to both workers (the replacement included) and are byte-exact; meanwhile
    // A's transfer, gone with its worker, sends nothing more (it would retransmit within 1 s)
    await a.peer.collect(20);
    const [, got] = await Promise.all([
      a.peer.expectNothing(1300),
      Promise.all(
        after.map(async (_, i) => {
          const peer = await peers.open();
          return sha256((await download(peer, s.port, `after-${i}.bin`, { options: [["blksize", "1468"], ["windowsize", "8"]] })).bytes);
        }),
      ),
    ]);
    expect(got).toEqual(after.map(sha256));
    const startedAfter = s.pool.started;
    expect(startedAfter[victim]! - startedBefore[victim]!).toBe(3);
    expect(startedAfter[survivor]! - startedBefore[survivor]!).toBe(3);
    for (let i = 0; i < after.length; i++) expect((await recordWhere(s, (r) => r.file === `after-${i}.bin`)).result).toBe("ok");

    // B, on the worker that lived, was never disturbed
    const bytesB = await within(b.resume(), 10_000, "B resumed");
    expect(sha256(bytesB)).toBe(sha256(slowB));
    expect((await recordWhere(s, (r) => r.file === "slow-b.bin")).result).toBe("ok");
    await waitFor(() => s.server.activeTransfers === 0, 2000, "no active transfers");
    expect(s.exits.length).toBe(1);
    a.peer.close();
  });

  test("a worker that throws: its transfers end with an ERROR to their clients, the other worker's carry on, a replacement serves", async () => {
    const root = dir("tftpd-workers-throw-");
    const files = [0, 1, 2, 3].map((i) => patternBytes(40 * KiB + i * 13, 70 + i));
    files.forEach((bytes, i) => writeFile(root, `held-${i}.bin`, bytes));
    writeFile(root, "after.bin", patternBytes(90 * KiB + 5, 79));
    // the first worker throws, uncaught, 50 ms after it started its second transfer
    const s = await serve(root, { workers: 2, timeoutMs: 1000, retries: 5, workerThrowAfterJobs: 2 });

    // round robin: two transfers on each worker; which one each went to is noted
    const held: { slow: Slow; worker: number }[] = [];
    for (let i = 0; i < 4; i++) {
      const before = s.pool.started;
      const slow = await slowRead(s.port, `held-${i}.bin`);
      await waitFor(() => sum(s.pool.started) === i + 1, 2000, `transfer ${i} on a worker`);
      held.push({ slow, worker: s.pool.started.findIndex((n, w) => n > before[w]!) });
    }
    expect(s.pool.started).toEqual([2, 2]);
    const victims = held.flatMap((h, i) => (h.worker === 0 ? [i] : []));
    const survivors = held.flatMap((h, i) => (h.worker === 1 ? [i] : []));

    const errors = await Promise.all(victims.map((i) => within(held[i]!.slow.nextError(), 3000, `ERROR to held-${i}`)));
    expect(errors).toEqual(["transfer worker failed: TFTPD_TEST_WORKER_THROW", "transfer worker failed: TFTPD_TEST_WORKER_THROW"]);
    await waitFor(() => s.exits.length === 1, 3000, "workerExit");
    expect(s.exits).toEqual([{ index: 0, reason: "TFTPD_TEST_WORKER_THROW", endedWithError: 2, lost: 0 }]);
    for (const i of victims) {
      const record = await recordWhere(s, (r) => r.file === `held-${i}.bin`, 3000);
      expect(record.result).toBe("error");
      expect(record.error).toMatchObject({ from: "server", message: "transfer worker failed: TFTPD_TEST_WORKER_THROW" });
    }

    // the other worker's transfers were never disturbed; the replacement serves new requests
    for (const i of survivors) expect(sha256(await within(held[i]!.slow.resume(), 10_000, `held-${i} resumed`))).toBe(sha256(files[i]!));
    for (let i = 0; i < 2; i++) {
      const peer = await peers.open();
      const got = await download(peer, s.port, "after.bin", { options: [["blksize", "1468"]] });
      expect(sha256(got.bytes)).toBe(sha256(patternBytes(90 * KiB + 5, 79)));
    }
    expect(s.pool.size).toBe(2);
    expect(s.pool.started[0]).toBe(3); // the replacement took one of the two
    expect(s.exits.length).toBe(1);
  });

  test("stop() with transfers in flight on workers returns promptly and tells each client", async () => {
    const root = dir("tftpd-workers-stop-");
    for (let i = 0; i < 4; i++) writeFile(root, `held-${i}.bin`, patternBytes(30 * KiB + i, 60 + i));
    const s = await serve(root, { workers: 2, timeoutMs: 1000, retries: 5 });
    const held = await Promise.all(Array.from({ length: 4 }, (_, i) => slowRead(s.port, `held-${i}.bin`)));
    await waitFor(() => sum(s.pool.loads) === 4, 2000, "4 transfers on workers");
    expect(s.pool.loads).toEqual([2, 2]);

    const t0 = performance.now();
    await within(s.server.stop(), 4000, "stop()");
    expect(performance.now() - t0).toBeLessThan(3000);
    const messages = await Promise.all(held.map((h) => h.nextError()));
    for (const m of messages) expect(m).toContain("server shutting down");
    await waitFor(() => s.records.length === 4, 2000, "4 records");
    expect(s.records.every((r) => r.result === "error")).toBe(true);
    expect(s.server.activeTransfers).toBe(0);
    expect(s.server.workers).toBeNull();
  });

  test("loss injection reaches the workers: curl completes, the record shows the retransmit", async () => {
    const root = dir("tftpd-workers-loss-");
    const out = dir("tftpd-workers-loss-out-");
    const bytes = patternBytes(20 * KiB + 3, 77);
    writeFile(root, "lossy.bin", bytes);
    const s = await serve(root, { workers: 2, loss: LossPlan.parse("out:data:5") });
    const dest = join(out, "lossy.bin");
    // --connect-timeout 3 makes curl ask for a 1 s retransmit timeout (its default is 6 s)
    const r = await curl(s.port, "lossy.bin", dest, ["--connect-timeout", "3"]);
    expect(r.exitCode).toBe(0);
    expect(await sha256File(dest)).toBe(sha256(bytes));
    const record = await recordWhere(s, (x) => x.file === "lossy.bin");
    expect(record.result).toBe("ok");
    expect(record.retransmits).toBeGreaterThanOrEqual(1);
    expect(sum(s.pool.started)).toBe(1);
  });
});

describe("workers: 3", () => {
  async function spreadOf(hashKey: "client_ip" | "client_port"): Promise<number[]> {
    const root = dir("tftpd-workers-hash-");
    const files = Array.from({ length: 12 }, (_, i) => patternBytes(8 * KiB + i * 513, 90 + i));
    files.forEach((bytes, i) => writeFile(root, `h${i}.bin`, bytes));
    const s = await serveWith(root, { workers: 3, balance: { algorithm: "consistent_hashing", hashKey } });
    // each from its own port: only the address is shared
    const got = await Promise.all(
      files.map(async (_, i) => {
        const peer = await peers.open();
        return sha256((await download(peer, s.port, `h${i}.bin`)).bytes);
      }),
    );
    expect(got).toEqual(files.map(sha256));
    return s.pool.started;
  }

  test("consistent_hashing on client_ip: every transfer from 127.0.0.1 lands on the same worker", async () => {
    const started = await spreadOf("client_ip");
    expect(sum(started)).toBe(12);
    expect(started.filter((n) => n > 0)).toEqual([12]);
  });

  test("consistent_hashing on client_port: the same address from different ports spreads out", async () => {
    const started = await spreadOf("client_port");
    expect(sum(started)).toBe(12);
    expect(started.filter((n) => n > 0).length).toBeGreaterThan(1);
  });

  test("round_robin over 3 workers: each gets a third", async () => {
    const root = dir("tftpd-workers-rr3-");
    const files = Array.from({ length: 9 }, (_, i) => patternBytes(16 * KiB + i, 110 + i));
    files.forEach((bytes, i) => writeFile(root, `r${i}.bin`, bytes));
    const s = await serveWith(root, { workers: 3 });
    const got = await Promise.all(
      files.map(async (_, i) => {
        const peer = await peers.open();
        return sha256((await download(peer, s.port, `r${i}.bin`, { options: [["blksize", "1468"]] })).bytes);
      }),
    );
    expect(got).toEqual(files.map(sha256));
    expect(s.pool.started).toEqual([3, 3, 3]);
  });
});

describe("epoll loop (network.epoll) in one worker", () => {
  test("shared port: 60 concurrent lock-step downloads share one transfer port, byte-exact; the port answers a foreign TID with ERROR 5", async () => {
    const root = dir("tftpd-epoll-shared-");
    const files = Array.from({ length: 6 }, (_, i) => patternBytes(20 * KiB + i * 1111, 600 + i));
    files.forEach((bytes, i) => writeFile(root, `s${i}.bin`, bytes));
    const s = await serveWith(root, { workers: 1, ioLoop: "epoll", transferSockets: "shared" });
    expect(s.pool.ioLoops).toEqual(["epoll"]);
    const results = await Promise.all(
      Array.from({ length: 60 }, async (_, i) => {
        const peer = await peers.open();
        return download(peer, s.port, `s${i % 6}.bin`, { options: [["blksize", "1024"]] });
      }),
    );
    results.forEach((r, i) => expect(sha256(r.bytes)).toBe(sha256(files[i % 6]!)));
    const ports = new Set(results.map((r) => r.port));
    expect(ports.size).toBe(1);
    expect([...ports][0]).not.toBe(s.port);

    // a stranger writing to that port: ERROR 5, sent back to the stranger's own port
    const stranger = await peers.open();
    stranger.send(ack(1), [...ports][0]!, "127.0.0.1");
    const answer = await stranger.nextError(5);
    expect(answer.port).toBe([...ports][0]!);
    await waitFor(() => s.records.length === 60, 3000, "60 records");
    expect(s.records.every((r) => r.result === "ok")).toBe(true);
  });

  test("a windowed transfer's own port: byte-exact in GSO windows; a foreign TID gets ERROR 5 and the transfer goes on", async () => {
    const root = dir("tftpd-epoll-own-");
    const bytes = patternBytes(300 * KiB + 5, 77);
    writeFile(root, "w.bin", bytes);
    const s = await serveWith(root, { workers: 1, ioLoop: "epoll", transferSockets: "shared", gso: true });
    const peer = await peers.open();
    peer.send(rrq("w.bin", "octet", [["blksize", "1468"], ["windowsize", "4"]]), s.port, "127.0.0.1");
    const oack = await peer.nextOack();
    const tid = oack.port;
    peer.send(ack(0), tid, "127.0.0.1");
    const chunks: Uint8Array[] = [];
    for (let block = 1; block <= 4; block++) chunks.push((await peer.nextData(block)).packet.data);
    // mid-transfer, a stranger writes to the transfer's port
    const stranger = await peers.open();
    stranger.send(ack(4), tid, "127.0.0.1");
    expect((await stranger.nextError(5)).port).toBe(tid);
    // the transfer goes on, window by window
    let expected = 5;
    peer.send(ack(4), tid, "127.0.0.1");
    for (;;) {
      const r = await peer.nextData(expected & 0xffff, 3000);
      expect(r.port).toBe(tid);
      chunks.push(r.packet.data);
      const last = r.packet.data.length < 1468;
      if (last || expected % 4 === 0) peer.send(ack(expected & 0xffff), tid, "127.0.0.1");
      if (last) break;
      expected++;
    }
    expect(sha256(concat(chunks))).toBe(sha256(bytes));
    const record = await recordWhere(s, (r) => r.file === "w.bin");
    expect(record.result).toBe("ok");
    expect(record.windowsize).toBe(4);
    expect(record.retransmits).toBe(0);
  });

  test("IPv6 (::1): lock-step and windowed downloads byte-exact", async () => {
    const root = dir("tftpd-epoll-v6-");
    const bytes = patternBytes(64 * KiB + 3, 88);
    writeFile(root, "v6.bin", bytes);
    const server = new TftpServer({ ...defaultOptions(root), listen: [{ host: "::1", port: 0 }], workers: 1, ioLoop: "epoll", transferSockets: "shared" });
    servers.push(server);
    await server.start();
    const port = server.addresses[0]!.port;
    for (const options of [[], [["blksize", "1400"], ["windowsize", "8"]]] as [string, string][][]) {
      const peer = await peers.open("::1");
      const r = await download(peer, port, "v6.bin", { options });
      expect(sha256(r.bytes)).toBe(sha256(bytes));
      expect(r.address).toBe("::1");
    }
  });
});

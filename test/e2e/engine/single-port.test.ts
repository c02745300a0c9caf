/**
 * tftp.single_port: every transfer is served from the port its request came to, told apart by
 * the client's address and port. Real clients (curl, atftp) and raw peers on loopback against
 * the in-process server: every DATA and OACK comes from the listen port, concurrent lock-step
 * and windowed transfers stay apart and byte-exact, a stranger's ACK there changes nothing but
 * draws ERROR 4, a lost block is resent from that port, and a request sent again by a client
 * whose transfer runs is answered by the transfer, not started twice.
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import { LossPlan } from "../../../src/server/loss.ts";
import { TftpServer, type ServerOptions, type TransferRecord } from "../../../src/server/server.ts";
import { patternBytes, removeDir, sha256, sha256File, tempDir, writeFile } from "../../helpers/files.ts";
import { ack, download, peerTracker, recordWhere, rrq, waitFor } from "../../helpers/raw.ts";
import { run } from "../../helpers/run.ts";
import { defaultOptions, spawnServer } from "../../helpers/server.ts";

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

async function serve(root: string, options: Partial<ServerOptions> = {}): Promise<{ server: TftpServer; port: number; records: TransferRecord[] }> {
  const records: TransferRecord[] = [];
  // workers 2 and the epoll loop asked for: single_port keeps transfers on the main thread anyway
  const server = new TftpServer(
    { ...defaultOptions(root), singlePort: true, workers: 2, ioLoop: "epoll", transferSockets: "shared", ...options },
    { events: { transferEnd: (r) => records.push(r) } },
  );
  servers.push(server);
  await server.start();
  return { server, port: server.addresses[0]!.port, records };
}

describe("tftp.single_port", () => {
  test("24 concurrent lock-step and windowed downloads: every answer from the listen port, byte-exact, no workers", async () => {
    const root = dir("tftpd-single-port-");
    const files = Array.from({ length: 4 }, (_, i) => patternBytes(90 * KiB + i * 4099, 300 + i));
    files.forEach((bytes, i) => writeFile(root, `f${i}.bin`, bytes));
    const s = await serve(root);
    expect(s.server.workers).toBeNull();
    const results = await Promise.all(
      Array.from({ length: 24 }, async (_, i) => {
        const peer = await peers.open();
        const options: [string, string][] = i % 2 === 0 ? [["blksize", "1468"]] : [["blksize", "1400"], ["windowsize", "8"], ["tsize", "0"]];
        return download(peer, s.port, `f${i % 4}.bin`, { options, timeoutMs: 3000 });
      }),
    );
    results.forEach((r, i) => {
      expect(sha256(r.bytes)).toBe(sha256(files[i % 4]!));
      expect(r.port).toBe(s.port);
    });
    await waitFor(() => s.records.length === 24, 3000, "24 records");
    expect(s.records.every((r) => r.result === "ok")).toBe(true);
    expect(s.records.filter((r) => r.windowsize === 8).length).toBe(12);
  });

  test("curl and atftp (windowsize 16) get their files byte-exact", async () => {
    const root = dir("tftpd-single-port-clients-");
    const out = dir("tftpd-single-port-out-");
    const bytes = patternBytes(700 * KiB + 11, 41);
    writeFile(root, "boot.img", bytes);
    const s = await serve(root);
    const curl = await run(["curl", "-sS", "--max-time", "20", "--tftp-blksize", "1468", "-o", join(out, "c.img"), `tftp://127.0.0.1:${s.port}/boot.img`], { timeoutMs: 25_000 });
    expect(curl.exitCode).toBe(0);
    const atftp = await run(
      ["atftp", "--get", "-r", "boot.img", "-l", join(out, "a.img"), "--option", "windowsize 16", "--option", "blksize 1468", "127.0.0.1", String(s.port)],
      { timeoutMs: 25_000 },
    );
    expect(atftp.exitCode).toBe(0);
    expect(await sha256File(join(out, "c.img"))).toBe(sha256(bytes));
    expect(await sha256File(join(out, "a.img"))).toBe(sha256(bytes));
  });

  test("a stranger's ACK to the port: ERROR 4 to the stranger, the running transfer goes on untouched", async () => {
    const root = dir("tftpd-single-port-stranger-");
    const bytes = patternBytes(20 * KiB + 5, 52);
    writeFile(root, "f.bin", bytes);
    const s = await serve(root);
    const client = await peers.open();
    client.send(rrq("f.bin"), s.port, "127.0.0.1");
    const first = await client.nextData(1);
    expect(first.port).toBe(s.port);
    const stranger = await peers.open();
    stranger.send(ack(1), s.port, "127.0.0.1");
    expect((await stranger.nextError(4)).port).toBe(s.port);
    // the client carries on from block 1 as if nothing happened
    const chunks = [first.packet.data];
    client.send(ack(1), s.port, "127.0.0.1");
    for (let block = 2; ; block++) {
      const r = await client.nextData(block);
      chunks.push(r.packet.data);
      client.send(ack(block), s.port, "127.0.0.1");
      if (r.packet.data.length < 512) break;
    }
    expect(sha256(Buffer.concat(chunks))).toBe(sha256(bytes));
    expect((await recordWhere(s, (r) => r.file === "f.bin")).result).toBe("ok");
  });

  test("a request sent again while its transfer waits: the transfer answers it, no second transfer", async () => {
    const root = dir("tftpd-single-port-again-");
    writeFile(root, "f.bin", patternBytes(5 * KiB, 61));
    const s = await serve(root, { timeoutMs: 1000 });
    const client = await peers.open();
    client.send(rrq("f.bin"), s.port, "127.0.0.1");
    await client.nextData(1);
    // as firmware does after its own timeout (a copy sent at once is a burst, and ignored)
    await Bun.sleep(300);
    client.send(rrq("f.bin"), s.port, "127.0.0.1");
    expect((await client.nextData(1)).port).toBe(s.port);
    // 5 KiB: ten full blocks and an empty eleventh
    for (let block = 1; block <= 11; block++) {
      client.send(ack(block), s.port, "127.0.0.1");
      if (block < 11) await client.nextData(block + 1);
    }
    await waitFor(() => s.records.length >= 1, 3000, "the record");
    await Bun.sleep(200);
    expect(s.records.map((r) => r.result)).toEqual(["ok"]);
  });

  test("stop() with a transfer in flight: its client hears why, from the listen port", async () => {
    const root = dir("tftpd-single-port-stop-");
    writeFile(root, "f.bin", patternBytes(20 * KiB, 81));
    const s = await serve(root, { timeoutMs: 1000 });
    const client = await peers.open();
    client.send(rrq("f.bin"), s.port, "127.0.0.1");
    await client.nextData(1);
    await s.server.stop();
    const error = await client.nextError();
    expect(error.port).toBe(s.port);
    expect(error.packet.message).toContain("shutting down");
  });

  test("a lost DATA is resent from the listen port", async () => {
    const root = dir("tftpd-single-port-loss-");
    const bytes = patternBytes(30 * KiB + 1, 71);
    writeFile(root, "lossy.bin", bytes);
    const s = await serve(root, { loss: LossPlan.parse("out:data:4"), timeoutMs: 300 });
    const peer = await peers.open();
    const r = await download(peer, s.port, "lossy.bin", { timeoutMs: 3000 });
    expect(sha256(r.bytes)).toBe(sha256(bytes));
    expect(r.port).toBe(s.port);
    const record = await recordWhere(s, (x) => x.file === "lossy.bin");
    expect(record.retransmits).toBeGreaterThanOrEqual(1);
  });
});

describe("serve: the engine's keys as an operator sets them", () => {
  test("TFTPD_TFTP_SINGLE_PORT and TFTPD_NETWORK_IO_URING: transfers from the listen port, io_uring said unhonoured, the engine logged", async () => {
    const root = dir("tftpd-single-port-cli-");
    const bytes = patternBytes(3 * KiB + 1, 91);
    writeFile(root, "f.bin", bytes);
    const server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--log-level", "info"], {
      env: { TFTPD_TFTP_SINGLE_PORT: "true", TFTPD_NETWORK_IO_URING: "true" },
    });
    try {
      const peer = await peers.open();
      const r = await download(peer, server.port, "f.bin", { timeoutMs: 3000 });
      expect(sha256(r.bytes)).toBe(sha256(bytes));
      expect(r.port).toBe(server.port);
      const warned = await server.waitForLog((l) => typeof l.msg === "string" && l.msg.startsWith("network.io_uring is true"), 3000);
      expect(warned.level).toBe("warn");
      // single_port keeps transfers on the main thread: no workers to run the epoll loop
      const engine = await server.waitForLog((l) => l.msg === "transfers run on the main thread on Bun's sockets", 3000);
      expect(engine.workers).toBe(0);
    } finally {
      await server.stop();
    }
  });

  test("the default: transfer workers on the epoll loop, said once at start", async () => {
    const root = dir("tftpd-epoll-cli-");
    writeFile(root, "f.bin", patternBytes(2 * KiB, 92));
    const server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--log-level", "info"]);
    try {
      const engine = await server.waitForLog((l) => l.msg === "transfer workers started", 3000);
      expect(engine.io_loop).toBe("epoll");
      expect(engine.workers).toBeGreaterThanOrEqual(1);
      const peer = await peers.open();
      const r = await download(peer, server.port, "f.bin", { timeoutMs: 3000 });
      expect(r.port).not.toBe(server.port);
      expect(r.bytes.length).toBe(2 * KiB);
    } finally {
      await server.stop();
    }
  });
});

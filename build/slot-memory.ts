/**
 * Memory per transfer, in three shapes:
 *
 * - `running` (the default): 10,000 clients each ask for a 32 KiB file, get DATA 1 and never
 *   answer, so 10,000 lock-step transfers sit in the server (in this process, shared sockets).
 *   Prints the RSS, JS heap and ArrayBuffer growth per transfer.
 * - `half-open [N]`: N clients (default 20,000) each send an RRQ with blksize 1468, windowsize 64
 *   and tsize, receive the OACK and never acknowledge it.
 * - `idle [N]`: the same, but each client acknowledges the OACK, receives the first window and
 *   never acknowledges it: transfers idle between windows.
 *
 * `half-open` and `idle` run the real server (`tftpd serve`, shared sockets, default limits) as
 * a child process and read its RSS from /proc/PID/status before and after; each client has a
 * source address of its own in 127.1.0.0/16 and closes its socket once answered (so N is not
 * bounded by open files), which the server notices only by its retransmit timeout, set far away.
 *
 * Usage: bun build/slot-memory.ts [running | half-open [N] | idle [N]]
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnServer, startServer } from "../test/helpers/server.ts";

const mode = process.argv[2] ?? "running";
const root = mkdtempSync(join(tmpdir(), "tftpd-slot-memory-"));
const encoder = new TextEncoder();

function request(file: string, options: [string, string][] = []): Uint8Array {
  const fields = [file, "octet", ...options.flat()].map((f) => [...encoder.encode(f), 0]);
  return new Uint8Array([0, 1, ...fields.flat()]);
}

async function running(): Promise<void> {
  writeFileSync(join(root, "32k.img"), new Uint8Array(32 * 1024));
  const s = await startServer(root, { transferSockets: "shared", timeoutMs: 60000, retries: 1, lifetimes: { connectionTimeoutMs: 600000, idleTimeoutMs: 600000, maxLifetimeMs: 600000 } });
  const N = 10000;
  const rrq = request("32k.img");
  const clients: { send(data: Uint8Array, port: number, address: string): boolean }[] = [];
  Bun.gc(true); await Bun.sleep(200);
  let replies = 0;
  for (let i = 0; i < N; i++) {
    const c = await Bun.udpSocket({ hostname: "127.0.0.1", port: 0, socket: { data() { replies++; } } });
    clients.push(c);
  }
  Bun.gc(true); await Bun.sleep(200);
  const sockets = process.memoryUsage();
  for (const c of clients) c.send(rrq, s.port, "127.0.0.1");
  while (replies < N) await Bun.sleep(20);
  Bun.gc(true); await Bun.sleep(300);
  const after = process.memoryUsage();
  console.log(`active transfers: ${s.server.activeTransfers}`);
  console.log(`rss per transfer: ${((after.rss - sockets.rss) / N).toFixed(0)} bytes, heap per transfer: ${((after.heapUsed - sockets.heapUsed) / N).toFixed(0)} bytes, arrayBuffers per transfer: ${((after.arrayBuffers - sockets.arrayBuffers) / N).toFixed(0)} bytes`);
  await s.stop();
}

function rssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]) * 1024;
}

/** RSS once it stops moving (the server's garbage collector runs on its own schedule). */
async function settledRss(pid: number): Promise<number> {
  let last = rssBytes(pid);
  for (let i = 0; i < 20; i++) {
    await Bun.sleep(500);
    const now = rssBytes(pid);
    if (Math.abs(now - last) < 256 * 1024) return now;
    last = now;
  }
  return last;
}

/** The i-th client's own source address: 127.1.0.1 onwards. */
function clientAddress(i: number): string {
  const n = i + 1;
  return `127.${1 + (n >> 16)}.${(n >> 8) & 255}.${n & 255}`;
}

/**
 * One client: RRQ, then (idle) ACK 0 and the first DATA; resolves true once the server has
 * answered as far as this shape goes, false after `timeoutMs` without it.
 */
async function openTransfer(i: number, port: number, rrq: Uint8Array, idle: boolean, timeoutMs: number): Promise<boolean> {
  let done: (ok: boolean) => void = () => {};
  const finished = new Promise<boolean>((resolve) => (done = resolve));
  const socket = await Bun.udpSocket({
    hostname: clientAddress(i),
    port: 0,
    socket: {
      data(sock, bytes, fromPort, fromAddress) {
        const op = (bytes[0]! << 8) | bytes[1]!;
        // the ACK goes to the transfer's own port (its TID), not the listen port
        if (op === 6 && idle) sock.send(new Uint8Array([0, 4, 0, 0]), fromPort, fromAddress);
        else if (op === 6 || op === 3) done(true);
        else done(false);
      },
    },
  });
  socket.send(rrq, port, "127.0.0.1");
  const timer = setTimeout(() => done(false), timeoutMs);
  const ok = await finished;
  clearTimeout(timer);
  socket.close();
  return ok;
}

async function held(idle: boolean, count: number): Promise<void> {
  writeFileSync(join(root, "1m.img"), new Uint8Array(1 << 20).fill(0x5a));
  const server = await spawnServer([], {
    env: {
      TFTPD_TFTP_ROOT: root,
      TFTPD_TFTP_LISTEN: "127.0.0.1:0",
      // nothing may end on its own while the figure is taken
      TFTPD_TFTP_TIMEOUT: "255",
      TFTPD_CONNECTION_POOL_CONNECTION_TIMEOUT: "3600",
      TFTPD_CONNECTION_POOL_IDLE_TIMEOUT: "3600",
    },
  });
  const pid = server.proc.pid;
  const rrq = request("1m.img", [["blksize", "1468"], ["windowsize", "64"], ["tsize", "0"]]);
  const run = async (from: number, to: number): Promise<number> => {
    let failed = 0;
    let next = from;
    const lane = async (): Promise<void> => {
      while (next < to) if (!(await openTransfer(next++, server.port, rrq, idle, 10_000))) failed++;
    };
    await Promise.all(Array.from({ length: 256 }, lane));
    return failed;
  };
  try {
    // warm-up: the file cached, the code compiled, shared buffers allocated
    await run(count, count + 200);
    const before = await settledRss(pid);
    const started = performance.now();
    const failed = await run(0, count);
    const seconds = (performance.now() - started) / 1000;
    const after = await settledRss(pid);
    const metrics = server.metricsUrl ? await (await fetch(`${server.metricsUrl}/metrics`)).text() : "";
    const active = /^tftpd_active_transfers (\d+)/m.exec(metrics)?.[1] ?? "?";
    const perTransfer = (after - before) / (count - failed);
    console.log(`${idle ? "idle (first window sent, never acknowledged)" : "half-open (OACK sent, never acknowledged)"}: ${count - failed} of ${count} transfers held in ${seconds.toFixed(1)} s, server active transfers ${active}`);
    console.log(`server rss ${(before / 2 ** 20).toFixed(1)} MiB -> ${(after / 2 ** 20).toFixed(1)} MiB: ${perTransfer.toFixed(0)} bytes (${(perTransfer / 1024).toFixed(2)} KiB) per transfer`);
  } finally {
    await server.stop("SIGKILL");
  }
}

try {
  if (mode === "running") await running();
  else if (mode === "half-open" || mode === "idle") await held(mode === "idle", Number(process.argv[3] ?? 20000));
  else throw new Error(`unknown mode ${mode}: running | half-open [N] | idle [N]`);
} finally {
  rmSync(root, { recursive: true, force: true });
}
process.exit(0);

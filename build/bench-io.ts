#!/usr/bin/env bun
/**
 * What the `io` keys buy, each setting beside the other in one run, the real server
 * (`tftpd serve`, from source unless --binary) on 127.0.0.1 and real files on this disk:
 *
 * - write_behind: N uploads of S bytes one after another with curl -T; each upload's time
 *   from curl's start to its exit (the final ACK), median and p99;
 * - read_ahead: a 100 MiB file served from disk (the cache off), started cold (its pages
 *   dropped with POSIX_FADV_DONTNEED, that file only), fetched by the built-in client with
 *   blksize 1468 / windowsize 16: seconds and Mbit/s, for read_ahead 0, 1 MiB and 16 MiB;
 * - direct_io: the same file started cold and fetched through the file cache: seconds, and how
 *   much of the file the page cache holds afterwards (mincore).
 *
 * Each setting runs --rounds times (default 3), the settings alternating within a round.
 *
 *   bun build/bench-io.ts [--binary PATH] [--rounds N] [--uploads N] [--upload-bytes S]
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { download } from "../src/client/index.ts";
import { evictFromPageCache, residentBytes } from "../test/helpers/page-cache.ts";
import { spawnServer, type ChildServer } from "../test/helpers/server.ts";

const { values: opts } = parseArgs({
  options: {
    binary: { type: "string" },
    rounds: { type: "string", default: "3" },
    uploads: { type: "string", default: "50" },
    "upload-bytes": { type: "string", default: "1048576" },
  },
});
const ROUNDS = Number(opts.rounds);
const UPLOADS = Number(opts.uploads);
const UPLOAD_BYTES = Number(opts["upload-bytes"]);
const MiB = 1 << 20;
const FILE_BYTES = 100 * MiB;

// on the disk, not a tmpfs: the page cache is what is measured
const work = mkdtempSync(join(process.env.TFTPD_BENCH_DIR ?? "/var/tmp", "tftpd-bench-io-"));
const root = join(work, "root");
const uploads = join(work, "uploads");
for (const d of [root, uploads]) Bun.spawnSync(["mkdir", "-p", d]);
const big = join(root, "big.bin");
const local = join(work, "up.bin");
{
  const bytes = new Uint8Array(FILE_BYTES);
  crypto.getRandomValues(bytes.subarray(0, 65536));
  for (let at = 65536; at < FILE_BYTES; at *= 2) bytes.copyWithin(at, 0, Math.min(at, FILE_BYTES - at));
  writeFileSync(big, bytes);
  writeFileSync(local, bytes.subarray(0, UPLOAD_BYTES));
}

async function serve(env: Record<string, string>, serveRoot = root): Promise<ChildServer> {
  return spawnServer(["--root", serveRoot, "--listen", "127.0.0.1:0", "--write", "overwrite", "--log-level", "info"], {
    ...(opts.binary ? { binary: opts.binary } : {}),
    env: { TFTPD_TFTP_USER: "root", ...env },
  });
}

const percentile = (values: number[], p: number): number => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
};
const fmt = (n: number, digits = 1): string => n.toFixed(digits);

const rows: string[] = [];
function say(line: string): void {
  console.log(line);
  rows.push(line);
}

async function uploadRun(writeBehind: boolean): Promise<string> {
  const server = await serve({ TFTPD_IO_WRITE_BEHIND: String(writeBehind) }, uploads);
  const times: number[] = [];
  try {
    for (let i = 0; i < UPLOADS; i++) {
      const started = performance.now();
      const curl = Bun.spawn(["curl", "-sS", "--max-time", "30", "--tftp-blksize", "1468", "-T", local, `tftp://127.0.0.1:${server.port}/up-${i % 8}.bin`], { stdout: "ignore", stderr: "inherit" });
      if ((await curl.exited) !== 0) throw new Error("an upload failed");
      times.push(performance.now() - started);
    }
  } finally {
    await server.stop();
  }
  return `median ${fmt(percentile(times, 50))} ms, p99 ${fmt(percentile(times, 99))} ms`;
}

async function coldFetch(env: Record<string, string>): Promise<string> {
  evictFromPageCache(big);
  const server = await serve(env);
  try {
    const started = performance.now();
    const report = await download({ host: "127.0.0.1", port: server.port, remote: "big.bin", blksize: 1468, windowsize: 16, retries: 8 });
    if (!report.ok) throw new Error(`download failed: ${report.error?.message}`);
    const seconds = (performance.now() - started) / 1000;
    return `${fmt(seconds, 2)} s, ${fmt((FILE_BYTES * 8) / seconds / 1e6, 0)} Mbit/s, file in the page cache after: ${fmt(residentBytes(big) / MiB)} MiB`;
  } finally {
    await server.stop();
  }
}

try {
  say(`# io keys, ${new Date().toISOString()}, ${opts.binary ?? "bun src/main.ts"}; ${ROUNDS} rounds`);
  for (let round = 1; round <= ROUNDS; round++) {
    for (const writeBehind of [false, true]) {
      say(`write_behind ${writeBehind}: ${UPLOADS} uploads of ${UPLOAD_BYTES} bytes (curl): ${await uploadRun(writeBehind)}`);
    }
    for (const readAhead of ["0", "1Mi", "16Mi"]) {
      say(`read_ahead ${readAhead}: 100 MiB cold from disk, cache off: ${await coldFetch({ TFTPD_IO_READ_AHEAD: readAhead, TFTPD_CACHE_ENABLED: "false" })}`);
    }
    for (const direct of [false, true]) {
      say(`direct_io ${direct}: 100 MiB cold through the file cache: ${await coldFetch({ TFTPD_IO_DIRECT_IO: String(direct) })}`);
    }
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}

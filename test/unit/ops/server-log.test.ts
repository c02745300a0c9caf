/**
 * The server's events as log lines (ops/server-log.ts): the level each record is written at,
 * the fields operators grep for, the tally every transfer feeds, and the ready hint.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { TransferTally } from "../../../src/cluster/heartbeat.ts";
import { ServerMetrics } from "../../../src/ops/metrics.ts";
import { httpEvents, logReady, logUploadSweep, serverEvents } from "../../../src/ops/server-log.ts";
import { parsePrometheus } from "../../../src/ops/summary.ts";
import type { TransferRecord } from "../../../src/server/server.ts";
import { FileCache } from "../../../src/storage/cache.ts";

const dir = mkdtempSync(join(tmpdir(), "tftpd-server-log-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function capture() {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: "debug", formatters: { level: (label) => ({ level: label }) } }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { log, lines };
}

const record = (over: Partial<TransferRecord>): TransferRecord => ({
  client: "127.0.0.1:40000",
  file: "pxelinux.0",
  direction: "read",
  mode: "octet",
  blksize: 1468,
  windowsize: 1,
  tsize: 100,
  options: ["blksize"],
  durationMs: 12.3456,
  acceptedMs: 0.04567,
  result: "ok",
  bytes: 100,
  retransmits: 0,
  firstResponseMs: 0.12345,
  ...over,
});

test("a transfer is one line, info when it served (ok, probe, superseded), warn when it failed; every one is tallied", () => {
  const { log, lines } = capture();
  const tally = new TransferTally();
  const events = serverEvents({ log, metrics: () => null, tally, receiveBufferBytes: 1 << 20 });
  events.transferEnd!(record({}));
  events.transferEnd!(record({ result: "superseded" }));
  events.transferEnd!(record({ result: "timeout", bytes: 0, error: { code: 0, message: "no answer", from: "server" } }));
  expect(lines.map((l) => [l.msg, l.level, l.result])).toEqual([
    ["transfer", "info", "ok"],
    ["transfer", "info", "superseded"],
    ["transfer", "warn", "timeout"],
  ]);
  expect(lines[0]).toMatchObject({ client: "127.0.0.1:40000", file: "pxelinux.0", duration_ms: 12.35, accepted_ms: 0.046, first_response_ms: 0.123 });
  expect(lines[0]).not.toHaveProperty("error");
  expect(lines[2]).toMatchObject({ error: { message: "no answer" } });
  expect([tally.transfers, tally.failed, tally.bytesSent]).toEqual([3, 1, 200]);
});

test("a refused request is one info line with the file asked and its kind; the metrics count it once they exist", async () => {
  const { log, lines } = capture();
  let metrics: ServerMetrics | null = null;
  const events = serverEvents({ log, metrics: () => metrics, tally: new TransferTally(), receiveBufferBytes: 1 << 20 });
  const refusal = { client: "10.0.0.5:2000", op: "read" as const, file: "pxelinux.cfg/01-aa", remapped: null, kind: "not_found" as const, reason: "file not found", code: 1 };
  events.refused!(refusal);
  const cache = new FileCache(0);
  metrics = new ServerMetrics({ activeTransfers: () => 0, cacheStats: () => cache.stats });
  events.refused!(refusal);
  // the same refusal over HTTP: counted under its own protocol
  events.refused!({ ...refusal, protocol: "http", status: 404 });
  expect(lines).toHaveLength(3);
  expect(lines[0]).toMatchObject({ level: "info", msg: "request refused", file: "pxelinux.cfg/01-aa", kind: "not_found", code: 1 });
  expect(lines[0]).not.toHaveProperty("protocol");
  expect(lines[2]).toMatchObject({ protocol: "http", status: 404, kind: "not_found" });
  const text = await metrics.text();
  expect(text).toMatch(/tftpd_requests_refused_total\{protocol="tftp",reason="not_found"\} 1\n/);
  expect(text).toMatch(/tftpd_requests_refused_total\{protocol="http",reason="not_found"\} 1\n/);
  expect(text).toMatch(/tftpd_requests_refused_total\{protocol="http",reason="limit"\} 0\n/);
});

test("a TFTP transfer and an HTTP download feed the same families, each under its protocol", async () => {
  const { log, lines } = capture();
  const metrics = new ServerMetrics({ activeTransfers: () => 0, cacheStats: () => new FileCache(0).stats });
  serverEvents({ log, metrics: () => metrics, tally: new TransferTally(), receiveBufferBytes: 1 << 20 }).transferEnd!(record({ bytes: 1000, firstResponseMs: 0.2 }));
  const http = httpEvents({ log, metrics: () => metrics });
  const served = { client: "10.0.0.5:2000", method: "GET" as const, file: "vmlinuz", status: 200, bytes: 5000, size: 5000, range: null, userAgent: "curl", firstByteMs: 30, durationMs: 80 };
  http.served!({ ...served, result: "ok" });
  http.served!({ ...served, bytes: 700, result: "aborted" });
  expect(lines.map((l) => [l.msg, l.protocol])).toEqual([
    ["transfer", undefined],
    ["transfer", "http"],
    ["transfer", "http"],
  ]);
  const samples = parsePrometheus(await metrics.text());
  const value = (name: string, labels: Record<string, string>) =>
    samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((n, s) => n + s.value, 0);
  expect([value("tftpd_sent_bytes_total", { protocol: "tftp" }), value("tftpd_sent_bytes_total", { protocol: "http" })]).toEqual([1000, 5700]);
  expect(value("tftpd_transfers_total", { protocol: "tftp", direction: "read", result: "ok" })).toBe(1);
  expect(value("tftpd_transfers_total", { protocol: "http", direction: "read", result: "ok" })).toBe(1);
  expect(value("tftpd_transfers_total", { protocol: "http", direction: "read", result: "aborted" })).toBe(1);
  expect(value("tftpd_first_response_seconds_count", { protocol: "tftp" })).toBe(1);
  expect(value("tftpd_first_response_seconds_count", { protocol: "http" })).toBe(2);
  // 30 ms each: above the 25 ms bound, within the 50 ms one
  expect(value("tftpd_first_response_seconds_bucket", { protocol: "http", le: "0.025" })).toBe(0);
  expect(value("tftpd_first_response_seconds_bucket", { protocol: "http", le: "0.05" })).toBe(2);
  expect(value("tftpd_transfer_duration_seconds_sum", { protocol: "http" })).toBeCloseTo(0.16, 9);
  expect(value("tftpd_http_requests_total", { method: "GET", status: "200" })).toBe(2);
  expect(samples.some((s) => s.name.startsWith("tftpd_http_sent_bytes") || s.name.startsWith("tftpd_http_first_byte"))).toBe(false);
});

test("listening: one line per address; a receive buffer the kernel capped is a warning naming the sysctl", () => {
  const { log, lines } = capture();
  const events = serverEvents({ log, metrics: () => null, tally: new TransferTally(), receiveBufferBytes: 32 << 20 });
  events.listening!({ host: "::1", port: 69 }, { receive: 64 << 20, send: 8 << 20 });
  events.listening!({ host: "127.0.0.1", port: 69 }, { receive: 425984, send: 8 << 20 });
  expect(lines.map((l) => [l.msg, l.address])).toEqual([
    ["listening", "[::1]:69"],
    ["listening", "127.0.0.1:69"],
    ["receive buffer capped by net.core.rmem_max: bursts of requests may be dropped (raise net.core.rmem_max)", "127.0.0.1:69"],
  ]);
});

test("rate-limited requests: one warn line per source, and one for the sources past the report's size", () => {
  const { log, lines } = capture();
  serverEvents({ log, metrics: () => null, tally: new TransferTally(), receiveBufferBytes: 1 })!.rateLimited!({
    sources: [{ address: "10.0.0.1", dropped: 7 }],
    unreported: 3,
    intervalMs: 10_000,
  });
  expect(lines.map((l) => [l.level, l.address, l.dropped, l.interval_s])).toEqual([
    ["warn", "10.0.0.1", 7, 10],
    ["warn", null, 3, 10],
  ]);
});

test("the ready line names a file of the root to fetch; none when listening only on wildcards", () => {
  const { log, lines } = capture();
  writeFileSync(join(dir, "undionly.kpxe"), "x");
  writeFileSync(join(dir, ".hidden"), "x");
  logReady(log, [{ host: "0.0.0.0", port: 69 }], { root: dir, config: null, write: "off" });
  expect(lines).toEqual([]);
  logReady(log, [{ host: "0.0.0.0", port: 69 }, { host: "127.0.0.1", port: 6969 }], { root: dir, config: null, write: "off" });
  expect(lines[0]).toMatchObject({ level: "info", root: dir, msg: "ready: fetch a file with  curl -o undionly.kpxe tftp://127.0.0.1:6969/undionly.kpxe" });
});

test("the upload sweep: removals at info, failures and a walk cut short at warn, an error as one line", async () => {
  const { log, lines } = capture();
  logUploadSweep(log, dir, Promise.resolve({ removed: 2, inUse: 1, failed: 1, entries: 10, complete: false }));
  logUploadSweep(log, dir, Promise.reject(new Error("EACCES")));
  await Bun.sleep(0);
  expect(lines.map((l) => [l.level, l.msg])).toEqual([
    ["info", "removed temporary files of interrupted uploads"],
    ["warn", "could not remove temporary files of interrupted uploads"],
    ["warn", "stopped looking for interrupted uploads: root too big"],
    ["warn", "could not look for interrupted uploads"],
  ]);
});

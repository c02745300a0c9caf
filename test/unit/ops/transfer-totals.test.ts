import { expect, test } from "bun:test";
import { parsePrometheus } from "../../../src/ops/summary.ts";
import { ServerMetrics } from "../../../src/ops/metrics.ts";
import { PENDING_MAX, TransferTotals } from "../../../src/ops/transfer-totals.ts";
import { FileCache } from "../../../src/storage/cache.ts";
import type { TransferRecord } from "../../../src/server/server.ts";

const record = (over: Partial<TransferRecord> = {}): TransferRecord => ({
  client: "127.0.0.1:40000",
  file: "boot.bin",
  direction: "read",
  mode: "octet",
  blksize: 1468,
  windowsize: 1,
  tsize: 1000,
  options: ["blksize", "tsize"],
  acceptedMs: 0.05,
  durationMs: 20,
  result: "ok",
  bytes: 1000,
  retransmits: 0,
  firstResponseMs: 0.3,
  ...over,
});

test("sums ends by direction and result, bytes each way, ERRORs by code, options and strays; a take starts over", () => {
  const totals = new TransferTotals();
  totals.add(record());
  totals.add(record({ retransmits: 2, strays: { "out-of-window": 3 } }));
  totals.add(record({ direction: "write", bytes: 500, options: [], result: "timeout" }));
  totals.add(record({ result: "error", bytes: 0, error: { code: 2, message: "denied", from: "server" } }));
  totals.add(record({ result: "dropped", bytes: 0, error: { code: 0, message: "gone", from: "client" } }));
  const taken = totals.take();
  expect(taken.ends.get("read")).toEqual(new Map([["ok", 2], ["error", 1], ["dropped", 1]]));
  expect(taken.ends.get("write")).toEqual(new Map([["timeout", 1]]));
  expect([taken.sentBytes, taken.receivedBytes, taken.retransmits]).toEqual([2000, 500, 2]);
  expect(taken.errorsSent).toEqual(new Map([[2, 1]]));
  expect(taken.options).toEqual(new Map([["blksize", 4], ["tsize", 4]]));
  expect(taken.strays).toEqual(new Map([["out-of-window", 3]]));
  // a dropped request never got a first packet: no observation
  expect(taken.firstResponse).toHaveLength(4);
  expect(taken.duration).toEqual([0.02, 0.02, 0.02, 0.02]);
  expect(totals.take().ends.size).toBe(0);
});

test("says when its held observations reach PENDING_MAX", () => {
  const totals = new TransferTotals();
  for (let i = 1; i < PENDING_MAX; i++) expect(totals.add(record())).toBe(false);
  expect(totals.add(record())).toBe(true);
});

const metrics = () => new ServerMetrics({ activeTransfers: () => 0, cacheStats: () => new FileCache(0).stats });

function valueOf(text: string, name: string, labels: Record<string, string> = {}): number {
  return parsePrometheus(text)
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((n, s) => n + s.value, 0);
}

test("transfers ended before a scrape are in it, every family; a second scrape counts nothing twice", async () => {
  const m = metrics();
  m.transferEnded(record());
  m.transferEnded(record({ result: "probe", retransmits: 1 }));
  m.transferEnded(record({ result: "error", error: { code: 3, message: "disk full", from: "server" }, strays: { "duplicate-request": 2 } }));
  for (const scrape of [await m.text(), await m.text()]) {
    expect(valueOf(scrape, "tftpd_transfers_total", { protocol: "tftp", direction: "read", result: "ok" })).toBe(1);
    expect(valueOf(scrape, "tftpd_transfers_total", { protocol: "tftp", result: "probe" })).toBe(1);
    expect(valueOf(scrape, "tftpd_sent_bytes_total", { protocol: "tftp" })).toBe(3000);
    expect(valueOf(scrape, "tftpd_first_response_seconds_count", { protocol: "tftp" })).toBe(3);
    expect(valueOf(scrape, "tftpd_first_response_seconds_bucket", { protocol: "tftp", le: "0.00025" })).toBe(0);
    expect(valueOf(scrape, "tftpd_first_response_seconds_bucket", { protocol: "tftp", le: "0.0005" })).toBe(3);
    expect(valueOf(scrape, "tftpd_transfer_duration_seconds_sum", { protocol: "tftp" })).toBeCloseTo(0.06, 9);
    expect(valueOf(scrape, "tftpd_retransmits_total")).toBe(1);
    expect(valueOf(scrape, "tftpd_errors_sent_total", { code: "3" })).toBe(1);
    expect(valueOf(scrape, "tftpd_option_requests_total", { option: "tsize" })).toBe(3);
    expect(valueOf(scrape, "tftpd_size_probes_total")).toBe(1);
    expect(valueOf(scrape, "tftpd_stray_datagrams_total", { kind: "duplicate-request" })).toBe(2);
  }
});

test("with no scrape, the held observations are applied once PENDING_MAX are held", async () => {
  const m = metrics();
  for (let i = 0; i < PENDING_MAX; i++) m.transferEnded(record());
  // read one sample without a collect: the registry's JSON of a family that has no collect hook
  const histogram = m.registry.getSingleMetric("tftpd_first_response_seconds")!;
  const applied = (histogram as unknown as { hashMap: Record<string, { count: number }> }).hashMap;
  expect(Object.values(applied).reduce((n, v) => n + v.count, 0)).toBe(PENDING_MAX);
});

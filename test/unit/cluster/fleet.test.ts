/**
 * The fleet view without Redis: a heartbeat hash read back into a node's status (live, dead,
 * damaged fields), the sums, the greppable lines of `cluster status` and `metrics --cluster`,
 * the JSON of `metrics --cluster --json`, the shared cache lines, and the transfer tally.
 */
import { describe, expect, test } from "bun:test";
import {
  cacheLines,
  fleetLines,
  formatBytes,
  formatDuration,
  metricsJson,
  metricsLines,
  nodeStatus,
  summedFigures,
  type FleetStatus,
} from "../../../src/cluster/fleet.ts";
import { formatBits } from "../../../src/ops/summary.ts";
import { defaultNodeId, heartbeatFields, TransferTally, type NodeFigures } from "../../../src/cluster/heartbeat.ts";
import type { TransferRecord } from "../../../src/server/server.ts";
import { VERSION } from "../../../src/version.ts";

const NOW = Date.parse("2025-03-01T12:00:00Z");

const figures = (over: Partial<NodeFigures> = {}): NodeFigures => ({
  addresses: ["10.0.0.1:69", "[fd00::1]:69"],
  metricsUrl: "http://127.0.0.1:9469",
  activeTransfers: 3,
  transfersTotal: 120,
  failedTotal: 2,
  bytesSentTotal: 5 * 1024 ** 3,
  cacheBytes: 300 * 1024 ** 2,
  ...over,
});

/** The hash a node would write, read back as its status `agoMs` later. */
function live(id: string, over: Partial<NodeFigures> = {}, throughputBps = 1.2e9, agoMs = 1000) {
  const startedAt = new Date(NOW - 3_723_000);
  const fields = heartbeatFields({ id, hostname: id.split(":")[0]!, pid: 4242, startedAt }, figures(over), throughputBps, NOW - agoMs);
  return nodeStatus(id, NOW - agoMs, fields, NOW);
}

const fleet = (): FleetStatus => ({
  read_at_ms: NOW,
  nodes: [live("boot-a:69"), live("boot-b:69", { activeTransfers: 1, transfersTotal: 30, failedTotal: 0 }, 0.3e9), nodeStatus("boot-c:69", NOW - 42_000, {}, NOW)],
  pruned: 0,
});

describe("formatting figures", () => {
  test("bits per second in decimal units", () => {
    expect(formatBits(0)).toBe("0 bit/s");
    expect(formatBits(999)).toBe("999 bit/s");
    expect(formatBits(1500)).toBe("1.50 kbit/s");
    expect(formatBits(1.2e9)).toBe("1.20 Gbit/s");
    expect(formatBits(3e15)).toBe("3000.00 Tbit/s");
  });

  test("bytes in binary units", () => {
    expect(formatBytes(0)).toBe("0 B");
    expect(formatBytes(1023)).toBe("1023 B");
    expect(formatBytes(1536)).toBe("1.5 KiB");
    expect(formatBytes(300 * 1024 ** 2)).toBe("300.0 MiB");
    expect(formatBytes(5 * 1024 ** 3)).toBe("5.0 GiB");
  });

  test("durations as their two largest units", () => {
    expect(formatDuration(0)).toBe("0s");
    expect(formatDuration(42.9)).toBe("42s");
    expect(formatDuration(184)).toBe("3m04s");
    expect(formatDuration(3723)).toBe("1h02m");
    expect(formatDuration(2 * 86400 + 3 * 3600 + 59)).toBe("2d03h");
    expect(formatDuration(-5)).toBe("0s");
  });
});

describe("a heartbeat hash read back", () => {
  test("every field is a string, and reads back to the same figures", () => {
    const fields = heartbeatFields({ id: "boot-a:69", hostname: "boot-a", pid: 4242, startedAt: new Date(NOW - 12_500) }, figures(), 1.2e9, NOW);
    for (const value of Object.values(fields)) expect(typeof value).toBe("string");
    expect(fields).toMatchObject({ version: VERSION, uptime_s: "12", addresses: "10.0.0.1:69,[fd00::1]:69", redis: "up", throughput_bps: "1200000000" });
    expect(nodeStatus("boot-a:69", NOW, fields, NOW + 2400)).toEqual({
      state: "live",
      id: "boot-a:69",
      last_seen_ms: NOW,
      last_seen_s_ago: 2,
      hostname: "boot-a",
      pid: 4242,
      version: VERSION,
      addresses: ["10.0.0.1:69", "[fd00::1]:69"],
      metrics: "http://127.0.0.1:9469",
      started_at: new Date(NOW - 12_500).toISOString(),
      uptime_s: 12,
      active: 3,
      transfers_total: 120,
      failed_total: 2,
      bytes_sent_total: 5 * 1024 ** 3,
      throughput_bps: 1.2e9,
      cache_bytes: 300 * 1024 ** 2,
    });
  });

  test("no metrics endpoint and no addresses read back as null and []", () => {
    const fields = heartbeatFields({ id: "x:69", hostname: "x", pid: 1, startedAt: new Date(NOW) }, figures({ metricsUrl: null, addresses: [] }), 0, NOW);
    expect(nodeStatus("x:69", NOW, fields, NOW)).toMatchObject({ metrics: null, addresses: [] });
  });

  test("an expired hash (empty) is a dead node, last seen at its index score", () => {
    expect(nodeStatus("gone:69", NOW - 42_000, {}, NOW)).toEqual({ state: "dead", id: "gone:69", last_seen_ms: NOW - 42_000, last_seen_s_ago: 42 });
  });

  test("damaged numbers read as 0 rather than NaN; a clock ahead never shows a negative age", () => {
    const n = nodeStatus("odd:69", NOW + 5000, { id: "odd:69", active: "lots", transfers_total: "" }, NOW);
    expect(n).toMatchObject({ state: "live", active: 0, transfers_total: 0, failed_total: 0, last_seen_s_ago: 0, addresses: [] });
  });

  test("the default node id is the hostname and the port of the first address", () => {
    expect(defaultNodeId("boot-a", "10.0.0.1:69")).toBe("boot-a:69");
    expect(defaultNodeId("boot-a", "[fd00::1]:6969")).toBe("boot-a:6969");
    expect(defaultNodeId("boot-a", undefined)).toBe("boot-a:0");
  });
});

describe("sums", () => {
  test("the live nodes' figures are summed; dead nodes are only counted", () => {
    expect(summedFigures(fleet())).toEqual({
      live: 2,
      dead: 1,
      active: 4,
      throughput_bps: 1.5e9,
      transfers_total: 150,
      failed_total: 2,
      bytes_sent_total: 10 * 1024 ** 3,
      cache_bytes: 600 * 1024 ** 2,
    });
  });

  test("an empty fleet sums to zeros", () => {
    expect(summedFigures({ read_at_ms: NOW, nodes: [], pruned: 0 })).toMatchObject({ live: 0, dead: 0, active: 0, throughput_bps: 0 });
  });
});

describe("cluster status lines", () => {
  test("one line per node, live or dead, then the fleet line", () => {
    expect(fleetLines(fleet())).toEqual([
      `node boot-a:69 live version ${VERSION} up 1h02m active 3 throughput 1.20 Gbit/s transfers 120 failed 2 sent 5.0 GiB cache 300.0 MiB addresses 10.0.0.1:69,[fd00::1]:69 metrics http://127.0.0.1:9469 pid 4242`,
      `node boot-b:69 live version ${VERSION} up 1h02m active 1 throughput 300.00 Mbit/s transfers 30 failed 0 sent 5.0 GiB cache 300.0 MiB addresses 10.0.0.1:69,[fd00::1]:69 metrics http://127.0.0.1:9469 pid 4242`,
      "node boot-c:69 dead last seen 42s ago",
      "fleet live 2 dead 1 active 4 throughput 1.50 Gbit/s transfers 150 failed 2 sent 10.0 GiB cache 600.0 MiB",
    ]);
  });

  test("a node without metrics or addresses shows '-' so every line keeps its words", () => {
    const status: FleetStatus = { read_at_ms: NOW, nodes: [live("n:69", { metricsUrl: null, addresses: [] })], pruned: 0 };
    expect(fleetLines(status)[0]).toMatch(/ addresses - metrics - pid 4242$/);
  });

  test("an empty fleet is just the fleet line", () => {
    expect(fleetLines({ read_at_ms: NOW, nodes: [], pruned: 0 })).toEqual([
      "fleet live 0 dead 0 active 0 throughput 0 bit/s transfers 0 failed 0 sent 0 B cache 0 B",
    ]);
  });

  test("every line starts with a word to grep for", () => {
    for (const line of fleetLines(fleet())) expect(line).toMatch(/^(node|fleet) /);
  });
});

describe("metrics --cluster", () => {
  test("each node's headline figures, then the fleet line", () => {
    expect(metricsLines(fleet())).toEqual([
      "node boot-a:69 throughput 1.20 Gbit/s active 3 transfers 120 failed 2 sent 5.0 GiB cache 300.0 MiB",
      "node boot-b:69 throughput 300.00 Mbit/s active 1 transfers 30 failed 0 sent 5.0 GiB cache 300.0 MiB",
      "node boot-c:69 dead last seen 42s ago",
      "fleet live 2 dead 1 active 4 throughput 1.50 Gbit/s transfers 150 failed 2 sent 10.0 GiB cache 600.0 MiB",
    ]);
  });

  test("--json: the figures per node and summed", () => {
    const json = metricsJson(fleet());
    expect(json.nodes[0]).toEqual({
      id: "boot-a:69",
      state: "live",
      last_seen_s_ago: 1,
      throughput_bps: 1.2e9,
      active: 3,
      transfers_total: 120,
      failed_total: 2,
      bytes_sent_total: 5 * 1024 ** 3,
      cache_bytes: 300 * 1024 ** 2,
    });
    expect(json.nodes[2]).toEqual({ id: "boot-c:69", state: "dead", last_seen_s_ago: 42 });
    expect(json.fleet).toEqual(summedFigures(fleet()));
    expect(JSON.parse(JSON.stringify(json))).toEqual(json);
  });
});

describe("the shared cache lines", () => {
  test("one file line each, then the cache line with the totals", () => {
    const files = [
      { name: "boot/initrd.img", size: 200 * 1024 ** 2, stored: 150 * 1024 ** 2, sha256: "ab".repeat(32), compression: "gzip", lastServedMs: NOW - 12_000, expiresInS: 3540 },
      { name: "pxelinux.0", size: 42_000, stored: 42_000, sha256: "cd".repeat(32), compression: "none", lastServedMs: null, expiresInS: null },
    ];
    expect(cacheLines(files, NOW)).toEqual([
      "file boot/initrd.img size 200.0 MiB stored 150.0 MiB compression gzip sha256 abababababab last-served 12s ago expires-in 59m00s",
      "file pxelinux.0 size 41.0 KiB stored 41.0 KiB compression none sha256 cdcdcdcdcdcd last-served never expires-in never",
      "cache files 2 size 200.0 MiB stored 150.0 MiB",
    ]);
  });

  test("an empty cache is just the cache line", () => {
    expect(cacheLines([], NOW)).toEqual(["cache files 0 size 0 B stored 0 B"]);
  });
});

describe("the transfer tally", () => {
  const record = (over: Partial<TransferRecord>): TransferRecord => ({ direction: "read", bytes: 1000, result: "ok", ...over }) as TransferRecord;

  test("counts every transfer, fails timeouts and errors, and sums the bytes sent", () => {
    const tally = new TransferTally();
    tally.count(record({}));
    tally.count(record({ result: "probe", bytes: 0 }));
    tally.count(record({ result: "client-error", bytes: 512 }));
    tally.count(record({ result: "timeout", bytes: 2048 }));
    tally.count(record({ result: "error", bytes: 0 }));
    tally.count(record({ direction: "write", bytes: 99_999 }));
    expect({ transfers: tally.transfers, failed: tally.failed, bytesSent: tally.bytesSent }).toEqual({ transfers: 6, failed: 2, bytesSent: 3560 });
  });
});

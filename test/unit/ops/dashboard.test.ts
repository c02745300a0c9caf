/**
 * dashboards/tftpd.json: importable as is (datasource input, templating), panels laid out with
 * unique ids, and every PromQL expression names only metrics the real registry exposes.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ServerMetrics } from "../../../src/ops/metrics.ts";

interface Target {
  expr?: string;
  refId?: string;
  legendFormat?: string;
}
interface Panel {
  id?: number;
  type?: string;
  title?: string;
  gridPos?: { h: number; w: number; x: number; y: number };
  targets?: Target[];
  panels?: Panel[];
}
interface Dashboard {
  __inputs: { name: string; type: string; pluginId: string }[];
  schemaVersion: number;
  title: string;
  uid: string;
  panels: Panel[];
  templating: { list: { name: string; type: string; query?: unknown; definition?: string; datasource?: unknown }[] };
}

const PATH = join(import.meta.dir, "../../../dashboards/tftpd.json");
const text = readFileSync(PATH, "utf8");
const dashboard = JSON.parse(text) as Dashboard;

/** Panels, rows' nested panels included. */
function allPanels(panels: Panel[]): Panel[] {
  return panels.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);
}
const panels = allPanels(dashboard.panels);
const exprs = panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })));

/** Every name a PromQL query can use against the registry: base names and histogram series. */
async function exposedNames(): Promise<Set<string>> {
  const m = new ServerMetrics({
    activeTransfers: () => 0,
    cacheStats: () => ({ hits: 0, misses: 0, bypasses: 0, evictions: 0, bytes: 0, entries: 0 }),
  });
  const names = new Set<string>();
  for (const line of (await m.text()).split("\n")) {
    const type = /^# TYPE (\S+) (\S+)/.exec(line);
    if (type) {
      names.add(type[1]!);
      if (type[2] === "histogram") for (const suffix of ["_bucket", "_sum", "_count"]) names.add(`${type[1]}${suffix}`);
      if (type[2] === "summary") for (const suffix of ["_sum", "_count"]) names.add(`${type[1]}${suffix}`);
    } else if (line !== "" && !line.startsWith("#")) {
      names.add(/^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)![0]);
    }
  }
  return names;
}

describe("dashboards/tftpd.json", () => {
  let names: Set<string>;
  beforeAll(async () => {
    names = await exposedNames();
  });

  test("the registry exposes what the dashboard is built on", () => {
    for (const name of [
      "tftpd_transfers_total",
      "tftpd_first_response_seconds_bucket",
      "tftpd_process_cpu_seconds_total",
      "tftpd_event_loop_lag_p99_seconds",
    ]) {
      expect(names.has(name)).toBe(true);
    }
    expect(names.has("tftpd_no_such_metric_total")).toBe(false);
  });

  test("is importable: datasource input, schema version, title, uid", () => {
    expect(dashboard.__inputs).toContainEqual(expect.objectContaining({ name: "DS_PROMETHEUS", type: "datasource", pluginId: "prometheus" }));
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(dashboard.title).toBe("tftpd");
    expect(dashboard.uid).toMatch(/^[a-zA-Z0-9_-]{1,40}$/);
    expect(text).toContain("${DS_PROMETHEUS}");
  });

  test("templating: a Prometheus datasource variable and an instance variable", () => {
    const ds = dashboard.templating.list.find((v) => v.name === "datasource");
    expect(ds?.type).toBe("datasource");
    expect(ds?.query).toBe("prometheus");
    const instance = dashboard.templating.list.find((v) => v.name === "instance");
    expect(instance?.type).toBe("query");
    expect(instance?.definition).toBe("label_values(tftpd_transfers_total, instance)");
    expect(JSON.stringify(instance?.datasource)).toContain("${datasource}");
  });

  test("every panel has a unique id and a gridPos inside the 24-column grid", () => {
    const ids = panels.map((p) => p.id);
    for (const id of ids) expect(typeof id).toBe("number");
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels) {
      expect(p.gridPos).toBeDefined();
      const { h, w, x, y } = p.gridPos!;
      for (const n of [h, w, x, y]) expect(Number.isInteger(n) && n >= 0).toBe(true);
      expect(w).toBeGreaterThan(0);
      expect(h).toBeGreaterThan(0);
      expect(x + w).toBeLessThanOrEqual(24);
    }
  });

  test("the panels an operator needs are there, each with a query", () => {
    const titles = panels.filter((p) => p.type !== "row").map((p) => p.title ?? "");
    for (const wanted of [
      /throughput/i,
      /transfers\/s/i,
      /active transfers/i,
      /first-response/i,
      /duration/i,
      /retransmits/i,
      /errors/i,
      /admission/i,
      /size probes/i,
      /hit ratio/i,
      /cache bytes/i,
      /cpu/i,
      /memory/i,
      /event-loop/i,
      /file descriptors/i,
    ]) {
      expect(titles.some((t) => wanted.test(t))).toBe(true);
    }
    for (const p of panels) {
      if (p.type === "row") continue;
      expect(p.targets?.length ?? 0).toBeGreaterThan(0);
      const refIds = p.targets!.map((t) => t.refId);
      expect(new Set(refIds).size).toBe(refIds.length);
    }
  });

  test("every expression names only metrics the registry exposes", () => {
    expect(exprs.length).toBeGreaterThan(0);
    const unknown: string[] = [];
    for (const { panel, expr } of exprs) {
      expect(typeof expr).toBe("string");
      const used = expr!.match(/tftpd_[a-z0-9_]+/g) ?? [];
      expect(used.length).toBeGreaterThan(0);
      for (const name of used) if (!names.has(name)) unknown.push(`${panel}: ${name}`);
    }
    expect(unknown).toEqual([]);
  });

  test("expressions are filtered by the instance variable and histograms are quantiled over rates", () => {
    for (const { expr } of exprs) {
      expect(expr).toContain('instance=~"$instance"');
      if (expr!.includes("_bucket")) expect(expr).toMatch(/histogram_quantile\(0\.\d+, sum by \(le(, protocol)?\) \(rate\(tftpd_[a-z0-9_]+_bucket\{/);
      // counters are only ever used through a rate
      for (const counter of expr!.match(/tftpd_[a-z0-9_]+_total\b/g) ?? []) expect(expr).toContain(`rate(${counter}{`);
    }
  });

  test("the families TFTP and HTTP share are drawn per protocol, never as one blended quantile", () => {
    const targets = panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, ...t })));
    for (const family of ["tftpd_first_response_seconds_bucket", "tftpd_transfer_duration_seconds_bucket"]) {
      const uses = targets.filter((t) => t.expr?.includes(family));
      expect(uses.length).toBeGreaterThan(0);
      for (const t of uses) {
        expect(t.expr).toContain("sum by (le, protocol)");
        expect(t.legendFormat).toContain("{{protocol}}");
      }
    }
    const transfers = targets.filter((t) => t.expr?.includes("tftpd_transfers_total"));
    expect(transfers.map((t) => t.expr)).toEqual([expect.stringContaining("sum by (protocol, result)")]);
    // per node, sent bytes are told apart by protocol (the total line adds everything up)
    const sentPerNode = targets.filter((t) => t.expr?.includes("tftpd_sent_bytes_total") && t.expr.includes("by (instance"));
    expect(sentPerNode.map((t) => t.expr)).toEqual([expect.stringContaining("sum by (instance, protocol)")]);
  });
});

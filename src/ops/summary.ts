/**
 * Headline figures from a server's Prometheus text, one greppable line each, as the
 * datacenter guide uses them: `tftpd metrics | grep throughput` (or latency, connections).
 */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A sample value as the text format writes it: a float, or +Inf, -Inf, NaN. */
function parseValue(text: string): number {
  switch (text) {
    case "+Inf":
      return Infinity;
    case "-Inf":
      return -Infinity;
    case "NaN":
      return NaN;
    default:
      return Number(text);
  }
}

/** Label value escapes of the text format: \\, \" and \n. */
function unescapeLabel(text: string): string {
  return text.replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
}

/** Parses the Prometheus text format's sample lines (comments and blank lines skipped). */
export function parsePrometheus(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels: Record<string, string> = {};
    for (const pair of (match[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1]!] = unescapeLabel(pair[2]!);
    }
    samples.push({ name: match[1]!, labels, value: parseValue(match[3]!) });
  }
  return samples;
}

type LabelFilter = (labels: Record<string, string>) => boolean;

/** TFTP's series; a server from before the `protocol` label served TFTP alone. */
const tftp: LabelFilter = (l) => (l.protocol ?? "tftp") === "tftp";

function sum(samples: Sample[], name: string, filter: LabelFilter = () => true): number {
  let total = 0;
  for (const s of samples) if (s.name === name && filter(s.labels)) total += s.value;
  return total;
}

/**
 * A quantile from a cumulative histogram, interpolating inside the bucket (as PromQL does).
 * @param filter the series to take (all of them by default)
 */
export function histogramQuantile(samples: Sample[], name: string, q: number, filter: LabelFilter = () => true): number | null {
  // summed by bucket bound over every series taken, as `sum by (le)` does
  const byBound = new Map<number, number>();
  for (const s of samples) {
    if (s.name !== `${name}_bucket` || s.labels.le === undefined || !filter(s.labels)) continue;
    const le = parseValue(s.labels.le);
    byBound.set(le, (byBound.get(le) ?? 0) + s.value);
  }
  const buckets = [...byBound].map(([le, count]) => ({ le, count })).sort((a, b) => a.le - b.le);
  const total = buckets.at(-1)?.count ?? 0;
  if (total === 0) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const b of buckets) {
    if (b.count >= rank) {
      if (b.le === Infinity) return lower;
      const inBucket = b.count - below;
      return inBucket === 0 ? b.le : lower + ((b.le - lower) * (rank - below)) / inBucket;
    }
    lower = b.le;
    below = b.count;
  }
  return lower;
}

export interface Summary {
  throughput_bits_per_second: number | null;
  sent_bytes_total: number;
  received_bytes_total: number;
  latency_first_response_p50_ms: number | null;
  latency_first_response_p99_ms: number | null;
  connections_active: number;
  connections_total: number;
  transfers_failed: number;
  retransmits_total: number;
  retransmits_per_transfer: number | null;
  cache_hit_ratio: number | null;
  cpu_seconds_total: number;
  cpu_percent: number | null;
  memory_rss_bytes: number;
}

/**
 * Bytes, transfers and failures are TFTP's and HTTP's together (what the node served); the
 * first-response latency and retransmits per transfer are TFTP's alone, the figures the
 * datacenter guide compares with other TFTP servers (an HTTP download has no retransmits, and
 * its time to first byte would blend another distribution into the TFTP p99).
 * @param earlier a scrape taken `seconds` before `now`, for rates (throughput, CPU); without
 *   it the rates are null
 */
export function summarize(now: Sample[], earlier: Sample[] | null, seconds: number): Summary {
  const bytes = (s: Sample[]) => sum(s, "tftpd_sent_bytes_total") + sum(s, "tftpd_received_bytes_total");
  const cpu = (s: Sample[]) => sum(s, "tftpd_process_cpu_seconds_total");
  const transfers = sum(now, "tftpd_transfers_total");
  const tftpTransfers = sum(now, "tftpd_transfers_total", tftp);
  // HTTP's aborted is the client gone, as TFTP's client-error: neither is the server failing
  const failed: LabelFilter = (l) => (tftp(l) ? l.result === "timeout" || l.result === "error" : l.result === "failed");
  const retransmits = sum(now, "tftpd_retransmits_total");
  const hits = sum(now, "tftpd_cache_hits_total");
  const lookups = hits + sum(now, "tftpd_cache_misses_total") + sum(now, "tftpd_cache_bypasses_total");
  const p50 = histogramQuantile(now, "tftpd_first_response_seconds", 0.5, tftp);
  const p99 = histogramQuantile(now, "tftpd_first_response_seconds", 0.99, tftp);
  return {
    throughput_bits_per_second: earlier && seconds > 0 ? ((bytes(now) - bytes(earlier)) * 8) / seconds : null,
    sent_bytes_total: sum(now, "tftpd_sent_bytes_total"),
    received_bytes_total: sum(now, "tftpd_received_bytes_total"),
    latency_first_response_p50_ms: p50 === null ? null : p50 * 1000,
    latency_first_response_p99_ms: p99 === null ? null : p99 * 1000,
    connections_active: sum(now, "tftpd_active_transfers"),
    connections_total: transfers,
    transfers_failed: sum(now, "tftpd_transfers_total", failed),
    retransmits_total: retransmits,
    retransmits_per_transfer: tftpTransfers > 0 ? retransmits / tftpTransfers : null,
    cache_hit_ratio: lookups > 0 ? hits / lookups : null,
    cpu_seconds_total: cpu(now),
    cpu_percent: earlier && seconds > 0 ? ((cpu(now) - cpu(earlier)) / seconds) * 100 : null,
    memory_rss_bytes: sum(now, "tftpd_process_resident_memory_bytes"),
  };
}

/** 1_200_000_000 → "1.20 Gbit/s" */
export function formatBits(n: number): string {
  const units = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 2)} ${units[i]}`;
}

function mib(n: number): string {
  return `${(n / 1048576).toFixed(1)} MiB`;
}

const ms = (v: number | null): string => (v === null ? "n/a" : `${v.toFixed(3)} ms`);

/** One line per headline figure, each starting with the word to grep for. */
export function summaryLines(s: Summary, seconds: number): string[] {
  return [
    `throughput ${s.throughput_bits_per_second === null ? "n/a" : formatBits(s.throughput_bits_per_second)} over ${seconds} s (sent ${mib(s.sent_bytes_total)}, received ${mib(s.received_bytes_total)} in all)`,
    `latency first-response p50 ${ms(s.latency_first_response_p50_ms)} p99 ${ms(s.latency_first_response_p99_ms)}`,
    `connections active ${s.connections_active} total ${s.connections_total} failed ${s.transfers_failed}`,
    `retransmits ${s.retransmits_total} (${s.retransmits_per_transfer === null ? "n/a" : s.retransmits_per_transfer.toFixed(3)} per transfer)`,
    `cache hit-ratio ${s.cache_hit_ratio === null ? "n/a" : `${(s.cache_hit_ratio * 100).toFixed(1)} %`}`,
    `cpu ${s.cpu_percent === null ? "n/a" : `${s.cpu_percent.toFixed(1)} %`} (${s.cpu_seconds_total.toFixed(2)} s in all)`,
    `memory rss ${mib(s.memory_rss_bytes)}`,
  ];
}

/**
 * What `tftpd bench` counts per transfer, and the result it reports: the JSON object of
 * `--json` (these names are parsed by the side-by-side benchmark script: keep them) and the
 * human form, one figure per line.
 */
import type { TransferReport } from "../client/types.ts";
import { type Percentiles, round, Samples } from "./stats.ts";

/** Why a transfer failed: "timeout", "server error N", "verify", "local" (or "aborted"). */
export function failureReason(report: TransferReport): string {
  const e = report.error;
  if (e === undefined) return "local";
  if (e.source === "timeout") return "timeout";
  if (e.source === "server") return `server error ${e.code}`;
  return e.message === "aborted" ? "aborted" : "local";
}

export interface BenchResult {
  target: string;
  files: string[];
  concurrency: number;
  rate: number | null;
  /** Transfers started. */
  requested: number;
  completed: number;
  failed: number;
  /** Failed transfers by reason. */
  failures: Record<string, number>;
  /** Payload bytes of completed transfers. */
  bytes: number;
  /** First request → last transfer end, seconds. */
  wall_s: number;
  goodput_mbps: number;
  transfers_per_s: number;
  /** Request sent → first OACK/DATA/ERROR, over every transfer the server answered. */
  first_response_ms: Percentiles;
  /** Whole transfer, over completed transfers. */
  transfer_ms: Percentiles;
  retransmits: number;
  /** The bench's own CPU time. */
  cpu_s: { user: number; system: number };
  /** cpu_s user + system as % of one core over wall_s. */
  cpu_pct: number;
  /** Open loop: arrivals started more than 5 ms late (concurrency cap full, or a busy client). */
  late_starts: number;
  max_start_lag_ms: number;
}

export class Tally {
  completed = 0;
  failed = 0;
  bytes = 0;
  retransmits = 0;
  readonly failures = new Map<string, number>();
  /** The first message seen per failure reason, to show what "local" was. */
  readonly examples = new Map<string, string>();
  readonly firstResponse: Samples;
  readonly transfer: Samples;

  constructor(expected: number) {
    this.firstResponse = new Samples(expected);
    this.transfer = new Samples(expected);
  }

  /** One finished transfer; `verifyFailed` turns an ok download into a "verify" failure. */
  add(report: TransferReport, verifyFailed = false): void {
    this.retransmits += report.retransmits;
    if (report.firstResponseMs !== null) this.firstResponse.push(report.firstResponseMs);
    if (report.ok && !verifyFailed) {
      this.completed++;
      this.bytes += report.bytes;
      this.transfer.push(report.durationMs);
      return;
    }
    this.failed++;
    const reason = report.ok ? "verify" : failureReason(report);
    this.failures.set(reason, (this.failures.get(reason) ?? 0) + 1);
    if (!this.examples.has(reason)) {
      this.examples.set(reason, report.ok ? "sha256 differs from the --verify file" : (report.error?.message ?? "failed"));
    }
  }
}

export interface ResultInputs {
  target: string;
  files: string[];
  concurrency: number;
  rate: number | null;
  requested: number;
  wallMs: number;
  cpu: { user: number; system: number }; // microseconds, as process.cpuUsage()
  lateStarts: number;
  maxLagMs: number;
}

export function buildResult(t: Tally, i: ResultInputs): BenchResult {
  const wallS = Math.max(i.wallMs, 0) / 1000;
  const user = i.cpu.user / 1e6;
  const system = i.cpu.system / 1e6;
  const failures: Record<string, number> = {};
  for (const [reason, n] of [...t.failures].sort((a, b) => b[1] - a[1])) failures[reason] = n;
  return {
    target: i.target,
    files: i.files,
    concurrency: i.concurrency,
    rate: i.rate,
    requested: i.requested,
    completed: t.completed,
    failed: t.failed,
    failures,
    bytes: t.bytes,
    wall_s: round(wallS, 6) ?? 0,
    goodput_mbps: wallS > 0 ? (round((t.bytes * 8) / wallS / 1e6, 3) ?? 0) : 0,
    transfers_per_s: wallS > 0 ? (round(t.completed / wallS, 2) ?? 0) : 0,
    first_response_ms: roundAll(t.firstResponse.percentiles()),
    transfer_ms: roundAll(t.transfer.percentiles()),
    retransmits: t.retransmits,
    cpu_s: { user: round(user, 3) ?? 0, system: round(system, 3) ?? 0 },
    cpu_pct: wallS > 0 ? (round(((user + system) / wallS) * 100, 1) ?? 0) : 0,
    late_starts: i.lateStarts,
    max_start_lag_ms: round(i.maxLagMs, 3) ?? 0,
  };
}

function roundAll(p: Percentiles): Percentiles {
  return { p50: round(p.p50), p90: round(p.p90), p99: round(p.p99), max: round(p.max) };
}

function ms(v: number | null): string {
  return v === null ? "-" : `${v.toFixed(3)} ms`;
}

/** The human report: one figure per line, `name: value [unit]`, greppable. */
export function formatHuman(r: BenchResult, examples: ReadonlyMap<string, string> = new Map()): string {
  const lines = [
    `target: ${r.target}`,
    `files: ${r.files.join(" ")}`,
    `concurrency: ${r.concurrency}`,
    `rate: ${r.rate === null ? "closed loop" : `${r.rate}/s`}`,
    `requested: ${r.requested}`,
    `completed: ${r.completed}`,
    `failed: ${r.failed}`,
    `bytes: ${r.bytes}`,
    `wall: ${r.wall_s.toFixed(3)} s`,
    `goodput: ${r.goodput_mbps.toFixed(2)} Mbit/s`,
    `transfers/s: ${r.transfers_per_s.toFixed(1)}`,
  ];
  for (const k of ["p50", "p90", "p99", "max"] as const) lines.push(`first response ${k}: ${ms(r.first_response_ms[k])}`);
  for (const k of ["p50", "p90", "p99", "max"] as const) lines.push(`transfer ${k}: ${ms(r.transfer_ms[k])}`);
  const reasons = Object.entries(r.failures);
  if (reasons.length === 0) lines.push("failures: none");
  for (const [reason, n] of reasons) {
    const example = examples.get(reason);
    lines.push(`failures ${reason}: ${n}${example && example !== reason ? ` (${example})` : ""}`);
  }
  lines.push(`retransmits: ${r.retransmits}`);
  if (r.rate !== null) {
    lines.push(`late starts: ${r.late_starts}`);
    lines.push(`max start lag: ${r.max_start_lag_ms.toFixed(3)} ms`);
  }
  lines.push(`cpu user: ${r.cpu_s.user.toFixed(3)} s`);
  lines.push(`cpu system: ${r.cpu_s.system.toFixed(3)} s`);
  lines.push(`cpu: ${r.cpu_pct.toFixed(1)} % of one core`);
  return `${lines.join("\n")}\n`;
}

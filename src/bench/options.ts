/**
 * `tftpd bench` flags → a checked plan (minus the resolved address), and the open-file check.
 * Pure: a bad value throws a UsageError whose message names the flag; the CLI exits 2.
 */
import { readFileSync } from "node:fs";
import { checkTransferOptions } from "../client/session.ts";
import type { BenchPlan } from "./run.ts";

export class UsageError extends Error {}

export interface BenchFlags {
  concurrency?: string;
  total?: string;
  duration?: string;
  rate?: string;
  burst?: boolean;
  blksize?: string;
  windowsize?: string;
  timeout?: string;
  tsize?: boolean;
  retries?: string;
  /** false: --no-backoff */
  backoff?: boolean;
  /** Every --file, in order. */
  files: string[];
  /** Every --verify, in order. */
  verify: string[];
}

export type BenchSettings = Omit<BenchPlan, "host" | "port" | "target" | "verify"> & { verifyFiles: string[] };

const DEFAULT_CONCURRENCY = 10;
/** Without --total or --duration: this many transfers per session slot. */
const DEFAULT_ROUNDS = 10;
/** Open files besides the sockets: stdio, the event loop, the --verify file, slack. */
export const FD_MARGIN = 100;

function int(name: string, value: string | undefined, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  if (!/^[0-9]{1,12}$/.test(value)) throw new UsageError(`--${name}: not a whole number: "${value}"`);
  const n = Number(value);
  if (n < min || n > max) throw new UsageError(`--${name} must be from ${min} to ${max}, got ${n}`);
  return n;
}

function positive(name: string, value: string | undefined, max: number): number | undefined {
  if (value === undefined) return undefined;
  if (!/^([0-9]+\.?[0-9]*|\.[0-9]+)$/.test(value)) throw new UsageError(`--${name}: not a number: "${value}"`);
  const n = Number(value);
  if (!(n > 0) || n > max) throw new UsageError(`--${name} must be more than 0 and at most ${max}, got ${value}`);
  return n;
}

export function parseBenchFlags(f: BenchFlags): BenchSettings {
  const concurrency = int("concurrency", f.concurrency, 1, 1_000_000) ?? DEFAULT_CONCURRENCY;
  let total = int("total", f.total, 1, 1e12) ?? null;
  const durationS = positive("duration", f.duration, 1e7);
  const rate = positive("rate", f.rate, 1e7) ?? null;
  if (f.burst && rate !== null) throw new UsageError("--burst starts a closed-loop wave at once; it cannot go with --rate");
  if (total === null && durationS === undefined) total = concurrency * DEFAULT_ROUNDS;
  if (f.files.length === 0) throw new UsageError("name at least one --file to fetch");
  for (const file of f.files) {
    if (file === "" || file.includes("\0")) throw new UsageError("--file: empty name or a NUL in it");
  }
  if (f.verify.length > 1 && f.verify.length !== f.files.length) {
    throw new UsageError(`--verify: give one file, or one per --file (${f.files.length}), not ${f.verify.length}`);
  }
  const transfer = {
    blksize: int("blksize", f.blksize, 0, 1e9),
    windowsize: int("windowsize", f.windowsize, 0, 1e9),
    timeoutSeconds: int("timeout", f.timeout, 0, 1e9),
    retries: int("retries", f.retries, 0, 1e9),
    backoff: f.backoff !== false,
    tsize: f.tsize === true,
  };
  try {
    checkTransferOptions({ host: "", port: 69, remote: "x", ...transfer });
  } catch (e) {
    throw new UsageError(`--${(e as Error).message}`);
  }
  return {
    files: f.files,
    concurrency,
    total,
    durationMs: durationS === undefined ? null : durationS * 1000,
    rate,
    burst: f.burst === true,
    transfer,
    verifyFiles: f.verify,
  };
}

/** The soft RLIMIT_NOFILE of this process from /proc/self/limits, or null when unknown. */
export function openFileLimit(limitsText?: string): number | null {
  let text = limitsText;
  if (text === undefined) {
    try {
      text = readFileSync("/proc/self/limits", "utf8");
    } catch {
      return null;
    }
  }
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text);
  if (m === null) return null;
  return m[1] === "unlimited" ? Number.POSITIVE_INFINITY : Number(m[1]);
}

/** One line saying what to raise when `concurrency` sockets will not fit under `limit`; else null. */
export function fdLimitProblem(concurrency: number, limit: number | null): string | null {
  if (limit === null || concurrency + FD_MARGIN <= limit) return null;
  const need = concurrency + FD_MARGIN;
  return (
    `--concurrency ${concurrency} needs about ${need} open files (one UDP socket per session) but the limit is ${limit}:` +
    ` raise it (ulimit -n ${need}, or LimitNOFILE=${need} in a systemd unit) or lower --concurrency to ${Math.max(1, limit - FD_MARGIN)}`
  );
}

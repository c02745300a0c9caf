/**
 * The load generator behind `tftpd bench`: RRQ sessions on the same client engine as
 * `tftpd get`, started by the ArrivalScheduler, each counted into a Tally.
 *
 * Per session: one UDP socket (the engine's), no timers of its own beyond the engine's one
 * retransmit timer, and no copy of the data: the payload is only counted, or fed to an
 * incremental sha256 with --verify (DATA arrives in order). Sessions close at once after
 * the final ACK (no dally), so the sockets open stay at `concurrency`.
 */
import { download } from "../client/download.ts";
import type { TransferOptions } from "../client/types.ts";
import { ArrivalScheduler, type Launch, type Timers, realTimers } from "./schedule.ts";
import { type BenchResult, buildResult, Tally } from "./tally.ts";

export interface BenchPlan {
  /** IP literal and port to send to, and how to name the target in the report. */
  host: string;
  port: number;
  target: string;
  /** Remote names; session k asks for files[k % files.length]. */
  files: string[];
  concurrency: number;
  /** Transfers in all; null: until durationMs. */
  total: number | null;
  durationMs: number | null;
  /** Arrivals per second (open loop), or null (closed loop). */
  rate: number | null;
  /** Closed loop: open every first-wave socket, then send all their requests at one instant. */
  burst: boolean;
  transfer: Pick<TransferOptions, "blksize" | "windowsize" | "timeoutSeconds" | "tsize" | "retries" | "backoff">;
  /** sha256 digests to check downloads against: one for every file, or one per file. */
  verify: Uint8Array[] | null;
}

const NOOP = (): void => {};

/** sha256 of a local file, read as a stream. */
export async function sha256OfFile(path: string): Promise<Uint8Array> {
  const hasher = new Bun.CryptoHasher("sha256");
  for await (const chunk of Bun.file(path).stream()) hasher.update(chunk);
  return new Uint8Array(hasher.digest());
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Lines up the first `size` sessions: each arrives once its socket is open (or leaves when it
 * failed before), and all are released together when the last one is in.
 */
class Barrier {
  private waiting: number;
  private readonly arrived: Uint8Array;
  private readonly gate = Promise.withResolvers<void>();
  /** timers.now() when the gate opened, or null. */
  openedAt: number | null = null;

  constructor(
    size: number,
    private readonly now: () => number,
  ) {
    this.waiting = size;
    this.arrived = new Uint8Array(size);
    if (size === 0) this.open();
  }

  arrive(index: number): Promise<void> {
    this.mark(index);
    return this.gate.promise;
  }

  leave(index: number): void {
    this.mark(index);
  }

  private mark(index: number): void {
    if (this.arrived[index] === 1) return;
    this.arrived[index] = 1;
    if (--this.waiting === 0) this.open();
  }

  private open(): void {
    this.openedAt = this.now();
    this.gate.resolve();
  }
}

export class Bench {
  readonly scheduler: ArrivalScheduler;
  readonly tally: Tally;
  /** Set when the run starts: timers.now() and process.cpuUsage(). */
  private startedAt = 0;
  private cpuAtStart: NodeJS.CpuUsage | null = null;
  private lastEnd: number | null = null;
  private readonly barrier: Barrier | null;
  private readonly wave: number;
  /** One controller per transfer in flight, so an interrupt can end each one cleanly. */
  private readonly inFlight = new Set<AbortController>();

  constructor(
    private readonly plan: BenchPlan,
    private readonly timers: Timers = realTimers,
  ) {
    if (plan.files.length === 0) throw new Error("no files to fetch");
    if (plan.verify !== null && plan.verify.length !== 1 && plan.verify.length !== plan.files.length) {
      throw new Error("give one --verify file, or one per --file");
    }
    this.wave = plan.burst && plan.rate === null ? Math.min(plan.concurrency, plan.total ?? plan.concurrency) : 0;
    this.barrier = this.wave > 0 ? new Barrier(this.wave, () => this.timers.now()) : null;
    this.tally = new Tally(plan.total ?? 4096);
    this.scheduler = new ArrivalScheduler(plan, this.launch, timers);
  }

  /** Runs the whole schedule; resolves with the result once every transfer has ended. */
  async run(): Promise<BenchResult> {
    this.startedAt = this.timers.now();
    this.cpuAtStart = process.cpuUsage();
    await this.scheduler.run();
    return this.result();
  }

  /** Starts nothing more; transfers in flight go on. */
  stop(): void {
    this.scheduler.stop();
  }

  /**
   * Starts nothing more and aborts every transfer in flight: each tells its server with an
   * ERROR (so the server under test does not keep them until it times out) and counts as a
   * failure "aborted"; `run` then resolves as soon as their reports are in.
   */
  abort(): void {
    this.scheduler.stop();
    for (const controller of [...this.inFlight]) controller.abort();
  }

  /** The result so far (the final one once `run` resolved). */
  result(): BenchResult {
    const cpu = process.cpuUsage(this.cpuAtStart ?? undefined);
    const t0 = this.barrier?.openedAt ?? (this.scheduler.started > 0 ? this.scheduler.t0 : this.startedAt);
    const end = this.lastEnd ?? t0;
    return buildResult(this.tally, {
      target: this.plan.target,
      files: this.plan.files,
      concurrency: this.plan.concurrency,
      rate: this.plan.rate,
      requested: this.scheduler.started,
      wallMs: end - t0,
      cpu,
      lateStarts: this.scheduler.lateStarts,
      maxLagMs: this.scheduler.maxLagMs,
    });
  }

  private readonly launch: Launch = (index, _lagMs, done) => {
    const plan = this.plan;
    const fileIndex = index % plan.files.length;
    const expected = plan.verify === null ? null : plan.verify[plan.verify.length === 1 ? 0 : fileIndex]!;
    const hasher = expected === null ? null : new Bun.CryptoHasher("sha256");
    const barrier = index < this.wave ? this.barrier : null;
    const controller = new AbortController();
    this.inFlight.add(controller);
    download({
      host: plan.host,
      port: plan.port,
      remote: plan.files[fileIndex]!,
      ...plan.transfer,
      dallyMs: 0,
      onData: hasher === null ? NOOP : (chunk) => void hasher.update(chunk),
      beforeRequest: barrier === null ? undefined : () => barrier.arrive(index),
      signal: controller.signal,
    }).then((report) => {
      this.inFlight.delete(controller);
      barrier?.leave(index);
      const verifyFailed = report.ok && hasher !== null && !sameBytes(new Uint8Array(hasher.digest()), expected!);
      this.tally.add(report, verifyFailed);
      this.lastEnd = this.timers.now();
      done();
    });
  };
}

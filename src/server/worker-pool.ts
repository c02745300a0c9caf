/**
 * The transfer workers, seen from the main thread: starts them, hands each a transfer,
 * learns how transfers end, and replaces a worker that dies (its transfers are reported as
 * failed so their slots and files are released; the other workers keep serving).
 */
import type { FileIdentity, SourceShare } from "../storage/source.ts";
import type { EndHandler, RepeatVerdict, TransferJob } from "./engine.ts";
import type { TransferOutcome } from "./transfer.ts";
import type { SlotStats } from "./transfer-slots.ts";
import { closeWake, wakeLoop } from "../net/io-loop.ts";
import { netLibc } from "../net/libc.ts";
import { WakeGate } from "../net/wake-gate.ts";
import type { ProfiledWorkers, ThreadCpuProfile, WorkerProfileOutcome } from "../ops/profiler.ts";
import { asText, receivedMessage, type FromWorker, type IoLoopKind, type ListenSpec, type Posted, type ToWorker, type WorkerInit, type WorkerThread } from "./worker-protocol.ts";
import type { Peer } from "./transport.ts";
import type { FastPathSettings, FastStart, PublishedCopy } from "./fast-path.ts";
import type { RateLimitSummary } from "./request-rate.ts";

/**
 * From source, the worker file sits next to this one. In a compiled binary everything is
 * bundled into the main entry and the worker is a separate entry point, found by its path
 * relative to the entry points' common root (src/) inside the binary's virtual file system.
 */
const WORKER_URL = import.meta.url.includes("/$bunfs/") ? "./server/worker.ts" : new URL("./worker.ts", import.meta.url).href;

interface Slot {
  worker: Worker;
  ready: Promise<void>;
  jobs: Set<number>;
  stopping: boolean;
  /** set when the worker reported an uncaught error before exiting */
  crash: { message: string; ended: number } | null;
  /** the worker's epoll loop sleeps in epoll_wait: a message to it is followed by a write here when `gate` says */
  wakeFd: number | null;
  /** whether its loop may be asleep, shared with it: every message sent is counted here */
  gate: WakeGate;
  ioLoop: IoLoopKind | null;
  /** its thread, once it is ready */
  thread: WorkerThread | null;
  /** what its transfer slot pool held when it last said (null: it keeps none) */
  transferSlots: SlotStats | null;
  /** its sockets in the listeners' groups (listen): closed here if it dies, or they would swallow its share */
  listenFds: number[];
}

/** A worker's part of a profile: its samples, or why it gave none. */
type ProfileAnswer = { profile: ThreadCpuProfile; missing: null } | { profile: null; missing: string };

/**
 * Questions asked of workers, by sequence number. Each is answered once: by its worker, or for
 * it when the worker exits or the pool stops, so no caller waits on a worker that is gone.
 */
class PendingAnswers<T> {
  private last = 0;
  private readonly waiting = new Map<number, { slot: Slot; resolve: (answer: T) => void }>();

  ask(slot: Slot): { seq: number; answer: Promise<T> } {
    const seq = ++this.last;
    const { promise, resolve } = Promise.withResolvers<T>();
    this.waiting.set(seq, { slot, resolve });
    return { seq, answer: promise };
  }

  answer(seq: number, answer: T): void {
    const pending = this.waiting.get(seq);
    if (!pending) return;
    this.waiting.delete(seq);
    pending.resolve(answer);
  }

  /** Answers every question `slot` (every one, when null) has not answered. */
  answerFor(slot: Slot | null, answer: T): void {
    for (const [seq, pending] of this.waiting) if (slot === null || pending.slot === slot) this.answer(seq, answer);
  }
}

/** How often workers are asked to trim their transfer slot pools and say what they hold. */
const SLOT_REPORT_MS = 1000;

export interface PoolEvents {
  end: EndHandler;
  /** a job that could not start in its worker */
  failed(id: number, message: string): void;
  /**
   * a worker died and is being replaced; `endedWithError`: its transfers that it ended with an
   * ERROR to their clients before it went (a worker that threw); `lost`: those it could not
   * end itself (it was killed), reported as failed without a word to their clients
   */
  workerExit?(index: number, exit: WorkerExit): void;
  /** a datagram a worker took from listener `listener`'s group (listen); `rateChecked`: its source's rate was taken there */
  request?(listener: number, bytes: Uint8Array, peer: Peer, receivedAtEpoch: number, rateChecked: boolean): void;
  /** a transfer worker `index` took itself (fast-path.ts); its end comes as any other's */
  started?(index: number, start: FastStart): void;
}

const workerLost = (): TransferOutcome => ({
  result: "error",
  bytes: 0,
  retransmits: 0,
  firstResponseMs: 0,
  error: { code: 0, message: "transfer worker stopped", from: "server" },
});

export interface WorkerExit {
  /** why it went: the uncaught error's message, or "exited" */
  reason: string;
  endedWithError: number;
  lost: number;
}

export class WorkerPool implements ProfiledWorkers {
  private readonly slots: Slot[] = [];
  /** transfers handed to each worker index since start (a replacement continues the count) */
  private readonly dispatched: number[] = [];
  /** requests each worker took from the listen ports (listen), as the tests read them */
  private readonly taken: number[] = [];
  /** of those, the transfers each worker started itself (fast-path.ts) */
  private readonly startedThere: number[] = [];
  private stopping = false;
  /** requestAgain questions waiting for their worker's answer, by sequence number */
  private readonly repeats = new PendingAnswers<RepeatVerdict>();
  /** profiles asked of workers and not answered yet */
  private readonly profiles = new PendingAnswers<ProfileAnswer>();
  /** what workers take themselves (fast-path.ts), for a worker started in place of one that died */
  private fastSettings: FastPathSettings | null = null;
  private readonly rates = new PendingAnswers<RateLimitSummary>();
  /** what workers listen on (listen), for a worker started in place of one that died */
  private listenSpecs: ListenSpec[] | null = null;
  /** answers to "listen": each worker's listen descriptors, or why it has none */
  private readonly listens = new PendingAnswers<{ fds: number[] | null; error: string | null }>();
  private slotReports: ReturnType<typeof setInterval> | null = null;
  /** transfer slots made by workers that have since been replaced */
  private retiredSlotAllocations = 0;
  private retiredSlotReuses = 0;

  constructor(
    private readonly count: number,
    /** what every worker starts with; its CPUs, the test switch and its wake gate are its own */
    private readonly init: Omit<WorkerInit, "cpus" | "wakeGate">,
    /** performance.cpu.affinity: the CPUs of worker i (a replacement takes its CPUs over) */
    private readonly cpus: readonly (readonly number[] | null)[],
    private readonly events: PoolEvents,
  ) {}

  get size(): number {
    return this.slots.length;
  }

  /** transfers running on each worker */
  get loads(): number[] {
    return this.slots.map((s) => s.jobs.size);
  }

  /** the I/O loop each worker runs (null until it is ready) */
  get ioLoops(): (IoLoopKind | null)[] {
    return this.slots.map((s) => s.ioLoop);
  }

  /** each worker's thread (null until it is ready) */
  get threads(): (WorkerThread | null)[] {
    return this.slots.map((s) => s.thread);
  }

  /**
   * The transfer slots of every worker together, as last reported (within SLOT_REPORT_MS);
   * null when no worker keeps any (Bun's sockets).
   */
  get transferSlots(): SlotStats | null {
    const reports = this.slots.map((s) => s.transferSlots).filter((r): r is SlotStats => r !== null);
    if (reports.length === 0) return null;
    const sum = { idle: 0, busy: 0, allocated: this.retiredSlotAllocations, reused: this.retiredSlotReuses };
    for (const r of reports) {
      sum.idle += r.idle;
      sum.busy += r.busy;
      sum.allocated += r.allocated;
      sum.reused += r.reused;
    }
    return sum;
  }

  /** transfers handed to each worker since the pool started, running or ended */
  get started(): number[] {
    return [...this.dispatched];
  }

  /** per worker, whether its sockets are in the listeners' groups now */
  get listening(): boolean[] {
    return this.slots.map((slot) => slot.listenFds.length > 0);
  }

  /** datagrams each worker took from the listen ports since the pool started */
  get requestsTaken(): number[] {
    return [...this.taken];
  }

  /** transfers each worker started itself, without the main thread's request path (fast-path.ts) */
  get transfersStartedThere(): number[] {
    return [...this.startedThere];
  }

  async start(): Promise<void> {
    for (let i = 0; i < this.count; i++) {
      // the test switch makes the first worker throw once; its replacement starts clean
      this.slots.push(this.spawn(i, i === 0 ? (this.init.throwAfterJobs ?? null) : null));
      this.dispatched.push(0);
      this.taken.push(0);
      this.startedThere.push(0);
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("transfer workers did not start within 10 s")), 10_000);
    });
    try {
      await Promise.race([Promise.all(this.slots.map((s) => s.ready)), timeout]);
    } finally {
      clearTimeout(timer);
    }
    if (this.slots.some((s) => s.transferSlots !== null)) {
      this.slotReports = setInterval(() => {
        for (const slot of this.slots) if (slot.transferSlots !== null) this.send(slot, { type: "slots" });
      }, SLOT_REPORT_MS);
      this.slotReports.unref();
    }
  }

  dispatch(index: number, job: TransferJob, share: SourceShare, identity: FileIdentity): void {
    const slot = this.slots[index]!;
    slot.jobs.add(job.id);
    this.dispatched[index]!++;
    this.send(slot, asText<ToWorker>({ type: "read", job, share, identity }));
  }

  /** Asks worker `index` how to take a request repeated by the client of its transfer `id`. */
  requestAgain(index: number, id: number, same: boolean): Promise<RepeatVerdict> {
    const slot = this.slots[index];
    if (!slot?.jobs.has(id)) return Promise.resolve("unknown");
    const { seq, answer } = this.repeats.ask(slot);
    this.send(slot, { type: "requestAgain", id, same, seq });
    return answer;
  }

  /** More of a cached copy being made is readable: every worker's readers of it may go on. */
  progress(entryId: number, readable: number): void {
    for (const slot of this.slots) this.send(slot, { type: "progress", entryId, readable });
  }

  /** A cached copy is sealed on the main thread: workers reading it map it. */
  filled(entryId: number, fd: number, size: number): void {
    for (const slot of this.slots) this.send(slot, { type: "filled", entryId, fd, size });
  }

  /** A cached copy being made failed: its readers in every worker stop. */
  fillFailed(entryId: number, reason: string): void {
    for (const slot of this.slots) this.send(slot, { type: "fillFailed", entryId, reason });
  }

  /** A cached copy was closed on the main thread: every worker drops its mapping. */
  release(entryId: number): void {
    for (const slot of this.slots) this.send(slot, { type: "release", entryId });
  }

  /**
   * Every worker starts sampling its own thread (tftpd profile). `collect` stops them and
   * gives each worker's samples, or why it gave none: it exited meanwhile (a replacement
   * started during the profile is not in it), or it did not answer within `marginMs` of the
   * stop (held up in a long turn), which ends the wait.
   */
  startProfiles(intervalUs: number, limit: number): { collect(marginMs: number): Promise<WorkerProfileOutcome[]> } {
    const asked = this.slots.map((slot, index) => {
      const { seq, answer } = this.profiles.ask(slot);
      this.send(slot, { type: "profileStart", seq, intervalUs, limit });
      return { index, slot, seq, answer };
    });
    const collect = async (marginMs: number): Promise<WorkerProfileOutcome[]> => {
      for (const { slot, seq } of asked) this.send(slot, { type: "profileStop", seq });
      const timer = setTimeout(() => {
        const late = `no profile within ${marginMs / 1000} s of the end (the worker was held up)`;
        for (const { seq } of asked) this.profiles.answer(seq, { profile: null, missing: late });
      }, marginMs);
      try {
        const answers = await Promise.all(asked.map((a) => a.answer));
        return asked.map((a, i) => ({ index: a.index, tid: a.slot.thread?.tid ?? null, ...answers[i]! }));
      } finally {
        clearTimeout(timer);
      }
    };
    return { collect };
  }

  /**
   * Every worker joins the listen sockets' groups (SO_REUSEPORT set on the main thread's
   * sockets first) and hands what it receives there to events.request; a worker started in
   * place of one that died joins them too. Returns each worker's descriptors, one per
   * listener, in worker order; throws with the first worker's refusal.
   */
  async listen(listeners: ListenSpec[]): Promise<number[][]> {
    this.listenSpecs = listeners;
    // one after another: worker i is then i + 1 in each group, as steering counts them
    const answers: { fds: number[] | null; error: string | null }[] = [];
    for (const slot of this.slots) answers.push(await this.listenOn(slot, listeners));
    return answers.map((answer, index) => {
      if (answer.fds === null) throw new Error(`transfer worker ${index} could not listen: ${answer.error ?? "no reason given"}`);
      return answer.fds;
    });
  }

  /** Every worker leaves the listeners' groups (the server drains): resolves once they have. */
  async unlisten(): Promise<void> {
    this.listenSpecs = null;
    await Promise.all(this.slots.map((slot) => this.listenOn(slot, [])));
  }

  /** Workers take eligible requests themselves with these settings (null: none). */
  fastPath(settings: FastPathSettings | null): void {
    this.fastSettings = settings;
    for (const slot of this.slots) this.send(slot, { type: "fastPath", settings });
  }

  /** A path served from a sealed cached copy: every worker may serve it too. */
  publish(copy: PublishedCopy): void {
    for (const slot of this.slots) this.send(slot, { type: "publish", copy });
  }

  /** What each worker dropped over the request rate since the last ask. */
  async rateSummaries(): Promise<RateLimitSummary[]> {
    return Promise.all(
      this.slots.map((slot) => {
        const { seq, answer } = this.rates.ask(slot);
        this.send(slot, { type: "rateSummary", seq });
        return answer;
      }),
    );
  }

  private async listenOn(slot: Slot, listeners: ListenSpec[]): Promise<{ fds: number[] | null; error: string | null }> {
    const { seq, answer } = this.listens.ask(slot);
    this.send(slot, { type: "listen", seq, listeners });
    const outcome = await answer;
    slot.listenFds = outcome.fds ?? [];
    return outcome;
  }

  /** Test hook and last resort: ends one worker abruptly, as a crash would. */
  kill(index: number): void {
    const slot = this.slots[index];
    if (!slot) return;
    slot.worker.terminate();
    // a worker asleep in epoll_wait sees the termination only once it wakes
    if (slot.wakeFd !== null) wakeLoop(slot.wakeFd);
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.slotReports) clearInterval(this.slotReports);
    this.slotReports = null;
    await Promise.all(
      this.slots.map(
        (slot) =>
          new Promise<void>((resolve) => {
            slot.stopping = true;
            const timer = setTimeout(resolve, 2000);
            slot.worker.addEventListener("message", (event: MessageEvent<Posted<FromWorker>>) => {
              // ("stopped" travels as an object: only a transfer's messages are text)
              if (typeof event.data !== "string" && event.data.type === "stopped") {
                clearTimeout(timer);
                resolve();
              }
            });
            this.send(slot, { type: "stop" });
          }),
      ),
    );
    for (const slot of this.slots.splice(0)) {
      slot.worker.terminate();
      if (slot.wakeFd !== null) wakeLoop(slot.wakeFd);
    }
    this.repeats.answerFor(null, "unknown");
    this.listens.answerFor(null, { fds: null, error: "the server stopped" });
    this.rates.answerFor(null, { sources: [], unreported: 0 });
    this.profiles.answerFor(null, { profile: null, missing: "the server stopped" });
  }

  private send(slot: Slot, message: Posted<ToWorker>): void {
    slot.worker.postMessage(message);
    if (slot.gate.posted() && slot.wakeFd !== null) wakeLoop(slot.wakeFd);
  }

  private spawn(index: number, throwAfterJobs: number | null = null): Slot {
    const worker = new Worker(WORKER_URL);
    let markReady: () => void = () => {};
    let markFailed: (error: Error) => void = () => {};
    const ready = new Promise<void>((resolve, reject) => {
      markReady = resolve;
      markFailed = reject;
    });
    ready.catch(() => {}); // a replacement worker's failure is reported by its exit, not here
    const gate = new WakeGate();
    const slot: Slot = { worker, jobs: new Set(), stopping: false, ready, crash: null, wakeFd: null, gate, ioLoop: null, thread: null, transferSlots: null, listenFds: [] };
    worker.addEventListener("error", (event) => markFailed(new Error(`transfer worker failed: ${(event as ErrorEvent).message}`)));
    const handle = (message: FromWorker): void => {
      if (message.type === "batch") {
        for (const each of message.messages) handle(each);
      } else if (message.type === "ready") {
        slot.wakeFd = message.wakeFd;
        slot.ioLoop = message.ioLoop;
        slot.thread = message.thread;
        slot.transferSlots = message.slots;
        markReady();
      } else if (message.type === "slots") {
        slot.transferSlots = message.stats;
      } else if (message.type === "end") {
        slot.jobs.delete(message.id);
        this.events.end(message.id, message.outcome);
      } else if (message.type === "crashed") {
        slot.crash = { message: message.message, ended: message.ended };
      } else if (message.type === "failed") {
        slot.jobs.delete(message.id);
        this.events.failed(message.id, message.message);
      } else if (message.type === "request") {
        this.taken[index]!++;
        this.events.request?.(message.listener, message.bytes, { address: message.address, port: message.port }, message.receivedAtEpoch, message.rateChecked);
      } else if (message.type === "started") {
        this.taken[index]!++;
        this.startedThere[index]!++;
        slot.jobs.add(message.start.id);
        this.events.started?.(index, message.start);
      } else if (message.type === "rateSummary") {
        this.rates.answer(message.seq, message.summary);
      } else if (message.type === "listening") {
        this.listens.answer(message.seq, { fds: message.fds, error: message.error });
      } else if (message.type === "requestAgain") {
        this.repeats.answer(message.seq, message.verdict);
      } else if (message.type === "profile") {
        this.profiles.answer(
          message.seq,
          message.profile ? { profile: message.profile, missing: null } : { profile: null, missing: `could not profile: ${message.error ?? "no reason given"}` },
        );
      }
    };
    worker.addEventListener("message", (event: MessageEvent<Posted<FromWorker>>) => handle(receivedMessage(event.data)));
    worker.addEventListener("close", () => this.onExit(index, slot));
    worker.postMessage({ type: "init", init: { ...this.init, throwAfterJobs, cpus: this.cpus[index] ?? null, wakeGate: gate.buffer } } satisfies ToWorker);
    return slot;
  }

  private onExit(index: number, slot: Slot): void {
    if (slot.wakeFd !== null) closeWake(slot.wakeFd);
    slot.wakeFd = null;
    if (this.slots[index] !== slot) return;
    this.retiredSlotAllocations += slot.transferSlots?.allocated ?? 0;
    this.retiredSlotReuses += slot.transferSlots?.reused ?? 0;
    const lost = [...slot.jobs];
    slot.jobs.clear();
    for (const id of lost) this.events.end(id, workerLost());
    this.repeats.answerFor(slot, "unknown");
    this.listens.answerFor(slot, { fds: null, error: "exited" });
    this.rates.answerFor(slot, { sources: [], unreported: 0 });
    this.profiles.answerFor(slot, { profile: null, missing: `exited during the profile (${slot.crash?.message ?? "exited"})` });
    if (this.stopping || slot.stopping) return;
    // a dead worker's listen sockets stay in their groups, steered to, until closed
    for (const fd of slot.listenFds.splice(0)) netLibc()?.close(fd);
    this.events.workerExit?.(index, { reason: slot.crash?.message ?? "exited", endedWithError: slot.crash?.ended ?? 0, lost: lost.length });
    const replacement = this.spawn(index);
    this.slots[index] = replacement;
    const specs = this.listenSpecs;
    const fast = this.fastSettings;
    if (specs)
      void replacement.ready
        .then(() => {
          if (fast) this.send(replacement, { type: "fastPath", settings: fast });
          return this.listenOn(replacement, specs);
        })
        .catch(() => {});
  }
}

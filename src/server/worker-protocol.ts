/** Messages between the main thread (control plane) and transfer workers (data plane). */
import type { ThreadCpuProfile } from "../ops/profiler.ts";
import type { DiskIoSettings } from "../storage/disk-io.ts";
import type { FileIdentity, SourceShare } from "../storage/source.ts";
import type { EngineOptions, RepeatVerdict, TransferJob } from "./engine.ts";
import type { TransferOutcome } from "./transfer.ts";
import type { SlotPoolSettings, SlotStats } from "./transfer-slots.ts";
import type { FastPathSettings, FastStart, PublishedCopy } from "./fast-path.ts";
import type { RateLimitSummary } from "./request-rate.ts";

export interface WorkerInit {
  engine: EngineOptions;
  /** TFTPD_TEST_DROP, re-parsed in each worker */
  lossSpec: string | null;
  /** TFTPD_TEST_WORKER_THROW: this worker throws, uncaught, once it has started this many transfers */
  throwAfterJobs?: number | null;
  /** "epoll": transfer sockets on this thread's epoll loop (ffi-transport.ts), else Bun's */
  ioLoop: IoLoopKind;
  /** performance.cpu.affinity: the CPUs this worker's thread pins itself to; null: the kernel decides */
  cpus: readonly number[] | null;
  /** the io section, as the main thread has it */
  diskIo: DiskIoSettings;
  /** this worker's share of the node's transfer slots (used on the epoll loop only) */
  transferSlots: SlotPoolSettings;
  /** the WakeGate's cells: the main thread writes wakeFd only while the loop may be asleep */
  wakeGate: SharedArrayBuffer;
}

export type IoLoopKind = "epoll" | "bun";

/**
 * What travels between the threads: a message, or its JSON text. The messages of every
 * transfer ("read" to a worker; "end", "started" and their "batch" from it) go as text: cloning
 * their object graphs cost the main thread about 10 µs more per transfer in a storm
 * (postMessage was a third of its JavaScript time there). Their fields are numbers, strings,
 * booleans and plain objects.
 */
export type Posted<T> = T | string;

/** A message as the text it travels as (a transfer's messages). */
export function asText<T extends ToWorker | FromWorker>(message: T): Posted<T> {
  return JSON.stringify(message);
}

export function receivedMessage<T>(data: Posted<T>): T {
  return typeof data === "string" ? (JSON.parse(data) as T) : data;
}

/** Bytes as text a message can carry (JSON): a character per byte; bytesOfText reverses it. */
export function textOfBytes(bytes: Uint8Array): string {
  let text = "";
  for (let i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]!);
  return text;
}

export function bytesOfText(text: string): Uint8Array {
  return Buffer.from(text, "latin1");
}

/** A worker's thread as the kernel knows it: /proc/PID/task/<tid> */
export interface WorkerThread {
  tid: number | null;
  /** the CPUs it pinned itself to, or null when it is not pinned */
  cpus: readonly number[] | null;
  /** why pinning failed, when it was asked and failed */
  pinError: string | null;
}

/** A listen address a worker takes requests on, beside the main thread's socket (reuseport.ts). */
export interface ListenSpec {
  address: string;
  port: number;
  /** SO_RCVBUF asked for: a storm's requests arrive at once */
  receiveBytes: number;
}

export type ToWorker =
  | { type: "init"; init: WorkerInit }
  /** join the listen sockets' groups and take their datagrams: answered by "listening" `seq` */
  | { type: "listen"; seq: number; listeners: ListenSpec[] }
  /** take eligible requests here (fast-path.ts), with these settings; null: hand every one to the main thread */
  | { type: "fastPath"; settings: FastPathSettings | null }
  /** a path the main thread serves from a sealed cached copy: eligible requests for it are taken here */
  | { type: "publish"; copy: PublishedCopy }
  /** what this worker dropped over the request rate since the last ask: answered by "rateSummary" `seq` */
  | { type: "rateSummary"; seq: number }
  | { type: "read"; job: TransferJob; share: SourceShare; identity: FileIdentity }
  /** the client of transfer `id` sent a request from its port again: the worker decides (engine.requestAgain) */
  | { type: "requestAgain"; id: number; same: boolean; seq: number }
  /** more bytes of a cached copy being made are readable */
  | { type: "progress"; entryId: number; readable: number }
  /** a cached copy is sealed: readers of it move onto a mapping */
  | { type: "filled"; entryId: number; fd: number; size: number }
  /** a cached copy being made failed: its readers stop with this reason */
  | { type: "fillFailed"; entryId: number; reason: string }
  /** the main thread closed a cached copy: drop its mapping */
  | { type: "release"; entryId: number }
  /** once a second: give up transfer slots idle too long, and say what the pool holds if that changed */
  | { type: "slots" }
  /** start sampling this thread (tftpd profile): until "profileStop" of the same `seq` */
  | { type: "profileStart"; seq: number; intervalUs: number; limit: number }
  | { type: "profileStop"; seq: number }
  | { type: "stop" };

export type FromWorker =
  /**
   * `ioLoop`: the loop the worker runs (Bun's when libc is out of reach); `wakeFd`: the
   * eventfd to write to after posting it a message, which the main thread closes once the
   * worker has ended
   */
  | { type: "ready"; ioLoop: IoLoopKind; wakeFd: number | null; thread: WorkerThread; slots: SlotStats | null }
  /** what its transfer slot pool holds now */
  | { type: "slots"; stats: SlotStats }
  | { type: "end"; id: number; outcome: TransferOutcome }
  /** the answer to "listen" `seq`: the descriptors of its sockets, one per listener, or why none */
  | { type: "listening"; seq: number; fds: number[] | null; error: string | null }
  /**
   * a datagram that reached listener `listener` (an index of "listen"'s list) on this worker's
   * socket, for the main thread's request path; `receivedAtEpoch` as TransferJob has it
   */
  | { type: "request"; listener: number; bytes: Uint8Array; address: string; port: number; receivedAtEpoch: number; rateChecked: boolean }
  /** a transfer this worker took itself (fast-path.ts): the main thread keeps its record; its "end" follows */
  | { type: "started"; start: FastStart }
  /** messages of one turn of the worker's loop ("started" and "end"), in order, as one text */
  | { type: "batch"; messages: FromWorker[] }
  | { type: "rateSummary"; seq: number; summary: RateLimitSummary }
  /** the job could not start (no socket could be bound): the main thread answers the client */
  | { type: "failed"; id: number; message: string }
  /** the answer to "requestAgain" `seq`; a "superseded" transfer's "end" was posted before it */
  | { type: "requestAgain"; seq: number; verdict: RepeatVerdict }
  /** the answer to "profileStart" `seq`, once stopped: its samples, or why there are none */
  | { type: "profile"; seq: number; profile: ThreadCpuProfile | null; error: string | null }
  | { type: "stopped" }
  /** an uncaught error: every transfer here was ended with an ERROR, and the worker exits */
  | { type: "crashed"; message: string; ended: number };

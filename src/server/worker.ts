/**
 * Entry point of a transfer worker thread: a TransferEngine fed by the main thread. Listed as
 * an extra entry point of `bun build --compile` (build/compile.ts), or it would be missing
 * from the binary.
 *
 * File bytes are not copied between threads: a cached copy is mapped here from the main
 * thread's memfd (/proc/self/fd/N names the same descriptor in every thread of the process),
 * or read from that memfd while the main thread still fills it, and an uncached file is read
 * through the main thread's open descriptor. The main thread keeps every descriptor open
 * while a transfer here reads it.
 */
import { FillProgress, followingSource } from "../storage/copy-progress.ts";
import { setDiskIo } from "../storage/disk-io.ts";
import { borrowedFdSource, type FileIdentity, type FileSource, type SourceShare } from "../storage/source.ts";
import { IoLoop } from "../net/io-loop.ts";
import { now } from "../net/turn-clock.ts";
import { WakeGate } from "../net/wake-gate.ts";
import { FfiUdpSocket, SocketBuffers } from "../net/udp-ffi.ts";
import { setBufferSizes } from "../net/sockopt.ts";
import { pinThisThread, threadId } from "../net/affinity.ts";
import { profileThisThread } from "../ops/profiler.ts";
import { TransferEngine } from "./engine.ts";
import { ffiTransferSockets, OWN_SOCKET } from "./ffi-transport.ts";
import { LossPlan } from "./loss.ts";
import { FastPath, type FastPathDeps, type PublishedCopy } from "./fast-path.ts";
import * as fs from "node:fs";
import { SlotPool, type SlotStats } from "./transfer-slots.ts";
import { asText, receivedMessage, type FromWorker, type ListenSpec, type Posted, type ToWorker } from "./worker-protocol.ts";

declare const self: Worker;

/**
 * Messages that may wait for the end of this turn (a transfer's start record and its end): they
 * leave together, as one text, so that a storm wakes the main thread once per turn of this
 * loop rather than once per transfer (each wake took the CPU from this thread). Any other
 * message sends them first: the order between the threads holds.
 */
const outbox: FromWorker[] = [];

function flushOutbox(): void {
  if (outbox.length === 0) return;
  const messages = outbox.splice(0);
  self.postMessage(messages.length === 1 ? asText(messages[0]!) : asText<FromWorker>({ type: "batch", messages }));
}

function postLater(message: FromWorker): void {
  if (outbox.length === 0) queueMicrotask(flushOutbox);
  outbox.push(message);
}

const post = (message: Posted<FromWorker>): void => {
  flushOutbox();
  self.postMessage(message);
};

/** A cached copy of the main thread, as this worker reads it: by its memfd until it is sealed, then mapped. */
interface Copy {
  readonly fd: number;
  readonly size: number;
  readonly progress: FillProgress;
  sealed: boolean;
  failure: string | null;
  bytes: Uint8Array | null;
}

/** the copies this worker has readers of, by cache entry id, until the main thread releases them */
const copies = new Map<number, Copy>();
let engine: TransferEngine | null = null;
let loop: IoLoop | null = null;
/** every message after "init" is counted read here (wake-gate.ts) */
let gate: WakeGate | null = null;
/** the buffers of transfers' own sockets, kept between transfers (epoll loop only) */
let slots: SlotPool<SocketBuffers> | null = null;
/** what the main thread was last told the pool holds */
let postedSlots: SlotStats | null = null;

const sameStats = (a: SlotStats, b: SlotStats): boolean => a.idle === b.idle && a.busy === b.busy && a.allocated === b.allocated && a.reused === b.reused;

function copyFor(share: Extract<SourceShare, { kind: "memfd" | "filling" }>, size: number): Copy {
  let copy = copies.get(share.id);
  if (!copy) {
    copy = { fd: share.fd, size, progress: new FillProgress(size), sealed: false, failure: null, bytes: null };
    copies.set(share.id, copy);
  }
  if (share.kind === "memfd") seal(copy);
  else copy.progress.advance(share.readable);
  return copy;
}

function seal(copy: Copy): void {
  if (copy.sealed) return;
  copy.sealed = true;
  copy.progress.complete();
}

function copySource(copy: Copy, identity: FileIdentity): FileSource {
  const sealedBytes = (): Uint8Array | null => {
    if (!copy.sealed) return null;
    copy.bytes ??= copy.size === 0 ? new Uint8Array(0) : Bun.mmap(`/proc/self/fd/${copy.fd}`, { shared: false });
    return copy.bytes;
  };
  const source = followingSource({ fd: copy.fd, progress: copy.progress, sealedBytes, failure: () => copy.failure }, identity, () => {});
  if (!copy.sealed) return source;
  // sealed already: no wait per window (ReadTransfer asks only sources that have whenReadable)
  return { size: source.size, identity, read: source.read, close: source.close };
}

function sourceFor(share: SourceShare, identity: FileIdentity): FileSource {
  if (share.kind === "fd") return borrowedFdSource(share.fd, identity);
  return copySource(copyFor(share, identity.size), identity);
}

/**
 * The profile this thread records, until the main thread says stop: the main thread ends it,
 * not a timer here, since an idle epoll loop sleeps in epoll_wait and a timer would fire late.
 */
let profiling: { seq: number; stop: () => void } | null = null;

function startProfile(seq: number, intervalUs: number, limit: number): void {
  if (profiling) {
    post({ type: "profile", seq, profile: null, error: "a profile is already being recorded here" });
    return;
  }
  const { promise, resolve } = Promise.withResolvers<void>();
  const run = { seq, stop: resolve };
  profiling = run;
  profileThisThread(promise, intervalUs, limit)
    .then(
      (profile) => post({ type: "profile", seq, profile, error: null }),
      (error: unknown) => post({ type: "profile", seq, profile: null, error: error instanceof Error ? error.message : String(error) }),
    )
    .finally(() => {
      if (profiling === run) profiling = null;
    });
}

/** this worker's sockets in the listen sockets' groups, in the order of the main thread's listeners */
const listenSockets: FfiUdpSocket[] = [];

/**
 * Most datagrams one receive takes from a listen socket, the longest request it reads whole,
 * and the batches one turn reads: a storm's requests arrive at once, and each turn spent on
 * the transfers already running is a wait for the rest (the request rate bounds a flood's cost).
 */
const LISTEN_BATCH = 64;
const LISTEN_BYTES = 16 * 1024;
const LISTEN_BATCHES_PER_TURN = 32;

/**
 * Joins each listener's group; what arrives goes to the main thread's request path. On any
 * failure the sockets opened so far close, and the main thread keeps the listener alone.
 */
function listen(seq: number, listeners: ListenSpec[]): void {
  if (!loop) {
    post({ type: "listening", seq, fds: null, error: "this worker has no epoll loop" });
    return;
  }
  const ioLoop = loop;
  // a new list replaces the old one (an empty one: stop taking requests, the server drains)
  for (const socket of listenSockets.splice(0)) socket.close();
  try {
    listeners.forEach((spec, index) => {
      const socket = FfiUdpSocket.open(
        ioLoop,
        spec.address,
        spec.port,
        { receiveBatch: LISTEN_BATCH, receiveBytes: LISTEN_BYTES, sendBatch: 1, batchesPerDrain: LISTEN_BATCHES_PER_TURN, first: true },
        (datagram, from) => {
          // (the turn's clock, as the engine reads it: one reading for the whole batch)
          const receivedAt = now();
          const peer = { address: from.address, port: datagram.port };
          const verdict = fast ? fast.take(datagram.bytes, peer, index, spec.address, receivedAt) : "forward";
          if (verdict !== "forward") return;
          post({
            type: "request",
            listener: index,
            bytes: datagram.bytes.slice(),
            address: peer.address,
            port: peer.port,
            receivedAtEpoch: performance.timeOrigin + receivedAt,
            rateChecked: fast !== null,
          });
        },
        true,
      );
      listenSockets.push(socket);
      setBufferSizes(socket, spec.receiveBytes, 0);
    });
  } catch (error) {
    for (const socket of listenSockets.splice(0)) socket.close();
    post({ type: "listening", seq, fds: null, error: (error as Error).message });
    return;
  }
  post({ type: "listening", seq, fds: listenSockets.map((socket) => socket.fd), error: null });
}

/** requests this worker takes itself (fast-path.ts), once the main thread says so */
let fast: FastPath | null = null;
/** what each transfer taken here gives back when it ends */
const fastEnds = new Map<number, () => void>();

function fastPathDeps(): FastPathDeps {
  return {
    start(job, copy, ended) {
      fastEnds.set(job.id, ended);
      let source: FileSource;
      try {
        source = sourceFor(copy.share, copy.identity);
      } catch (error) {
        endedHere(job.id);
        post({ type: "failed", id: job.id, message: (error as Error).message });
        return;
      }
      engine?.startRead(job, source).catch((error: unknown) => {
        endedHere(job.id);
        post({ type: "failed", id: job.id, message: (error as Error).message });
      });
    },
    started: (start) => postLater({ type: "started", start }),
    requestAgain: (id, same) => engine?.requestAgain(id, same) ?? "unknown",
  };
}

/**
 * Maps a published copy here, now, through a descriptor of this thread's own: by the time this
 * message is read the main thread may have closed the copy (evicted, once no transfer of its
 * read it) and its descriptor number may name another file. The copy is mapped only if the
 * descriptor still leads to the very memfd published (its inode); the mapping then outlives any
 * close. False: not served here.
 */
function pinCopy(published: PublishedCopy): boolean {
  const copy = copyFor(published.share, published.identity.size);
  if (copy.bytes) return true;
  let own: number | null = null;
  try {
    own = fs.openSync(`/proc/self/fd/${published.share.fd}`, "r");
    if (fs.fstatSync(own).ino !== published.memfdIno) return false;
    copy.bytes = published.identity.size === 0 ? new Uint8Array(0) : Bun.mmap(`/proc/self/fd/${own}`, { shared: false });
    return true;
  } catch {
    return false;
  } finally {
    if (own !== null) fs.closeSync(own);
  }
}

/** A transfer taken here ended (or never started): what it held goes back. */
function endedHere(id: number): void {
  const ended = fastEnds.get(id);
  if (!ended) return;
  fastEnds.delete(id);
  ended();
}

/** TFTPD_TEST_WORKER_THROW: transfers to start before this worker throws on purpose */
let throwAfterJobs: number | null = null;

/**
 * A throw nobody caught leaves this worker's state unknown, and the thread ends right after
 * this handler. Its transfers end with an ERROR sent from their own sockets (so each client
 * hears it and can ask again), the main thread is told, and the pool starts a new worker.
 * The other workers never notice.
 */
self.addEventListener("error", (event) => {
  const error = (event as ErrorEvent).error as unknown;
  const message = error instanceof Error ? error.message : String(error ?? (event as ErrorEvent).message);
  const ended = engine?.active ?? 0;
  engine?.abort(`transfer worker failed: ${message}`);
  engine = null;
  loop?.close();
  post({ type: "crashed", message, ended });
});

self.onmessage = (event: MessageEvent<Posted<ToWorker>>) => {
  const message = receivedMessage(event.data);
  if (message.type !== "init") gate?.received();
  switch (message.type) {
    case "init": {
      const { engine: options, lossSpec, ioLoop, cpus, diskIo } = message.init;
      setDiskIo(diskIo);
      // pinned before anything else runs here, so the loop's first turn is already on its CPU
      const pinError = cpus ? pinThisThread(cpus) : null;
      gate = new WakeGate(message.init.wakeGate);
      loop = ioLoop === "epoll" ? IoLoop.open(gate) : null;
      // The last transfers' garbage is collected once they are over, not by the next request's
      // allocations in front of its first packet: a server idle for 1.5 s after a 100 MiB
      // transfer answered its next request 1-2 ms later without this (build/bench-peers.ts 5a-5c).
      if (loop) loop.onIdle = () => Bun.gc(true);
      // (Bun's sockets allocate their own buffers: slots are the epoll loop's)
      slots = loop ? new SlotPool(() => new SocketBuffers(OWN_SOCKET), message.init.transferSlots) : null;
      engine = new TransferEngine(
        options,
        lossSpec ? LossPlan.parse(lossSpec) : null,
        (id, outcome) => {
          endedHere(id);
          postLater({ type: "end", id, outcome });
        },
        loop ? ffiTransferSockets(loop, options.batch, slots) : undefined,
      );
      throwAfterJobs = message.init.throwAfterJobs ?? null;
      const thread = { tid: threadId(), cpus: cpus && pinError === null ? cpus : null, pinError };
      postedSlots = slots?.stats ?? null;
      post({ type: "ready", ioLoop: loop ? "epoll" : "bun", wakeFd: loop?.wakeFd ?? null, thread, slots: postedSlots });
      return;
    }
    case "read": {
      const { job } = message;
      let source: FileSource;
      try {
        source = sourceFor(message.share, message.identity);
      } catch (error) {
        post({ type: "failed", id: job.id, message: (error as Error).message });
        return;
      }
      engine?.startRead(job, source).catch((error: unknown) => post({ type: "failed", id: job.id, message: (error as Error).message }));
      if (throwAfterJobs !== null && --throwAfterJobs === 0) {
        // after the transfer started, outside any handler that would catch it
        setTimeout(() => {
          throw new Error("TFTPD_TEST_WORKER_THROW");
        }, 50);
      }
      return;
    }
    case "listen":
      listen(message.seq, message.listeners);
      return;
    case "fastPath":
      if (message.settings === null) fast = null;
      else if (fast) fast.update(message.settings);
      else fast = new FastPath(message.settings, fastPathDeps());
      return;
    case "publish":
      if (fast && pinCopy(message.copy)) fast.publish(message.copy);
      return;
    case "rateSummary": {
      const summary = fast?.summarize(performance.now()) ?? { sources: [], unreported: 0 };
      post({ type: "rateSummary", seq: message.seq, summary });
      return;
    }
    case "requestAgain":
      post({ type: "requestAgain", seq: message.seq, verdict: engine?.requestAgain(message.id, message.same) ?? "unknown" });
      return;
    case "progress":
      copies.get(message.entryId)?.progress.advance(message.readable);
      return;
    case "filled": {
      const copy = copies.get(message.entryId);
      if (copy) seal(copy);
      return;
    }
    case "fillFailed": {
      const copy = copies.get(message.entryId);
      if (copy) {
        copy.failure = message.reason;
        copy.progress.fail(new Error(message.reason));
      }
      return;
    }
    case "release":
      copies.delete(message.entryId);
      fast?.release(message.entryId);
      return;
    case "slots": {
      if (!slots) return;
      slots.trim();
      const stats = slots.stats;
      if (postedSlots && sameStats(stats, postedSlots)) return;
      postedSlots = stats;
      post({ type: "slots", stats });
      return;
    }
    case "profileStart":
      startProfile(message.seq, message.intervalUs, message.limit);
      return;
    case "profileStop":
      if (profiling?.seq === message.seq) profiling.stop();
      return;
    case "stop":
      for (const socket of listenSockets.splice(0)) socket.close();
      void engine?.stop().then(() => {
        loop?.close();
        post({ type: "stopped" });
      });
      return;
  }
};

/**
 * The TFTP server's control plane: listeners take requests, each request takes the request
 * pipeline (pipeline/pipeline.ts: name, policy, remap, confinement, admission, resolution,
 * negotiation), and what comes out is dispatched as a job to a transfer engine — on this
 * thread, or on a worker chosen by the load balancer. Keeps the listeners, the detection of
 * requests sent again, and the running transfers. Knows nothing of config files or Redis.
 */
import { decodePacket, encodeError } from "../protocol/codec.ts";
import { blockCount, ErrorCode, Opcode, type RequestPacket } from "../protocol/packet.ts";
import { CopyPool } from "../storage/copy-pool.ts";
import { diskIo, setDiskIo, type DiskIoSettings } from "../storage/disk-io.ts";
import { FileCache } from "../storage/cache.ts";
import { localRootLink, rootLookup, FileLookup } from "../storage/lookup.ts";
import type { RemapRule } from "../storage/remap.ts";
import { realRoot } from "../storage/resolve.ts";
import type { MetadataCache } from "../storage/metadata.ts";
import type { RemoteFiles } from "../storage/remote.ts";
import type { FileIdentity, FileSource, SourceShare } from "../storage/source.ts";
import type { UploadPolicy } from "../storage/upload.ts";
import { formatHostPort, type HostPort, type PortRange } from "../net/address.ts";
import { kernelNeighbours, type Neighbours } from "../net/neighbours.ts";
import { isWildcard } from "../net/interfaces.ts";
import { setReusePort, steerBySource } from "../net/reuseport.ts";
import { isIP } from "node:net";
import { fstatSync } from "node:fs";
import type { AdmissionLimits, SharedAdmission } from "./admission.ts";
import { LoadBalancer, type Algorithm, type HashKey } from "./balance.ts";
import { TransferEngine, unverifiedBudget, type EngineOptions, type RepeatVerdict, type TransferJob } from "./engine.ts";
import type { LossPlan } from "./loss.ts";
import { SharedTransferSocket, type BatchPolicy } from "./shared-socket.ts";
import type { BufferSizes } from "../net/sockopt.ts";
import { retransmitPolicy, type Lifetimes, type TransferOutcome } from "./transfer.ts";
import { openListener, peerKey, probeGso, sameDatagram, type Listener, type Peer } from "./transport.ts";
import { bytesOfText, type IoLoopKind } from "./worker-protocol.ts";
import { WorkerPool, type WorkerExit } from "./worker-pool.ts";
import { refusalKindOf, type RefusalKind, type RefusalRecord } from "./refusal-record.ts";
import { RequestRate, type RateLimitSummary, type RequestRateLimits } from "./request-rate.ts";
import { Admit } from "./pipeline/admit.ts";
import { ClientDirectories, type UniqueRoot } from "./pipeline/confine.ts";
import { RequestPipeline, type Accepted, type ReadAccepted, type RefusedRequest, type RequestContext } from "./pipeline/pipeline.ts";
import { nameOf } from "./pipeline/name.ts";
import { refused, type Asked } from "./pipeline/request.ts";
import { NetworkRules, type NetworkRule, type RootPlace } from "./pipeline/rules.ts";
import { slotShare, type SlotPoolSettings, type SlotStats } from "./transfer-slots.ts";
import type { FastPathSettings, FastStart } from "./fast-path.ts";
import { GeneratedFiles, generatedLink, type GenerateSettings } from "../generate/generated-files.ts";

const NO_GENERATED_FILES: GenerateSettings = { inventory: null, templates: null, files: [] };

export interface ServerOptions {
  root: string;
  listen: HostPort[];
  write: UploadPolicy;
  uploadMax: number;
  blksizeMax: number;
  windowsizeMax: number;
  windowBytesMax: number;
  /** initial retransmit timeout when the client fixes none */
  timeoutMs: number;
  retries: number;
  portRange: PortRange | null;
  remap: RemapRule[];
  /** CIDRs; empty allow = everyone */
  allow: string[];
  deny: string[];
  /** SO_RCVBUF / SO_SNDBUF asked for on the request sockets (and the send side of big windows) */
  receiveBufferBytes: number;
  sendBufferBytes: number;
  /**
   * "per-transfer": a new socket (port) for every transfer; "shared": transfers to different
   * clients share a socket per local address, so sends and receives are batched.
   */
  transferSockets: "per-transfer" | "shared";
  /**
   * The transfer workers (network.epoll) take the listen ports' datagrams themselves: each
   * joins every listener's socket group, and the kernel steers each client address to one
   * worker (reuseport.ts); the main thread's socket hears what no worker takes
   */
  requestsOnWorkers?: boolean;
  /** sendmmsg batching of shared sockets */
  batch: BatchPolicy;
  /** a window leaves as one UDP GSO send where the kernel allows (network.zero_copy) */
  gso: boolean;
  /** bytes of file content kept in memory for all transfers to share; 0 turns the cache off */
  cacheBytes: number;
  /**
   * transfer engines: with `ioLoop` "epoll", N worker threads (at least one); with "bun", 1
   * runs transfers on the main thread and N > 1 starts N worker threads
   */
  workers: number;
  /** the io section: read-ahead of files served from disk, O_DIRECT cache copies (absent: neither) */
  diskIo?: DiskIoSettings;
  /** io.write_behind: an upload's final ACK before its bytes are on disk (default false) */
  writeBehind?: boolean;
  /** performance.cpu.affinity: the CPUs worker i pins itself to (null or absent: the kernel decides) */
  workerCpus?: (readonly number[] | null)[];
  /**
   * connection_pool / connection_pool_size: the node's transfer slots, shared out over the
   * workers (the epoll loop's own sockets; absent: none preallocated, none kept)
   */
  transferSlots?: SlotPoolSettings;
  /**
   * "epoll" (network.epoll): the workers' transfer sockets run on an epoll loop through libc
   * (ffi-transport.ts), Bun's sockets where libc is out of reach; "bun" (the default here):
   * Bun.udpSocket everywhere. Uploads always run on the main thread's engine, on Bun's sockets.
   */
  ioLoop?: IoLoopKind;
  /**
   * tftp.single_port: every transfer is served from the port its request came to, told apart by
   * the client's address and port (NAT, containers, firewalls that open only port 69); they run
   * on the main thread, where the listeners are
   */
  singlePort?: boolean;
  balance: { algorithm: Algorithm; hashKey: HashKey };
  /** requestRate: requests per source address (a token bucket); absent: no rate limit */
  limits: AdmissionLimits & { onLimit: "drop" | "busy"; requestRate?: RequestRateLimits };
  lifetimes: Lifetimes;
  /** per engine, transfers at once per source address whose client has not answered yet; absent: unverifiedBudget(limits.maxPerIp) */
  unverifiedPerSource?: number;
  loss?: LossPlan | null;
  /** TFTPD_TEST_WORKER_THROW: the first transfer worker throws once it has started this many transfers */
  workerThrowAfterJobs?: number | null;
  /** serve a client from ROOT/<its IP or MAC>/ when that directory exists (tftp.unique_root) */
  uniqueRoot?: UniqueRoot;
  /** generated files (generate.*): none when absent */
  generate?: GenerateSettings;
  /** per-network rules, first match wins (tftp.rules) */
  rules?: NetworkRule[];
}

/** What the server works with but does not make (or makes itself when absent). */
export interface ServerDeps {
  events?: ServerEvents;
  /** the file cache: made from options.cacheBytes when absent (the fleet's files share it) */
  cache?: FileCache;
  /** where files the root lacks come from (the fleet's shared cache) */
  remoteFiles?: RemoteFiles | null;
  /** what is known of paths below the root without asking the disk */
  metadata?: MetadataCache | null;
  /** limits counted beyond this node, asked after the node's own (see SharedAdmission) */
  sharedAdmission?: SharedAdmission | null;
  /** where a client's MAC is found (tftp.unique_root "mac"): the kernel's neighbour tables when absent */
  neighbours?: Neighbours;
}

/** One record per finished transfer: it feeds the log line and, later, the metrics. */
export interface TransferRecord extends TransferOutcome {
  client: string;
  file: string;
  direction: "read" | "write";
  mode: string;
  blksize: number;
  windowsize: number;
  tsize: number | null;
  options: string[];
  /**
   * request received → accepted by the pipeline and handed to its engine, on the main thread;
   * firstResponseMs minus this is the engine's start (a worker's hand-over included)
   */
  acceptedMs: number;
  durationMs: number;
}

export interface ServerEvents {
  listening?(address: HostPort, buffers: BufferSizes | null): void;
  transferEnd?(record: TransferRecord): void;
  /** a request refused before any transfer started (ERROR sent, or dropped) */
  refused?(record: RefusalRecord): void;
  /** a datagram at a listen port that is no request, answered with ERROR `code` (or dropped: null) */
  garbageRefused?(peer: Peer, reason: string, code: number | null): void;
  /** requests dropped over their source's rate (limits.requests_per_second_per_ip) in the last `intervalMs` */
  rateLimited?(summary: RateLimitSummary & { intervalMs: number }): void;
  /** a datagram at a listen port that is no request, left unanswered: over the ERROR reply rate */
  garbageUnanswered?(peer: Peer, reason: string): void;
  /** a transfer worker died; its transfers were ended and a new worker started */
  workerExit?(index: number, exit: WorkerExit): void;
  /** the shared admission could not answer: requests are admitted on this node's limits alone (once per outage) */
  sharedAdmissionDown?(error: string): void;
  /** the shared admission answers again after an outage */
  sharedAdmissionUp?(): void;
  /** a generated file was rendered (ok) or its template failed */
  rendered?(template: string, ok: boolean): void;
  /** a neighbour table could not be read (tftp.unique_root "mac"): once per run of failures */
  neighboursUnreadable?(family: 4 | 6, error: string): void;
  /** windows cannot leave as UDP GSO sends here (network.zero_copy): they leave block by block */
  gsoUnavailable?(reason: string): void;
  /** requestsOnWorkers was asked for but the workers could not take the listen ports: why */
  requestsOnMainThread?(reason: string): void;
}

/** A transfer from acceptance to its end record. */
interface Running {
  id: number;
  key: string;
  peer: Peer;
  listener: Listener;
  record: Omit<TransferRecord, keyof TransferOutcome | "durationMs">;
  started: number;
  /** held here while a worker reads it (the local engine closes its own) */
  source: FileSource | null;
  /** the engine running it: -1 the local engine, else a worker index */
  engine: number;
  /** gives back what its request took (admission, memory, a fleet lease) */
  release: () => void;
  /** the request datagram that began it: the same bytes again are the same request resent */
  request: Uint8Array;
}

const NO_REQUEST_RATE: RequestRateLimits = { perSecond: 0, burst: 1 };
/** no transfer slots: every transfer's socket has buffers of its own */
const NO_SLOTS: SlotPoolSettings = { preallocate: 0, min: 0, max: 0, idleMs: 0 };

/** How often requests dropped over their source's rate are summed up: one line per source and interval. */
const RATE_SUMMARY_MS = 10_000;

/**
 * A read of at most this many windows (a boot menu, a config file, an iPXE script: what a boot
 * loader asks for one after another) runs on the main thread's engine even with workers: a
 * worker would cost a job sent over, a wake of its thread and the end sent back, more than the
 * transfer itself, and on a busy host a thread switch each way before the first packet.
 */
const LOCAL_READ_WINDOWS = 4;

export class TftpServer {
  private readonly listeners: Listener[] = [];
  /**
   * Keyed by client address and port: a repeated request from the same TID is not a new
   * transfer. Holds requests still on the pipeline (null) and running transfers.
   */
  private readonly active = new Map<string, Running | null>();
  private readonly running = new Map<number, Running>();
  /** transfer ids, shared with workers that take requests themselves (fast-path.ts): never one id twice */
  private readonly ids = new Int32Array(new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT));
  /** the root's real path, once the pipeline is built */
  private rootReal: string | null = null;
  /** the workers are in the listen sockets' groups (requestsOnWorkers) */
  private takingOnWorkers = false;
  /** the workers take eligible requests themselves (fast-path.ts) */
  private fastPath = false;
  /** sealed copies the workers were told of, as "entryId|path" */
  private readonly published = new Set<string>();
  /** a path served while its copy was still filling, by cache entry: told to the workers once sealed */
  private readonly publishOnSeal = new Map<number, { relative: string; identity: FileIdentity }>();
  /** requests the workers dropped over their sources' rates (fast-path.ts counts them here) */
  private readonly workersRateDropped = new Int32Array(new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT));
  /** set once the server stops taking requests: the workers then take none themselves */
  private readonly closedToRequests = new Int32Array(new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT));
  private stopped = false;
  private readonly events: ServerEvents;
  private readonly admit: Admit;
  private readonly requestRate: RequestRate;
  private copyPool: CopyPool | null = null;
  private rateSummaryTimer: ReturnType<typeof setInterval> | null = null;
  private readonly balancer: LoadBalancer;
  private readonly local: TransferEngine;
  private pool: WorkerPool | null = null;
  private unfollowCache: (() => void) | null = null;
  /** made at start(), once the roots are known to exist */
  private pipeline: RequestPipeline | null = null;
  /** the generated files in force: loaded at start, replaced by a reload */
  private generated: GeneratedFiles | null = null;
  private neighbourTables: Neighbours | null = null;
  /** what requests to each listener carry beside their names, made once when it opens */
  private readonly requestContexts = new Map<Listener, RequestContext>();
  readonly cache: FileCache;

  constructor(
    private readonly options: ServerOptions,
    private readonly deps: ServerDeps = {},
  ) {
    this.events = deps.events ?? {};
    this.cache = deps.cache ?? new FileCache(options.cacheBytes);
    this.admit = new Admit(options, deps.sharedAdmission ?? null, {
      down: (error) => this.events.sharedAdmissionDown?.(error),
      up: () => this.events.sharedAdmissionUp?.(),
    });
    this.requestRate = new RequestRate(options.limits.requestRate ?? NO_REQUEST_RATE);
    this.balancer = new LoadBalancer(options.balance.algorithm, options.balance.hashKey, options.workers);
    this.local = new TransferEngine(this.engineOptions(), options.loss ?? null, (id, outcome) => this.ended(id, outcome));
  }

  get activeTransfers(): number {
    return this.active.size;
  }

  /** bytes the running transfers reserved in the memory budget, and the budget (Infinity: none) */
  get transferMemory(): { reserved: number; budget: number } {
    return { reserved: this.admit.admission.reservedMemory, budget: this.admit.admission.memoryBudget };
  }

  /** what the workers' transfer slot pools hold (null: no worker keeps any) */
  get transferSlots(): SlotStats | null {
    return this.pool?.transferSlots ?? null;
  }

  /** requests dropped over their source's rate since start */
  get requestsRateLimited(): number {
    return this.requestRate.dropped + Atomics.load(this.workersRateDropped, 0);
  }

  get addresses(): HostPort[] {
    return this.listeners.map((l) => ({ host: l.address, port: l.port }));
  }

  /** the worker pool, when transfers run on worker threads */
  get workers(): WorkerPool | null {
    return this.pool;
  }

  /** the file I/O pool, when the cache's copies are made off the main thread (io.async_io) */
  get fileIoPool(): CopyPool | null {
    return this.copyPool;
  }

  async start(): Promise<void> {
    try {
      this.pipeline = this.buildPipeline();
      const io = this.options.diskIo ?? { readAheadBytes: 0, directFills: false, ioThreads: 0 };
      this.copyPool = io.ioThreads > 0 ? await CopyPool.start(io.ioThreads) : null;
      setDiskIo({ ...io, copier: this.copyPool });
      const ioLoop = this.options.ioLoop ?? "bun";
      const singlePort = this.options.singlePort === true;
      if (!singlePort && (this.options.workers > 1 || ioLoop === "epoll")) {
        this.pool = new WorkerPool(
          this.options.workers,
          { engine: this.engineOptions(), lossSpec: this.options.loss?.spec ?? null, throwAfterJobs: this.options.workerThrowAfterJobs ?? null, ioLoop, diskIo: io, transferSlots: slotShare(this.options.transferSlots ?? NO_SLOTS, this.options.workers) },
          this.options.workerCpus ?? [],
          {
            end: (id, outcome) => this.ended(id, outcome),
            failed: (id, message) => this.failed(id, message),
            workerExit: (index, exit) => this.events.workerExit?.(index, exit),
            request: (index, bytes, peer, receivedAtEpoch, rateChecked) => {
              const listener = this.listeners[index];
              if (listener) this.onRequest(listener, bytes, peer, receivedAtEpoch - performance.timeOrigin, rateChecked);
            },
            started: (index, start) => this.adopt(index, start),
          },
        );
        await this.pool.start();
        const pool = this.pool;
        this.unfollowCache = this.cache.follow({
          progress: (entryId, readable) => pool.progress(entryId, readable),
          filled: (entryId, fd, size) => {
            pool.filled(entryId, fd, size);
            const waiting = this.publishOnSeal.get(entryId);
            this.publishOnSeal.delete(entryId);
            if (waiting) this.publishCopy(waiting.relative, { kind: "memfd", id: entryId, fd }, waiting.identity);
          },
          failed: (entryId, reason) => {
            this.publishOnSeal.delete(entryId);
            pool.fillFailed(entryId, reason);
          },
          released: (entryId) => {
            this.publishOnSeal.delete(entryId);
            pool.release(entryId);
            for (const key of this.published) if (key.startsWith(`${entryId}|`)) this.published.delete(key);
          },
        });
      }
      for (const { host, port } of this.options.listen) {
        const listener = await openListener(
          host,
          port,
          (l, bytes, peer, at) => this.onRequest(l, bytes, peer, at),
          { receive: this.options.receiveBufferBytes, send: this.options.sendBufferBytes },
          this.options.loss ?? null,
          singlePort ? (socket) => SharedTransferSocket.onListenPort(socket, this.options.batch) : null,
        );
        if (listener.transfers) this.local.serveOnListenPort(listener.address, listener.transfers);
        this.listeners.push(listener);
        this.requestContexts.set(listener, this.tftpContext(listener));
        this.events.listening?.({ host: listener.address, port: listener.port }, listener.buffers);
      }
      if (this.pool && this.options.requestsOnWorkers && ioLoop === "epoll" && !singlePort && !this.options.loss) {
        await this.takeRequestsOnWorkers(this.pool);
      }
      if (this.options.gso && this.listeners.length > 0) {
        const refused = await probeGso(this.listeners[0]!.address);
        if (refused !== null) this.events.gsoUnavailable?.(refused);
      }
      this.rateSummaryTimer = setInterval(() => this.summarizeRateLimited(), RATE_SUMMARY_MS);
      this.rateSummaryTimer.unref();
    } catch (error) {
      await this.stop();
      throw error;
    }
  }

  /**
   * Every worker joins each listener's socket group and the kernel steers every client
   * address to one of them; the main thread's socket, first in each group, stays for the
   * answers sent from the listen port and for what no worker takes. Where that cannot be set
   * up, the main thread keeps listening alone, and says why.
   */
  private async takeRequestsOnWorkers(pool: WorkerPool): Promise<void> {
    const fds = this.listeners.map((listener) => listener.fd);
    const unavailable = (why: string): void => this.events.requestsOnMainThread?.(why);
    if (fds.some((fd) => fd === null)) return unavailable("a listen socket's descriptor is out of reach");
    if (!fds.every((fd) => setReusePort(fd!))) return unavailable("SO_REUSEPORT was refused on a listen socket");
    let workerFds: number[][];
    try {
      workerFds = await pool.listen(this.listeners.map((l) => ({ address: l.address, port: l.port, receiveBytes: this.options.receiveBufferBytes })));
    } catch (error) {
      return unavailable((error as Error).message);
    }
    this.takingOnWorkers = true;
    this.updateFastPath();
    this.listeners.forEach((listener, index) => {
      const errno = steerBySource(fds[index]!, isIP(listener.address) === 6 ? 6 : 4, 1, workerFds.length);
      if (errno !== null) unavailable(`the kernel refused to steer ${formatHostPort(listener.address, listener.port)} by source address (errno ${errno}): its requests are spread by its own hash, the main thread's socket included`);
    });
  }

  /**
   * The request pipeline over the roots as they are now: the server's root with its whole
   * lookup chain, and each rule's own root with its local link alone (the fleet's files and
   * the metadata cache describe the server's root).
   */
  private buildPipeline(): RequestPipeline {
    const o = this.options;
    const rootReal = realRoot(o.root);
    this.rootReal = rootReal;
    this.generated = GeneratedFiles.load(o.generate ?? NO_GENERATED_FILES);
    const generated = generatedLink(() => this.generated, (template, ok) => this.events.rendered?.(template, ok));
    const root: RootPlace = { real: rootReal, lookup: rootLookup(rootReal, this.cache, this.deps.metadata ?? null, this.deps.remoteFiles ?? null, generated) };
    const rules = o.rules ?? [];
    const ruleRoots = rules.map((rule, i): RootPlace | null => {
      if (rule.root === null) return null;
      let real: string;
      try {
        real = realRoot(rule.root);
      } catch (error) {
        throw new Error(`tftp.rules[${i}].root: ${(error as Error).message.replace(/^tftp\.root: /, "")}`);
      }
      return { real, lookup: new FileLookup([localRootLink(real, this.cache, null)]) };
    });
    const policies = new NetworkRules(rules, ruleRoots, { root, blksizeMax: o.blksizeMax, windowsizeMax: o.windowsizeMax, refusedOptions: null }, o);
    const uniqueRoot = o.uniqueRoot ?? "off";
    const directories = uniqueRoot === "off" ? null : new ClientDirectories(uniqueRoot, this.neighbours());
    return new RequestPipeline(
      {
        rules: policies,
        directories,
        admit: this.admit,
        limits: { windowBytesMax: o.windowBytesMax, uploadMax: o.uploadMax },
        write: { policy: o.write, uploadMax: o.uploadMax },
        macOf: (address) => this.neighbours().macOf(address),
      },
      o.remap,
    );
  }

  /** Where clients' MACs are found: the kernel's neighbour tables, unless the deps say otherwise. Made on first use. */
  private neighbours(): Neighbours {
    this.neighbourTables ??=
      this.deps.neighbours ?? kernelNeighbours({ onReadError: (family, error) => this.events.neighboursUnreadable?.(family, error instanceof Error ? error.message : String(error)) });
    return this.neighbourTables;
  }

  /**
   * Reads the generated files' inventory and templates again (SIGHUP, a pushed config): the new
   * set serves the next request; one that does not load changes nothing and throws why.
   */
  reloadGenerated(settings: GenerateSettings): void {
    this.generated = GeneratedFiles.load(settings);
    this.updateFastPath();
  }

  /**
   * Graceful stop: no new requests are taken (the listeners close, before this first yields),
   * running transfers may finish for up to `graceMs`, then whatever is left is ended. Resolves
   * with how many were cut.
   */
  async drain(graceMs: number): Promise<number> {
    // from now on a worker hands every datagram here, where no listener takes it any more
    Atomics.store(this.closedToRequests, 0, 1);
    for (const listener of this.listeners.splice(0)) listener.close();
    if (this.takingOnWorkers && this.pool) await this.pool.unlisten();
    const deadline = performance.now() + graceMs;
    while (this.active.size > 0 && performance.now() < deadline) await Bun.sleep(50);
    const cut = this.active.size;
    await this.stop();
    return cut;
  }

  /** Stops listening and ends every transfer. */
  async stop(): Promise<void> {
    this.stopped = true;
    Atomics.store(this.closedToRequests, 0, 1);
    if (this.rateSummaryTimer) {
      clearInterval(this.rateSummaryTimer);
      this.rateSummaryTimer = null;
      this.summarizeRateLimited();
    }
    // Transfers end first, each telling its client why, then the listeners close: with
    // tftp.single_port a listener's socket is its transfers' too.
    const listeners = this.listeners.splice(0);
    await Promise.all([this.local.stop(), this.pool?.stop()]);
    for (const listener of listeners) listener.close();
    this.unfollowCache?.();
    this.unfollowCache = null;
    if (this.copyPool) {
      if (diskIo().copier === this.copyPool) setDiskIo({ copier: null });
      this.copyPool.stop();
      this.copyPool = null;
    }
    this.pool = null;
    this.active.clear();
  }

  private engineOptions(): EngineOptions {
    const { portRange, transferSockets, batch, gso, receiveBufferBytes, sendBufferBytes, lifetimes, limits } = this.options;
    const unverifiedPerSource = this.options.unverifiedPerSource ?? unverifiedBudget(limits.maxPerIp);
    return { portRange, transferSockets, batch, gso, receiveBufferBytes, sendBufferBytes, lifetimes, unverifiedPerSource };
  }

  private onRequest(listener: Listener, bytes: Uint8Array, peer: Peer, receivedAt: number, rateChecked = false): void {
    const decoded = decodePacket(bytes);
    if (!decoded.ok) {
      this.refuseGarbage(listener, peer, decoded.reply, decoded.message);
      return;
    }
    const packet = decoded.packet;
    if (packet.op === Opcode.ERROR) return; // RFC 1350 §7: never answer an ERROR
    if (packet.op !== Opcode.RRQ && packet.op !== Opcode.WRQ) {
      this.refuseGarbage(listener, peer, ErrorCode.ILLEGAL_OPERATION, "illegal TFTP operation");
      return;
    }
    // The request rate is the pipeline's gate, taken here, before anything that answers or
    // logs: a flood from one address costs a lookup and a drop.
    if (!rateChecked && !this.requestRate.allow(peer.address, receivedAt)) return;
    const key = peerKey(peer);
    const current = this.active.get(key);
    // Firmware resends an unanswered request from the same port: the one on the pipeline answers it.
    if (current === null) return;
    // a copy: the receive buffer may be reused before a worker's verdict on a repeat comes back
    const request = bytes.slice();
    const begin = (): void => {
      this.active.set(key, null);
      void this.take(listener, packet, peer, key, performance.timeOrigin + receivedAt, request);
    };
    if (current === undefined) begin();
    else this.requestAgain(current, request, begin);
  }

  /**
   * A request from the port of a client whose transfer runs. The engine running the transfer
   * decides (engine.requestAgain): resent because our first packet was lost, a stray to ignore,
   * or a new session that supersedes an idle transfer. Only when the transfer has ended does the
   * request begin a new one, so a request sent again never cuts a live transfer (whose client
   * would then be told its TID is unknown).
   */
  private requestAgain(running: Running, bytes: Uint8Array, begin: () => void): void {
    const same = sameDatagram(running.request, bytes);
    const decide = (verdict: RepeatVerdict): void => {
      if (verdict !== "superseded" && verdict !== "unknown") return;
      // the end record came first (finish freed the port), unless another request took it since
      if (!this.active.has(running.key)) begin();
    };
    if (running.engine < 0) decide(this.local.requestAgain(running.id, same));
    else if (this.pool) void this.pool.requestAgain(running.engine, running.id, same).then(decide);
  }

  /**
   * A file asked for over HTTP: the road of a TFTP read (the request rate, per-network rules,
   * remap, confinement, admission, lookup) for an octet read without options. The caller sends
   * the source's bytes, then closes it and calls `release`. A refusal is recorded here, as a
   * TFTP one is, with the HTTP status the caller answers.
   */
  async openForHttp(
    name: string,
    client: HostPort,
    statusOf: (refusal: RefusedRequest) => number,
    context: RequestContext,
  ): Promise<ReadAccepted | RefusedRequest> {
    const request: RequestPacket = { op: Opcode.RRQ, filename: name, mode: "octet", options: new Map() };
    const pipeline = this.pipeline;
    const asked = nameOf(request);
    const refuse = (outcome: RefusedRequest): RefusedRequest => {
      this.events.refused?.({
        client: formatHostPort(client.host, client.port), op: "read", file: outcome.asked.file, remapped: outcome.asked.remapped,
        kind: outcome.kind, reason: outcome.message, code: outcome.code, protocol: "http", status: statusOf(outcome),
      });
      return outcome;
    };
    if (!pipeline || this.stopped) return refuse({ ...refused(ErrorCode.NOT_DEFINED, "server shutting down"), asked });
    if (!this.requestRate.allow(client.host, performance.now())) return { ...refused(null, "over the request rate of its address", "limit"), asked };
    const outcome = await pipeline.run(request, client.host, context);
    if (!outcome.ok) return refuse(outcome);
    if (outcome.op !== "read") throw new Error("an HTTP read came out of the pipeline as a write");
    return outcome;
  }

  /** What a TFTP request to `listener` carries beside its name: no parameters, and the address it came to. */
  private tftpContext(listener: Listener): RequestContext {
    const here = isWildcard(listener.address) ? null : `tftp://${formatHostPort(listener.address, listener.port).replace(/:69$/, "")}`;
    return { params: {}, server: { tftp_base: here, http_base: this.options.generate?.httpBase ?? null } };
  }

  /** A new request: down the pipeline, then dispatched, or refused. */
  private async take(listener: Listener, packet: RequestPacket, peer: Peer, key: string, receivedAtEpoch: number, request: Uint8Array): Promise<void> {
    const pipeline = this.pipeline;
    if (!pipeline) return;
    let outcome: Awaited<ReturnType<RequestPipeline["run"]>>;
    try {
      outcome = await pipeline.run(packet, peer.address, this.requestContexts.get(listener) ?? this.tftpContext(listener));
    } catch (error) {
      this.active.delete(key);
      this.refuse(listener, peer, nameOf(packet), ErrorCode.NOT_DEFINED, `server error: ${(error as Error).message}`);
      return;
    }
    if (!outcome.ok) {
      this.active.delete(key);
      this.refuse(listener, peer, outcome.asked, outcome.code, outcome.message, outcome.kind);
      return;
    }
    if (this.stopped) {
      if (outcome.op === "read") outcome.source.close();
      else outcome.sink.abort();
      outcome.release();
      this.active.delete(key);
      this.refuse(listener, peer, outcome.asked, ErrorCode.NOT_DEFINED, "server shutting down");
      return;
    }
    this.dispatch(outcome, listener, packet, peer, key, receivedAtEpoch, request);
  }

  /**
   * Starts an accepted request's transfer: reads on a worker when there are workers (but a read
   * of a few windows: LOCAL_READ_WINDOWS), else here.
   */
  private dispatch(accepted: Accepted, listener: Listener, packet: RequestPacket, peer: Peer, key: string, receivedAtEpoch: number, request: Uint8Array): void {
    const { negotiated } = accepted;
    const declared = accepted.op === "write" ? packet.options.get("tsize") : undefined;
    const running: Running = {
      id: Atomics.add(this.ids, 0, 1) + 1,
      key,
      peer,
      listener,
      record: {
        client: formatHostPort(peer.address, peer.port),
        file: accepted.file,
        mode: packet.mode,
        direction: accepted.op,
        blksize: negotiated.blksize,
        windowsize: negotiated.windowsize,
        tsize: accepted.op === "read" ? accepted.source.size : declared === undefined ? null : Number(declared),
        options: negotiated.requested,
        // (the same thread's clock as receivedAtEpoch: no skew)
        acceptedMs: performance.timeOrigin + performance.now() - receivedAtEpoch,
      },
      started: performance.now(),
      source: null,
      engine: -1,
      release: accepted.release,
      request,
    };
    const job: TransferJob = {
      id: running.id,
      peer,
      localAddress: listener.address,
      blksize: negotiated.blksize,
      windowsize: negotiated.windowsize,
      oack: negotiated.oack,
      retransmit: retransmitPolicy(negotiated.timeoutMs, this.options.timeoutMs, this.options.retries),
      receivedAtEpoch,
    };
    this.active.set(key, running);
    this.running.set(running.id, running);
    const startFailed = (error: unknown): void => this.failed(running.id, (error as Error).message);
    if (accepted.op === "write") {
      // Uploads are rare in network boot and write through the main thread's sink: they run here.
      this.local.startWrite(job, accepted.sink, packet.mode, this.options.writeBehind ?? false).catch(startFailed);
      return;
    }
    const source = accepted.source;
    const windows = Math.ceil(blockCount(source.size, negotiated.blksize) / negotiated.windowsize);
    if (this.pool && source.share && windows > LOCAL_READ_WINDOWS) {
      running.engine = this.balancer.pick({ clientAddress: peer.address, clientPort: peer.port, filename: accepted.file }, this.pool.loads);
      running.source = source;
      this.pool.dispatch(running.engine, job, source.share, source.identity);
    } else {
      this.local.startRead(job, source).catch(startFailed);
    }
    if (packet.mode === "octet") this.publish(accepted.file, source);
  }

  /**
   * A path served from a cached copy: workers taking requests may serve it from now on, or,
   * while the copy still fills (a large file's first reader), from the moment it is sealed, so
   * that the file's next request is already theirs.
   */
  private publish(relative: string, source: FileSource): void {
    const share = source.share;
    if (!this.fastPath || !this.pool) return;
    if (share?.kind === "filling") {
      if (!this.publishOnSeal.has(share.id)) this.publishOnSeal.set(share.id, { relative, identity: source.identity });
      return;
    }
    if (share?.kind === "memfd") this.publishCopy(relative, share, source.identity);
  }

  /** `share`'s copy is held (a transfer reads it, or it is being sealed): its descriptor is the memfd's. */
  private publishCopy(relative: string, share: Extract<SourceShare, { kind: "memfd" }>, identity: FileIdentity): void {
    if (!this.pool) return;
    const key = `${share.id}|${relative}`;
    if (this.published.has(key)) return;
    let memfdIno: number;
    try {
      memfdIno = fstatSync(share.fd).ino;
    } catch {
      return;
    }
    this.published.add(key);
    this.pool.publish({ relative, entryId: share.id, share, identity, memfdIno });
  }

  /**
   * A transfer a worker took itself (fast-path.ts): recorded here as the ones dispatched from
   * here are, so that its end, the status and a drain count it. What it holds, the worker gives back.
   */
  private adopt(engine: number, start: FastStart): void {
    const listener = this.listeners[start.listener];
    if (!listener) return;
    const key = peerKey(start.peer);
    const running: Running = {
      id: start.id,
      key,
      peer: start.peer,
      listener,
      record: {
        client: formatHostPort(start.peer.address, start.peer.port),
        file: start.file,
        mode: "octet",
        direction: "read",
        blksize: start.blksize,
        windowsize: start.windowsize,
        tsize: start.tsize,
        options: start.options,
        acceptedMs: start.acceptedMs,
      },
      started: start.receivedAtEpoch - performance.timeOrigin,
      source: null,
      engine,
      release: () => {},
      request: bytesOfText(start.request),
    };
    this.running.set(running.id, running);
    this.active.set(key, running);
    this.cache.servedElsewhere(start.version);
  }

  /**
   * Whether workers taking the listen ports' requests may take some themselves: only where no
   * policy depends on the client or on more than this node's root and cache (fast-path.ts).
   */
  private fastPathSettings(): FastPathSettings | null {
    const o = this.options;
    const eligible =
      this.rootReal !== null &&
      o.allow.length === 0 &&
      o.deny.length === 0 &&
      (o.rules ?? []).length === 0 &&
      (this.pipeline?.remap.length ?? 1) === 0 &&
      (o.uniqueRoot ?? "off") === "off" &&
      this.generated === null &&
      o.cacheBytes > 0 &&
      !this.deps.remoteFiles &&
      !this.deps.metadata &&
      !this.deps.sharedAdmission;
    if (!eligible) return null;
    return {
      rootReal: this.rootReal!,
      negotiation: { blksizeMax: o.blksizeMax, windowsizeMax: o.windowsizeMax, windowBytesMax: o.windowBytesMax, uploadMax: o.uploadMax },
      timeoutMs: o.timeoutMs,
      retries: o.retries,
      limits: this.admit.limits,
      admission: this.admit.admission.state.buffer,
      requestRate: this.requestRate.current,
      ids: this.ids.buffer as SharedArrayBuffer,
      rateDropped: this.workersRateDropped.buffer as SharedArrayBuffer,
      closed: this.closedToRequests.buffer as SharedArrayBuffer,
    };
  }

  /** Tells the workers taking requests what they may take now (after a reload, say). */
  private updateFastPath(): void {
    if (!this.pool || !this.takingOnWorkers) return;
    const settings = this.fastPathSettings();
    this.fastPath = settings !== null;
    this.pool.fastPath(settings);
  }

  /** Refuses a request: its ERROR (unless dropped: code null), and its record. */
  private refuse(listener: Listener, peer: Peer, what: Asked, code: number | null, message: string, kind: RefusalKind = refusalKindOf(code)): void {
    if (code !== null) listener.reply(encodeError(code, message), peer);
    const refused = this.events.refused;
    if (refused) refused({ client: formatHostPort(peer.address, peer.port), op: what.op, file: what.file, remapped: what.remapped, kind, reason: message, code });
  }

  /** Sums up the requests dropped over their source's rate since the last time. */
  private summarizeRateLimited(): void {
    const summary = this.requestRate.summarize(performance.now());
    const report = (merged: RateLimitSummary): void => {
      if (merged.sources.length > 0 || merged.unreported > 0) this.events.rateLimited?.({ ...merged, intervalMs: RATE_SUMMARY_MS });
    };
    if (!this.fastPath || !this.pool) return report(summary);
    // workers taking requests keep their sources' buckets: theirs join this one
    void this.pool.rateSummaries().then((answers) => {
      for (const theirs of answers) {
        summary.sources.push(...theirs.sources);
        summary.unreported += theirs.unreported;
      }
      report(summary);
    });
  }

  /**
   * A datagram at a listen port that is no request. Its ERROR goes out at a bounded rate: a
   * flood of garbage with forged sources must not turn the listener into a reflector.
   */
  private refuseGarbage(listener: Listener, peer: Peer, code: number | null, message: string): void {
    if (code !== null && !listener.garbageReplies.take()) {
      this.events.garbageUnanswered?.(peer, message);
      return;
    }
    if (code !== null) listener.reply(encodeError(code, message), peer);
    this.events.garbageRefused?.(peer, message, code);
  }

  /**
   * Applies the settings that may change while serving (a config pushed to the fleet):
   * admission limits (the memory budget and the request rate too) and remap rules, once started. Running
   * transfers keep going and give back what they reserved; new requests see the new settings.
   */
  reconfigure(change: { limits?: ServerOptions["limits"]; remap?: RemapRule[] }): void {
    if (change.limits) {
      this.admit.setLimits(change.limits);
      this.requestRate.setLimits(change.limits.requestRate ?? NO_REQUEST_RATE);
    }
    if (change.remap && this.pipeline) this.pipeline.remap = change.remap;
    this.updateFastPath();
  }

  private finish(id: number): Running | null {
    const running = this.running.get(id);
    if (!running) return null;
    this.running.delete(id);
    if (this.active.get(running.key) === running) this.active.delete(running.key);
    running.release();
    running.source?.close();
    running.source = null;
    return running;
  }

  private ended(id: number, outcome: TransferOutcome): void {
    const running = this.finish(id);
    if (!running) return;
    this.events.transferEnd?.({ ...running.record, ...outcome, durationMs: performance.now() - running.started });
  }

  /** A job that never started (no transfer socket): the client hears it from the listener. */
  private failed(id: number, message: string): void {
    const running = this.finish(id);
    if (!running) return;
    const what = { op: running.record.direction, file: running.record.file, remapped: null };
    this.refuse(running.listener, running.peer, what, ErrorCode.NOT_DEFINED, `server error: ${message}`);
  }
}

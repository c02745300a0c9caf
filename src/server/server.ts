/**
 * The TFTP server's control plane: listeners take requests; admission, remap rules, root
 * confinement, the file cache and option negotiation decide; and each accepted request becomes
 * a job for a transfer engine — on this thread, or on a worker chosen by the load balancer.
 * Knows nothing of config files or Redis; the serve command hands it ready-made ServerOptions.
 */
import { BlockList, isIPv6 } from "node:net";
import { decodePacket, encodeError } from "../protocol/codec.ts";
import { negotiate } from "../protocol/options.ts";
import { ErrorCode, Opcode, type RequestPacket } from "../protocol/packet.ts";
import { FileCache } from "../storage/cache.ts";
import { openCached } from "../storage/local.ts";
import { NETASCII_MAX_BYTES, netasciiSource } from "../storage/netascii-source.ts";
import { applyRemap, type RemapRule } from "../storage/remap.ts";
import { listDirectory, openForRead, realRoot, resolveRequestPath } from "../storage/resolve.ts";
import type { MetadataCache } from "../storage/metadata.ts";
import { refuse, type Refusal } from "../storage/refusal.ts";
import type { RemoteFiles } from "../storage/remote.ts";
import type { FileIdentity, FileSource } from "../storage/source.ts";
import { prepareUpload, type UploadPolicy } from "../storage/upload.ts";
import { formatHostPort, type HostPort, type PortRange } from "../net/address.ts";
import { Admission, TRANSFER_MEMORY_BYTES, type AdmissionLimits, type SharedAdmission, type SharedVerdict } from "./admission.ts";
import { LoadBalancer, type Algorithm, type HashKey } from "./balance.ts";
import { TransferEngine, type EngineOptions, type RepeatVerdict, type TransferJob } from "./engine.ts";
import type { LossPlan } from "./loss.ts";
import type { BatchPolicy } from "./shared-socket.ts";
import type { BufferSizes } from "../net/sockopt.ts";
import type { Lifetimes, RetransmitPolicy, TransferOutcome } from "./transfer.ts";
import { openListener, type Listener, type Peer } from "./transport.ts";
import { WorkerPool, type WorkerExit } from "./worker-pool.ts";
import { refusalKindOf, type RefusalKind, type RefusalRecord } from "./refusal-record.ts";
import { RequestRate, type RateLimitSummary, type RequestRateLimits } from "./request-rate.ts";

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
  /** sendmmsg batching of shared sockets */
  batch: BatchPolicy;
  /** bytes of file content kept in memory for all transfers to share; 0 turns the cache off */
  cacheBytes: number;
  /** transfer engines: 1 runs transfers on the main thread, N > 1 starts N worker threads */
  workers: number;
  balance: { algorithm: Algorithm; hashKey: HashKey };
  /** requestRate: requests per source address (a token bucket); absent: no rate limit */
  limits: AdmissionLimits & { onLimit: "drop" | "busy"; requestRate?: RequestRateLimits };
  lifetimes: Lifetimes;
  loss?: LossPlan | null;
  /** TFTPD_TEST_WORKER_THROW: the first transfer worker throws once it has started this many transfers */
  workerThrowAfterJobs?: number | null;
  /** limits counted beyond this node, asked after the node's own (see SharedAdmission) */
  sharedAdmission?: SharedAdmission | null;
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
}

/** A transfer from acceptance to its end record. */
interface Running {
  id: number;
  key: string;
  peer: Peer;
  file: string;
  listener: Listener;
  record: Omit<TransferRecord, keyof TransferOutcome | "durationMs">;
  started: number;
  /** held here while a worker reads it (the local engine closes its own) */
  source: FileSource | null;
  /** the engine running it: -1 the local engine, else a worker index */
  engine: number;
  /** its token from the shared admission, when one admitted it */
  lease: string | null;
  /** bytes it reserved in the memory budget (admission), given back when it ends */
  memory: number;
  /** the request datagram that began it: the same bytes again are the same request resent */
  request: Uint8Array;
}

/** Which request a refusal refused: its part of the RefusalRecord. */
interface Asked {
  op: "read" | "write";
  /** the name as asked, backslashes made slashes */
  file: string;
  /** after the remap rules, when there are rules and they ran */
  remapped: string | null;
}

function asked(request: RequestPacket, remapped: string | null): Asked {
  // Windows PXE clients send backslashes; remap rules are written against forward slashes.
  return { op: request.op === Opcode.RRQ ? "read" : "write", file: request.filename.replaceAll("\\", "/"), remapped };
}

/** The metadata cache's facts describe this version of a file. */
function isVersion(facts: { size: number; mtimeMs: number; ctimeMs: number }, id: FileIdentity): boolean {
  return facts.size === id.size && facts.mtimeMs === id.mtimeMs && facts.ctimeMs === id.ctimeMs;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function peerKey(peer: Peer): string {
  return `${peer.address}|${peer.port}`;
}

function buildBlockList(cidrs: string[]): BlockList | null {
  if (cidrs.length === 0) return null;
  const list = new BlockList();
  for (const cidr of cidrs) {
    const [net = "", bits] = cidr.split("/");
    const family = isIPv6(net) ? "ipv6" : "ipv4";
    const prefix = bits === undefined ? (family === "ipv6" ? 128 : 32) : Number(bits);
    list.addSubnet(net, prefix, family);
  }
  return list;
}

function matches(list: BlockList, address: string): boolean {
  return list.check(address, isIPv6(address) ? "ipv6" : "ipv4");
}

const NO_REQUEST_RATE: RequestRateLimits = { perSecond: 0, burst: 1 };

/** How often requests dropped over their source's rate are summed up: one line per source and interval. */
const RATE_SUMMARY_MS = 10_000;

export class TftpServer {
  private readonly listeners: Listener[] = [];
  /**
   * Keyed by client address and port: a repeated request from the same TID is not a new
   * transfer. Holds requests still being resolved (null) and running transfers.
   */
  private readonly active = new Map<string, Running | null>();
  private readonly running = new Map<number, Running>();
  private lastId = 0;
  private rootReal = "";
  private stopped = false;
  /** the shared admission failed its last request: the outage was reported */
  private sharedDown = false;
  private readonly allow: BlockList | null;
  private readonly deny: BlockList | null;
  private readonly admission: Admission;
  private readonly requestRate: RequestRate;
  private rateSummaryTimer: ReturnType<typeof setInterval> | null = null;
  private readonly balancer: LoadBalancer;
  private readonly local: TransferEngine;
  private pool: WorkerPool | null = null;
  readonly cache: FileCache;
  /** where files the root lacks come from (the fleet's shared cache); set before start() */
  remoteFiles: RemoteFiles | null = null;
  /** what is known of paths below the root without asking the disk; set before start() */
  metadata: MetadataCache | null = null;

  constructor(
    private readonly options: ServerOptions,
    private readonly events: ServerEvents = {},
  ) {
    this.allow = buildBlockList(options.allow);
    this.deny = buildBlockList(options.deny);
    this.cache = new FileCache(options.cacheBytes);
    this.admission = new Admission(options.limits);
    this.requestRate = new RequestRate(options.limits.requestRate ?? NO_REQUEST_RATE);
    this.balancer = new LoadBalancer(options.balance.algorithm, options.balance.hashKey, options.workers);
    this.local = new TransferEngine(this.engineOptions(), options.loss ?? null, (id, outcome) => this.ended(id, outcome));
  }

  get activeTransfers(): number {
    return this.active.size;
  }

  /** bytes the running transfers reserved in the memory budget, and the budget (Infinity: none) */
  get transferMemory(): { reserved: number; budget: number } {
    return { reserved: this.admission.reservedMemory, budget: this.admission.memoryBudget };
  }

  /** requests dropped over their source's rate since start */
  get requestsRateLimited(): number {
    return this.requestRate.dropped;
  }

  get addresses(): HostPort[] {
    return this.listeners.map((l) => ({ host: l.address, port: l.port }));
  }

  /** the worker pool, when transfers run on worker threads */
  get workers(): WorkerPool | null {
    return this.pool;
  }

  async start(): Promise<void> {
    this.rootReal = realRoot(this.options.root);
    try {
      if (this.options.workers > 1) {
        this.pool = new WorkerPool(
          this.options.workers,
          { engine: this.engineOptions(), lossSpec: this.options.loss?.spec ?? null, throwAfterJobs: this.options.workerThrowAfterJobs ?? null },
          {
            end: (id, outcome) => this.ended(id, outcome),
            failed: (id, message) => this.failed(id, message),
            workerExit: (index, exit) => this.events.workerExit?.(index, exit),
          },
        );
        await this.pool.start();
        const pool = this.pool;
        this.cache.events = {
          progress: (entryId, readable) => pool.progress(entryId, readable),
          filled: (entryId, fd, size) => pool.filled(entryId, fd, size),
          failed: (entryId, reason) => pool.fillFailed(entryId, reason),
          released: (entryId) => pool.release(entryId),
        };
      }
      for (const { host, port } of this.options.listen) {
        const listener = await openListener(host, port, (l, bytes, peer, at) => this.onRequest(l, bytes, peer, at), {
          receive: this.options.receiveBufferBytes,
          send: this.options.sendBufferBytes,
        });
        this.listeners.push(listener);
        this.events.listening?.({ host: listener.address, port: listener.port }, listener.buffers);
      }
      this.rateSummaryTimer = setInterval(() => this.summarizeRateLimited(), RATE_SUMMARY_MS);
      this.rateSummaryTimer.unref();
    } catch (error) {
      await this.stop();
      throw error;
    }
  }

  /** Stops listening and ends every transfer. */
  /**
   * Graceful stop: no new requests are taken (the listeners close), running transfers may
   * finish for up to `graceMs`, then whatever is left is ended. Resolves with how many were cut.
   */
  async drain(graceMs: number): Promise<number> {
    for (const listener of this.listeners.splice(0)) listener.close();
    const deadline = performance.now() + graceMs;
    while (this.active.size > 0 && performance.now() < deadline) await Bun.sleep(50);
    const cut = this.active.size;
    await this.stop();
    return cut;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.rateSummaryTimer) {
      clearInterval(this.rateSummaryTimer);
      this.rateSummaryTimer = null;
      this.summarizeRateLimited();
    }
    for (const listener of this.listeners.splice(0)) listener.close();
    await Promise.all([this.local.stop(), this.pool?.stop()]);
    this.pool = null;
    this.active.clear();
  }

  private engineOptions(): EngineOptions {
    const o = this.options;
    return {
      portRange: o.portRange,
      transferSockets: o.transferSockets,
      batch: o.batch,
      receiveBufferBytes: o.receiveBufferBytes,
      sendBufferBytes: o.sendBufferBytes,
      lifetimes: o.lifetimes,
    };
  }

  private onRequest(listener: Listener, bytes: Uint8Array, peer: Peer, receivedAt: number): void {
    if (this.options.loss?.shouldDrop("in", bytes)) return;
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
    // Before anything that answers or logs: a flood from one address costs a lookup and a drop.
    if (!this.requestRate.allow(peer.address, receivedAt)) return;
    if ((this.allow && !matches(this.allow, peer.address)) || (this.deny && matches(this.deny, peer.address))) {
      this.refuse(listener, peer, asked(packet, null), ErrorCode.ACCESS_VIOLATION, "access denied", "allow_deny");
      return;
    }
    const key = peerKey(peer);
    const current = this.active.get(key);
    // Firmware resends an unanswered request from the same port: the one being resolved answers it.
    if (current === null) return;
    // a copy: the receive buffer may be reused before a worker's verdict on a repeat comes back
    const request = bytes.slice();
    const begin = (): void => {
      this.active.set(key, null);
      const receivedAtEpoch = performance.timeOrigin + receivedAt;
      this.accept(listener, packet, peer, key, receivedAtEpoch, request).catch((error: unknown) => {
        this.active.delete(key);
        this.refuse(listener, peer, asked(packet, null), ErrorCode.NOT_DEFINED, `server error: ${(error as Error).message}`);
      });
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
    const same = sameBytes(running.request, bytes);
    const decide = (verdict: RepeatVerdict): void => {
      if (verdict !== "superseded" && verdict !== "unknown") return;
      // the end record came first (finish freed the port), unless another request took it since
      if (!this.active.has(running.key)) begin();
    };
    if (running.engine < 0) decide(this.local.requestAgain(running.id, same));
    else if (this.pool) void this.pool.requestAgain(running.engine, running.id, same).then(decide);
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
    if (summary.sources.length > 0 || summary.unreported > 0) this.events.rateLimited?.({ ...summary, intervalMs: RATE_SUMMARY_MS });
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

  private async accept(
    listener: Listener,
    request: RequestPacket,
    peer: Peer,
    key: string,
    receivedAtEpoch: number,
    requestBytes: Uint8Array,
  ): Promise<void> {
    const isRead = request.op === Opcode.RRQ;
    let admitted: string | null = null;
    let lease: string | null = null;
    /** bytes reserved in the memory budget for this transfer so far */
    let reserved = 0;
    const what = asked(request, null);
    const reject = (code: number | null, message: string, kind?: RefusalKind): void => {
      if (admitted !== null) this.admission.release(peer.address, admitted, reserved);
      if (lease !== null) this.options.sharedAdmission?.release(lease, peer.address);
      this.active.delete(key);
      this.refuse(listener, peer, what, code, message, kind);
    };

    // Past admission, anything thrown must give the slots back (a transfer that began gives
    // them back when it ends).
    let begun = false;
    try {
      const remapped = applyRemap(this.options.remap, what.file, what.op);
      if (!remapped.ok) return reject(remapped.code, remapped.message);
      if (this.options.remap.length > 0) what.remapped = remapped.name;
      const resolved = resolveRequestPath(this.rootReal, remapped.name);
      if (!resolved.ok) return reject(resolved.code, resolved.message);

      // Dropped, the ROM retries later; "busy" tells it now (some firmware gives up on an ERROR).
      const limitCode = this.options.limits.onLimit === "busy" ? ErrorCode.NOT_DEFINED : null;
      const refusal = this.admission.admit(peer.address, resolved.relative, TRANSFER_MEMORY_BYTES);
      if (refusal !== null) return reject(limitCode, `busy: ${refusal} transfer limit reached`, "limit");
      admitted = resolved.relative;
      reserved = TRANSFER_MEMORY_BYTES;
      // The node's own limits come first (they protect this node); then the fleet's, if shared.
      // "unavailable" admits: this node's limits still hold.
      const shared = this.options.sharedAdmission;
      const verdict = shared ? await this.admitShared(shared, peer.address) : null;
      if (verdict?.ok) lease = verdict.token;
      else if (verdict && verdict.refusal !== "unavailable") {
        return reject(limitCode, `busy: ${verdict.refusal} transfer limit reached across the cluster`, "limit");
      }

      const limits = {
        blksizeMax: this.options.blksizeMax,
        windowsizeMax: this.options.windowsizeMax,
        windowBytesMax: this.options.windowBytesMax,
        uploadMax: this.options.uploadMax,
      };
      const base = {
        id: ++this.lastId,
        key,
        peer,
        file: resolved.relative,
        listener,
        started: performance.now(),
        source: null,
        engine: -1,
        lease,
        memory: reserved,
        request: requestBytes,
      };
      const recordBase = { client: formatHostPort(peer.address, peer.port), file: resolved.relative, mode: request.mode };
      const job = (blksize: number, windowsize: number, oack: [string, string][] | null, timeoutMs: number | null): TransferJob => ({
        id: base.id,
        peer,
        localAddress: listener.address,
        blksize,
        windowsize,
        oack,
        retransmit: this.retransmitPolicy(timeoutMs),
        receivedAtEpoch,
      });

      if (isRead) {
        const opened = await this.openSource(resolved.relative, request.mode === "netascii");
        if (!opened.ok) return reject(opened.code, opened.message);
        let source = opened.source;
        if (request.mode === "netascii") {
          if (source.size > NETASCII_MAX_BYTES) {
            source.close();
            return reject(ErrorCode.NOT_DEFINED, "file too large for netascii mode");
          }
          // The converted copy is this transfer's own: it counts against the memory budget, at
          // its peak (the file read whole plus a copy up to twice as long) until it is made.
          const peak = 3 * source.size;
          if (!this.admission.reserve(peak)) {
            source.close();
            return reject(limitCode, "busy: memory transfer limit reached", "limit");
          }
          reserved += peak;
          source = netasciiSource(source);
          // the copy stays reserved, the rest of the peak is given back
          this.admission.unreserve(peak - source.size);
          reserved -= peak - source.size;
          base.memory = reserved;
        }
        const negotiated = negotiate(request, limits, request.mode === "octet" ? source.size : null);
        if (!negotiated.ok) {
          source.close();
          return reject(negotiated.code, negotiated.message, "options");
        }
        const running: Running = {
          ...base,
          record: { ...recordBase, direction: "read", blksize: negotiated.blksize, windowsize: negotiated.windowsize, tsize: source.size, options: negotiated.requested },
        };
        const transferJob = job(negotiated.blksize, negotiated.windowsize, negotiated.oack, negotiated.timeoutMs);
        if (this.stopped) {
          source.close();
          return reject(ErrorCode.NOT_DEFINED, "server shutting down");
        }
        begun = true;
        this.begin(running);
        if (this.pool && source.share) {
          running.engine = this.balancer.pick({ clientAddress: peer.address, clientPort: peer.port, filename: resolved.relative }, this.pool.loads);
          running.source = source;
          this.pool.dispatch(running.engine, transferJob, source.share, source.identity);
        } else {
          await this.local.startRead(transferJob, source).catch((error: unknown) => this.failed(running.id, (error as Error).message));
        }
        return;
      }

      const negotiated = negotiate(request, limits, null);
      if (!negotiated.ok) return reject(negotiated.code, negotiated.message, "options");
      const declared = request.options.get("tsize");
      // RFC 2349: a declared size the server cannot store (too large, more than the free space)
      // is refused now, not half-way; any run of digits counts, however long.
      const declaredBytes = declared !== undefined && /^[0-9]+$/.test(declared) ? Number(declared) : null;
      const prepared = await prepareUpload(this.rootReal, resolved.relative, this.options.write, this.options.uploadMax, declaredBytes);
      if (!prepared.ok) return reject(prepared.code, prepared.message);
      const running: Running = {
        ...base,
        record: { ...recordBase, direction: "write", blksize: negotiated.blksize, windowsize: negotiated.windowsize, tsize: declared === undefined ? null : Number(declared), options: negotiated.requested },
      };
      if (this.stopped) {
        prepared.sink.abort();
        return reject(ErrorCode.NOT_DEFINED, "server shutting down");
      }
      begun = true;
      this.begin(running);
      // Uploads are rare in network boot and write through the main thread's sink: they run here.
      await this.local
        .startWrite(job(negotiated.blksize, negotiated.windowsize, negotiated.oack, negotiated.timeoutMs), prepared.sink, request.mode)
        .catch((error: unknown) => this.failed(running.id, (error as Error).message));
    } catch (error) {
      if (begun) throw error;
      reject(ErrorCode.NOT_DEFINED, `server error: ${(error as Error).message}`);
    }
  }

  /**
   * The bytes of a file to read: the local root first (through the file cache), then, for a
   * file the root does not hold, the remote files (the fleet's shared cache) when there are any.
   * `raw`: the caller reads the whole file at once (netascii), so the cache is not needed.
   */
  private async openSource(relative: string, raw: boolean): Promise<{ ok: true; source: FileSource } | Refusal> {
    const facts = this.metadata && !raw ? await this.metadata.lookup(relative) : null;
    if (facts?.kind === "file") {
      // known to the metadata cache and held in memory: served without touching the disk
      const held = this.cache.versionAt(relative);
      if (held && isVersion(facts, held.identity)) {
        const known = await this.cache.acquire(held.key, held.identity, null);
        if (known) return { ok: true, source: known };
      }
    }
    if (facts?.kind !== "missing") {
      const opened = raw ? await openForRead(this.rootReal, relative) : await openCached(this.cache, this.rootReal, relative);
      if (opened.ok) {
        const { size, mtimeMs, ctimeMs } = opened.source.identity;
        // what the metadata cache already says needs no write
        if (this.metadata && !(facts?.kind === "file" && isVersion(facts, opened.source.identity))) {
          this.metadata.remember(relative, { kind: "file", size, mtimeMs, ctimeMs });
        }
        return opened;
      }
      if (opened.code !== ErrorCode.FILE_NOT_FOUND) return opened;
      this.metadata?.remember(relative, { kind: "missing" }, listDirectory(this.rootReal, relative));
    }
    if (!this.remoteFiles) return refuse(ErrorCode.FILE_NOT_FOUND, "file not found");
    return this.remoteFiles.open(relative, { whole: raw });
  }

  /**
   * Applies the settings that may change while serving (a config pushed to the fleet):
   * admission limits (the memory budget and the request rate too) and remap rules. Running transfers keep going
   * and give back what they reserved; new requests see the new settings.
   */
  reconfigure(change: { limits?: ServerOptions["limits"]; remap?: RemapRule[] }): void {
    if (change.limits) {
      this.options.limits = change.limits;
      this.admission.setLimits(change.limits);
      this.requestRate.setLimits(change.limits.requestRate ?? NO_REQUEST_RATE);
    }
    if (change.remap) this.options.remap = change.remap;
  }

  /** Asks the shared admission; reports an outage once, and its end. */
  private async admitShared(shared: SharedAdmission, address: string): Promise<SharedVerdict> {
    const verdict: SharedVerdict = await shared
      .acquire(address, this.options.limits)
      .catch((error: unknown) => ({ ok: false, refusal: "unavailable", error: (error as Error).message }));
    const down = !verdict.ok && verdict.refusal === "unavailable";
    if (down && !this.sharedDown) this.events.sharedAdmissionDown?.(verdict.error);
    if (!down && this.sharedDown) this.events.sharedAdmissionUp?.();
    this.sharedDown = down;
    return verdict;
  }

  private begin(running: Running): void {
    this.active.set(running.key, running);
    this.running.set(running.id, running);
  }

  private retransmitPolicy(clientTimeoutMs: number | null): RetransmitPolicy {
    return clientTimeoutMs === null
      ? { timeoutMs: this.options.timeoutMs, fixed: false, retries: this.options.retries }
      : { timeoutMs: clientTimeoutMs, fixed: true, retries: this.options.retries };
  }

  private finish(id: number): Running | null {
    const running = this.running.get(id);
    if (!running) return null;
    this.running.delete(id);
    if (this.active.get(running.key) === running) this.active.delete(running.key);
    this.admission.release(running.peer.address, running.file, running.memory);
    if (running.lease !== null) this.options.sharedAdmission?.release(running.lease, running.peer.address);
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

/**
 * A transfer worker's own road for the commonest request: an octet read of a file the main
 * thread already serves from a sealed cached copy, on a node whose policies do not depend on
 * the client (no allow/deny, network rules, remap rules, unique roots, generated files or
 * fleet). It takes the same steps as the request pipeline, in the same order, against the same
 * state: the request rate (this worker owns its sources' buckets: the kernel steers each
 * address to one worker), the name confined below the root, the cached version checked by one
 * stat of its path (as the main thread's lookup does), admission in the node's shared counts,
 * negotiation. Whatever it does not take, for any reason, goes to the main thread, which
 * answers it (ERRORs and their records included) as it answers every request: this road never
 * refuses anything itself.
 *
 * On this machine a request costs the main thread about 90 µs of CPU in a storm and a hand-over
 * to a worker on top; here it costs the worker the steps above, on the thread that sends its
 * first packet.
 */
import * as fs from "node:fs";
import { decodePacket } from "../protocol/codec.ts";
import { negotiate, type NegotiationLimits } from "../protocol/options.ts";
import { Opcode } from "../protocol/packet.ts";
import { resolveRequestPath } from "../storage/resolve.ts";
import { versionKey } from "../storage/cache.ts";
import { atVersion, type FileIdentity, type SourceShare } from "../storage/source.ts";
import { Admission, TRANSFER_MEMORY_BYTES, type AdmissionLimits } from "./admission.ts";
import { AdmissionState } from "./admission-state.ts";
import type { TransferJob } from "./engine.ts";
import { RequestRate, type RateLimitSummary, type RequestRateLimits } from "./request-rate.ts";
import { retransmitPolicy } from "./transfer.ts";
import { peerKey, sameDatagram, type Peer } from "./transport.ts";
import { textOfBytes } from "./worker-protocol.ts";

/** What a worker needs to take requests itself; sent by the main thread (null: take none). */
export interface FastPathSettings {
  /** the root's real path */
  rootReal: string;
  negotiation: NegotiationLimits;
  /** the retransmit policy when the client fixes no timeout */
  timeoutMs: number;
  retries: number;
  limits: AdmissionLimits;
  /** the node's admission counts (AdmissionState's buffer) */
  admission: SharedArrayBuffer;
  requestRate: RequestRateLimits;
  /** one Int32 counter of transfer ids, shared with the main thread so that ids never collide */
  ids: SharedArrayBuffer;
  /** one Int32 counter of requests dropped over their source's rate here, read by the metrics */
  rateDropped: SharedArrayBuffer;
  /** one Int32, set by the main thread when the server stops taking requests (a drain): take none */
  closed: SharedArrayBuffer;
}

/** A cached copy the main thread serves a path from: published to workers once sealed. */
export interface PublishedCopy {
  /** below the root */
  relative: string;
  entryId: number;
  share: Extract<SourceShare, { kind: "memfd" }>;
  identity: FileIdentity;
  /** the memfd's inode, as the main thread's fstat saw it while it held the copy */
  memfdIno: number;
}

/** What a transfer taken here reports to the main thread, which keeps every transfer's record. */
export interface FastStart {
  id: number;
  peer: Peer;
  /** index of the listener it came to */
  listener: number;
  /** the request datagram, a character per byte (the same bytes again are the same request resent) */
  request: string;
  file: string;
  blksize: number;
  windowsize: number;
  tsize: number;
  options: string[];
  acceptedMs: number;
  /** as TransferJob has it */
  receivedAtEpoch: number;
  /** the version served (cache.ts versionKey): the main thread counts a cache hit */
  version: string;
}

export interface FastPathDeps {
  /** starts a read on this worker's engine; `ended` runs once it ends */
  start(job: TransferJob, copy: PublishedCopy, ended: () => void): void;
  /** the main thread is told first, so that the transfer's end never reaches it unknown */
  started(start: FastStart): void;
  /** asks this worker's engine about a request repeated by a running transfer's client */
  requestAgain(id: number, same: boolean): "answered" | "ignored" | "superseded" | "unknown";
  /** one stat of a path, or null when it is gone (fs.statSync in production) */
  stat?(path: string): fs.Stats | null;
}

/** What became of a datagram: taken here, dropped over its source's rate, or for the main thread. */
export type FastVerdict = "taken" | "dropped" | "forward";

/** How long a client whose request went to the main thread keeps going there: its transfer may still run. */
const FORWARDED_MEMORY_MS = 60_000;

interface Running {
  id: number;
  request: Uint8Array;
}

export class FastPath {
  private readonly admission: Admission;
  private readonly rate: RequestRate;
  private readonly ids: Int32Array;
  private readonly rateDropped: Int32Array;
  private readonly closed: Int32Array;
  private readonly copies = new Map<string, PublishedCopy>();
  /** transfers taken here, by client address and port */
  private readonly running = new Map<string, Running>();
  /** clients whose last request went to the main thread, and when */
  private readonly forwarded = new Map<string, number>();
  private lastSweep = 0;
  /** the turn whose stats `stats` holds (its clock), and those stats by path (null: none) */
  private statsAt = -1;
  private readonly stats = new Map<string, fs.Stats | null>();
  /** requests taken here since start */
  taken = 0;

  constructor(
    private settings: FastPathSettings,
    private readonly deps: FastPathDeps,
  ) {
    this.admission = new Admission(settings.limits, new AdmissionState(settings.admission));
    this.rate = new RequestRate(settings.requestRate);
    this.ids = new Int32Array(settings.ids);
    this.rateDropped = new Int32Array(settings.rateDropped);
    this.closed = new Int32Array(settings.closed);
  }

  /** New limits (a reloaded or pushed config): the next request sees them. */
  update(settings: FastPathSettings): void {
    this.settings = settings;
    this.admission.setLimits(settings.limits);
    this.rate.setLimits(settings.requestRate);
  }

  publish(copy: PublishedCopy): void {
    this.copies.set(copy.relative, copy);
  }

  /** The main thread closed a cached copy: nothing here serves from it any more. */
  release(entryId: number): void {
    for (const [relative, copy] of this.copies) if (copy.entryId === entryId) this.copies.delete(relative);
  }

  /** What was dropped over the rate since the last call (the main thread logs it with its own). */
  summarize(now: number): RateLimitSummary {
    return this.rate.summarize(now);
  }

  /**
   * A datagram that reached listener `listener` at `receivedAt` (this thread's clock). "forward"
   * hands it to the main thread as it came; a request's rate is then taken already.
   */
  take(bytes: Uint8Array, peer: Peer, listener: number, localAddress: string, receivedAt: number): FastVerdict {
    // the server drains: the main thread, whose listeners are closed, lets it go
    if (Atomics.load(this.closed, 0) !== 0) return "forward";
    const decoded = decodePacket(bytes);
    // what is no request (garbage, an ERROR) is the main thread's to answer or count: no rate taken
    if (!decoded.ok || (decoded.packet.op !== Opcode.RRQ && decoded.packet.op !== Opcode.WRQ)) return "forward";
    if (!this.rate.allow(peer.address, receivedAt)) {
      Atomics.add(this.rateDropped, 0, 1);
      return "dropped";
    }
    const key = peerKey(peer);
    const running = this.running.get(key);
    if (running) {
      const verdict = this.deps.requestAgain(running.id, sameDatagram(running.request, bytes));
      if (verdict === "answered" || verdict === "ignored") return "taken";
      // superseded, or ended meanwhile: a new request, below
    }
    this.sweepForwarded(receivedAt);
    const forwardedAt = this.forwarded.get(key);
    if (forwardedAt !== undefined && receivedAt - forwardedAt < FORWARDED_MEMORY_MS) return this.forward(key, receivedAt);
    const packet = decoded.packet;
    if (packet.op !== Opcode.RRQ || packet.mode !== "octet") return this.forward(key, receivedAt);
    const resolved = resolveRequestPath(this.settings.rootReal, packet.filename);
    if (!resolved.ok) return this.forward(key, receivedAt);
    const copy = this.copies.get(resolved.relative);
    if (!copy || !this.unchanged(`${this.settings.rootReal}/${resolved.relative}`, copy.identity, receivedAt)) return this.forward(key, receivedAt);
    if (this.admission.admit(peer.address, resolved.relative, TRANSFER_MEMORY_BYTES) !== null) return this.forward(key, receivedAt);
    const release = (): void => this.admission.release(peer.address, resolved.relative, TRANSFER_MEMORY_BYTES);
    const negotiated = negotiate(packet, this.settings.negotiation, copy.identity.size);
    if (!negotiated.ok) {
      release();
      return this.forward(key, receivedAt);
    }
    const id = Atomics.add(this.ids, 0, 1) + 1;
    const request = bytes.slice();
    const receivedAtEpoch = performance.timeOrigin + receivedAt;
    const job: TransferJob = {
      id,
      peer,
      localAddress,
      blksize: negotiated.blksize,
      windowsize: negotiated.windowsize,
      oack: negotiated.oack,
      retransmit: retransmitPolicy(negotiated.timeoutMs, this.settings.timeoutMs, this.settings.retries),
      receivedAtEpoch,
    };
    this.deps.started({
      id,
      peer,
      listener,
      request: textOfBytes(request),
      file: resolved.relative,
      blksize: negotiated.blksize,
      windowsize: negotiated.windowsize,
      tsize: copy.identity.size,
      options: negotiated.requested,
      acceptedMs: performance.now() - receivedAt,
      receivedAtEpoch,
      version: versionKey(copy.identity),
    });
    this.running.set(key, { id, request });
    this.taken++;
    this.deps.start(job, copy, () => {
      release();
      if (this.running.get(key)?.id === id) this.running.delete(key);
    });
    return "taken";
  }

  private forward(key: string, now: number): FastVerdict {
    this.forwarded.set(key, now);
    return "forward";
  }

  /**
   * Whether `path` still is the version `identity` names. One stat per path serves every request
   * read in the same turn (`receivedAt`, the turn's clock), as one batch arriving together: a
   * file replaced during a turn is seen from the next one, a millisecond or so later.
   */
  private unchanged(path: string, identity: FileIdentity, receivedAt: number): boolean {
    if (receivedAt !== this.statsAt) {
      this.stats.clear();
      this.statsAt = receivedAt;
    }
    let stat = this.stats.get(path);
    if (stat === undefined) {
      try {
        stat = this.deps.stat ? this.deps.stat(path) : (fs.statSync(path, { throwIfNoEntry: false }) ?? null);
      } catch {
        stat = null;
      }
      this.stats.set(path, stat);
    }
    return stat !== null && stat.isFile() && atVersion(identity, stat);
  }

  private sweepForwarded(now: number): void {
    if (now - this.lastSweep < FORWARDED_MEMORY_MS) return;
    this.lastSweep = now;
    for (const [key, at] of this.forwarded) if (now - at >= FORWARDED_MEMORY_MS) this.forwarded.delete(key);
  }
}

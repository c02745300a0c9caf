/**
 * The transfer engine: the data plane. It owns transfer sockets and the RRQ/WRQ state
 * machines and knows nothing of listeners, admission or the file system: a job arrives with
 * everything decided (peer, local address, negotiated options, the bytes to send or where to
 * store them), and the engine reports how it ended. One engine runs on the main thread; with
 * workers, one more runs in each worker thread (worker.ts).
 */
import { randomInt } from "node:crypto";
import { isIP } from "node:net";
import { interfaceMtu } from "../net/interfaces.ts";
import { DATA_HEADER_SIZE, type TransferMode } from "../protocol/packet.ts";
import type { FileSource } from "../storage/source.ts";
import type { UploadSink } from "../storage/upload.ts";
import type { LossPlan } from "./loss.ts";
import { ReadTransfer } from "./read-transfer.ts";
import { bunTransferSockets, type BatchPolicy, type SharedSocket } from "./shared-socket.ts";
import {
  judgeRepeat,
  overdue,
  type Lifetimes,
  type RetransmitPolicy,
  type Transfer,
  type TransferOutcome,
  type TransferParams,
} from "./transfer.ts";
import type { PortRange } from "../net/address.ts";
import type { ListenPortTransfers, PacketHandler, Peer, TransferChannel, TransferSockets } from "./transport.ts";
import { WriteTransfer } from "./write-transfer.ts";

export interface EngineOptions {
  portRange: PortRange | null;
  transferSockets: "per-transfer" | "shared";
  batch: BatchPolicy;
  /** windows leave as one UDP GSO send each (ServerOptions.gso) */
  gso: boolean;
  receiveBufferBytes: number;
  sendBufferBytes: number;
  lifetimes: Lifetimes;
  /** transfers whose client has not answered yet, at once per source address (unverifiedBudget) */
  unverifiedPerSource: number;
}

/** A transfer decided by the control plane; plain data, so it can cross to a worker. */
export interface TransferJob {
  id: number;
  peer: Peer;
  /** the address the request arrived on: the transfer replies from it */
  localAddress: string;
  blksize: number;
  windowsize: number;
  oack: [string, string][] | null;
  retransmit: RetransmitPolicy;
  /** when the request arrived, as epoch milliseconds (performance.timeOrigin + now) */
  receivedAtEpoch: number;
}

export type EndHandler = (id: number, outcome: TransferOutcome) => void;

/** A transfer's channel, and whether it is on its address's shared port. */
interface OpenedChannel {
  channel: TransferChannel;
  shared: boolean;
}

/**
 * How a request from the port of a client with a running transfer was taken (judgeRepeat in
 * transfer.ts says why): "answered" (the transfer's first packet went again), "ignored" (a
 * stray: the transfer goes on), "superseded" (the transfer ended, its record already reported:
 * the request is a new transfer), "unknown" (no such transfer runs here any more).
 */
export type RepeatVerdict = "answered" | "ignored" | "superseded" | "unknown";

const SWEEP_MS = 1000;

/**
 * Until a client answers its transfer's first packet, nothing shows that the request came from
 * the address it names, and a forged request aims that packet at someone else. An engine runs
 * only so many such transfers per source address (a request past them is dropped, and its
 * record says "dropped"): requests forged in one address's name draw one packet each for that
 * many, then one only as one of those ends (after timeout × (retries + 1) without an answer).
 *
 * The budget is a quarter of the transfers one address may run (limits.max_connections_per_ip
 * as the engine starts), the setting that says how many clients one address stands for: a real
 * client leaves this state after one round trip, so only many clients behind one address
 * starting at the same moment come near it (a dropped one is answered when it asks again), and
 * a load generator that raises the per-address limit raises this with it.
 */
export function unverifiedBudget(maxPerIp: number): number {
  return Math.max(1, Math.ceil(maxPerIp / 4));
}

const DROPPED: TransferOutcome = { result: "dropped", bytes: 0, retransmits: 0, firstResponseMs: 0 };

/**
 * The shared port a transfer of `windowsize` joins: 0 (the lock-step port) for lock-step, else
 * one of 1..windowsize drawn from the system's random source per transfer (see bindChannel).
 */
function windowPoolIndex(windowsize: number): number {
  return windowsize === 1 ? 0 : 1 + randomInt(windowsize);
}

type CreateTransfer = (channel: TransferChannel, onEnd: (outcome: TransferOutcome) => void, sharedPort: boolean) => Transfer;

/** a transfer's place, filled once it is made: its channel's handler reads it */
interface TransferSlot {
  transfer: Transfer | null;
}

const DONE = Promise.resolve();

/** `next` of a value that is here now, or of a promised one once it comes (a socket opened at once, or by Bun). */
function whenOpen<T, U>(value: T | Promise<T>, next: (value: T) => U | Promise<U>): U | Promise<U> {
  return value instanceof Promise ? value.then(next) : next(value);
}

/** The key of a local address's shared port `index`, with DF or without. */
function sharedKey(address: string, dontFragment: boolean, index: number): string {
  return `${address}|${dontFragment ? "df" : ""}|${index}`;
}

/** Windows above this many bytes get a bigger socket send buffer than the kernel default. */
const BIG_WINDOW_BYTES = 128 * 1024;
/** an IPv4 header without options and a UDP header */
const IPV4_UDP_HEADERS = 28;

export class TransferEngine {
  private readonly transfers = new Map<number, Transfer>();
  /** jobs whose socket is being opened: their first packet is about to go out */
  private readonly opening = new Set<number>();
  private sweeper: ReturnType<typeof setInterval> | null = null;
  /** shared sockets still opening (Bun's sockets), by sharedKey */
  private readonly sharedOpening = new Map<string, Promise<SharedSocket>>();
  /** the shared sockets once open, by sharedKey: a transfer joins one without waiting */
  private readonly sharedReady = new Map<string, SharedSocket>();
  /** the window pool's ports once open, by sharedKey: closed by sweep() once idle */
  private readonly windowPorts = new Map<string, SharedSocket>();
  private stopped = false;
  /**
   * by source address, the jobs counted against its unverified budget: those opening or
   * running whose client had not answered when last looked at (holdUnverified prunes the rest)
   */
  private readonly unverified = new Map<string, Set<number>>();
  /** tftp.single_port: the listeners' own sockets, by local address (this thread's engine only) */
  private readonly listenPorts = new Map<string, ListenPortTransfers>();
  /** the MTU of each local address's interface (null: unknown), looked up once */
  private readonly mtus = new Map<string, number | null>();

  constructor(
    private readonly options: EngineOptions,
    private readonly loss: LossPlan | null,
    private readonly onEnd: EndHandler,
    /** Bun's sockets, or those of this thread's epoll loop (ffi-transport.ts) */
    private readonly sockets: TransferSockets = bunTransferSockets,
  ) {}

  get active(): number {
    return this.transfers.size;
  }

  /** tftp.single_port: transfers from `address` are served on its listener's socket. */
  serveOnListenPort(address: string, transfers: ListenPortTransfers): void {
    this.listenPorts.set(address, transfers);
  }

  /** Starts sending `source`; the engine closes the source when the transfer ends. */
  startRead(job: TransferJob, source: FileSource): Promise<void> {
    return this.begin(
      job,
      (channel, onEnd, sharedPort) => new ReadTransfer(channel, source, this.params(job, sharedPort), onEnd),
      () => source.close(),
    );
  }

  /** Starts receiving into `sink`; the transfer publishes or aborts it. */
  startWrite(job: TransferJob, sink: UploadSink, mode: TransferMode, writeBehind: boolean): Promise<void> {
    return this.begin(
      job,
      (channel, onEnd) => new WriteTransfer(channel, sink, { ...this.params(job), mode, writeBehind }, onEnd),
      () => sink.abort(),
    );
  }

  /**
   * The client of transfer `id` sent a request to the listen port from the same port (`same`:
   * the very request that began it). Decided here, where the transfer's clock is, so a request
   * sent again never ends a transfer that is alive.
   */
  requestAgain(id: number, same: boolean): RepeatVerdict {
    const transfer = this.transfers.get(id);
    if (!transfer) return this.opening.has(id) ? "ignored" : "unknown";
    switch (judgeRepeat(transfer.clock, same, performance.now())) {
      case "resend":
        transfer.answerRepeat();
        transfer.clock.sentAgain();
        return "answered";
      case "ignore":
        transfer.noteStray("duplicate-request");
        return "ignored";
      case "supersede":
        transfer.supersede();
        return "superseded";
    }
  }

  /** Ends every transfer (the clients are told why: `reason`) and closes the sockets. */
  async stop(reason?: string): Promise<void> {
    this.stopped = true;
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = null;
    for (const transfer of [...this.transfers.values()]) transfer.cancel(reason);
    this.transfers.clear();
    const opening = [...this.sharedOpening.values()];
    this.sharedOpening.clear();
    for (const socket of this.sharedReady.values()) socket.close();
    this.sharedReady.clear();
    this.windowPorts.clear();
    for (const socket of opening) (await socket.catch(() => null))?.close();
  }

  /**
   * Ends every transfer at once, telling each client `reason`, with every queued datagram
   * sent before it returns: for a thread that is about to end.
   */
  abort(reason: string): void {
    this.stopped = true;
    for (const transfer of [...this.transfers.values()]) transfer.cancel(reason);
    this.transfers.clear();
    for (const socket of this.sharedReady.values()) socket.close();
  }

  /**
   * Opens the job's channel and runs the transfer `create` makes on it; when no channel can be
   * opened, `giveBack` releases what the job holds (its file or upload) and the error goes up.
   */
  private begin(job: TransferJob, create: CreateTransfer, giveBack: () => void): Promise<void> {
    if (!this.holdUnverified(job)) {
      giveBack();
      this.onEnd(job.id, DROPPED);
      return DONE;
    }
    const slot: TransferSlot = { transfer: null };
    let opening: OpenedChannel | Promise<OpenedChannel>;
    try {
      opening = this.openChannel(job, (bytes) => slot.transfer?.handle(bytes));
    } catch (error) {
      this.forgetUnverified(job);
      giveBack();
      return Promise.reject(error);
    }
    // A port open already is joined in this task: in a storm, a request read in a batch of many
    // is answered when the batch's sends leave, not after the whole drain of the listen socket.
    if (opening instanceof Promise) return this.beginOnceOpen(job, slot, opening, create, giveBack);
    try {
      this.launch(job, slot, create, opening);
    } catch (error) {
      // as from the path that waits: the caller's rejection handler, not its caller's stack
      return Promise.reject(error);
    }
    return DONE;
  }

  private async beginOnceOpen(
    job: TransferJob,
    slot: TransferSlot,
    opening: Promise<OpenedChannel>,
    create: CreateTransfer,
    giveBack: () => void,
  ): Promise<void> {
    let opened: OpenedChannel;
    this.opening.add(job.id);
    try {
      opened = await opening;
    } catch (error) {
      this.forgetUnverified(job);
      giveBack();
      throw error;
    } finally {
      this.opening.delete(job.id);
    }
    this.launch(job, slot, create, opened);
  }

  private launch(job: TransferJob, slot: TransferSlot, create: CreateTransfer, opened: OpenedChannel): void {
    const transfer = create(opened.channel, (outcome) => this.ended(job, outcome), opened.shared);
    slot.transfer = transfer;
    this.run(job.id, transfer);
  }

  /**
   * Counts `job` against its source's unverified budget, or says false when the source has
   * that many already. Jobs whose client answered since they were counted stop counting here,
   * so the data path never pays for this.
   */
  private holdUnverified(job: TransferJob): boolean {
    const address = job.peer.address;
    let held = this.unverified.get(address);
    if (held) {
      if (held.size >= this.options.unverifiedPerSource) {
        for (const id of held) if (this.transfers.get(id)?.clock.established) held.delete(id);
        if (held.size >= this.options.unverifiedPerSource) return false;
      }
    } else {
      held = new Set();
      this.unverified.set(address, held);
    }
    held.add(job.id);
    return true;
  }

  private forgetUnverified(job: TransferJob): void {
    const held = this.unverified.get(job.peer.address);
    if (held?.delete(job.id) && held.size === 0) this.unverified.delete(job.peer.address);
  }

  private run(id: number, transfer: Transfer): void {
    this.transfers.set(id, transfer);
    if (this.stopped) {
      transfer.cancel();
      return;
    }
    transfer.start();
    this.sweeper ??= setInterval(() => this.sweep(), SWEEP_MS);
  }

  /** connection_pool deadlines: one pass a second over the running transfers. */
  private sweep(): void {
    const now = performance.now();
    for (const transfer of [...this.transfers.values()]) {
      const reason = overdue(transfer.clock, this.options.lifetimes, now);
      if (reason) transfer.expire(reason);
    }
    this.closeIdleWindowPorts();
    if (this.transfers.size === 0 && this.windowPorts.size === 0 && this.sweeper) {
      clearInterval(this.sweeper);
      this.sweeper = null;
    }
  }

  /**
   * A window pool port with no transfer left is closed (a later windowed transfer opens one
   * anew, on a new port): a pool is as large as the largest window asked for, and an idle
   * server holds only its lock-step ports. A transfer joins its port in the same task as the
   * port's promise resolves (bindChannel), so this timer's task never closes one under it.
   */
  private closeIdleWindowPorts(): void {
    for (const [key, socket] of this.windowPorts) {
      if (socket.transfers > 0) continue;
      this.windowPorts.delete(key);
      this.sharedReady.delete(key);
      socket.close();
    }
  }

  /** `clientPaced`: the transfer sends from a shared port (RetransmitPolicy.clientPaced) */
  private params(job: TransferJob, clientPaced = false): TransferParams {
    return {
      blksize: job.blksize,
      windowsize: job.windowsize,
      oack: job.oack,
      retransmit: clientPaced ? { ...job.retransmit, clientPaced } : job.retransmit,
      // this thread's clock: performance.now() counts from its own timeOrigin
      receivedAt: job.receivedAtEpoch - performance.timeOrigin,
    };
  }

  private ended(job: TransferJob, outcome: TransferOutcome): void {
    this.transfers.delete(job.id);
    this.forgetUnverified(job);
    this.onEnd(job.id, outcome);
  }

  /**
   * The job's channel; with a loss plan (a test switch), losing what the plan picks both ways.
   * At once where no socket has to be opened for it (bindChannel).
   */
  private openChannel(job: TransferJob, handler: PacketHandler): OpenedChannel | Promise<OpenedChannel> {
    const loss = this.loss;
    if (!loss) return this.bindChannel(job, handler);
    return whenOpen(this.bindChannel(job, loss.incoming(handler)), (opened) => ({ channel: loss.outgoing(opened.channel), shared: opened.shared }));
  }

  /**
   * In "shared" mode a transfer joins one of its address's shared ports. Anyone learns a shared
   * port by asking for a file, so a forged ACK can reach a transfer there; a lock-step one
   * answers it with one block (and its timer waits for the client: RetransmitPolicy.clientPaced).
   * A window answers with `windowsize` blocks, so a windowed transfer joins a port drawn at
   * random from a pool of `windowsize` ports (windowPoolIndex) that lock-step transfers never
   * use: a forger who cannot see the transfer's first packet must send to every port of the
   * pool to reach it once, and draws on average one block per datagram forged, as on the
   * lock-step port. Windows too big to batch well (BIG_WINDOW_BYTES) get a port of their own.
   * The listen port and a shared port open already are joined at once, and so is a socket the
   * loop opens with plain system calls (the epoll loop's); one of Bun's is waited for.
   */
  private bindChannel(job: TransferJob, handler: PacketHandler): OpenedChannel | Promise<OpenedChannel> {
    // tftp.single_port: every transfer on the port its request came to, windows included
    const listenPort = this.listenPorts.get(job.localAddress);
    if (listenPort) return { channel: listenPort.attachReplacing(job.peer, handler), shared: true };
    const dontFragment = this.fitsMtu(job.localAddress, job.blksize);
    if (this.options.transferSockets !== "shared" || job.windowsize * (job.blksize + 4) > BIG_WINDOW_BYTES) {
      return this.ownChannel(job, handler, dontFragment);
    }
    const index = windowPoolIndex(job.windowsize);
    // The same client port twice at once (a client reusing its port) needs a socket of its own.
    const join = (shared: SharedSocket): OpenedChannel | Promise<OpenedChannel> => {
      const channel = shared.attach(job.peer, handler);
      return channel ? { channel, shared: true } : this.ownChannel(job, handler, dontFragment);
    };
    return whenOpen(this.sharedSocket(job.localAddress, dontFragment, index), join);
  }

  /** A socket of the job's own. */
  private ownChannel(job: TransferJob, handler: PacketHandler, dontFragment: boolean): OpenedChannel | Promise<OpenedChannel> {
    const stride = job.blksize + 4;
    const windowBytes = job.windowsize * stride;
    const sendBuffer = windowBytes > BIG_WINDOW_BYTES ? Math.min(this.options.sendBufferBytes, windowBytes * 2) : 0;
    const segment = this.options.gso && job.windowsize > 1 ? stride : 0;
    // (where the kernel refuses GSO the channel sends a window as before: the server said so at start)
    const channel = this.sockets.openChannel(job.localAddress, job.peer, this.options.portRange, handler, sendBuffer, segment, dontFragment);
    return whenOpen(channel, (own) => ({ channel: own, shared: false }));
  }

  /**
   * The shared ports per local address: `index` 0 for lock-step transfers, 1.. for the window
   * pool (windowPoolIndex); and per whether their datagrams carry DF: transfers whose blocks fit
   * the interface's MTU share ports with DF, the others (blocks left to be fragmented) ports
   * without.
   */
  private sharedSocket(address: string, dontFragment: boolean, index: number): SharedSocket | Promise<SharedSocket> {
    const key = sharedKey(address, dontFragment, index);
    const ready = this.sharedReady.get(key);
    if (ready) return ready;
    const pending = this.sharedOpening.get(key);
    if (pending) return pending;
    const buffers = { receive: this.options.receiveBufferBytes, send: this.options.sendBufferBytes };
    // the window pool's ports carry windows: one GSO message each (network.zero_copy)
    const socket = this.sockets.openShared(address, this.options.portRange, this.options.batch, buffers, dontFragment, this.options.gso && index > 0);
    if (!(socket instanceof Promise)) {
      this.sharedOpened(key, index, socket);
      return socket;
    }
    this.sharedOpening.set(key, socket);
    // (settled before the callers' own reactions run: they find it ready)
    socket.then(
      (open) => {
        if (this.sharedOpening.get(key) !== socket) return;
        this.sharedOpening.delete(key);
        this.sharedOpened(key, index, open);
      },
      () => this.sharedOpening.delete(key),
    );
    return socket;
  }

  private sharedOpened(key: string, index: number, socket: SharedSocket): void {
    this.sharedReady.set(key, socket);
    if (index > 0) this.windowPorts.set(key, socket);
  }

  /** Whether a DATA packet of `blksize` from `address` (IPv4) fits its interface's MTU whole. */
  private fitsMtu(address: string, blksize: number): boolean {
    if (isIP(address) !== 4) return false;
    let mtu = this.mtus.get(address);
    if (mtu === undefined) {
      mtu = interfaceMtu(address);
      this.mtus.set(address, mtu);
    }
    return mtu !== null && IPV4_UDP_HEADERS + DATA_HEADER_SIZE + blksize <= mtu;
  }
}

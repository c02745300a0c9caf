/**
 * The TFTP server: listeners take requests, admission and storage decide, and each accepted
 * request becomes a transfer on its own port. Knows nothing of config files or Redis; the
 * serve command hands it ready-made ServerOptions.
 */
import { BlockList, isIPv6 } from "node:net";
import { decodePacket, encodeError } from "../protocol/codec.ts";
import { negotiate } from "../protocol/options.ts";
import { ErrorCode, Opcode, type RequestPacket } from "../protocol/packet.ts";
import { NETASCII_MAX_BYTES, netasciiSource } from "../storage/netascii-source.ts";
import { FileCache } from "../storage/cache.ts";
import type { FileSource } from "../storage/source.ts";
import { applyRemap, type RemapRule } from "../storage/remap.ts";
import { openForRead, realRoot, resolveRequestPath } from "../storage/resolve.ts";
import { prepareUpload, type UploadPolicy } from "../storage/upload.ts";
import type { LossPlan } from "./loss.ts";
import { SharedTransferSocket, type BatchPolicy } from "./shared-socket.ts";
import type { BufferSizes } from "./sockopt.ts";
import { ReadTransfer } from "./read-transfer.ts";
import type { TransferOutcome } from "./transfer.ts";
import {
  openListener,
  openTransferChannel,
  type Listener,
  type Peer,
  type PortRange,
  type TransferChannel,
} from "./transport.ts";
import { WriteTransfer } from "./write-transfer.ts";

export interface ListenAddress {
  host: string;
  port: number;
}

export interface ServerOptions {
  root: string;
  listen: ListenAddress[];
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
  loss?: LossPlan | null;
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
  listening?(address: ListenAddress, buffers: BufferSizes | null): void;
  transferEnd?(record: TransferRecord): void;
  /** a request refused before any transfer started (ERROR sent, or dropped) */
  refused?(peer: Peer, reason: string, code: number | null): void;
}

interface Active {
  /** set once the transfer runs; null while its file and socket are being opened */
  transfer: { cancel(): void } | null;
}

/** Windows above this many bytes get a bigger socket send buffer than the kernel default. */
const BIG_WINDOW_BYTES = 128 * 1024;

function peerKey(peer: Peer): string {
  return `${peer.address}|${peer.port}`;
}

export function formatAddress(address: string, port: number): string {
  return isIPv6(address) ? `[${address}]:${port}` : `${address}:${port}`;
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

export class TftpServer {
  private readonly listeners: Listener[] = [];
  /** keyed by client address and port: a repeated request from the same TID is not a new transfer */
  private readonly active = new Map<string, Active>();
  private rootReal = "";
  private stopped = false;
  private readonly sharedSockets = new Map<string, Promise<SharedTransferSocket>>();
  private readonly allow: BlockList | null;
  readonly cache: FileCache;
  private readonly deny: BlockList | null;

  constructor(
    private readonly options: ServerOptions,
    private readonly events: ServerEvents = {},
  ) {
    this.allow = buildBlockList(options.allow);
    this.cache = new FileCache(options.cacheBytes);
    this.deny = buildBlockList(options.deny);
  }

  get activeTransfers(): number {
    return this.active.size;
  }

  get addresses(): ListenAddress[] {
    return this.listeners.map((l) => ({ host: l.address, port: l.port }));
  }

  async start(): Promise<void> {
    this.rootReal = realRoot(this.options.root);
    try {
      for (const { host, port } of this.options.listen) {
        const listener = await openListener(host, port, (l, bytes, peer, at) => this.onRequest(l, bytes, peer, at), {
          receive: this.options.receiveBufferBytes,
          send: this.options.sendBufferBytes,
        });
        this.listeners.push(listener);
        this.events.listening?.({ host: listener.address, port: listener.port }, listener.buffers);
      }
    } catch (error) {
      await this.stop();
      throw error;
    }
  }

  /** Stops listening and ends every transfer. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const listener of this.listeners.splice(0)) listener.close();
    for (const slot of [...this.active.values()]) slot.transfer?.cancel();
    this.active.clear();
    for (const socket of this.sharedSockets.values()) (await socket.catch(() => null))?.close();
    this.sharedSockets.clear();
  }

  private onRequest(listener: Listener, bytes: Uint8Array, peer: Peer, receivedAt: number): void {
    if (this.options.loss?.shouldDrop("in", bytes)) return;
    const decoded = decodePacket(bytes);
    if (!decoded.ok) {
      this.refuse(listener, peer, decoded.reply, decoded.message);
      return;
    }
    const packet = decoded.packet;
    if (packet.op === Opcode.ERROR) return; // RFC 1350 §7: never answer an ERROR
    if (packet.op !== Opcode.RRQ && packet.op !== Opcode.WRQ) {
      this.refuse(listener, peer, ErrorCode.ILLEGAL_OPERATION, "illegal TFTP operation");
      return;
    }
    if ((this.allow && !matches(this.allow, peer.address)) || (this.deny && matches(this.deny, peer.address))) {
      this.refuse(listener, peer, ErrorCode.ACCESS_VIOLATION, "access denied");
      return;
    }
    const key = peerKey(peer);
    // Firmware resends an unanswered request from the same port: one transfer serves it.
    if (this.active.has(key)) return;
    const pending: Active = { transfer: null };
    this.active.set(key, pending);
    this.accept(listener, packet, peer, receivedAt, pending).catch((error: unknown) => {
      this.active.delete(key);
      this.refuse(listener, peer, ErrorCode.NOT_DEFINED, `server error: ${(error as Error).message}`);
    });
  }

  private refuse(listener: Listener, peer: Peer, code: number | null, message: string): void {
    if (code !== null) listener.reply(encodeError(code, message), peer);
    this.events.refused?.(peer, message, code);
  }

  private async accept(
    listener: Listener,
    request: RequestPacket,
    peer: Peer,
    receivedAt: number,
    slot: Active,
  ): Promise<void> {
    const key = peerKey(peer);
    const isRead = request.op === Opcode.RRQ;
    const reject = (code: number, message: string): void => {
      this.active.delete(key);
      this.refuse(listener, peer, code, message);
    };

    // Windows PXE clients send backslashes; remap rules are written against forward slashes.
    const asked = request.filename.replaceAll("\\", "/");
    const remapped = applyRemap(this.options.remap, asked, isRead ? "read" : "write");
    if (!remapped.ok) return reject(remapped.code, remapped.message);
    const resolved = resolveRequestPath(this.rootReal, remapped.name);
    if (!resolved.ok) return reject(resolved.code, resolved.message);

    const limits = {
      blksizeMax: this.options.blksizeMax,
      windowsizeMax: this.options.windowsizeMax,
      windowBytesMax: this.options.windowBytesMax,
      uploadMax: this.options.uploadMax,
    };
    const started = performance.now();
    const baseRecord = { client: formatAddress(peer.address, peer.port), file: resolved.relative, mode: request.mode };

    if (isRead) {
      const opened = await openForRead(this.rootReal, resolved.relative);
      if (!opened.ok) return reject(opened.code, opened.message);
      let source: FileSource;
      if (request.mode === "netascii") {
        if (opened.source.size > NETASCII_MAX_BYTES) {
          opened.source.close();
          return reject(ErrorCode.NOT_DEFINED, "file too large for netascii mode");
        }
        source = netasciiSource(opened.source);
      } else {
        source = await this.cache.acquire(opened.source);
      }
      const negotiated = negotiate(request, limits, request.mode === "octet" ? source.size : null);
      if (!negotiated.ok) {
        source.close();
        return reject(negotiated.code, negotiated.message);
      }
      const record = { ...baseRecord, direction: "read" as const, blksize: negotiated.blksize, windowsize: negotiated.windowsize, tsize: source.size, options: negotiated.requested };
      let transfer: ReadTransfer | null = null;
      const channel = await this.openChannel(listener, peer, negotiated.windowsize * (negotiated.blksize + 4), (bytes) => transfer?.handle(bytes)).catch((error: unknown) => {
        source.close();
        throw error;
      });
      transfer = new ReadTransfer(channel, source, {
        blksize: negotiated.blksize,
        windowsize: negotiated.windowsize,
        oack: negotiated.oack,
        retransmit: this.retransmitPolicy(negotiated.timeoutMs),
        receivedAt,
      }, (outcome) => this.ended(key, record, started, outcome));
      slot.transfer = transfer;
      if (this.stopped) return transfer.cancel();
      transfer.start();
      return;
    }

    const negotiated = negotiate(request, limits, null);
    if (!negotiated.ok) return reject(negotiated.code, negotiated.message);
    const prepared = await prepareUpload(this.rootReal, resolved.relative, this.options.write, this.options.uploadMax);
    if (!prepared.ok) return reject(prepared.code, prepared.message);
    const sink = prepared.sink;
    const declared = request.options.get("tsize");
    const record = { ...baseRecord, direction: "write" as const, blksize: negotiated.blksize, windowsize: negotiated.windowsize, tsize: declared === undefined ? null : Number(declared), options: negotiated.requested };
    let transfer: WriteTransfer | null = null;
    const channel = await this.openChannel(listener, peer, negotiated.windowsize * (negotiated.blksize + 4), (bytes) => transfer?.handle(bytes)).catch((error: unknown) => {
      sink.abort();
      throw error;
    });
    transfer = new WriteTransfer(channel, sink, {
      blksize: negotiated.blksize,
      windowsize: negotiated.windowsize,
      mode: request.mode,
      oack: negotiated.oack,
      retransmit: this.retransmitPolicy(negotiated.timeoutMs),
      receivedAt,
    }, (outcome) => this.ended(key, record, started, outcome));
    slot.transfer = transfer;
    if (this.stopped) return transfer.cancel();
    transfer.start();
  }

  private async openChannel(
    listener: Listener,
    peer: Peer,
    windowBytes: number,
    handler: (bytes: Uint8Array) => void,
  ): Promise<TransferChannel> {
    if (this.options.transferSockets === "shared") {
      const shared = await this.sharedSocket(listener.address);
      // The same client port twice at once (a client reusing its port) needs a socket of its own.
      const channel = shared.attach(peer, handler, this.options.loss ?? null);
      if (channel) return channel;
    }
    const sendBuffer = windowBytes > BIG_WINDOW_BYTES ? Math.min(this.options.sendBufferBytes, windowBytes * 2) : 0;
    return openTransferChannel(listener.address, peer, this.options.portRange, this.options.loss ?? null, handler, sendBuffer);
  }

  private sharedSocket(address: string): Promise<SharedTransferSocket> {
    let socket = this.sharedSockets.get(address);
    if (!socket) {
      socket = SharedTransferSocket.open(address, this.options.portRange, this.options.batch, {
        receive: this.options.receiveBufferBytes,
        send: this.options.sendBufferBytes,
      });
      this.sharedSockets.set(address, socket);
      socket.catch(() => this.sharedSockets.delete(address));
    }
    return socket;
  }

  private retransmitPolicy(clientTimeoutMs: number | null) {
    return clientTimeoutMs === null
      ? { timeoutMs: this.options.timeoutMs, fixed: false, retries: this.options.retries }
      : { timeoutMs: clientTimeoutMs, fixed: true, retries: this.options.retries };
  }

  private ended(
    key: string,
    record: Omit<TransferRecord, keyof TransferOutcome | "durationMs">,
    started: number,
    outcome: TransferOutcome,
  ): void {
    this.active.delete(key);
    this.events.transferEnd?.({ ...record, ...outcome, durationMs: performance.now() - started });
  }
}

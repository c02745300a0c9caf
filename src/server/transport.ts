/**
 * The network seam of the server. Transfer state machines see only `TransferChannel`
 * (send to my peer); this module binds the Bun UDP sockets behind it.
 *
 * RFC 1350 §4: every transfer gets its own server port (TID). The socket is bound to the
 * very address the request arrived on, so replies leave from it. It stays unconnected so
 * that a datagram from a foreign TID still reaches us and can be answered with ERROR 5.
 */
import type { udp } from "bun";
import { encodeError } from "../protocol/codec.ts";
import { ErrorCode } from "../protocol/packet.ts";
import type { LossPlan } from "./loss.ts";
import { formatHostPort, type PortRange } from "../net/address.ts";
import { bindInPortRange } from "../net/port-range-bind.ts";
import { GSO_MAX_BYTES, GSO_MAX_SEGMENTS, setBufferSizes, sendUnsegmented, setDontFragment, setUdpSegment, socketFd, type BufferSizes } from "../net/sockopt.ts";
import { TokenBucket } from "./token-bucket.ts";
import type { BatchPolicy, SharedSocket } from "./shared-socket.ts";

/** A client's address and port as one key: its requests and its transfer are told apart by it. */
export function peerKey(peer: Peer): string {
  return `${peer.address}|${peer.port}`;
}

/** Whether a request is the very datagram of an earlier one (a client sending it again). */
export function sameDatagram(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export interface Peer {
  address: string;
  port: number;
}

export interface TransferChannel {
  readonly localPort: number;
  send(packet: Uint8Array): void;
  /** One sendmmsg for a whole window. */
  sendMany(packets: readonly Uint8Array[]): void;
  /**
   * Datagrams may be queued and sent in a batch a little later; this sends this channel's
   * queued ones now, so the caller can reuse the buffers they point into.
   */
  settle(): void;
  close(): void;
}

export type PacketHandler = (bytes: Uint8Array) => void;

/** RFC 1350 §4: the answer to a datagram from an address and port no transfer here talks to. */
export const unknownTid = encodeError(ErrorCode.UNKNOWN_TID, "unknown transfer ID");

/** Tries of one datagram: a failed send reports (and clears) the pending ICMP error. */
const SEND_ATTEMPTS = 3;

/**
 * Sends one datagram. An ICMP error about an earlier send to another peer (a client that
 * closed its port) that the event loop has not collected yet makes the next send on the
 * socket fail with it (ECONNREFUSED) without sending anything; the datagram goes again.
 */
export function sendOne(socket: udp.Socket<"uint8array">, packet: Uint8Array, port: number, address: string): void {
  for (let attempt = 0; attempt < SEND_ATTEMPTS; attempt++) {
    try {
      socket.send(packet, port, address);
      return;
    } catch {
      // the pending error is cleared by the failed call: try again
    }
  }
}

/**
 * Sends a batch (flat [packet, port, address, ...] triplets) in as few sendmmsg calls as it
 * takes. sendmmsg stops at the first datagram that fails — on loopback a datagram to a closed
 * port raises its ICMP error during the very call, and the next datagram fails with it — and
 * reports how many left; the rest, other transfers' datagrams, would be lost silently. So the
 * rest goes again, until a call in a row after a failed one sends nothing either (a failure
 * that is no pending ICMP error, e.g. a full send buffer).
 */
export function sendAll(socket: udp.Socket<"uint8array">, flat: (Uint8Array | number | string)[]): void {
  const total = flat.length / 3;
  let sent = 0;
  for (let stalled = 0; sent < total && stalled < 2; ) {
    let left = 0;
    try {
      left = socket.sendMany((sent === 0 ? flat : flat.slice(sent * 3)) as never);
    } catch {
      // nothing of this call left; a pending error is cleared by it
    }
    if (left > 0) {
      sent += left;
      stalled = 0;
    } else {
      stalled++;
    }
  }
}

class UdpTransferChannel implements TransferChannel {
  private socket: udp.Socket<"uint8array"> | null = null;
  private readonly flat: (Uint8Array | number | string)[] = [];
  private closed = false;
  /** UDP GSO segment size when the socket has it on (windowed transfers), else 0 */
  private segment = 0;

  constructor(
    private readonly peer: Peer,
    private readonly handler: PacketHandler,
  ) {}

  /** Sends of packets laid end to end, each `bytes` long but the last, leave as one GSO send. */
  segmentsOf(bytes: number): void {
    this.segment = bytes;
  }

  /** true when the socket sends windows as GSO sends */
  get segmented(): boolean {
    return this.segment > 0;
  }

  get localPort(): number {
    return this.socket?.port ?? 0;
  }

  attach(socket: udp.Socket<"uint8array">): void {
    this.socket = socket;
  }

  receive(bytes: Uint8Array, port: number, address: string): void {
    if (this.closed) return;
    if (port !== this.peer.port || address !== this.peer.address) {
      // RFC 1350 §4: a packet from a foreign TID gets ERROR 5; the transfer goes on.
      this.sendWhole(unknownTid, port, address);
      return;
    }
    this.handler(bytes);
  }

  send(packet: Uint8Array): void {
    if (this.closed) return;
    this.sendWhole(packet, this.peer.port, this.peer.address);
  }

  /**
   * One datagram, whatever its size. With GSO on, the socket cuts every send into segments,
   * and an OACK or ERROR longer than a DATA packet of a small blksize would arrive in pieces:
   * GSO is off for that one send.
   */
  private sendWhole(packet: Uint8Array, port: number, address: string): void {
    const socket = this.socket;
    if (!socket) return;
    if (packet.length <= this.segment || this.segment === 0) {
      sendOne(socket, packet, port, address);
      return;
    }
    sendUnsegmented(socket, this.segment, () => sendOne(socket, packet, port, address));
  }

  sendMany(packets: readonly Uint8Array[]): void {
    if (this.closed || !this.socket) return;
    if (this.segment > 0 && packets.length > 1) {
      const run = contiguousRun(packets, this.segment);
      if (run) {
        sendOne(this.socket, run, this.peer.port, this.peer.address);
        return;
      }
    }
    const flat = this.flat;
    flat.length = 0;
    for (const packet of packets) flat.push(packet, this.peer.port, this.peer.address);
    if (flat.length > 0) sendAll(this.socket, flat);
  }

  settle(): void {
    // Sends go out immediately: nothing is ever queued.
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket?.close();
  }
}

/**
 * `packets` as one view when they lie end to end in one buffer, each `segment` bytes but the
 * last (at most that), within what one GSO send may carry; else null. Read transfers build a
 * window's packets so (SendArena runs), so a window costs one send instead of one per block.
 */
export function contiguousRun(packets: readonly Uint8Array[], segment: number): Uint8Array | null {
  const count = packets.length;
  if (count > GSO_MAX_SEGMENTS) return null;
  const first = packets[0]!;
  const last = packets[count - 1]!;
  const total = (count - 1) * segment + last.length;
  if (total > GSO_MAX_BYTES || last.length > segment) return null;
  const buffer = first.buffer;
  let offset = first.byteOffset;
  for (let i = 0; i < count - 1; i++) {
    const packet = packets[i]!;
    if (packet.buffer !== buffer || packet.byteOffset !== offset || packet.length !== segment) return null;
    offset += segment;
  }
  if (last.buffer !== buffer || last.byteOffset !== offset) return null;
  return new Uint8Array(buffer, first.byteOffset, total);
}

/**
 * Asynchronous socket errors are ICMP reports about an earlier send, e.g. ECONNREFUSED when a
 * client closed its port (RFC 1122 §4.1.3.3: UDP passes ICMP errors up to the application).
 * For TFTP they mean nothing the retransmit clock does not already handle. Without a
 * handler Bun raises each one as an uncaught exception: one vanished client means an error
 * per retransmission and a failing exit status for the whole server.
 */
export function ignoreSocketError(): void {}

function bindSocket(
  hostname: string,
  port: number,
  channel: UdpTransferChannel,
): Promise<udp.Socket<"uint8array">> {
  return Bun.udpSocket({
    hostname,
    port,
    binaryType: "uint8array",
    socket: {
      data(_socket, bytes, port, address) {
        channel.receive(bytes, port, address);
      },
      error: ignoreSocketError,
    },
  });
}

/**
 * Opens the socket of a new transfer on `localAddress`, on a port from `range` when one is
 * configured (firewalls that only open a range), else on an ephemeral port.
 */
export async function openTransferChannel(
  localAddress: string,
  peer: Peer,
  range: PortRange | null,
  handler: PacketHandler,
  sendBufferBytes = 0,
  segmentBytes = 0,
  dontFragment = false,
): Promise<TransferChannel & { readonly segmented: boolean }> {
  const channel = new UdpTransferChannel(peer, handler);
  const socket = await bindInPortRange(localAddress, range, (port) => bindSocket(localAddress, port, channel));
  if (dontFragment) setDontFragment(socket);
  // A large window leaves in one sendmmsg; the default send buffer would drop its tail.
  if (sendBufferBytes > 0) setBufferSizes(socket, 0, sendBufferBytes);
  if (segmentBytes > 0 && setUdpSegment(socket, segmentBytes)) channel.segmentsOf(segmentBytes);
  channel.attach(socket);
  return channel;
}

/** What opens a transfer's socket: Bun's (here and shared-socket.ts) or the epoll loop's (ffi-transport.ts). */
export interface TransferSockets {
  /**
   * a port `address` shares among transfers; `dontFragment`: DF on its datagrams
   * (setDontFragment); `segments`: windows leave as one UDP GSO message each where the sockets
   * can say so per message (the epoll loop's; Bun's send them as they are)
   */
  openShared(
    address: string,
    range: PortRange | null,
    batch: BatchPolicy,
    buffers: { receive: number; send: number },
    dontFragment: boolean,
    segments: boolean,
  ): SharedSocket | Promise<SharedSocket>;
  /** a port of the transfer's own (at once where opening one waits for nothing: the epoll loop's) */
  openChannel(
    localAddress: string,
    peer: Peer,
    range: PortRange | null,
    handler: PacketHandler,
    sendBufferBytes?: number,
    segmentBytes?: number,
    dontFragment?: boolean,
  ): OwnChannel | Promise<OwnChannel>;
}

/** A transfer's channel on a port of its own. */
export type OwnChannel = TransferChannel & { readonly segmented: boolean };

/**
 * Whether sockets on `address` take UDP GSO (setsockopt UDP_SEGMENT), asked of a throwaway
 * socket; the reason when not.
 */
export async function probeGso(address: string): Promise<string | null> {
  let socket: udp.Socket<"uint8array">;
  try {
    socket = await Bun.udpSocket({ hostname: address, port: 0, binaryType: "uint8array", socket: { data() {}, error: ignoreSocketError } });
  } catch (error) {
    return (error as Error).message;
  }
  try {
    return setUdpSegment(socket, 1472) ? null : "setsockopt(UDP_SEGMENT) refused";
  } finally {
    socket.close();
  }
}

export interface Listener {
  readonly address: string;
  readonly port: number;
  /** its socket's descriptor (workers join its group: reuseport.ts), null where Bun gives none */
  readonly fd: number | null;
  /** with tftp.single_port: the transfers served from this very port, else null */
  readonly transfers: ListenPortTransfers | null;
  /** what the kernel granted for SO_RCVBUF / SO_SNDBUF, null when it could not be read */
  readonly buffers: BufferSizes | null;
  /** the rate at which datagrams that are no request get an ERROR back */
  readonly garbageReplies: TokenBucket;
  reply(packet: Uint8Array, peer: Peer): void;
  close(): void;
}

/**
 * ERRORs a listener sends per second (and at once) in answer to datagrams that are no request.
 * A client that sent one by mistake learns why; a flood of them, whose sources may be forged,
 * gets no more than this back.
 */
const GARBAGE_REPLIES_PER_SECOND = 50;

/** Transfers served from a listener's own port (tftp.single_port): SharedTransferSocket.onListenPort. */
export interface ListenPortTransfers extends SharedSocket {
  /** Hands `bytes` to the transfer with that client; false when there is none. */
  claim(bytes: Uint8Array, port: number, address: string): boolean;
  /** A channel to `peer`, ending the channel of an earlier transfer with the same client port. */
  attachReplacing(peer: Peer, handler: PacketHandler): TransferChannel;
}

export type RequestHandler = (listener: Listener, bytes: Uint8Array, peer: Peer, receivedAt: number) => void;

/**
 * Binds a request socket (port 69 by default) on one local address. With `loss` (a test
 * switch), the requests it picks are lost before `onRequest` sees them.
 */
export async function openListener(
  address: string,
  port: number,
  onRequest: RequestHandler,
  buffers: { receive: number; send: number },
  loss: LossPlan | null = null,
  /** tftp.single_port: the transfers to serve on the listener's socket */
  transfersOn: ((socket: udp.Socket<"uint8array">) => ListenPortTransfers) | null = null,
): Promise<Listener> {
  let listener: Listener | null = null;
  let transfers: ListenPortTransfers | null = null;
  const request = (bytes: Uint8Array, peerPort: number, peerAddress: string): void => {
    if (listener) onRequest(listener, bytes, { address: peerAddress, port: peerPort }, performance.now());
  };
  const receive = loss ? loss.incoming(request) : request;
  // (Bun throws a bind error at once, not as a rejection)
  const bind = async () => Bun.udpSocket({
    hostname: address,
    port,
    binaryType: "uint8array",
    socket: {
      data(_socket, bytes, peerPort, peerAddress) {
        // tftp.single_port: what a client of a running transfer sends, but a request, is the
        // transfer's; a request (a client asking again, or anew) takes the request path
        if (transfers !== null && !isRequest(bytes) && transfers.claim(bytes, peerPort, peerAddress)) return;
        receive(bytes, peerPort, peerAddress);
      },
      error: ignoreSocketError,
    },
  });
  const socket = await bind().catch((error: unknown) => {
    throw listenError(address, port, error);
  });
  // A boot storm is a burst of requests: the default receive buffer drops most of it.
  const granted = setBufferSizes(socket, buffers.receive, buffers.send);
  if (transfersOn) transfers = transfersOn(socket);
  listener = {
    address,
    port: socket.port,
    fd: socketFd(socket),
    buffers: granted,
    transfers,
    garbageReplies: new TokenBucket(GARBAGE_REPLIES_PER_SECOND, GARBAGE_REPLIES_PER_SECOND),
    reply: (packet, peer) => sendOne(socket, packet, peer.port, peer.address),
    close: () => (transfers ? transfers.close() : socket.close()),
  };
  return listener;
}

/**
 * Why a listen address could not be bound, with the address and port (Bun's own message names
 * neither the port nor the way out) and what to do about it.
 */
export function listenError(address: string, port: number, error: unknown): Error {
  const code = (error as NodeJS.ErrnoException).code;
  return Object.assign(new Error(listenErrorText(address, port, code, error)), { code });
}

function listenErrorText(address: string, port: number, code: string | undefined, error: unknown): string {
  const at = formatHostPort(address, port);
  if (code === "EACCES") return `bind EACCES ${at}: ports below 1024 need root or CAP_NET_BIND_SERVICE (run as root, which drops to tftp.user once bound, or grant the capability: AmbientCapabilities=CAP_NET_BIND_SERVICE in the unit)`;
  if (code === "EADDRINUSE") return `bind EADDRINUSE ${at}: the port is taken by another program (another TFTP server? ss -ulpn 'sport = :${port}' names it); stop it or listen elsewhere (tftp.listen, --listen)`;
  if (code === "EADDRNOTAVAIL") return `bind EADDRNOTAVAIL ${at}: no interface of this machine has that address (tftp.listen, --listen)`;
  return `bind ${at}: ${(error as Error).message}`;
}

/** An RRQ or a WRQ by its opcode (RFC 1350 §5). */
function isRequest(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === 0 && (bytes[1] === 1 || bytes[1] === 2);
}

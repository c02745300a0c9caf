/**
 * The transfer sockets of the epoll I/O loop (network.epoll): the same two kinds as
 * transport.ts and shared-socket.ts — a port of its own per transfer, and one port per local
 * address shared by lock-step transfers — on udp-ffi.ts sockets instead of Bun.udpSocket.
 * A datagram finds its transfer by the client's port and binary address; a datagram from a
 * foreign TID gets ERROR 5 as before (RFC 1350 §4).
 *
 * These sockets carry read transfers (uploads run on the main thread's engine): what arrives
 * is ACKs and ERRORs, so their receive slots are small.
 */
import type { PortRange } from "../net/address.ts";
import type { IoLoop } from "../net/io-loop.ts";
import { bindInPortRange } from "../net/port-range-bind.ts";
import { sendUnsegmented, setBufferSizes, setDontFragment, setUdpSegment } from "../net/sockopt.ts";
import { FfiUdpSocket, SocketBuffers, SocketName, type Datagram, type FfiUdpOptions, type ReceivedName } from "../net/udp-ffi.ts";
import { ChannelsByPort } from "./channels-by-port.ts";
import type { BatchPolicy, SharedSocket } from "./shared-socket.ts";
import type { SlotPool } from "./transfer-slots.ts";
import { contiguousRun, unknownTid, type PacketHandler, type Peer, type TransferChannel, type TransferSockets } from "./transport.ts";

/** Room per received datagram: an ACK is 4 bytes, an ERROR a message of up to a few hundred. */
const RECEIVE_BYTES = 2048;
/** datagrams one recvmmsg takes on a shared port, and on a transfer's own port */
const SHARED_RECEIVE_BATCH = 64;
const OWN_RECEIVE_BATCH = 4;
/** A window's batch (read-transfer.ts WINDOW_BATCH_BLOCKS, 16) leaves in one sendmmsg. */
const OWN_SEND_BATCH = 16;
/** the shape of a transfer's own socket's buffers: a transfer slot (transfer-slots.ts) */
export const OWN_SOCKET: FfiUdpOptions = { receiveBatch: OWN_RECEIVE_BATCH, receiveBytes: RECEIVE_BYTES, sendBatch: OWN_SEND_BATCH };

class FfiSharedChannel implements TransferChannel {
  closed = false;

  constructor(
    private readonly owner: FfiSharedSocket,
    readonly name: SocketName,
    private readonly handler: PacketHandler,
  ) {}

  receive(bytes: Uint8Array): void {
    if (!this.closed) this.handler(bytes);
  }

  get localPort(): number {
    return this.owner.port;
  }

  send(packet: Uint8Array): void {
    if (!this.closed) this.owner.send(packet, this.name);
  }

  /** A window laid end to end leaves as one GSO message of the batch when the port segments. */
  sendMany(packets: readonly Uint8Array[]): void {
    if (this.closed) return;
    const segment = this.owner.segments && packets.length > 1 ? packets[0]!.length : 0;
    const run = segment > 0 ? contiguousRun(packets, segment) : null;
    if (run) this.owner.send(run, this.name, segment);
    else for (const packet of packets) this.owner.send(packet, this.name);
  }

  settle(): void {
    this.owner.settle();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.owner.detach(this);
  }
}

class FfiSharedSocket implements SharedSocket {
  /** transfers by client port, then address */
  private readonly channels = new ChannelsByPort<FfiSharedChannel>();
  private socket!: FfiUdpSocket;

  private constructor(
    private readonly loop: IoLoop,
    private readonly batch: BatchPolicy,
    /** windows leave as GSO messages (per message: transfers here differ in block size) */
    readonly segments: boolean,
  ) {}

  /** `io`: what it sends and receives through, shared with the loop's other shared ports */
  static open(
    loop: IoLoop,
    io: SocketBuffers,
    address: string,
    range: PortRange | null,
    batch: BatchPolicy,
    buffers: { receive: number; send: number },
    dontFragment: boolean,
    segments = false,
  ): FfiSharedSocket {
    const shared = new FfiSharedSocket(loop, batch, segments);
    shared.socket = bindInPortRange(address, range, (port) => FfiUdpSocket.open(loop, address, port, io, (datagram, from) => shared.receive(datagram, from)));
    setBufferSizes(shared.socket, buffers.receive, buffers.send);
    if (dontFragment) setDontFragment(shared.socket);
    return shared;
  }

  get port(): number {
    return this.socket.port;
  }

  get transfers(): number {
    return this.channels.size;
  }

  attach(peer: Peer, handler: PacketHandler): TransferChannel | null {
    const name = new SocketName(peer.address, peer.port);
    if (this.channels.at(name.port)?.some((channel) => channel.name.v4 === name.v4 && channel.name.address === name.address)) return null;
    const channel = new FfiSharedChannel(this, name, handler);
    this.channels.add(name.port, channel);
    this.loop.holds++;
    return channel;
  }

  detach(channel: FfiSharedChannel): void {
    if (this.channels.remove(channel.name.port, channel)) this.loop.holds--;
  }

  send(packet: Uint8Array, to: SocketName, segment = 0): void {
    this.socket.enqueue(packet, to, segment);
    if (!this.batch.enabled) this.socket.flush();
  }

  /** Sends what is queued now, so the buffers behind it may be reused. */
  settle(): void {
    if (this.socket.queuedCount > 0) this.socket.flush();
  }

  close(): void {
    for (const channel of this.channels.all()) channel.close();
    this.socket.close();
  }

  /** The transfer a datagram is for: same port, then same address (an integer for IPv4). */
  private find(datagram: Datagram, from: ReceivedName): FfiSharedChannel | undefined {
    const list = this.channels.at(datagram.port);
    if (list) for (const channel of list) if (channel.name.v4 === datagram.v4 && (datagram.v4 >= 0 || from.matches(channel.name))) return channel;
    return undefined;
  }

  private receive(datagram: Datagram, from: ReceivedName): void {
    const channel = this.find(datagram, from);
    if (channel) channel.receive(datagram.bytes);
    else this.send(unknownTid, from.toName());
  }
}

class FfiTransferChannel implements TransferChannel {
  private closed = false;
  /** UDP GSO segment size when the socket has it on (windowed transfers), else 0 */
  segment = 0;
  socket!: FfiUdpSocket;

  constructor(
    private readonly loop: IoLoop,
    private readonly name: SocketName,
    private readonly handler: PacketHandler,
    /** where its socket's buffers go back to when it closes */
    private readonly slots: SlotPool<SocketBuffers> | null,
  ) {
    loop.holds++;
  }

  get segmented(): boolean {
    return this.segment > 0;
  }

  get localPort(): number {
    return this.socket.port;
  }

  receive(datagram: Datagram, from: ReceivedName): void {
    if (this.closed) return;
    const name = this.name;
    if (datagram.port !== name.port || datagram.v4 !== name.v4 || (name.v4 < 0 && !from.matches(name))) {
      // RFC 1350 §4: a packet from a foreign TID gets ERROR 5; the transfer goes on.
      this.sendWhole(unknownTid, from.toName());
      return;
    }
    this.handler(datagram.bytes);
  }

  send(packet: Uint8Array): void {
    if (!this.closed) this.sendWhole(packet, this.name);
  }

  /** One datagram, whatever its size: GSO is off for a packet longer than a segment. */
  private sendWhole(packet: Uint8Array, to: SocketName): void {
    const socket = this.socket;
    socket.enqueue(packet, to);
    if (packet.length <= this.segment || this.segment === 0) socket.flush();
    else sendUnsegmented(socket, this.segment, () => socket.flush());
  }

  sendMany(packets: readonly Uint8Array[]): void {
    if (this.closed) return;
    const run = this.segment > 0 && packets.length > 1 ? contiguousRun(packets, this.segment) : null;
    if (run) this.socket.enqueue(run, this.name);
    else for (const packet of packets) this.socket.enqueue(packet, this.name);
    this.socket.flush();
  }

  settle(): void {
    // sends leave at once: nothing is ever queued past a call
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.loop.holds--;
    if (!this.socket) return;
    this.socket.close();
    this.slots?.give(this.socket.buffers);
  }
}

/**
 * Transfer sockets on `loop` (this thread's epoll loop); a transfer's own socket sends and
 * receives through a slot of `slots` (or buffers of its own without a pool).
 */
export function ffiTransferSockets(loop: IoLoop, batch: BatchPolicy, slots: SlotPool<SocketBuffers> | null = null): TransferSockets {
  loop.batchTimeoutMs = batch.timeoutMs ?? 1;
  // One set of buffers for every shared port, made with the first (its send batch is `batch`'s,
  // which the engine passes on to openShared too): a port of the window pool then opens with a
  // few system calls instead of allocating 128 KiB of slots of its own, which took longer than
  // the transfer's first packet. The loop drains or flushes one socket at a time.
  let sharedIo: SocketBuffers | null = null;
  const sharedBuffers = (): SocketBuffers =>
    (sharedIo ??= new SocketBuffers({ receiveBatch: SHARED_RECEIVE_BATCH, receiveBytes: RECEIVE_BYTES, sendBatch: batch.enabled ? batch.size : 1 }));
  return {
    openShared: (address, range, batch, buffers, dontFragment, segments) =>
      FfiSharedSocket.open(loop, sharedBuffers(), address, range, batch, buffers, dontFragment, segments),
    openChannel(localAddress, peer, range, handler, sendBufferBytes = 0, segmentBytes = 0, dontFragment = false) {
      const channel = new FfiTransferChannel(loop, new SocketName(peer.address, peer.port), handler, slots);
      const buffers = slots ? slots.take() : OWN_SOCKET;
      try {
        channel.socket = bindInPortRange(localAddress, range, (port) =>
          FfiUdpSocket.open(loop, localAddress, port, buffers, (datagram, from) => channel.receive(datagram, from)),
        );
      } catch (error) {
        if (buffers instanceof SocketBuffers) slots?.give(buffers);
        channel.close();
        throw error;
      }
      if (sendBufferBytes > 0) setBufferSizes(channel.socket, 0, sendBufferBytes);
      if (dontFragment) setDontFragment(channel.socket);
      if (segmentBytes > 0 && setUdpSegment(channel.socket, segmentBytes)) channel.segment = segmentBytes;
      return channel;
    },
  };
}

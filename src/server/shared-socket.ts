/**
 * Shared transfer sockets: one UDP socket on a local address carries many transfers, told
 * apart by the client's address and port (each transfer is still its own TID pair: the
 * client's port differs). What it buys is batching: every datagram queued while the event
 * loop works through a round of ACKs leaves in one sendmmsg at the end of that round, and one
 * recvmmsg brings in several ACKs — a send syscall per DATA block costs more than all the
 * rest of a block's work.
 *
 * RFC 1350 §4 still holds: a datagram from an address/port with no transfer here gets ERROR 5.
 */
import type { udp } from "bun";
import type { PortRange } from "../net/address.ts";
import { bindInPortRange } from "../net/port-range-bind.ts";
import { setBufferSizes, setDontFragment } from "../net/sockopt.ts";
import { ChannelsByPort } from "./channels-by-port.ts";
import { ignoreSocketError, openTransferChannel, type ListenPortTransfers, sendAll, sendOne, unknownTid, type PacketHandler, type Peer, type TransferChannel, type TransferSockets } from "./transport.ts";

export interface BatchPolicy {
  /** most datagrams in one sendmmsg */
  size: number;
  /** false: every datagram is sent at once (no batching) */
  enabled: boolean;
  /**
   * batch.batch_timeout: the longest a queued datagram waits for its batch, in milliseconds.
   * Datagrams queued in a loop turn leave together at its end; on the epoll loop a turn that
   * goes on reading (a flood) sends once the oldest has waited this long. Absent: 1.
   */
  timeoutMs?: number;
}

/** A port shared by lock-step transfers to different clients. */
export interface SharedSocket {
  readonly port: number;
  /** transfers attached */
  readonly transfers: number;
  /** A channel to `peer`, or null when this socket already carries a transfer with that peer. */
  attach(peer: Peer, handler: PacketHandler): TransferChannel | null;
  close(): void;
}

class SharedChannel implements TransferChannel {
  closed = false;
  /** the flush round in which this channel last queued a datagram */
  queuedInRound = -1;

  constructor(
    private readonly owner: SharedTransferSocket,
    readonly peer: Peer,
    private readonly handler: PacketHandler,
  ) {}

  receive(bytes: Uint8Array): void {
    if (this.closed) return;
    this.handler(bytes);
  }

  /** Sends what this channel queued now, so the caller may reuse the buffers behind it. */
  settle(): void {
    if (this.queuedInRound === this.owner.currentRound) this.owner.flush();
  }

  get localPort(): number {
    return this.owner.port;
  }

  send(packet: Uint8Array): void {
    if (this.closed) return;
    this.owner.enqueue(this, packet);
  }

  sendMany(packets: readonly Uint8Array[]): void {
    for (const packet of packets) this.send(packet);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.owner.detach(this);
  }
}

export class SharedTransferSocket implements ListenPortTransfers {
  /** transfers by client port, then address */
  private readonly channels = new ChannelsByPort<SharedChannel>();
  private readonly queue: (Uint8Array | number | string)[] = [];
  private round = 0;
  private scheduled = false;
  private readonly flushBound = (): void => this.flush();

  private constructor(
    private readonly socket: udp.Socket<"uint8array">,
    private readonly batch: BatchPolicy,
  ) {}

  static async open(
    address: string,
    range: PortRange | null,
    batch: BatchPolicy,
    buffers: { receive: number; send: number },
    dontFragment = false,
  ): Promise<SharedTransferSocket> {
    let shared: SharedTransferSocket | null = null;
    const handlers = {
      data(_s: unknown, bytes: Uint8Array, port: number, peerAddress: string) {
        shared?.receive(bytes, port, peerAddress);
      },
      error: ignoreSocketError,
    };
    const socket = await bindInPortRange(address, range, (port) =>
      Bun.udpSocket({ hostname: address, port, binaryType: "uint8array", socket: handlers }),
    );
    // Many transfers' ACKs and windows share these buffers.
    setBufferSizes(socket, buffers.receive, buffers.send);
    if (dontFragment) setDontFragment(socket);
    shared = new SharedTransferSocket(socket, batch);
    return shared;
  }

  get port(): number {
    return this.socket.port;
  }

  get currentRound(): number {
    return this.round;
  }

  get transfers(): number {
    return this.channels.size;
  }

  /** A channel to `peer`, or null when this socket already carries a transfer with that peer. */
  attach(peer: Peer, handler: PacketHandler): TransferChannel | null {
    if (this.find(peer.address, peer.port)) return null;
    const channel = new SharedChannel(this, peer, handler);
    this.channels.add(peer.port, channel);
    return channel;
  }

  detach(channel: SharedChannel): void {
    this.channels.remove(channel.peer.port, channel);
  }

  enqueue(channel: SharedChannel, packet: Uint8Array): void {
    if (!this.batch.enabled) {
      sendOne(this.socket, packet, channel.peer.port, channel.peer.address);
      return;
    }
    channel.queuedInRound = this.round;
    this.queue.push(packet, channel.peer.port, channel.peer.address);
    if (this.queue.length >= this.batch.size * 3) {
      this.flush();
    } else if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.flushBound);
    }
  }

  flush(): void {
    this.scheduled = false;
    this.round++;
    if (this.queue.length === 0) return;
    // one client gone away (an ICMP error pending) must not cost the others their datagrams
    sendAll(this.socket, this.queue);
    this.queue.length = 0;
  }

  close(): void {
    this.flush();
    for (const channel of this.channels.all()) channel.close();
    this.socket.close();
  }

  private find(address: string, port: number): SharedChannel | undefined {
    const list = this.channels.at(port);
    if (list) for (const channel of list) if (channel.peer.address === address) return channel;
    return undefined;
  }

  private receive(bytes: Uint8Array, port: number, address: string): void {
    if (!this.claim(bytes, port, address)) sendOne(this.socket, unknownTid, port, address);
  }

  /** Hands `bytes` to the transfer with that client; false when there is none. */
  claim(bytes: Uint8Array, port: number, address: string): boolean {
    const channel = this.find(address, port);
    if (!channel) return false;
    channel.receive(bytes);
    return true;
  }

  /**
   * Transfers on a listener's own socket (tftp.single_port): its datagrams come to claim() from
   * the listener, which keeps the requests; the listener closes the socket.
   */
  static onListenPort(socket: udp.Socket<"uint8array">, batch: BatchPolicy): SharedTransferSocket {
    return new SharedTransferSocket(socket, batch);
  }

  /**
   * A channel to `peer`, ending the channel of an earlier transfer with the same client port
   * (tftp.single_port, where no other port may take it: the request path lets a new request
   * from that port through only once the earlier transfer has ended or been superseded).
   */
  attachReplacing(peer: Peer, handler: PacketHandler): TransferChannel {
    this.find(peer.address, peer.port)?.close();
    return this.attach(peer, handler)!;
  }
}

/** Transfer sockets on Bun.udpSocket: the portable path. */
export const bunTransferSockets: TransferSockets = {
  openShared: (address, range, batch, buffers, dontFragment) => SharedTransferSocket.open(address, range, batch, buffers, dontFragment),
  openChannel: openTransferChannel,
};

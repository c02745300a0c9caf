/**
 * UDP sockets driven through libc (bun:ffi) instead of Bun.udpSocket: datagrams come in by
 * recvmmsg and leave by sendmmsg in whole batches, into and out of buffers allocated once,
 * with peers as binary addresses. Bun's socket costs a JS call per datagram with the peer's
 * address as a string, and a string parsed per send; here a datagram costs a few reads and
 * writes of integers. Readiness comes from an IoLoop (io-loop.ts) of the same thread.
 *
 * Layouts are those of 64-bit Linux (libc.ts): struct iovec 16 bytes, struct msghdr 56,
 * struct mmsghdr 64 (msg_len at 56), a name slot of 32 bytes (sockaddr_in6 is 28).
 */
import { ptr } from "bun:ffi";
import { isIP } from "node:net";
import { EACCES, EADDRINUSE, EAGAIN, netLibc, type NetLibc } from "./libc.ts";
import type { Flushable, IoLoop, Readable } from "./io-loop.ts";
import { setReusePort } from "./reuseport.ts";

const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0x800;
const SOCK_CLOEXEC = 0x80000;
const MSG_DONTWAIT = 0x40;
const IPPROTO_IPV6 = 41;
const IPV6_V6ONLY = 26;

const MMSG_BYTES = 64;
const MSG_LEN_AT = 56;
const IOV_BYTES = 16;
const NAME_BYTES = 32;
const SOCKADDR_IN_BYTES = 16;
const SOCKADDR_IN6_BYTES = 28;
/** struct msghdr's msg_control and msg_controllen, as words of an mmsghdr */
const MSG_CONTROL_WORD = 32 / 4;
const MSG_CONTROLLEN_WORD = 40 / 4;
/**
 * A UDP_SEGMENT control message (SOL_UDP, a u16 segment size): CMSG_SPACE(2) bytes, cmsg_len
 * CMSG_LEN(2); the size sits after the 16-byte cmsghdr.
 */
const SEGMENT_CMSG_BYTES = 24;
const SEGMENT_CMSG_LEN = 18;
const SOL_UDP = 17;
const UDP_SEGMENT = 103;
/**
 * Batches one drain reads before it hands the thread back: a socket in a flood (a storm's
 * ACKs on a shared port) would otherwise keep reading for as long as the flood outruns it, and
 * the main thread's messages (new transfers) and the timers wait for the end of the turn. What
 * is left stays queued in the kernel, and epoll (level-triggered) reports the socket again at
 * the next turn.
 */
export const MAX_BATCHES_PER_DRAIN = 4;

/** A peer's socket address, encoded once and compared as integers per datagram. */
export class SocketName {
  /** the sockaddr as the kernel takes it */
  readonly bytes: Uint8Array;
  /** its first 32 bytes as words, to copy into a send slot (the same memory as `bytes`) */
  readonly words: Uint32Array;
  readonly length: number;
  /** an IPv4 address as one unsigned integer, as Datagram.v4 has it; -1 for IPv6 */
  readonly v4: number;

  constructor(
    readonly address: string,
    readonly port: number,
  ) {
    const memory = new ArrayBuffer(32);
    this.bytes = new Uint8Array(memory, 0, SOCKADDR_IN6_BYTES);
    this.words = new Uint32Array(memory);
    const view = new DataView(memory);
    view.setUint16(2, port, false);
    // (a dotted quad is read by hand: a name is made per transfer, and isIP's pattern cost more than the rest)
    const v4 = ipv4Word(address);
    if (v4 >= 0) {
      view.setUint16(0, AF_INET, true);
      view.setUint32(4, v4, false);
      this.length = SOCKADDR_IN_BYTES;
      this.v4 = v4;
    } else {
      if (isIP(address) !== 6) throw new Error(`not an IP address: ${address}`);
      view.setUint16(0, AF_INET6, true);
      this.bytes.set(ipv6Bytes(address), 8);
      this.length = SOCKADDR_IN6_BYTES;
      this.v4 = -1;
    }
  }

  get family(): 4 | 6 {
    return this.length === SOCKADDR_IN_BYTES ? 4 : 6;
  }
}

/** A dotted-quad IPv4 address as one unsigned integer, or -1 when `address` is none (as isIPv4 judges). */
export function ipv4Word(address: string): number {
  let word = 0;
  let octet = -1;
  let dots = 0;
  for (let i = 0; i < address.length; i++) {
    const c = address.charCodeAt(i);
    if (c === 46) {
      if (octet < 0 || dots === 3) return -1;
      word = word * 256 + octet;
      octet = -1;
      dots++;
    } else if (c >= 48 && c <= 57) {
      // no leading zero: "01" is no octet
      if (octet === 0) return -1;
      octet = octet < 0 ? c - 48 : octet * 10 + c - 48;
      if (octet > 255) return -1;
    } else {
      return -1;
    }
  }
  return octet < 0 || dots !== 3 ? -1 : word * 256 + octet;
}

/** The 16 bytes of an IPv6 address (an embedded IPv4 tail included). */
export function ipv6Bytes(address: string): Uint8Array {
  const bytes = new Uint8Array(16);
  let text = address;
  const zone = text.indexOf("%");
  if (zone >= 0) text = text.slice(0, zone);
  const tail: number[] = [];
  const lastColon = text.lastIndexOf(":");
  if (text.includes(".", lastColon)) {
    tail.push(...text.slice(lastColon + 1).split(".").map(Number));
    text = text.slice(0, lastColon + 1) + "0:0";
  }
  const [head, rest] = text.includes("::") ? text.split("::") : [text, null];
  const headGroups = head ? head.split(":") : [];
  const restGroups = rest ? rest.split(":") : [];
  const groups = rest === null ? headGroups : [...headGroups, ...Array(8 - headGroups.length - restGroups.length).fill("0"), ...restGroups];
  groups.forEach((group, i) => {
    const value = parseInt(group || "0", 16);
    bytes[i * 2] = value >> 8;
    bytes[i * 2 + 1] = value & 0xff;
  });
  if (tail.length === 4) bytes.set(tail, 12);
  return bytes;
}

/** The text form of the address in a received name slot (only off the hot path: a new peer). */
function nameText(bytes: Uint8Array, at: number): string {
  if (bytes[at] === AF_INET) return `${bytes[at + 4]}.${bytes[at + 5]}.${bytes[at + 6]}.${bytes[at + 7]}`;
  const groups: string[] = [];
  for (let i = 0; i < 8; i++) groups.push(((bytes[at + 8 + i * 2]! << 8) | bytes[at + 9 + i * 2]!).toString(16));
  return groups.join(":").replace(/(^|:)0(:0)+(:|$)/, "::").replace(/:{3,}/, "::");
}

/**
 * What a socket hands its owner per datagram: the peer's port and, for IPv4, its address as
 * one integer (for IPv6, `v4` is -1 and `from.matches` compares the bytes). `bytes` is only
 * valid during the call; the owner copies what it keeps.
 */
export interface Datagram {
  bytes: Uint8Array;
  port: number;
  v4: number;
}

export type DatagramHandler = (datagram: Datagram, from: ReceivedName) => void;

/** The name of the datagram being handled, read in place. */
export class ReceivedName {
  constructor(
    private readonly area: Uint8Array,
    public at: number,
  ) {}

  /** true when it names `name` (its port aside) */
  matches(name: SocketName): boolean {
    const area = this.area;
    const at = this.at;
    if (name.family === 4) return area[at] === AF_INET && area[at + 4] === name.bytes[4] && area[at + 5] === name.bytes[5] && area[at + 6] === name.bytes[6] && area[at + 7] === name.bytes[7];
    if (area[at] !== AF_INET6) return false;
    for (let i = 8; i < 24; i++) if (area[at + i] !== name.bytes[i]) return false;
    return true;
  }

  /** its address as text (no SocketName: nothing parsed back into bytes) */
  get address(): string {
    return nameText(this.area, this.at);
  }

  /** a SocketName of its own, to answer it later */
  toName(): SocketName {
    return new SocketName(this.address, (this.area[this.at + 2]! << 8) | this.area[this.at + 3]!);
  }
}

function pointerWords(words: Uint32Array, index: number, pointer: number): void {
  words[index] = pointer % 0x1_0000_0000;
  words[index + 1] = Math.floor(pointer / 0x1_0000_0000);
}

export interface FfiUdpOptions {
  /** most datagrams one recvmmsg takes */
  receiveBatch: number;
  /** bytes of the largest datagram accepted (a longer one is cut, and then malformed) */
  receiveBytes: number;
  /** most datagrams one sendmmsg carries */
  sendBatch: number;
  /** receive batches one drain reads at most (MAX_BATCHES_PER_DRAIN when absent) */
  batchesPerDrain?: number;
  /** drained before the loop's other sockets in a turn (IoLoop.watch) */
  first?: boolean;
}

/** An error carrying the errno name the port-range search tells apart (net/port-range-bind.ts). */
function bindError(address: string, port: number, errno: number): Error {
  const code = errno === EADDRINUSE ? "EADDRINUSE" : errno === EACCES ? "EACCES" : `errno ${errno}`;
  return Object.assign(new Error(`bind ${address}:${port} failed: ${code}`), { code });
}

/**
 * Everything a socket hands libc, allocated once for a shape of batches: the mmsghdr vectors,
 * their iovecs, name slots and receive buffers. A socket uses them only inside one drain or one
 * flush, and a loop never runs two of those at once on one thread, so the sockets of a loop may
 * share one set (the shared ports do); a socket leaves nothing of its own in them once closed,
 * so a transfer's buffers can also be handed to the next transfer's socket (transfer-slots.ts)
 * instead of being allocated per transfer.
 */
export class SocketBuffers {
  readonly rxVector: Uint8Array;
  readonly rxWords: Uint32Array;
  readonly rxVectorAt: number;
  readonly rxNames: Uint8Array;
  readonly rxData: Uint8Array;
  /** a 4-byte view per slot: ACKs, most of what arrives, are handed over without a new view */
  readonly shortViews: Uint8Array[] = [];
  readonly received: Datagram = { bytes: new Uint8Array(0), port: 0, v4: 0 };
  readonly receivedName: ReceivedName;
  readonly txVector: Uint8Array;
  readonly txWords: Uint32Array;
  readonly txVectorAt: number;
  readonly txNames: Uint32Array;
  readonly txNamesAt: number;
  readonly txIov: Uint32Array;
  readonly txIovAt: number;
  /** a UDP_SEGMENT control message per send slot, for a datagram queued with a segment size */
  readonly txControl: Uint8Array;
  readonly txControlAt: number;

  constructor(readonly options: FfiUdpOptions) {
    const { receiveBatch, receiveBytes, sendBatch } = options;
    // Every buffer handed to libc is made from an ArrayBuffer: asking a small typed array for its
    // .buffer after ptr() would move its bytes away from the pointer.
    this.rxVector = new Uint8Array(new ArrayBuffer(receiveBatch * (MMSG_BYTES + IOV_BYTES)));
    this.rxWords = new Uint32Array(this.rxVector.buffer);
    this.rxVectorAt = ptr(this.rxVector);
    this.rxNames = new Uint8Array(new ArrayBuffer(receiveBatch * NAME_BYTES));
    this.rxData = new Uint8Array(new ArrayBuffer(receiveBatch * receiveBytes));
    this.receivedName = new ReceivedName(this.rxNames, 0);
    const namesAt = ptr(this.rxNames);
    const dataAt = ptr(this.rxData);
    const iovAt = this.rxVectorAt + receiveBatch * MMSG_BYTES;
    for (let i = 0; i < receiveBatch; i++) {
      const word = (i * MMSG_BYTES) / 4;
      pointerWords(this.rxWords, word, namesAt + i * NAME_BYTES); // msg_name
      this.rxWords[word + 2] = NAME_BYTES; // msg_namelen
      pointerWords(this.rxWords, word + 4, iovAt + i * IOV_BYTES); // msg_iov
      this.rxWords[word + 6] = 1; // msg_iovlen
      const iov = (receiveBatch * MMSG_BYTES + i * IOV_BYTES) / 4;
      pointerWords(this.rxWords, iov, dataAt + i * receiveBytes);
      this.rxWords[iov + 2] = receiveBytes;
      this.shortViews.push(this.rxData.subarray(i * receiveBytes, i * receiveBytes + 4));
    }
    this.txVector = new Uint8Array(new ArrayBuffer(sendBatch * MMSG_BYTES));
    this.txWords = new Uint32Array(this.txVector.buffer);
    this.txVectorAt = ptr(this.txVector);
    this.txNames = new Uint32Array(new ArrayBuffer(sendBatch * NAME_BYTES));
    this.txNamesAt = ptr(this.txNames);
    this.txIov = new Uint32Array(new ArrayBuffer(sendBatch * IOV_BYTES));
    this.txIovAt = ptr(this.txIov);
    this.txControl = new Uint8Array(new ArrayBuffer(sendBatch * SEGMENT_CMSG_BYTES));
    this.txControlAt = ptr(this.txControl);
    const control = new DataView(this.txControl.buffer);
    for (let i = 0; i < sendBatch; i++) {
      const word = (i * MMSG_BYTES) / 4;
      // each slot's control message, filled in but for its size; a datagram points at it only
      // when it is queued with a segment size
      control.setUint32(i * SEGMENT_CMSG_BYTES, SEGMENT_CMSG_LEN, true); // cmsg_len (a size_t: high word 0)
      control.setInt32(i * SEGMENT_CMSG_BYTES + 8, SOL_UDP, true);
      control.setInt32(i * SEGMENT_CMSG_BYTES + 12, UDP_SEGMENT, true);
      pointerWords(this.txWords, word, this.txNamesAt + i * NAME_BYTES);
      pointerWords(this.txWords, word + 4, this.txIovAt + i * IOV_BYTES);
      this.txWords[word + 6] = 1;
    }
  }

  /** bytes of the buffers libc reads and writes (what a pool of them holds) */
  static bytesFor(options: FfiUdpOptions): number {
    const { receiveBatch, receiveBytes, sendBatch } = options;
    return receiveBatch * (MMSG_BYTES + IOV_BYTES + NAME_BYTES + receiveBytes) + sendBatch * (MMSG_BYTES + NAME_BYTES + IOV_BYTES + SEGMENT_CMSG_BYTES);
  }
}

export class FfiUdpSocket implements Readable, Flushable {
  /** the port the kernel bound */
  readonly port: number;
  private closed = false;
  // the buffers' parts, held as fields of their own: the hot paths read no further object
  private readonly options: FfiUdpOptions;
  private readonly rxWords: Uint32Array;
  private readonly rxVectorAt: number;
  private readonly rxNames: Uint8Array;
  private readonly rxData: Uint8Array;
  private readonly shortViews: Uint8Array[];
  private readonly received: Datagram;
  private readonly receivedName: ReceivedName;
  private readonly txWords: Uint32Array;
  private readonly txVectorAt: number;
  private readonly txNames: Uint32Array;
  private readonly txIov: Uint32Array;
  private readonly txControl: Uint8Array;
  private readonly txControlAt: number;
  /** what waits for the next flush: the socket's own, as the buffers may be shared */
  private readonly queue: Uint8Array[] = [];
  private readonly queueNames: SocketName[] = [];
  /** per queued datagram: its GSO segment size, or 0 to send it whole */
  private readonly queueSegments: number[] = [];
  /** datagrams the kernel would not take (a full send buffer): the retransmit clock covers them */
  dropped = 0;

  private constructor(
    private readonly lib: NetLibc,
    readonly fd: number,
    private readonly loop: IoLoop,
    /** what it sends and receives through: its own, or a transfer slot's until it is closed */
    readonly buffers: SocketBuffers,
    private readonly onDatagram: DatagramHandler,
  ) {
    this.port = localPort(lib, fd);
    this.options = buffers.options;
    this.rxWords = buffers.rxWords;
    this.rxVectorAt = buffers.rxVectorAt;
    this.rxNames = buffers.rxNames;
    this.rxData = buffers.rxData;
    this.shortViews = buffers.shortViews;
    this.received = buffers.received;
    this.receivedName = buffers.receivedName;
    this.txWords = buffers.txWords;
    this.txVectorAt = buffers.txVectorAt;
    this.txNames = buffers.txNames;
    this.txIov = buffers.txIov;
    this.txControl = buffers.txControl;
    this.txControlAt = buffers.txControlAt;
    loop.watch(fd, this, this.options.first ?? false);
  }

  /**
   * Binds a UDP socket on `address`:`port` (0: any free port) and hands each datagram that
   * arrives on it to `onDatagram`, through `buffers` (a transfer slot's, free until this socket
   * is closed) or new ones of that shape. Throws with `code` "EADDRINUSE" / "EACCES" when the
   * port is taken or forbidden, as Bun's bind does.
   */
  static open(
    loop: IoLoop,
    address: string,
    port: number,
    buffers: SocketBuffers | FfiUdpOptions,
    onDatagram: DatagramHandler,
    /** join the sockets already bound to this address and port (reuseport.ts) */
    reusePort = false,
  ): FfiUdpSocket {
    const lib = netLibc();
    if (!lib) throw new Error("libc is not available");
    const name = new SocketName(address, port);
    const fd = lib.socket(name.family === 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new Error(`socket() failed: errno ${lib.errno()}`);
    if (name.family === 6) {
      // as Bun does for an IPv6 address: an IPv4-mapped peer reaches a socket on "::"
      const off = new Int32Array([0]);
      lib.setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, ptr(off), 4);
    }
    if (reusePort && !setReusePort(fd)) {
      const errno = lib.errno();
      lib.close(fd);
      throw new Error(`SO_REUSEPORT refused on ${address}:${port}: errno ${errno}`);
    }
    if (lib.bind(fd, ptr(name.bytes), name.length) !== 0) {
      const errno = lib.errno();
      lib.close(fd);
      throw bindError(address, port, errno);
    }
    return new FfiUdpSocket(lib, fd, loop, buffers instanceof SocketBuffers ? buffers : new SocketBuffers(buffers), onDatagram);
  }

  /**
   * Queues `packet` for `to`; it leaves at the end of the loop's turn (or at flush()). With a
   * `segment` size, the kernel cuts it into datagrams of that size (UDP GSO, per message): packets
   * laid end to end leave in one send.
   */
  enqueue(packet: Uint8Array, to: SocketName, segment = 0): void {
    if (this.closed) return;
    if (this.queue.length === 0) this.loop.queued(this);
    this.queue.push(packet);
    this.queueNames.push(to);
    this.queueSegments.push(segment);
    if (this.queue.length >= this.options.sendBatch) this.flush();
  }

  /** datagrams queued and not yet sent */
  get queuedCount(): number {
    return this.queue.length;
  }

  flush(): void {
    const queue = this.queue;
    const count = queue.length;
    if (count === 0 || this.closed) {
      queue.length = 0;
      this.queueNames.length = 0;
      this.queueSegments.length = 0;
      return;
    }
    const words = this.txWords;
    const names = this.txNames;
    const iov = this.txIov;
    const segments = this.queueSegments;
    for (let i = 0; i < count; i++) {
      const packet = queue[i]!;
      const name = this.queueNames[i]!;
      const word = (i * MMSG_BYTES) / 4;
      words[word + 2] = name.length; // msg_namelen
      names.set(name.words, (i * NAME_BYTES) / 4);
      pointerWords(iov, (i * IOV_BYTES) / 4, ptr(packet));
      iov[(i * IOV_BYTES) / 4 + 2] = packet.length;
      iov[(i * IOV_BYTES) / 4 + 3] = 0;
      const segment = segments[i]!;
      if (segment > 0) {
        const at = i * SEGMENT_CMSG_BYTES;
        this.txControl[at + 16] = segment & 0xff;
        this.txControl[at + 17] = segment >> 8;
        pointerWords(words, word + MSG_CONTROL_WORD, this.txControlAt + at);
        words[word + MSG_CONTROLLEN_WORD] = SEGMENT_CMSG_BYTES;
      } else if (words[word + MSG_CONTROLLEN_WORD] !== 0) {
        pointerWords(words, word + MSG_CONTROL_WORD, 0);
        words[word + MSG_CONTROLLEN_WORD] = 0;
      }
    }
    this.sendVector(count);
    queue.length = 0;
    this.queueNames.length = 0;
    segments.length = 0;
  }

  /**
   * sendmmsg stops at the first datagram the kernel refuses and says how many left; the rest
   * goes again until a call in a row sends nothing (a full send buffer: dropped and counted).
   */
  private sendVector(count: number): void {
    let sent = 0;
    for (let stalled = 0; sent < count && stalled < 2; ) {
      const left = this.lib.sendmmsg(this.fd, this.txVectorAt + sent * MMSG_BYTES, count - sent, MSG_DONTWAIT);
      if (left > 0) {
        sent += left;
        stalled = 0;
      } else {
        // EAGAIN (full buffer) or one datagram's own error: skip past it after a second try
        stalled++;
        if (stalled === 2 && this.lib.errno() !== EAGAIN) {
          sent++;
          this.dropped++;
          stalled = 0;
        }
      }
    }
    this.dropped += count - sent;
  }

  drain(): void {
    const { receiveBatch, receiveBytes } = this.options;
    const maxBatches = this.options.batchesPerDrain ?? MAX_BATCHES_PER_DRAIN;
    const words = this.rxWords;
    const data = this.rxData;
    const received = this.received;
    const name = this.receivedName;
    const names = this.rxNames;
    for (let batches = 1; ; batches++) {
      if (this.closed) return;
      const count = this.lib.recvmmsg(this.fd, this.rxVectorAt, receiveBatch, MSG_DONTWAIT, null);
      if (count <= 0) return;
      for (let i = 0; i < count; i++) {
        const word = (i * MMSG_BYTES) / 4;
        const length = Math.min(words[word + MSG_LEN_AT / 4]!, receiveBytes);
        words[word + 2] = NAME_BYTES; // the kernel wrote the name's length: room again for the next
        const at = i * NAME_BYTES;
        received.port = (names[at + 2]! << 8) | names[at + 3]!;
        received.v4 = names[at] === AF_INET ? ((names[at + 4]! << 24) | (names[at + 5]! << 16) | (names[at + 6]! << 8) | names[at + 7]!) >>> 0 : -1;
        // a datagram longer than an ACK may be kept by its handler (an upload's DATA): a copy
        received.bytes = length === 4 ? this.shortViews[i]! : data.slice(i * receiveBytes, i * receiveBytes + length);
        name.at = at;
        this.onDatagram(received, name);
        if (this.closed) return;
      }
      if (count < receiveBatch || batches === maxBatches) return;
      this.loop.sendIfDue();
    }
  }

  close(): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.loop.unwatch(this.fd);
    this.lib.close(this.fd);
  }
}

/** getsockname's out-parameters, one pair per thread: a transfer's socket allocates none */
const boundName = new Uint8Array(new ArrayBuffer(SOCKADDR_IN6_BYTES));
const boundNameLength = new Uint32Array(new ArrayBuffer(4));

function localPort(lib: NetLibc, fd: number): number {
  boundNameLength[0] = SOCKADDR_IN6_BYTES;
  if (lib.getsockname(fd, ptr(boundName), ptr(boundNameLength)) !== 0) return 0;
  return (boundName[2]! << 8) | boundName[3]!;
}

/**
 * Socket options Bun.udpSocket does not offer, set on its descriptor through libc.
 *
 * Buffer sizes: Bun.udpSocket silently ignores buffer-size options, and loopback drops bursts
 * without back-pressure when SO_RCVBUF is small, so we set SO_RCVBUF / SO_SNDBUF and read back
 * what the kernel granted (it doubles the request for bookkeeping and caps it at
 * net.core.rmem_max / wmem_max).
 *
 * UDP GSO (UDP_SEGMENT, Linux 4.18): one send of N × size bytes leaves as N datagrams of
 * `size` (the last may be shorter), cut by the kernel (or the NIC) instead of N sends.
 */
import { ptr } from "bun:ffi";
import { netLibc, type NetLibc } from "./libc.ts";

const SOL_SOCKET = 1;
const SO_SNDBUF = 7;
const SO_RCVBUF = 8;
/** Same as SO_SNDBUF / SO_RCVBUF but past net.core.wmem_max / rmem_max; needs CAP_NET_ADMIN. */
const SO_SNDBUFFORCE = 32;
const SO_RCVBUFFORCE = 33;
const SOL_UDP = 17;
const UDP_SEGMENT = 103;
/** Most segments one GSO send may carry (UDP_MAX_SEGMENTS of Linux before 6.9). */
export const GSO_MAX_SEGMENTS = 64;
/** Most bytes one GSO send may carry: a UDP payload over IPv4, headers taken off 64 KiB. */
export const GSO_MAX_BYTES = 65_507;

export interface BufferSizes {
  /** bytes the kernel granted, as getsockopt reports them (twice the usable size) */
  receive: number;
  send: number;
}

function getInt(lib: NetLibc, fd: number, name: number): number {
  const value = new Int32Array(1);
  const length = new Uint32Array([4]);
  const rc = lib.getsockopt(fd, SOL_SOCKET, name, ptr(value), ptr(length));
  return rc === 0 ? value[0]! : -1;
}

/** Sets an int option (SOL_SOCKET unless `level` says otherwise); true when the kernel took it. */
function setInt(lib: NetLibc, fd: number, name: number, value: number, level = SOL_SOCKET): boolean {
  const int = new Int32Array([Math.min(value, 0x7fffffff)]);
  return lib.setsockopt(fd, level, name, ptr(int), 4) === 0;
}

/** The descriptor Bun keeps on its UDP sockets (not in the public types); ours have one too. */
/** The descriptor of a Bun socket (or of one of ours), or null where it has none. */
export function socketFd(socket: object): number | null {
  const fd = (socket as { fd?: unknown }).fd;
  return typeof fd === "number" && fd >= 0 ? fd : null;
}

/**
 * Asks for the given sizes (0 leaves one unchanged) and returns what the kernel granted,
 * or null when the descriptor or libc is out of reach.
 */
export function setBufferSizes(socket: object, receive: number, send: number): BufferSizes | null {
  const fd = socketFd(socket);
  const lib = netLibc();
  if (fd === null || lib === null) return null;
  // The kernel caps the plain options at rmem_max / wmem_max; a privileged process may go past
  // them with the FORCE variants, and an unprivileged one keeps what it was granted.
  if (receive > 0) {
    setInt(lib, fd, SO_RCVBUF, receive);
    if (wasCapped(receive, getInt(lib, fd, SO_RCVBUF))) setInt(lib, fd, SO_RCVBUFFORCE, receive);
  }
  if (send > 0) {
    setInt(lib, fd, SO_SNDBUF, send);
    if (wasCapped(send, getInt(lib, fd, SO_SNDBUF))) setInt(lib, fd, SO_SNDBUFFORCE, send);
  }
  return { receive: getInt(lib, fd, SO_RCVBUF), send: getInt(lib, fd, SO_SNDBUF) };
}

/** Linux reports twice the requested size; a grant below that means the sysctl cap hit. */
export function wasCapped(requested: number, granted: number): boolean {
  return requested > 0 && granted >= 0 && granted < requested * 2;
}

/**
 * Turns on UDP GSO with segments of `segmentBytes`; false when the kernel (or libc, or the
 * descriptor) refuses, and sends then leave one datagram per send as before.
 */
export function setUdpSegment(socket: object, segmentBytes: number): boolean {
  const fd = socketFd(socket);
  const lib = netLibc();
  if (fd === null || lib === null) return false;
  return setInt(lib, fd, UDP_SEGMENT, segmentBytes, SOL_UDP);
}

const IPPROTO_IP = 0;
const IP_MTU_DISCOVER = 10;
/** DF on every datagram, the path MTU the kernel learnt ignored (a datagram up to the interface's MTU goes) */
const IP_PMTUDISC_PROBE = 3;

/**
 * Sets DF on an IPv4 socket's datagrams. A datagram that may be fragmented needs an IP ID the
 * kernel draws for it (__ip_select_ident, 5-7 % of a storm's CPU); one with DF on an unconnected
 * socket gets 0. Only for sockets whose datagrams fit their interface's MTU: a longer one would
 * fail to send (EMSGSIZE) instead of leaving in fragments.
 */
export function setDontFragment(socket: object): boolean {
  const fd = socketFd(socket);
  const lib = netLibc();
  if (fd === null || lib === null) return false;
  return setInt(lib, fd, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE, IPPROTO_IP);
}

/**
 * Runs `send` (one datagram longer than the socket's GSO segment: an OACK or ERROR of a small
 * blksize) with GSO off, so it leaves whole rather than cut into segments.
 */
export function sendUnsegmented(socket: object, segmentBytes: number, send: () => void): void {
  setUdpSegment(socket, 0);
  try {
    send();
  } finally {
    setUdpSegment(socket, segmentBytes);
  }
}

/**
 * The libc calls of the network layer, through bun:ffi: socket options Bun.udpSocket does not
 * offer (sockopt.ts), and the UDP sockets and readiness loop of the transfer engine's epoll
 * path (udp-ffi.ts, io-loop.ts). Loaded once per thread on first use; null where libc (or the
 * struct layouts below) are out of reach, and callers then take Bun's portable path.
 */
import { dlopen, FFIType, read } from "bun:ffi";

export type Pointer = number;

export interface NetLibc {
  setsockopt(fd: number, level: number, name: number, value: Pointer, length: number): number;
  getsockopt(fd: number, level: number, name: number, value: Pointer, length: Pointer): number;
  socket(domain: number, type: number, protocol: number): number;
  bind(fd: number, address: Pointer, length: number): number;
  getsockname(fd: number, address: Pointer, length: Pointer): number;
  close(fd: number): number;
  recvmmsg(fd: number, vector: Pointer, count: number, flags: number, timeout: Pointer | null): number;
  sendmmsg(fd: number, vector: Pointer, count: number, flags: number): number;
  epoll_create1(flags: number): number;
  epoll_ctl(epfd: number, op: number, fd: number, event: Pointer): number;
  epoll_wait(epfd: number, events: Pointer, max: number, timeoutMs: number): number;
  eventfd(initial: number, flags: number): number;
  read(fd: number, buffer: Pointer, length: number): number;
  write(fd: number, buffer: Pointer, length: number): number;
  /** errno of this thread, read right after the call that failed */
  errno(): number;
}

/**
 * Struct layouts of the 64-bit Linux ABIs whose layouts are written here (x86-64 and arm64
 * agree on all of them but struct epoll_event, packed on x86-64 only).
 */
export interface Layout {
  /** sizeof(struct epoll_event) and the offset of its data */
  epollEventBytes: number;
  epollDataOffset: number;
}

const LAYOUTS: Record<string, Layout> = {
  x64: { epollEventBytes: 12, epollDataOffset: 4 },
  arm64: { epollEventBytes: 16, epollDataOffset: 8 },
};

export const EAGAIN = 11;
export const EINTR = 4;
export const EACCES = 13;
export const EADDRINUSE = 98;

let libc: NetLibc | null | undefined;

/** libc of this process, or null where it cannot be loaded. */
export function netLibc(): NetLibc | null {
  if (libc !== undefined) return libc;
  try {
    const { symbols: s } = dlopen("libc.so.6", {
      setsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
      getsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
      socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
      bind: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
      getsockname: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
      close: { args: [FFIType.i32], returns: FFIType.i32 },
      recvmmsg: { args: [FFIType.i32, FFIType.ptr, FFIType.u32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
      sendmmsg: { args: [FFIType.i32, FFIType.ptr, FFIType.u32, FFIType.i32], returns: FFIType.i32 },
      epoll_create1: { args: [FFIType.i32], returns: FFIType.i32 },
      epoll_ctl: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
      epoll_wait: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
      eventfd: { args: [FFIType.u32, FFIType.i32], returns: FFIType.i32 },
      read: { args: [FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i64 },
      write: { args: [FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i64 },
      __errno_location: { args: [], returns: FFIType.ptr },
    });
    libc = {
      setsockopt: (fd, level, name, value, length) => s.setsockopt(fd, level, name, value, length),
      getsockopt: (fd, level, name, value, length) => s.getsockopt(fd, level, name, value, length),
      socket: (domain, type, protocol) => s.socket(domain, type, protocol),
      bind: (fd, address, length) => s.bind(fd, address, length),
      getsockname: (fd, address, length) => s.getsockname(fd, address, length),
      close: (fd) => s.close(fd),
      recvmmsg: (fd, vector, count, flags, timeout) => s.recvmmsg(fd, vector, count, flags, timeout),
      sendmmsg: (fd, vector, count, flags) => s.sendmmsg(fd, vector, count, flags),
      epoll_create1: (flags) => s.epoll_create1(flags),
      epoll_ctl: (epfd, op, fd, event) => s.epoll_ctl(epfd, op, fd, event),
      epoll_wait: (epfd, events, max, timeoutMs) => s.epoll_wait(epfd, events, max, timeoutMs),
      eventfd: (initial, flags) => s.eventfd(initial, flags),
      read: (fd, buffer, length) => Number(s.read(fd, buffer, length)),
      write: (fd, buffer, length) => Number(s.write(fd, buffer, length)),
      errno: () => {
        const at = s.__errno_location();
        return at === null ? 0 : read.i32(at, 0);
      },
    };
  } catch {
    libc = null;
  }
  return libc;
}

/** The struct layouts of this machine, or null on an architecture not written down here. */
export function netLayout(): Layout | null {
  return process.platform === "linux" ? (LAYOUTS[process.arch] ?? null) : null;
}

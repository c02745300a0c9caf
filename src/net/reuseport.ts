/**
 * Several sockets on one address and port (SO_REUSEPORT), with the kernel choosing among them
 * by the datagram's source address through a classic BPF program (SO_ATTACH_REUSEPORT_CBPF):
 * every request of one client address reaches the same socket, so the thread reading it can
 * keep that client's counts (its transfers, its request rate) alone.
 *
 * The first socket of the group may be a Bun.udpSocket, whose options offer no SO_REUSEPORT:
 * set on its descriptor after its bind, the option still lets later sockets join it (Linux
 * makes the group when the second socket binds). The program leaves that first socket out
 * (indices `first` ..); when a socket of the group closes, the kernel moves the last one into
 * its place, and an index past the end falls back to the kernel's own hash, which includes
 * the first socket again: a listener whose helpers are gone hears every request itself.
 */
import { ptr } from "bun:ffi";
import { netLibc } from "./libc.ts";

const SOL_SOCKET = 1;
const SO_REUSEPORT = 15;
const SO_ATTACH_REUSEPORT_CBPF = 51;

// classic BPF (linux/filter.h): struct sock_filter is { u16 code; u8 jt; u8 jf; u32 k }
const BPF_LD_W_ABS = 0x20;
const BPF_ALU_MOD_K = 0x94;
const BPF_ALU_ADD_K = 0x04;
const BPF_RET_A = 0x16;
/** SKF_NET_OFF: loads relative to the network header (the program sees the UDP payload) */
const SKF_NET_OFF = -0x100000;
/** where the source address's last 32 bits sit in an IPv4 / IPv6 header */
const SOURCE_WORD_AT = { 4: 12, 6: 20 } as const;

/**
 * Sets SO_REUSEPORT on `fd`: before its bind, or after it on the group's first socket. It
 * stays on (the kernel steers only among sockets that have it); a socket of another program
 * of the same user that joins later gets nothing, as the program names only ours.
 */
export function setReusePort(fd: number): boolean {
  const lib = netLibc();
  if (!lib) return false;
  const on = new Int32Array([1]);
  return lib.setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, ptr(on), 4) === 0;
}

/**
 * The program: the source address's last 32 bits, modulo `count`, plus `first`. Exported for
 * its test: the instructions as the kernel reads them.
 */
export function steeringProgram(family: 4 | 6, first: number, count: number): Uint8Array {
  if (!Number.isInteger(count) || count < 1) throw new Error(`steering needs at least one socket, got ${count}`);
  const instructions: [number, number][] = [
    [BPF_LD_W_ABS, (SKF_NET_OFF + SOURCE_WORD_AT[family]) >>> 0],
    [BPF_ALU_MOD_K, count],
    [BPF_ALU_ADD_K, first],
    [BPF_RET_A, 0],
  ];
  const program = new Uint8Array(new ArrayBuffer(instructions.length * 8));
  const view = new DataView(program.buffer);
  instructions.forEach(([code, k], i) => {
    view.setUint16(i * 8, code, true);
    view.setUint32(i * 8 + 4, k, true);
  });
  return program;
}

/**
 * Steers the datagrams of `fd`'s group to the sockets at indices `first` .. first+count-1 (in
 * the order they joined), by source address. Returns the errno when the kernel refuses.
 */
export function steerBySource(fd: number, family: 4 | 6, first: number, count: number): number | null {
  const lib = netLibc();
  if (!lib) return -1;
  const program = steeringProgram(family, first, count);
  // struct sock_fprog { u16 len; (6 bytes of padding) struct sock_filter *filter }
  const fprog = new Uint8Array(new ArrayBuffer(16));
  const view = new DataView(fprog.buffer);
  view.setUint16(0, program.length / 8, true);
  view.setBigUint64(8, BigInt(ptr(program)), true);
  if (lib.setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, ptr(fprog), 16) === 0) return null;
  return lib.errno();
}

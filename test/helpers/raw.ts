/**
 * A scriptable raw TFTP peer for end-to-end protocol tests: one UDP socket on loopback that
 * sends exactly the bytes a test builds and hands back every datagram it receives, decoded.
 * Nothing is retried or answered on its own — the test plays the client (or firmware) step by
 * step, so it can misbehave on purpose. Every wait is bounded.
 */
import type { udp } from "bun";
import type { TransferRecord } from "../../src/server/server.ts";
import {
  decodePacket,
  encodeAck,
  encodeData,
  encodeError,
  encodeRequest,
  type DecodeResult,
} from "../../src/protocol/codec.ts";
import {
  Opcode,
  type AckPacket,
  type DataPacket,
  type ErrorPacket,
  type OackPacket,
  type Packet,
  type TransferMode,
} from "../../src/protocol/packet.ts";

export interface Received {
  /** the datagram as it arrived (a private copy) */
  bytes: Uint8Array;
  /** the decoded packet, or null when the codec rejects the datagram */
  packet: Packet | null;
  decoded: DecodeResult;
  /** sender's port and address: the server's transfer ID */
  port: number;
  address: string;
  /** performance.now() at arrival */
  at: number;
}

type Waiter = { resolve: (r: Received) => void; reject: (e: Error) => void; timer: ReturnType<typeof setTimeout> };

function describe(r: Received): string {
  const p = r.packet;
  if (p === null) return `undecodable ${r.bytes.length}-byte datagram from ${r.address}:${r.port}`;
  switch (p.op) {
    case Opcode.DATA:
      return `DATA ${p.block} (${p.data.length} bytes) from ${r.address}:${r.port}`;
    case Opcode.ACK:
      return `ACK ${p.block} from ${r.address}:${r.port}`;
    case Opcode.ERROR:
      return `ERROR ${p.code} "${p.message}" from ${r.address}:${r.port}`;
    case Opcode.OACK:
      return `OACK ${JSON.stringify([...p.options])} from ${r.address}:${r.port}`;
    default:
      return `request ${JSON.stringify(p.filename)} from ${r.address}:${r.port}`;
  }
}

/** host:port of every ephemeral port a RawPeer of this process was given (RawPeer.open) */
const portsHad = new Set<string>();

export class RawPeer {
  private readonly queue: Received[] = [];
  private readonly waiters: Waiter[] = [];
  private socket: udp.Socket<"uint8array"> | null = null;
  private closed = false;
  /** asynchronous socket errors (ICMP reports about earlier sends) */
  readonly errors: Error[] = [];

  private constructor(readonly host: string) {}

  /**
   * Binds a UDP socket on `host` (loopback: "127.0.0.1" or "::1"), ephemeral port unless given.
   * An ephemeral port is one no earlier peer of this process had: a server still resending to
   * an earlier test's client must not find this peer there (its datagrams would be taken for
   * answers, and a request from a port whose transfer runs is rightly ignored as a stray).
   */
  static async open(host = "127.0.0.1", port = 0): Promise<RawPeer> {
    if (port !== 0) return RawPeer.bind(host, port);
    const rejected: RawPeer[] = [];
    try {
      for (;;) {
        const peer = await RawPeer.bind(host, 0);
        if (!portsHad.has(`${host}:${peer.port}`)) {
          portsHad.add(`${host}:${peer.port}`);
          return peer;
        }
        rejected.push(peer);
      }
    } finally {
      for (const peer of rejected) peer.close();
    }
  }

  private static async bind(host: string, port: number): Promise<RawPeer> {
    const peer = new RawPeer(host);
    peer.socket = await Bun.udpSocket({
      hostname: host,
      port,
      binaryType: "uint8array",
      socket: {
        data(_socket, bytes, fromPort, fromAddress) {
          peer.deliver(bytes.slice(), fromPort, fromAddress);
        },
        // ICMP "port unreachable" after sending to a closed transfer port: counted, not thrown
        error(_socket, err) {
          peer.errors.push(err);
        },
      },
    });
    return peer;
  }

  /** This peer's own port (its TID). */
  get port(): number {
    return this.socket?.port ?? 0;
  }

  private deliver(bytes: Uint8Array, port: number, address: string): void {
    if (this.closed) return;
    const decoded = decodePacket(bytes);
    const received: Received = {
      bytes,
      packet: decoded.ok ? decoded.packet : null,
      decoded,
      port,
      address,
      at: performance.now(),
    };
    const waiter = this.waiters.shift();
    if (waiter) {
      clearTimeout(waiter.timer);
      waiter.resolve(received);
    } else {
      this.queue.push(received);
    }
  }

  send(bytes: Uint8Array, port: number, host: string = this.host): void {
    if (!this.socket || this.closed) throw new Error("RawPeer: send on a closed peer");
    this.socket.send(bytes, port, host);
  }

  /** The next datagram (queued or yet to come); throws after `timeoutMs` without one. */
  next(timeoutMs = 2000): Promise<Received> {
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
    if (this.closed) return Promise.reject(new Error("RawPeer: next on a closed peer"));
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          const i = this.waiters.indexOf(waiter);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(new Error(`RawPeer ${this.host}:${this.port}: nothing received within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      this.waiters.push(waiter);
    });
  }

  /** Resolves after `ms` if nothing arrived meanwhile; throws (naming the datagram) otherwise. */
  async expectNothing(ms: number): Promise<void> {
    if (this.queue.length > 0) throw new Error(`RawPeer: expected silence, already holding ${describe(this.queue[0]!)}`);
    let got: Received;
    try {
      got = await this.next(ms);
    } catch {
      return;
    }
    throw new Error(`RawPeer: expected silence for ${ms} ms, got ${describe(got)}`);
  }

  /** Everything that arrives within `ms` (including what is queued already). */
  async collect(ms: number): Promise<Received[]> {
    const out: Received[] = [];
    const deadline = performance.now() + ms;
    for (;;) {
      const left = deadline - performance.now();
      if (left <= 0 && this.queue.length === 0) return out;
      try {
        out.push(await this.next(Math.max(1, left)));
      } catch {
        return out;
      }
    }
  }

  /** Datagrams received and not consumed yet. */
  get pending(): number {
    return this.queue.length;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new Error("RawPeer closed"));
    }
    this.socket?.close();
  }

  // Typed expectations: each waits for the next datagram and throws unless it is what was asked.

  async nextData(block?: number, timeoutMs = 2000): Promise<Received & { packet: DataPacket }> {
    const r = await this.next(timeoutMs);
    if (r.packet?.op !== Opcode.DATA || (block !== undefined && r.packet.block !== block)) {
      throw new Error(`expected DATA${block === undefined ? "" : ` ${block}`}, got ${describe(r)}`);
    }
    return r as Received & { packet: DataPacket };
  }

  async nextAck(block?: number, timeoutMs = 2000): Promise<Received & { packet: AckPacket }> {
    const r = await this.next(timeoutMs);
    if (r.packet?.op !== Opcode.ACK || (block !== undefined && r.packet.block !== block)) {
      throw new Error(`expected ACK${block === undefined ? "" : ` ${block}`}, got ${describe(r)}`);
    }
    return r as Received & { packet: AckPacket };
  }

  async nextOack(timeoutMs = 2000): Promise<Received & { packet: OackPacket }> {
    const r = await this.next(timeoutMs);
    if (r.packet?.op !== Opcode.OACK) throw new Error(`expected OACK, got ${describe(r)}`);
    return r as Received & { packet: OackPacket };
  }

  async nextError(code?: number, timeoutMs = 2000): Promise<Received & { packet: ErrorPacket }> {
    const r = await this.next(timeoutMs);
    if (r.packet?.op !== Opcode.ERROR || (code !== undefined && r.packet.code !== code)) {
      throw new Error(`expected ERROR${code === undefined ? "" : ` ${code}`}, got ${describe(r)}`);
    }
    return r as Received & { packet: ErrorPacket };
  }
}

export { describe as describeReceived };

// Builders. Options are name/value pairs in wire order, so tests can send anything: unknown
// names, odd case, repeated names, garbage values.

export type Options = [string, string][];

export function rrq(file: string, mode: TransferMode | string = "octet", options: Options = []): Uint8Array {
  return encodeRequest(Opcode.RRQ, file, mode as TransferMode, options);
}

export function wrq(file: string, mode: TransferMode | string = "octet", options: Options = []): Uint8Array {
  return encodeRequest(Opcode.WRQ, file, mode as TransferMode, options);
}

export const ack = (block: number): Uint8Array => encodeAck(block);
export const data = (block: number, payload: Uint8Array): Uint8Array => encodeData(block, payload);
export const error = (code: number, message: string): Uint8Array => encodeError(code, message);

/** Raw bytes with a 2-byte opcode, for datagrams the encoders refuse to build. */
export function rawPacket(opcode: number, ...parts: (Uint8Array | string)[]): Uint8Array {
  const chunks = parts.map((p) => (typeof p === "string" ? new TextEncoder().encode(p) : p));
  const out = new Uint8Array(2 + chunks.reduce((n, c) => n + c.length, 0));
  out[0] = (opcode >>> 8) & 0xff;
  out[1] = opcode & 0xff;
  let at = 2;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

export function concat(chunks: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

export interface DownloadResult {
  bytes: Uint8Array;
  /** the server's transfer port and address */
  port: number;
  address: string;
  /** the OACK's options, or null when the server answered with DATA 1 straight away */
  oack: Map<string, string> | null;
  /** payload size of every DATA in order of arrival (duplicates included) */
  sizes: number[];
  /** number of DATA datagrams that arrived */
  datagrams: number;
}

/**
 * Plays a well-behaved RRQ client with the raw peer: sends the request, ACKs the OACK, and
 * ACKs the last block of every window (`windowsize` as the client expects it; taken from the
 * OACK when present). Rejects on any ERROR, any foreign source, or `timeoutMs` of silence.
 */
export async function download(
  peer: RawPeer,
  serverPort: number,
  file: string,
  opts: { mode?: string; options?: Options; host?: string; timeoutMs?: number } = {},
): Promise<DownloadResult> {
  const host = opts.host ?? peer.host;
  const timeoutMs = opts.timeoutMs ?? 2000;
  peer.send(rrq(file, opts.mode ?? "octet", opts.options ?? []), serverPort, host);
  let first = await peer.next(timeoutMs);
  const tid = { port: first.port, address: first.address };
  let blksize = 512;
  let windowsize = 1;
  let oack: Map<string, string> | null = null;
  if (first.packet?.op === Opcode.OACK) {
    oack = first.packet.options;
    blksize = Number(oack.get("blksize") ?? 512);
    windowsize = Number(oack.get("windowsize") ?? 1);
    peer.send(ack(0), tid.port, tid.address);
    first = await peer.next(timeoutMs);
  }
  const chunks: Uint8Array[] = [];
  const sizes: number[] = [];
  let expected = 1;
  let inWindow = 0;
  let datagrams = 0;
  for (let r: Received | null = first; ; r = null) {
    const got = r ?? (await peer.next(timeoutMs));
    if (got.port !== tid.port || got.address !== tid.address) {
      throw new Error(`download: datagram from a second TID: ${describe(got)}`);
    }
    if (got.packet?.op !== Opcode.DATA) throw new Error(`download: expected DATA ${expected}, got ${describe(got)}`);
    datagrams++;
    sizes.push(got.packet.data.length);
    if (got.packet.block !== (expected & 0xffff)) {
      // Out of order (a loss or a rewind): acknowledge what we have, like RFC 7440 §4 says.
      peer.send(ack((expected - 1) & 0xffff), tid.port, tid.address);
      inWindow = 0;
      continue;
    }
    chunks.push(got.packet.data);
    const last = got.packet.data.length < blksize;
    if (last || ++inWindow >= windowsize) {
      peer.send(ack(expected & 0xffff), tid.port, tid.address);
      inWindow = 0;
    }
    expected++;
    if (last) break;
  }
  return { bytes: concat(chunks), port: tid.port, address: tid.address, oack, sizes, datagrams };
}

export interface UploadResult {
  port: number;
  address: string;
  oack: Map<string, string> | null;
}

/**
 * Plays a lock-step (or windowed, per the OACK) WRQ client: sends the request, then the
 * blocks, waiting for the ACK that closes each window. Rejects on an ERROR.
 */
export async function upload(
  peer: RawPeer,
  serverPort: number,
  file: string,
  content: Uint8Array,
  opts: { mode?: string; options?: Options; host?: string; timeoutMs?: number } = {},
): Promise<UploadResult> {
  const host = opts.host ?? peer.host;
  const timeoutMs = opts.timeoutMs ?? 2000;
  peer.send(wrq(file, opts.mode ?? "octet", opts.options ?? []), serverPort, host);
  const first = await peer.next(timeoutMs);
  const tid = { port: first.port, address: first.address };
  let blksize = 512;
  let windowsize = 1;
  let oack: Map<string, string> | null = null;
  if (first.packet?.op === Opcode.OACK) {
    oack = first.packet.options;
    blksize = Number(oack.get("blksize") ?? 512);
    windowsize = Number(oack.get("windowsize") ?? 1);
  } else if (first.packet?.op !== Opcode.ACK || first.packet.block !== 0) {
    throw new Error(`upload: expected ACK 0 or OACK, got ${describe(first)}`);
  }
  const blocks = Math.floor(content.length / blksize) + 1;
  let acked = 0;
  while (acked < blocks) {
    const last = Math.min(acked + windowsize, blocks);
    for (let b = acked + 1; b <= last; b++) {
      peer.send(data(b & 0xffff, content.subarray((b - 1) * blksize, Math.min(b * blksize, content.length))), tid.port, tid.address);
    }
    const r = await peer.next(timeoutMs);
    if (r.packet?.op !== Opcode.ACK) throw new Error(`upload: expected ACK ${last}, got ${describe(r)}`);
    const wire = r.packet.block;
    // map the 16-bit ACK onto the window just sent
    const absolute = last - (((last & 0xffff) - wire) & 0xffff);
    if (absolute > acked) acked = absolute;
  }
  return { port: tid.port, address: tid.address, oack };
}

/**
 * A UDP port free on every host given, right now: for servers that must listen on one port
 * on several addresses. (Racy by nature; callers retry on EADDRINUSE.)
 */
export async function freePort(hosts: string[]): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const probe = await Bun.udpSocket({ hostname: hosts[0] ?? "127.0.0.1", port: 0 });
    const port = probe.port;
    probe.close();
    let ok = true;
    for (const host of hosts.slice(1)) {
      try {
        const s = await Bun.udpSocket({ hostname: host, port });
        s.close();
      } catch {
        ok = false;
        break;
      }
    }
    if (ok) return port;
  }
  throw new Error(`no UDP port free on all of ${hosts.join(", ")}`);
}

/** Opens peers for one test and closes them all afterwards (call closeAll in afterEach). */
export function peerTracker(): { open(host?: string, port?: number): Promise<RawPeer>; closeAll(): void } {
  const peers: RawPeer[] = [];
  return {
    async open(host = "127.0.0.1", port = 0) {
      const peer = await RawPeer.open(host, port);
      peers.push(peer);
      return peer;
    },
    closeAll() {
      for (const p of peers.splice(0)) p.close();
    },
  };
}

/** Resolves when `predicate` holds, polling every 10 ms; throws after `timeoutMs`. */
export async function waitFor(predicate: () => boolean, timeoutMs = 2000, what = "condition"): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await Bun.sleep(10);
  }
}

/** Bounds a promise in time, so no test can hang on a record that never comes. */
export function within<T>(promise: Promise<T>, ms: number, what = "operation"): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
    }),
  ]);
}

/**
 * The first transfer record (already there or yet to come) matching `predicate`: unlike
 * `nextRecord()` it cannot miss a record that ended before the call.
 */
export async function recordWhere(
  server: { records: TransferRecord[] },
  predicate: (r: TransferRecord) => boolean,
  timeoutMs = 3000,
): Promise<TransferRecord> {
  let hit: TransferRecord | undefined;
  await waitFor(() => (hit = server.records.find(predicate)) !== undefined, timeoutMs, "a transfer record");
  return hit!;
}

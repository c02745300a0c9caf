/**
 * A tiny, scriptable TFTP responder for client tests, on Bun.udpSocket over loopback.
 *
 * - `Responder.start(host)` listens on a random port; `nextRequest()` awaits an RRQ/WRQ.
 * - `open(peer)` makes a transfer socket (a new TID) whose packets can be awaited one by one
 *   (`next`) — for hand-scripted exchanges.
 * - `serveRead` / `serveWrite` run a whole RRQ / WRQ automatically (for bulk transfers),
 *   with hooks to lose chosen packets.
 */
import type { udp } from "bun";
import { decodePacket, encodeAck, encodeData, encodeOack } from "../../../src/protocol/codec.ts";
import { Opcode, type Packet, type RequestPacket } from "../../../src/protocol/packet.ts";

export interface Peer {
  port: number;
  address: string;
}

export interface Received {
  packet: Packet | null;
  raw: Uint8Array;
  peer: Peer;
}

class Queue<T> {
  private items: T[] = [];
  private waiters: ((v: T) => void)[] = [];
  readonly all: T[] = [];
  push(item: T): void {
    this.all.push(item);
    const w = this.waiters.shift();
    if (w) w(item);
    else this.items.push(item);
  }
  next(timeoutMs = 3000): Promise<T> {
    const item = this.items.shift();
    if (item !== undefined) return Promise.resolve(item);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new Error(`nothing received within ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter = (v: T): void => {
        clearTimeout(timer);
        resolve(v);
      };
      this.waiters.push(waiter);
    });
  }
  /** Items queued but not yet taken. */
  pending(): number {
    return this.items.length;
  }
}

function toCopy(data: Uint8Array): Uint8Array {
  return new Uint8Array(data); // decoded DATA views must outlive the callback
}

/** One UDP socket whose datagrams are queued. */
export class Endpoint {
  readonly queue = new Queue<Received>();
  private handler: ((r: Received) => void) | null = null;
  private constructor(readonly sock: udp.Socket<"uint8array">) {}

  static async open(host: string): Promise<Endpoint> {
    let self: Endpoint | null = null;
    const sock = await Bun.udpSocket({
      hostname: host,
      port: 0,
      binaryType: "uint8array",
      socket: {
        data(_s, data, port, address) {
          const raw = toCopy(data);
          const d = decodePacket(raw);
          const r: Received = { packet: d.ok ? d.packet : null, raw, peer: { port, address } };
          if (self?.handler) self.handler(r);
          else self?.queue.push(r);
        },
        error() {},
      },
    });
    self = new Endpoint(sock);
    return self;
  }

  get port(): number {
    return this.sock.port;
  }

  /** Handles packets synchronously instead of queueing them. */
  onPacket(handler: (r: Received) => void): void {
    this.handler = handler;
  }

  send(packet: Uint8Array, peer: Peer): void {
    this.sock.send(packet, peer.port, peer.address);
  }

  next(timeoutMs?: number): Promise<Received> {
    return this.queue.next(timeoutMs);
  }

  /** Waits `ms` and returns everything that arrived meanwhile (and was not taken). */
  async drain(ms: number): Promise<Received[]> {
    await Bun.sleep(ms);
    const out: Received[] = [];
    while (this.queue.pending() > 0) out.push(await this.queue.next());
    return out;
  }

  close(): void {
    this.sock.close();
  }
}

export interface ServeReadOptions {
  /** Answer these options (in the client's order) with an OACK; default: everything asked. */
  oack?: (request: RequestPacket) => [string, string][] | null;
  /** Lose DATA `block` (absolute) on its `attempt`-th send (1 = first). */
  dropData?: (block: number, attempt: number) => boolean;
  /** Retransmit timeout of the fake server, ms. */
  timeoutMs?: number;
}

/** Statistics of an automatic transfer, for assertions. */
export interface ServeStats {
  acks: number[];
  dataSends: number;
  done: boolean;
  received: Uint8Array;
}

function defaultOack(request: RequestPacket, size: number): [string, string][] | null {
  const out: [string, string][] = [];
  for (const [name, value] of request.options) {
    if (name === "tsize") out.push([name, request.op === Opcode.RRQ ? String(size) : value]);
    else if (name === "blksize" || name === "windowsize" || name === "timeout") out.push([name, value]);
  }
  return out.length > 0 ? out : null;
}

export class Responder {
  private constructor(readonly listener: Endpoint, readonly host: string) {}
  private readonly endpoints: Endpoint[] = [];

  static async start(host = "127.0.0.1"): Promise<Responder> {
    return new Responder(await Endpoint.open(host), host);
  }

  get port(): number {
    return this.listener.port;
  }

  async nextRequest(timeoutMs?: number): Promise<{ request: RequestPacket; peer: Peer }> {
    for (;;) {
      const r = await this.listener.next(timeoutMs);
      const p = r.packet;
      if (p && (p.op === Opcode.RRQ || p.op === Opcode.WRQ)) return { request: p, peer: r.peer };
    }
  }

  /** A fresh transfer socket (the server's TID). */
  async open(): Promise<Endpoint> {
    const ep = await Endpoint.open(this.host);
    this.endpoints.push(ep);
    return ep;
  }

  /** Serves one RRQ with `data`, windowed per the negotiated options. */
  async serveRead(data: Uint8Array, o: ServeReadOptions = {}): Promise<ServeStats> {
    const { request, peer } = await this.nextRequest();
    const ep = await this.open();
    const oack = o.oack ? o.oack(request) : defaultOack(request, data.length);
    const opt = new Map(oack ?? []);
    const blksize = Number(opt.get("blksize") ?? 512);
    const windowsize = Number(opt.get("windowsize") ?? 1);
    const total = Math.floor(data.length / blksize) + 1;
    const stats: ServeStats = { acks: [], dataSends: 0, done: false, received: new Uint8Array(0) };
    const attempts = new Map<number, number>();
    let acked = 0;
    let timer: ReturnType<typeof setTimeout> | null = null;
    let finish!: () => void;
    const finished = new Promise<void>((r) => (finish = r));

    const sendWindow = (): void => {
      const to = Math.min(acked + windowsize, total);
      for (let b = acked + 1; b <= to; b++) {
        const attempt = (attempts.get(b) ?? 0) + 1;
        attempts.set(b, attempt);
        stats.dataSends++;
        if (o.dropData?.(b, attempt)) continue;
        const off = (b - 1) * blksize;
        ep.send(encodeData(b, data.subarray(off, Math.min(off + blksize, data.length))), peer);
      }
      if (timer) clearTimeout(timer);
      timer = setTimeout(sendWindow, o.timeoutMs ?? 200);
    };

    ep.onPacket((r) => {
      const p = r.packet;
      if (!p || p.op !== Opcode.ACK) {
        if (p?.op === Opcode.ERROR) {
          if (timer) clearTimeout(timer);
          finish();
        }
        return;
      }
      stats.acks.push(p.block);
      const delta = (p.block - acked) & 0xffff;
      if (delta > total - acked) return; // old
      acked += delta;
      if (acked >= total) {
        stats.done = true;
        if (timer) clearTimeout(timer);
        finish();
        return;
      }
      sendWindow();
    });

    if (oack) {
      ep.send(encodeOack(oack), peer);
      timer = setTimeout(() => ep.send(encodeOack(oack), peer), o.timeoutMs ?? 200);
    } else {
      sendWindow();
    }
    await finished;
    ep.close();
    return stats;
  }

  /** Serves one WRQ, collecting the bytes; ACKs each window (or each gap once). */
  async serveWrite(o: { oack?: (r: RequestPacket) => [string, string][] | null } = {}): Promise<ServeStats> {
    const { request, peer } = await this.nextRequest();
    const ep = await this.open();
    const oack = o.oack ? o.oack(request) : defaultOack(request, 0);
    const opt = new Map(oack ?? []);
    const blksize = Number(opt.get("blksize") ?? 512);
    const windowsize = Number(opt.get("windowsize") ?? 1);
    const stats: ServeStats = { acks: [], dataSends: 0, done: false, received: new Uint8Array(0) };
    const chunks: Uint8Array[] = [];
    let last = 0;
    let inWindow = 0;
    let finish!: () => void;
    const finished = new Promise<void>((r) => (finish = r));
    const ack = (b: number): void => {
      stats.acks.push(b & 0xffff);
      inWindow = 0;
      ep.send(encodeAck(b), peer);
    };
    ep.onPacket((r) => {
      const p = r.packet;
      if (!p || p.op !== Opcode.DATA) {
        if (p?.op === Opcode.ERROR) finish();
        return;
      }
      stats.dataSends++;
      if (p.block !== ((last + 1) & 0xffff)) return;
      last++;
      chunks.push(new Uint8Array(p.data));
      if (p.data.length < blksize) {
        ack(last);
        stats.done = true;
        finish();
        return;
      }
      if (++inWindow >= windowsize) ack(last);
    });
    ep.send(oack ? encodeOack(oack) : encodeAck(0), peer);
    await finished;
    ep.close();
    stats.received = Buffer.concat(chunks);
    return stats;
  }

  close(): void {
    this.listener.close();
    for (const ep of this.endpoints) {
      try {
        ep.close();
      } catch {
        // closed already
      }
    }
  }
}

/** Deterministic bytes for payloads. */
export function pattern(size: number, seed = 1): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/**
 * A TFTP read client that can be held mid-file: it downloads like a real client (options in
 * the request, ACK 0 after an OACK, one ACK per window as RFC 7440 asks, its ACK sent again
 * when the server goes quiet, as tftp-hpa does), but once `pauseAt` bytes are in it stops
 * acknowledging until `resume()` — so a test can change the file on disk while the transfer
 * stands at a chosen offset, then let it finish.
 *
 * The bytes are handed to `onData` as they arrive (in order, each chunk valid only during the
 * call), so a 256 MiB download costs no memory here. The outcome is what a client knows: it
 * finished (a short block ended it) or it got an ERROR (the server's, or its own timeout).
 */
import type { udp } from "bun";
import { decodePacket, encodeAck, encodeError, encodeRequest, peekOpcode } from "../../src/protocol/codec.ts";
import { DEFAULT_BLKSIZE, ErrorCode, Opcode, type OptionMap } from "../../src/protocol/packet.ts";
import { setBufferSizes } from "../../src/net/sockopt.ts";

export interface PausingDownloadOptions {
  /** the server's listen address (a literal IP) and port */
  host: string;
  port: number;
  file: string;
  /** asked in the request; not sent when undefined */
  blksize?: number;
  windowsize?: number;
  /** ask tsize 0 (default true): the OACK then also proves the server has opened the file */
  tsize?: boolean;
  /** stop acknowledging at the first block that brings the bytes received to this many */
  pauseAt?: number;
  /** local address to send from (default 127.0.0.1): each client its own, as PXE clients are */
  bind?: string;
  /** silence before our last packet is sent again (default 500 ms, no backoff, as tftp-hpa) */
  retransmitMs?: number;
  /** sends of one packet after the first before giving up (default 5) */
  retries?: number;
  /** the downloaded bytes in order; `chunk` is valid only during the call */
  onData?: (chunk: Uint8Array, offset: number) => void;
}

export type EndedBy =
  /** a short block ended the transfer */
  | { kind: "complete" }
  /** an ERROR packet from the server */
  | { kind: "error"; code: number; message: string; from: "server" }
  /** we gave up (silence) or refused what the server sent */
  | { kind: "error"; code: number; message: string; from: "timeout" | "local" };

export interface DownloadEnd {
  ended: EndedBy;
  /** payload bytes received in order */
  bytes: number;
  blocks: number;
  /** the OACK's options (null: the server answered DATA 1 straight away) */
  oack: OptionMap | null;
  /** our port, as the server's transfer record names us */
  localPort: number;
  /** whether the transfer was held at `pauseAt` (false: it ended or was resumed before) */
  wasPaused: boolean;
}

type Phase = "request" | "transfer" | "paused" | "done";

export class PausingDownload {
  /** resolves once the transfer is held at `pauseAt`, or has ended without reaching it */
  readonly paused: Promise<void>;
  /** resolves (never rejects) with how the transfer ended */
  readonly done: Promise<DownloadEnd>;
  /** resolves once the server answered the request (OACK, first DATA or ERROR) */
  readonly answered: Promise<void>;

  private sock: udp.Socket<"uint8array"> | null = null;
  private phase: Phase = "request";
  private peer: { port: number; address: string } | null = null;
  private blksize = DEFAULT_BLKSIZE;
  private windowsize = 1;
  private oack: OptionMap | null = null;
  /** absolute number of the last block received in order */
  private lastInOrder = 0;
  private lastAcked = 0;
  private sinceAck = 0;
  private gapAcked = false;
  private bytes = 0;
  private pauseAt: number;
  private wasPaused = false;
  private lastSent: Uint8Array;
  private tries = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private readonly retransmitMs: number;
  private readonly retries: number;
  private readonly requested = new Map<string, string>();
  private markPaused!: () => void;
  private markAnswered!: () => void;
  private finish!: (end: DownloadEnd) => void;

  private constructor(private readonly o: PausingDownloadOptions) {
    this.pauseAt = o.pauseAt ?? Number.POSITIVE_INFINITY;
    this.retransmitMs = o.retransmitMs ?? 500;
    this.retries = o.retries ?? 5;
    if (o.blksize !== undefined) this.requested.set("blksize", String(o.blksize));
    if (o.windowsize !== undefined) this.requested.set("windowsize", String(o.windowsize));
    if (o.tsize !== false) this.requested.set("tsize", "0");
    this.lastSent = encodeRequest(Opcode.RRQ, o.file, "octet", this.requested);
    this.paused = new Promise((resolve) => (this.markPaused = resolve));
    this.answered = new Promise((resolve) => (this.markAnswered = resolve));
    this.done = new Promise((resolve) => (this.finish = resolve));
  }

  /** Sends the request and returns the running download. */
  static async start(o: PausingDownloadOptions): Promise<PausingDownload> {
    const d = new PausingDownload(o);
    d.sock = await Bun.udpSocket({
      hostname: o.bind ?? "127.0.0.1",
      port: 0,
      binaryType: "uint8array",
      socket: {
        data: (_s, data, port, address) => d.onDatagram(data, port, address),
        // ICMP reports about earlier sends: the timer decides what they mean
        error: () => {},
      },
    });
    // A window leaves the server in one burst; the default receive buffer would drop its tail.
    const window = (o.windowsize ?? 1) * ((o.blksize ?? DEFAULT_BLKSIZE) + 4);
    if (window > 128 * 1024) setBufferSizes(d.sock, Math.min(window * 2, 16 << 20), 0);
    d.sock.send(d.lastSent, o.port, o.host);
    d.arm();
    return d;
  }

  /** Lets a held transfer go on (or cancels a pause not reached yet). */
  resume(): void {
    this.pauseAt = Number.POSITIVE_INFINITY;
    if (this.phase !== "paused") return;
    this.phase = "transfer";
    this.sendAck(this.lastInOrder);
    this.arm();
  }

  /** Ends the transfer from our side (an ERROR to the server), e.g. when a test gives up. */
  abort(message = "aborted"): void {
    this.fail(ErrorCode.NOT_DEFINED, message, "local", true);
  }

  private onDatagram(data: Uint8Array, port: number, address: string): void {
    if (this.phase === "done") return;
    if (this.peer !== null && (port !== this.peer.port || address !== this.peer.address)) {
      // RFC 1350 §4: another TID gets ERROR 5 and our transfer goes on; never answer an ERROR.
      if (peekOpcode(data) !== Opcode.ERROR) this.sock?.send(encodeError(ErrorCode.UNKNOWN_TID, "Unknown transfer ID"), port, address);
      return;
    }
    if (this.phase !== "request" && data.length >= 4 && data[0] === 0 && data[1] === Opcode.DATA) {
      // the common case, without building a packet object per block
      if (this.phase === "paused") return; // held: what the server resends waits for resume()
      return this.onData((data[2]! << 8) | data[3]!, data.subarray(4));
    }
    const decoded = decodePacket(data);
    if (!decoded.ok) return;
    const packet = decoded.packet;
    if (this.phase === "request") {
      if (packet.op !== Opcode.OACK && packet.op !== Opcode.DATA && packet.op !== Opcode.ERROR) return;
      this.peer = { port, address };
      this.phase = "transfer";
      this.markAnswered();
      if (packet.op === Opcode.OACK) {
        const refused = this.applyOack(packet.options);
        if (refused !== null) return this.fail(ErrorCode.OPTION_REFUSED, refused, "local", true);
        this.sendAck(0);
        this.arm();
        return;
      }
    }
    switch (packet.op) {
      case Opcode.ERROR:
        return this.fail(packet.code, packet.message, "server", false);
      case Opcode.DATA:
        if (this.phase === "paused") return; // held: what the server resends waits for resume()
        return this.onData(packet.block, packet.data);
      case Opcode.OACK:
        // our ACK 0 was lost: the server repeats its OACK
        if (this.lastInOrder === 0 && this.phase === "transfer") this.sendAck(0);
        return;
      default:
        return this.fail(ErrorCode.ILLEGAL_OPERATION, `unexpected opcode ${packet.op} during a download`, "local", true);
    }
  }

  /** RFC 2347: only options we asked for, and blksize / windowsize no larger than asked. */
  private applyOack(options: OptionMap): string | null {
    for (const [name, value] of options) {
      const asked = this.requested.get(name);
      const n = /^[0-9]{1,12}$/.test(value) ? Number(value) : NaN;
      if (asked === undefined) return `server acknowledged option "${name}" that was not requested`;
      if (Number.isNaN(n)) return `bad ${name} "${value}" in OACK`;
      if (name === "blksize") {
        if (n < 8 || n > Number(asked)) return `bad blksize "${value}" in OACK`;
        this.blksize = n;
      } else if (name === "windowsize") {
        if (n < 1 || n > Number(asked)) return `bad windowsize "${value}" in OACK`;
        this.windowsize = n;
      }
    }
    this.oack = options;
    return null;
  }

  private onData(wire: number, payload: Uint8Array): void {
    const expected = this.lastInOrder + 1;
    let delta = (wire - expected) & 0xffff; // block numbers roll over at 65535
    if (delta >= 0x8000) delta -= 0x10000;
    if (delta === 0) {
      if (payload.length > this.blksize) {
        return this.fail(ErrorCode.ILLEGAL_OPERATION, `block ${wire} larger than blksize ${this.blksize}`, "local", true);
      }
      this.o.onData?.(payload, this.bytes);
      this.lastInOrder = expected;
      this.bytes += payload.length;
      this.gapAcked = false;
      this.tries = 0;
      if (payload.length < this.blksize) {
        this.sendAck(expected);
        return this.end({ kind: "complete" });
      }
      if (this.bytes >= this.pauseAt) {
        // Held: no ACK until resume(), and our own timer stops; the server resends meanwhile.
        this.phase = "paused";
        this.wasPaused = true;
        this.clearTimer();
        this.markPaused();
        return;
      }
      if (++this.sinceAck >= this.windowsize) this.sendAck(expected);
      this.arm();
    } else if (delta > 0) {
      // a gap: acknowledge what we hold, once per gap; the server goes on after it (RFC 7440 §4)
      if (!this.gapAcked) {
        this.gapAcked = true;
        this.sendAck(this.lastInOrder);
      }
    } else if (expected + delta === this.lastAcked && this.lastInOrder === this.lastAcked) {
      this.sendAck(this.lastAcked); // the server resends the block we acknowledged: our ACK was lost
    }
  }

  private sendAck(block: number): void {
    this.lastAcked = block;
    this.sinceAck = 0;
    this.lastSent = encodeAck(block);
    if (this.peer) this.sock?.send(this.lastSent, this.peer.port, this.peer.address);
  }

  private arm(): void {
    this.clearTimer();
    this.timer = setTimeout(this.onTimer, this.retransmitMs);
  }

  private clearTimer(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  private readonly onTimer = (): void => {
    this.timer = null;
    if (this.phase !== "request" && this.phase !== "transfer") return;
    if (this.tries >= this.retries) {
      return this.fail(ErrorCode.NOT_DEFINED, `no answer after ${this.tries + 1} sends`, "timeout", true);
    }
    this.tries++;
    const to = this.peer ?? { port: this.o.port, address: this.o.host };
    this.sock?.send(this.lastSent, to.port, to.address);
    this.arm();
  };

  private fail(code: number, message: string, from: "server" | "timeout" | "local", notify: boolean): void {
    if (this.phase === "done") return;
    if (notify && this.peer) this.sock?.send(encodeError(code, message), this.peer.port, this.peer.address);
    this.end({ kind: "error", code, message, from } as EndedBy);
  }

  private end(ended: EndedBy): void {
    if (this.phase === "done") return;
    this.phase = "done";
    this.clearTimer();
    const localPort = this.sock?.port ?? 0;
    this.sock?.close();
    this.markAnswered();
    this.markPaused();
    this.finish({ ended, bytes: this.bytes, blocks: this.lastInOrder, oack: this.oack, localPort, wasPaused: this.wasPaused });
  }
}

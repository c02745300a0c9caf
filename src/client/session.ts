/**
 * What a download and an upload share: one unconnected UDP socket per transfer, locking onto
 * the server's transfer ID, the retransmit timer with backoff, option checks, and one exit
 * path (`finish`) that closes everything.
 *
 * Cheap per session: one socket, one lazily re-armed setTimeout (progress only moves a
 * deadline; the timer is replaced only when it would fire too late), no intervals.
 */
import { isIP } from "node:net";
import type { udp } from "bun";
import { decodePacket, encodeError, encodeRequest, peekOpcode } from "../protocol/codec.ts";
import {
  BLKSIZE_MAX,
  BLKSIZE_MIN,
  TIMEOUT_MAX,
  TIMEOUT_MIN,
  WINDOWSIZE_MAX,
  WINDOWSIZE_MIN,
} from "../protocol/options.ts";
import { DEFAULT_BLKSIZE, ErrorCode, Opcode, type OptionMap, type Packet } from "../protocol/packet.ts";
import { formatHostPort } from "../net/address.ts";
import { setBufferSizes } from "../net/sockopt.ts";
import type { ErrorSource, TransferError, TransferOptions, TransferReport } from "./types.ts";

/** Windows bigger than this get a receive buffer sized for them. */
const WINDOW_BUFFER_THRESHOLD = 128 * 1024;

export const DEFAULT_RETRIES = 5;
export const DEFAULT_RETRANSMIT_MS = 1000;
/** Backoff doubles the retransmit timeout up to this multiple of the base. */
const BACKOFF_CAP = 8;

const UNKNOWN_TID = encodeError(ErrorCode.UNKNOWN_TID, "Unknown transfer ID");

type Phase = "init" | "request" | "transfer" | "dally" | "done";

/** Throws a message naming the bad option; used by the engine and the CLI alike. */
export function checkTransferOptions(o: TransferOptions): void {
  const int = (v: number | undefined, min: number, max: number, name: string): void => {
    if (v === undefined) return;
    if (!Number.isInteger(v) || v < min || v > max) {
      throw new Error(`${name} must be an integer from ${min} to ${max}, got ${v}`);
    }
  };
  int(o.port, 1, 65535, "port");
  int(o.blksize, BLKSIZE_MIN, BLKSIZE_MAX, "blksize");
  int(o.windowsize, WINDOWSIZE_MIN, WINDOWSIZE_MAX, "windowsize");
  int(o.timeoutSeconds, TIMEOUT_MIN, TIMEOUT_MAX, "timeout");
  int(o.retries, 0, 1000, "retries");
  int(o.retransmitMs, 1, 3_600_000, "retransmit timeout");
  int(o.dallyMs, 0, 3_600_000, "dally");
  if (o.remote === "" || o.remote.includes("\0")) throw new Error("remote file name is empty or has a NUL");
  if (o.mode !== undefined && o.mode !== "octet" && o.mode !== "netascii") {
    throw new Error(`mode must be octet or netascii, got ${String(o.mode)}`);
  }
}

function stripBrackets(host: string): string {
  return host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
}

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function strictInt(value: string): number | null {
  return /^[0-9]{1,12}$/.test(value) ? Number(value) : null;
}

export abstract class ClientSession<R extends TransferReport> {
  protected readonly host: string;
  protected readonly port: number;
  protected readonly retries: number;
  protected readonly drop: TransferOptions["drop"];
  /** Options put in the request, by lower-case name. */
  protected readonly requested = new Map<string, string>();

  protected sock: udp.Socket<"uint8array"> | null = null;
  protected peerAddr: string | null = null;
  protected peerPort = 0;
  protected phase: Phase = "init";

  protected blksize = DEFAULT_BLKSIZE;
  protected windowsize = 1;
  protected tsize: number | null = null;
  protected oack: Record<string, string> | null = null;
  protected bytes = 0;
  protected blocks = 0;
  protected retransmits = 0;

  private startedAt = performance.now();
  private requestSentAt = 0;
  private firstResponseMs: number | null = null;
  private request: Uint8Array | null = null;

  /** Base retransmit timeout, current (backed-off) timeout, and retransmissions since progress. */
  protected baseRto: number;
  private rto: number;
  private tries = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private timerAt = 0;
  private deadline = 0;

  private resolveFn: ((report: R) => void) | null = null;
  private readonly abortListener = (): void => this.fail(ErrorCode.NOT_DEFINED, "aborted", "local", true);

  constructor(
    protected readonly opts: TransferOptions,
    private readonly op: typeof Opcode.RRQ | typeof Opcode.WRQ,
  ) {
    this.host = stripBrackets(opts.host);
    this.port = opts.port;
    this.retries = opts.retries ?? DEFAULT_RETRIES;
    this.drop = opts.drop;
    const sentTimeout = opts.timeoutSeconds !== undefined && opts.sendTimeoutOption !== false;
    this.baseRto =
      opts.retransmitMs ??
      (opts.timeoutSeconds !== undefined ? opts.timeoutSeconds * 1000 : DEFAULT_RETRANSMIT_MS);
    this.rto = this.baseRto;
    if (opts.blksize !== undefined) this.requested.set("blksize", String(opts.blksize));
    if (sentTimeout) this.requested.set("timeout", String(opts.timeoutSeconds));
    if (opts.tsize) this.requested.set("tsize", "0"); // the upload fills in its size in prepare()
    if (opts.windowsize !== undefined) this.requested.set("windowsize", String(opts.windowsize));
  }

  // ---- subclass hooks -------------------------------------------------------------------

  /** Opens sinks/sources; may throw (→ local failure before anything is sent). */
  protected abstract prepare(): void;
  /** Whether a packet may be the server's first reply (and lock its transfer ID). */
  protected abstract acceptsFirst(packet: Packet): boolean;
  /** A non-ERROR packet from the locked peer while transferring. */
  protected abstract onPacket(packet: Packet): void;
  /** A packet from the peer after the transfer completed (download dally). */
  protected onDallyPacket(_packet: Packet): void {}
  /** Resend whatever the peer has not acknowledged (after the request phase). */
  protected abstract retransmit(): void;
  /** Drain after a short send. */
  protected onDrain(): void {}
  /** Releases sinks/sources; `ok` says whether to commit. May throw when committing. */
  protected abstract release(ok: boolean): void;
  /** Extra report fields. */
  protected abstract extra(): Omit<R, keyof TransferReport>;

  // ---- lifecycle --------------------------------------------------------------------------

  run(): Promise<R> {
    return new Promise<R>((resolve) => {
      this.resolveFn = resolve;
      void this.open();
    });
  }

  private async open(): Promise<void> {
    try {
      checkTransferOptions(this.opts);
      if (isIP(this.host) === 0) throw new Error(`host must be an IP address, got "${this.opts.host}"`);
      if (this.opts.signal?.aborted) throw new Error("aborted");
      this.prepare();
      this.request = encodeRequest(this.op, this.opts.remote, this.opts.mode ?? "octet", this.requested);
      this.opts.signal?.addEventListener("abort", this.abortListener, { once: true });
      const sock = await Bun.udpSocket({
        hostname: isIP(this.host) === 6 ? "::" : "0.0.0.0",
        port: 0,
        binaryType: "uint8array",
        socket: {
          data: (_s, data, port, address) => this.onDatagram(data, port, address),
          drain: () => {
            if (this.phase !== "transfer") return;
            try {
              this.onDrain();
            } catch (e) {
              this.fail(ErrorCode.NOT_DEFINED, errorMessage(e), "local", true);
            }
          },
          // Bun calls error(err) with this = socket, although the types say (socket, err).
          error: (a: unknown, b?: unknown) => this.onSocketError(a instanceof Error ? a : b),
        },
      });
      // A window leaves the server in one burst: the default receive buffer (~208 KiB) would
      // drop the tail of a big one (64 × 8 KiB), and every window would have to be rewound.
      const windowBytes = (this.opts.windowsize ?? 1) * ((this.opts.blksize ?? DEFAULT_BLKSIZE) + 4);
      if (windowBytes > WINDOW_BUFFER_THRESHOLD) setBufferSizes(sock, Math.min(windowBytes * 2, 64 << 20), 0);
      if (this.opts.beforeRequest !== undefined && this.phase === "init") {
        try {
          await this.opts.beforeRequest();
        } catch (e) {
          sock.close();
          throw e;
        }
        this.startedAt = performance.now();
      }
      if (this.phase !== "init") {
        sock.close(); // aborted while the socket was being created (or while waiting)
        return;
      }
      this.sock = sock;
      this.phase = "request";
      this.requestSentAt = performance.now();
      this.send(this.request, this.port, this.host);
      this.arm(this.rto);
    } catch (e) {
      this.fail(ErrorCode.NOT_DEFINED, errorMessage(e), "local", false);
    }
  }

  private onSocketError(err: unknown): void {
    // Before the server answered, ICMP port unreachable means nobody listens there. After it,
    // it is more likely our ERROR 5 to a stray sender: the timer decides.
    if (this.phase === "request" && (err as { code?: string } | undefined)?.code === "ECONNREFUSED") {
      this.fail(
        ErrorCode.NOT_DEFINED,
        `connection refused by ${formatHostPort(this.host, this.port)}`,
        "local",
        false,
      );
    }
  }

  private onDatagram(data: Uint8Array, port: number, address: string): void {
    const phase = this.phase;
    if (phase === "done" || phase === "init") return;
    if (this.drop?.("in", data)) return;
    if (this.peerAddr !== null && (port !== this.peerPort || address !== this.peerAddr)) {
      // RFC 1350 §4: a packet from another TID gets ERROR 5 and the transfer goes on.
      // Never answer an ERROR (RFC 1350 §7).
      if (peekOpcode(data) !== Opcode.ERROR) this.send(UNKNOWN_TID, port, address);
      return;
    }
    const decoded = decodePacket(data);
    if (!decoded.ok) {
      if (this.peerAddr === null || phase === "dally" || decoded.reply === null) return;
      this.fail(decoded.reply, `bad packet from server: ${decoded.message}`, "local", true);
      return;
    }
    const packet = decoded.packet;
    if (phase === "dally") {
      this.onDallyPacket(packet);
      return;
    }
    if (phase === "request") {
      if (!this.acceptsFirst(packet)) return;
      this.peerAddr = address;
      this.peerPort = port;
      this.firstResponseMs = performance.now() - this.requestSentAt;
      this.phase = "transfer";
    }
    if (packet.op === Opcode.ERROR) {
      const message = packet.message !== "" ? packet.message : `error ${packet.code}`;
      this.fail(packet.code, message, "server", false);
      return;
    }
    try {
      this.onPacket(packet);
    } catch (e) {
      const code = (e as { code?: string }).code === "ENOSPC" ? ErrorCode.DISK_FULL : ErrorCode.NOT_DEFINED;
      this.fail(code, errorMessage(e), "local", true);
    }
  }

  // ---- sending ----------------------------------------------------------------------------

  /** Sends one datagram unless the drop hook eats it. A failed send counts as a loss. */
  protected send(packet: Uint8Array, port: number, address: string): void {
    if (this.drop?.("out", packet)) return;
    try {
      this.sock?.send(packet, port, address);
    } catch {
      // e.g. EHOSTUNREACH: treat as a lost datagram; the timer retries.
    }
  }

  protected sendToPeer(packet: Uint8Array): void {
    if (this.peerAddr !== null) this.send(packet, this.peerPort, this.peerAddr);
  }

  // ---- timer ------------------------------------------------------------------------------

  /** Progress: reset the backoff and the retry count, and push the deadline out. */
  protected progress(): void {
    this.tries = 0;
    this.rto = this.baseRto;
    this.arm(this.rto);
  }

  private arm(ms: number): void {
    const now = performance.now();
    this.deadline = now + ms;
    if (this.timer !== null) {
      if (this.timerAt <= this.deadline + 1) return; // fires first, then re-arms for the rest
      clearTimeout(this.timer);
    }
    this.timerAt = this.deadline;
    this.timer = setTimeout(this.onTimer, ms);
  }

  private readonly onTimer = (): void => {
    this.timer = null;
    if (this.phase !== "request" && this.phase !== "transfer") return;
    const left = this.deadline - performance.now();
    if (left > 1) {
      this.timerAt = this.deadline;
      this.timer = setTimeout(this.onTimer, left);
      return;
    }
    if (this.tries >= this.retries) {
      const where = formatHostPort(this.host, this.port);
      this.fail(ErrorCode.NOT_DEFINED, `no response from ${where} after ${this.tries + 1} tries`, "timeout", true);
      return;
    }
    this.tries++;
    if (this.opts.backoff !== false) this.rto = Math.min(this.rto * 2, this.baseRto * BACKOFF_CAP);
    if (this.phase === "request") {
      this.retransmits++;
      if (this.request) this.send(this.request, this.port, this.host);
    } else {
      try {
        this.retransmit();
      } catch (e) {
        this.fail(ErrorCode.NOT_DEFINED, errorMessage(e), "local", true);
        return;
      }
    }
    this.arm(this.rto);
  };

  private clearTimer(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  // ---- options ----------------------------------------------------------------------------

  /**
   * Applies an OACK (RFC 2347): acked options are used, the others fall back to their
   * defaults. Returns an error message when the server acked something we did not ask for
   * or answered a value it may not (then the caller sends ERROR 8).
   */
  protected applyOack(options: OptionMap): string | null {
    const acked: Record<string, string> = {};
    for (const [name, value] of options) {
      const asked = this.requested.get(name);
      if (asked === undefined) return `server acknowledged option "${name}" that was not requested`;
      const v = strictInt(value);
      switch (name) {
        case "blksize": // RFC 2348: the server may answer smaller, never larger
          if (v === null || v < BLKSIZE_MIN || v > Number(asked)) return `bad blksize "${value}" in OACK`;
          this.blksize = v;
          break;
        case "windowsize": // RFC 7440: smaller or equal
          if (v === null || v < WINDOWSIZE_MIN || v > Number(asked)) return `bad windowsize "${value}" in OACK`;
          this.windowsize = v;
          break;
        case "timeout":
          if (v === null || v < TIMEOUT_MIN || v > TIMEOUT_MAX) return `bad timeout "${value}" in OACK`;
          if (this.opts.retransmitMs === undefined) this.baseRto = v * 1000;
          break;
        case "tsize":
          if (v === null) return `bad tsize "${value}" in OACK`;
          this.tsize = v;
          break;
        default:
          return `server acknowledged unknown option "${name}"`;
      }
      acked[name] = value;
    }
    // A timeout we sent but the server did not ack falls back to the default.
    if (!options.has("timeout") && this.requested.has("timeout") && this.opts.retransmitMs === undefined) {
      this.baseRto = DEFAULT_RETRANSMIT_MS;
    }
    this.oack = acked;
    return null;
  }

  /** The server ignored our options (answered DATA / ACK 0 directly): all defaults. */
  protected noOack(): void {
    if (this.requested.has("timeout") && this.opts.retransmitMs === undefined) {
      this.baseRto = DEFAULT_RETRANSMIT_MS;
    }
  }

  // ---- endings ----------------------------------------------------------------------------

  /** Fails the transfer; with `notify`, tells the locked peer with an ERROR packet. */
  protected fail(code: number, message: string, source: ErrorSource, notify: boolean): void {
    if (this.phase === "done" || this.phase === "dally") return;
    if (notify && this.peerAddr !== null) this.sendToPeer(encodeError(code, message));
    this.finish(false, { code, message, source });
  }

  /**
   * Success. With `dallyMs` > 0 the socket stays open (unref'd) that long for
   * `onDallyPacket`, but the promise resolves now.
   */
  protected succeed(dallyMs: number): void {
    if (this.phase === "done" || this.phase === "dally") return;
    let committed = true;
    try {
      this.release(true);
    } catch (e) {
      committed = false;
      this.finish(false, { code: ErrorCode.NOT_DEFINED, message: errorMessage(e), source: "local" });
    }
    if (!committed) return;
    if (dallyMs > 0 && this.sock !== null) {
      this.phase = "dally";
      this.clearTimer();
      this.opts.signal?.removeEventListener("abort", this.abortListener);
      this.sock.unref();
      const t = setTimeout(() => this.close(), dallyMs);
      t.unref();
      this.resolve(true, undefined);
      return;
    }
    this.finish(true, undefined, true);
  }

  private finish(ok: boolean, error: TransferError | undefined, released = false): void {
    this.phase = "done";
    this.clearTimer();
    this.opts.signal?.removeEventListener("abort", this.abortListener);
    if (!released) {
      try {
        this.release(false);
      } catch {
        // best effort: the transfer already failed
      }
    }
    this.close();
    this.resolve(ok, error);
  }

  private close(): void {
    this.phase = "done";
    const sock = this.sock;
    this.sock = null;
    sock?.close();
  }

  private resolve(ok: boolean, error: TransferError | undefined): void {
    const resolve = this.resolveFn;
    if (resolve === null) return;
    this.resolveFn = null;
    const report = {
      ok,
      bytes: this.bytes,
      blocks: this.blocks,
      blksize: this.blksize,
      windowsize: this.windowsize,
      tsize: this.tsize,
      oack: this.oack,
      firstResponseMs: this.firstResponseMs,
      durationMs: performance.now() - this.startedAt,
      retransmits: this.retransmits,
      ...(error ? { error } : {}),
      ...this.extra(),
    } as R;
    resolve(report);
  }
}

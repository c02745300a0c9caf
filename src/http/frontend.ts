/**
 * The root served over HTTP: `GET` and `HEAD /<name>` answer what a TFTP read of `<name>` from
 * that client would get, down the same request pipeline (request rate, per-network rules,
 * remap, per-client roots, allow/deny, limits, the lookup chain through the file cache and the
 * fleet). Firmware's field lessons decide the rest: never a redirect, always Content-Length,
 * no directory listings, 503 with Retry-After over a limit (iPXE honours it), single ranges
 * with If-Range on a strong ETag of the file's version. A download keeps the version it began
 * with: its source stays open (a cached copy cannot be dropped under it) until the last byte,
 * and a file rewritten under a disk read ends the download short instead of mixing versions.
 *
 * On node:http (Bun's own): Bun.serve drops a Content-Length set for a streamed body and sends
 * it chunked, and says nothing when a streamed response is done; node:http keeps the header
 * and tells (`finish`, `close`), so a download holds its admission until its last byte.
 */
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import { TLSSocket } from "node:tls";
import { formatHostPort, parseListenAddress, unmappedAddress, type HostPort } from "../net/address.ts";
import type { ReadAccepted, RefusedRequest, RequestContext } from "../server/pipeline/pipeline.ts";
import { FILE_CHANGED, type FileSource } from "../storage/source.ts";
import { rangeFor } from "./range.ts";
import { contentTypeOf, etagOf, lastModifiedOf } from "./validators.ts";

/** What the front end asks of the TFTP server: the pipeline's answer for a read. */
export interface FileOpener {
  openForHttp(name: string, client: HostPort, statusOf: (refusal: RefusedRequest) => number, context: RequestContext): Promise<ReadAccepted | RefusedRequest>;
}

/** One record per HTTP request that reached a file (or was refused on the way), for the log and metrics. */
export interface HttpRecord {
  client: string;
  method: "GET" | "HEAD";
  file: string;
  status: number;
  /** body bytes sent */
  bytes: number;
  /** the file's size (null when no file was opened) */
  size: number | null;
  /** "START-END" of a 206, else null */
  range: string | null;
  userAgent: string | null;
  /** request in to headers out */
  firstByteMs: number;
  durationMs: number;
  /** ok; aborted (the client went away); failed (the file changed or could not be read mid-body) */
  result: "ok" | "aborted" | "failed";
  error?: string;
}

export interface HttpEvents {
  listening?(address: HostPort, tls: boolean): void;
  served?(record: HttpRecord): void;
}

export interface HttpOptions {
  listen: readonly string[];
  tls: { listen: readonly string[]; cert: string | null; key: string | null };
  retryAfterSeconds: number;
  /** content types by extension (lower case, with the dot) */
  mime: Readonly<Record<string, string>>;
}

/** Bytes read from the source per write of a body. */
const CHUNK_BYTES = 256 * 1024;

/** The HTTP status for a refusal of the pipeline. */
function statusOfRefusal(refusal: RefusedRequest): number {
  switch (refusal.kind) {
    case "not_found":
      return 404;
    case "access":
    case "allow_deny":
      return 403;
    case "limit":
      return 503;
    default:
      return 500;
  }
}

export class HttpFrontend {
  private readonly servers: http.Server[] = [];

  private constructor(
    private readonly opener: FileOpener,
    private readonly options: HttpOptions,
    private readonly events: HttpEvents,
  ) {}

  /** Starts every listener (HTTP, then HTTPS); a listener that cannot bind stops the others and throws naming it. */
  static async start(opener: FileOpener, options: HttpOptions, events: HttpEvents = {}): Promise<HttpFrontend> {
    const front = new HttpFrontend(opener, options, events);
    const tls = options.tls.cert && options.tls.key ? { cert: readFileSync(options.tls.cert), key: readFileSync(options.tls.key) } : null;
    const all = [...options.listen.map((a) => ({ address: a, tls: null })), ...options.tls.listen.map((a) => ({ address: a, tls }))];
    try {
      for (const { address, tls: secure } of all) {
        const { host, port } = parseListenAddress(address);
        const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => void front.answer(req, res);
        const server = secure ? https.createServer(secure, handler) : http.createServer(handler);
        // a large file to a slow client takes as long as it takes
        server.requestTimeout = 0;
        try {
          await new Promise<void>((resolve, reject) => {
            server.once("error", reject);
            // "[::]:80" beside "0.0.0.0:80", as the TFTP listeners are
            server.listen({ host, port, ipv6Only: host.includes(":") }, () => {
              server.off("error", reject);
              resolve();
            });
          });
        } catch (error) {
          throw new Error(`http${secure ? ".tls" : ""}.listen ${address}: ${(error as Error).message}`);
        }
        const bound = server.address();
        front.servers.push(server);
        events.listening?.({ host, port: typeof bound === "object" && bound ? bound.port : port }, secure !== null);
      }
    } catch (error) {
      await front.stop();
      throw error;
    }
    return front;
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.servers.splice(0).map(
        (server) =>
          new Promise<void>((resolve) => {
            server.close(() => resolve());
            server.closeAllConnections();
          }),
      ),
    );
  }

  private async answer(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const started = performance.now();
    const method = req.method ?? "";
    if (method !== "GET" && method !== "HEAD") {
      plain(res, 405, "only GET and HEAD\n", { allow: "GET, HEAD" });
      return;
    }
    const client: HostPort = { host: unmappedAddress(req.socket.remoteAddress ?? "0.0.0.0"), port: req.socket.remotePort ?? 0 };
    const here = req.headers.host ?? "localhost";
    const secure = req.socket instanceof TLSSocket;
    let url: URL;
    let name: string;
    try {
      url = new URL(req.url ?? "/", `${secure ? "https" : "http"}://${here}`);
      name = decodeURIComponent(url.pathname).replace(/^\/+/, "");
    } catch {
      plain(res, 400, "the path is not valid percent-encoding\n");
      return;
    }
    // no listings: a name that ends at a directory is no file
    if (name === "" || name.endsWith("/")) {
      plain(res, 404, "no such file\n");
      return;
    }

    // the query string (iPXE's ${uuid}, ${serial}, ${buildarch}) and where the client reached us, for generated files
    const context: RequestContext = {
      params: Object.fromEntries(url.searchParams),
      server: { http_base: `${url.protocol}//${here}`, tftp_base: `tftp://${url.hostname}` },
    };
    let outcome: ReadAccepted | RefusedRequest;
    try {
      outcome = await this.opener.openForHttp(name, client, statusOfRefusal, context);
    } catch (error) {
      plain(res, 500, `server error: ${(error as Error).message}\n`);
      return;
    }
    if (!outcome.ok) {
      const status = statusOfRefusal(outcome);
      plain(res, status, `${outcome.message}\n`, status === 503 ? { "retry-after": String(this.options.retryAfterSeconds) } : {});
      return;
    }
    const accepted = outcome;
    const source = accepted.source;
    let firstByteAt = started;
    let done = false;
    const finish = (status: number, bytes: number, range: string | null, result: HttpRecord["result"], error?: string): void => {
      if (done) return;
      done = true;
      source.close();
      accepted.release();
      this.events.served?.({
        client: formatHostPort(client.host, client.port),
        method,
        file: accepted.file,
        status,
        bytes,
        size: source.size,
        range,
        userAgent: req.headers["user-agent"] ?? null,
        firstByteMs: firstByteAt - started,
        durationMs: performance.now() - started,
        result,
        ...(error ? { error } : {}),
      });
    };
    try {
      const size = source.size;
      const etag = etagOf(source.identity);
      const headers: Record<string, string> = {
        "content-type": contentTypeOf(accepted.file, this.options.mime),
        "accept-ranges": "bytes",
      };
      if (etag) headers.etag = etag;
      const modified = lastModifiedOf(source.identity);
      if (modified) headers["last-modified"] = modified;

      const range = method === "GET" ? rangeFor(header(req, "range"), header(req, "if-range"), etag, size) : { kind: "whole" as const };
      if (range.kind === "unsatisfiable") {
        firstByteAt = performance.now();
        res.writeHead(416, { ...headers, "content-range": `bytes */${size}`, "content-length": "0" }).end();
        finish(416, 0, null, "ok");
        return;
      }
      const [start, end] = range.kind === "part" ? [range.start, range.end] : [0, size - 1];
      const length = Math.max(0, end - start + 1);
      const status = range.kind === "part" ? 206 : 200;
      const span = range.kind === "part" ? `${start}-${end}` : null;
      headers["content-length"] = String(length);
      if (range.kind === "part") headers["content-range"] = `bytes ${start}-${end}/${size}`;
      res.writeHead(status, headers);
      firstByteAt = performance.now();
      if (method === "HEAD" || length === 0) {
        res.end();
        finish(status, 0, span, "ok");
        return;
      }
      await sendBody(source, start, length, res, (sent, result, error) => finish(status, sent, span, result, error));
    } catch (error) {
      if (!res.headersSent) plain(res, 500, "the file could not be read\n");
      else res.destroy();
      finish(500, 0, null, "failed", (error as Error).message);
    }
  }
}

function header(req: http.IncomingMessage, name: string): string | null {
  const v = req.headers[name];
  return typeof v === "string" ? v : null;
}

function plain(res: http.ServerResponse, status: number, text: string, headers: Record<string, string> = {}): void {
  const body = Buffer.from(text);
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8", "content-length": String(body.length), ...headers }).end(body);
}

/**
 * Writes bytes [start, start + length) of `source` to `res` a chunk at a time, as fast as the
 * client takes them (the socket's backpressure), and says once how it ended: every byte
 * handed on and the response finished, the client gone first, or a read that failed (the
 * file changed under a disk read): then the connection is cut, so the client sees fewer bytes
 * than Content-Length said, never bytes of another version.
 */
async function sendBody(source: FileSource, start: number, length: number, res: http.ServerResponse, done: (sent: number, result: HttpRecord["result"], error?: string) => void): Promise<void> {
  let sent = 0;
  let gone = false;
  res.once("close", () => {
    gone = true;
    if (!res.writableFinished) done(sent, "aborted");
  });
  res.once("finish", () => done(sent, "ok"));
  // a cached copy or a generated file: its own memory goes out, a view at a time, never copied here
  const inMemory = source.bytes;
  try {
    while (sent < length && !gone) {
      const want = Math.min(CHUNK_BYTES, length - sent);
      let chunk: Uint8Array;
      if (inMemory) {
        chunk = inMemory.subarray(start + sent, start + sent + want);
      } else {
        // a file still arriving from the fleet: these bytes once they are in
        const pending = source.whenReadable?.(start + sent + want);
        if (pending) await pending;
        chunk = Buffer.allocUnsafe(want);
        const got = source.read(start + sent, chunk, 0, want);
        // a file that shrank under a disk read: never pad, never send less silently
        if (got < want) throw new Error(FILE_CHANGED);
      }
      sent += want;
      if (!res.write(chunk)) await new Promise<void>((resolve) => res.once("drain", resolve).once("close", resolve));
    }
    if (!gone) res.end();
  } catch (error) {
    done(sent, "failed", (error as Error).message);
    res.destroy();
  }
}

/**
 * What a serving node tells its operators: the server's events as log lines and metrics (one
 * record per transfer and per refused request feeds both), the clean-up of interrupted uploads
 * at start, and the line saying it is ready.
 */
import { readdirSync } from "node:fs";
import type { Logger } from "../log.ts";
import { formatHostPort, type HostPort } from "../net/address.ts";
import { formatCpuList } from "../net/affinity.ts";
import { isWildcard } from "../net/interfaces.ts";
import { wasCapped } from "../net/sockopt.ts";
import type { ServerEvents, TftpServer, TransferRecord } from "../server/server.ts";
import type { IoLoopKind } from "../server/worker-protocol.ts";
import type { SweepReport } from "../storage/upload-sweep.ts";
import type { HttpEvents } from "../http/frontend.ts";
import type { ServerMetrics } from "./metrics.ts";

export interface ServerLogOptions {
  log: Logger;
  /** the metrics once the endpoint runs; null before, and when metrics are off */
  metrics: () => ServerMetrics | null;
  /** also fed with every transfer's end record (the fleet heartbeat's counts) */
  tally: { count(record: TransferRecord): void };
  /** SO_RCVBUF asked for: a listener granted less is warned about */
  receiveBufferBytes: number;
}

export function serverEvents({ log, metrics, tally, receiveBufferBytes }: ServerLogOptions): ServerEvents {
  return {
    listening: ({ host, port }, buffers) => {
      const address = formatHostPort(host, port);
      log.info({ address, receive_buffer: buffers?.receive, send_buffer: buffers?.send }, "listening");
      if (buffers && wasCapped(receiveBufferBytes, buffers.receive)) {
        log.warn(
          { address, requested: receiveBufferBytes, granted: buffers.receive / 2 },
          "receive buffer capped by net.core.rmem_max: bursts of requests may be dropped (raise net.core.rmem_max)",
        );
      }
    },
    transferEnd: (r) => {
      metrics()?.transferEnded(r);
      tally.count(r);
      // a superseded transfer is no failure: its client rebooted and asked anew
      const level = r.result === "ok" || r.result === "probe" || r.result === "superseded" ? "info" : "warn";
      // a line the level drops is not built: a storm of them costs the main thread
      if (!log.isLevelEnabled(level)) return;
      log[level](
        {
          client: r.client,
          file: r.file,
          direction: r.direction,
          mode: r.mode,
          bytes: r.bytes,
          blksize: r.blksize,
          windowsize: r.windowsize,
          tsize: r.tsize,
          options: r.options,
          duration_ms: Math.round(r.durationMs * 100) / 100,
          accepted_ms: Math.round(r.acceptedMs * 1000) / 1000,
          first_response_ms: Math.round(r.firstResponseMs * 1000) / 1000,
          retransmits: r.retransmits,
          result: r.result,
          ...(r.error ? { error: r.error } : {}),
          ...(r.strays ? { strays: r.strays } : {}),
        },
        "transfer",
      );
    },
    // One line per refused request, with the name asked: a machine that fails to boot is
    // usually one missing file away, and this is where it shows.
    refused: (r) => {
      metrics()?.requestRefused(r);
      const http = r.protocol ? { protocol: r.protocol, status: r.status } : {};
      log.info({ client: r.client, op: r.op, file: r.file, remapped: r.remapped, reason: r.reason, kind: r.kind, code: r.code, ...http }, "request refused");
    },
    // (a template that failed is in the refusal's reason: one line, naming template and line)
    rendered: (template, ok) => metrics()?.rendered(template, ok),
    // no request (no file to name): counted, and logged at debug only
    garbageRefused: (peer, reason, code) => {
      metrics()?.garbageRefused(code);
      log.debug({ client: formatHostPort(peer.address, peer.port), reason, code }, "datagram refused");
    },
    // one line per source and interval, however many requests it sent over its rate
    rateLimited: ({ sources, unreported, intervalMs }) => {
      const interval_s = intervalMs / 1000;
      for (const s of sources) log.warn({ address: s.address, dropped: s.dropped, interval_s }, "requests rate-limited");
      if (unreported > 0) log.warn({ address: null, dropped: unreported, interval_s }, "requests rate-limited");
    },
    workerExit: (index, exit) => {
      metrics()?.workerRestarted();
      log.error(
        { worker: index, reason: exit.reason, transfers_ended_with_error: exit.endedWithError, transfers_lost: exit.lost },
        "transfer worker died and was replaced; its transfers ended, the others go on",
      );
    },
    // counted, not logged: a flood of garbage would flood the log too
    garbageUnanswered: () => metrics()?.garbageDropped(),
    sharedAdmissionDown: (error) => {
      log.warn({ error }, "cluster limits unavailable: admitting on this node's limits alone");
    },
    // unique_root "mac" without its tables serves every client from the root: say so, once per outage
    neighboursUnreadable: (family, error) => {
      log.warn({ family: `ipv${family}`, error }, "neighbour table unreadable: clients' MACs unknown, served from the root (tftp.unique_root mac)");
    },
    sharedAdmissionUp: () => {
      log.info("cluster limits available again");
    },
    gsoUnavailable: (reason) => {
      log.warn({ reason }, "network.zero_copy: the kernel refuses UDP GSO here, so windows leave one datagram per block");
    },
    requestsOnMainThread: (reason) => {
      log.warn({ reason }, "network.requests_on_workers: the main thread takes the listen ports' requests");
    },
  };
}

/** The outcome of the start-up sweep of temporary files that interrupted uploads left in `root`. */
export function logUploadSweep(log: Logger, root: string, sweep: Promise<SweepReport>): void {
  void sweep
    .then((swept) => {
      const fields = { root, removed: swept.removed, in_use: swept.inUse, failed: swept.failed };
      if (swept.removed > 0) log.info(fields, "removed temporary files of interrupted uploads");
      else log.debug(fields, "no temporary files of interrupted uploads to remove");
      if (swept.failed > 0) log.warn(fields, "could not remove temporary files of interrupted uploads");
      if (!swept.complete) log.warn({ ...fields, entries: swept.entries }, "stopped looking for interrupted uploads: root too big");
    })
    .catch((error: unknown) => log.warn({ error: (error as Error).message }, "could not look for interrupted uploads"));
}

/** A file at the top of the root to show in the start-up hint, if there is one. */
function sampleFile(root: string): string | null {
  try {
    const names = readdirSync(root, { withFileTypes: true }).filter((e) => e.isFile() && !e.name.startsWith("."));
    return names.map((e) => e.name).sort()[0] ?? null;
  } catch {
    return null;
  }
}

/** The "ready" line, with a command that fetches a file (none when listening on wildcards only). */
export function logReady(log: Logger, addresses: HostPort[], fields: { root: string; config: string | null; write: string }): void {
  const first = addresses.find((a) => !isWildcard(a.host));
  if (!first) return;
  const file = sampleFile(fields.root) ?? "FILE";
  log.info(fields, `ready: fetch a file with  curl -o ${file} tftp://${formatHostPort(first.host, first.port)}/${file}`);
}

/**
 * Where transfers run, once at start: the I/O loop each worker thread runs, and a warning when
 * network.epoll asked for the epoll loop and a worker could not have it (no libc access).
 */
export function logTransferEngine(log: Logger, server: TftpServer, asked: IoLoopKind): void {
  logFileIoPool(log, server);
  const loops = server.workers?.ioLoops ?? [];
  if (loops.length === 0) {
    log.info({ io_loop: "bun", workers: 0 }, "transfers run on the main thread on Bun's sockets");
    return;
  }
  const epoll = loops.filter((loop) => loop === "epoll").length;
  const threads = server.workers?.threads ?? [];
  // tid: /proc/PID/task/TID; cpus: where it is pinned ("any": the kernel decides)
  const placed = threads.map((t) => ({ tid: t?.tid ?? null, cpus: t?.cpus ? formatCpuList(t.cpus) : "any" }));
  log.info({ io_loop: epoll === loops.length ? "epoll" : "bun", workers: loops.length, threads: placed }, "transfer workers started");
  for (const [i, t] of threads.entries()) {
    if (t?.pinError) log.warn({ worker: i, error: t.pinError }, "performance.cpu.affinity: a transfer worker could not be pinned");
  }
  if (asked === "epoll" && epoll < loops.length) {
    log.warn({ workers: loops.length, on_epoll: epoll }, "network.epoll: libc is out of reach here, so transfer workers run on Bun's sockets");
  }
}

/** Where the file cache's copies are made: on the file I/O pool's threads, or the main thread. */
function logFileIoPool(log: Logger, server: TftpServer): void {
  const pool = server.fileIoPool;
  if (pool) log.info({ threads: pool.threadIds.length, tids: pool.threadIds }, "file I/O pool started");
  else log.info({ threads: 0 }, "the file cache's copies are made on the main thread (io.async_io false)");
}

/** The HTTP front end's lines: its listeners, and one record per request as a TFTP transfer has. */
export function httpEvents({ log, metrics }: Pick<ServerLogOptions, "log" | "metrics">): HttpEvents {
  return {
    listening: ({ host, port }, tls) => log.info({ address: formatHostPort(host, port), tls }, "http listening"),
    served: (r) => {
      metrics()?.httpServed(r);
      log[r.result === "ok" ? "info" : "warn"](
        {
          protocol: "http",
          client: r.client,
          file: r.file,
          method: r.method,
          status: r.status,
          bytes: r.bytes,
          size: r.size,
          range: r.range,
          user_agent: r.userAgent,
          duration_ms: Math.round(r.durationMs * 100) / 100,
          first_response_ms: Math.round(r.firstByteMs * 1000) / 1000,
          result: r.result,
          ...(r.error ? { error: r.error } : {}),
        },
        "transfer",
      );
    },
  };
}

/**
 * `tftpd get [options] HOST[:PORT] REMOTE`: download one file with the project's own client.
 * Writes through a temporary file renamed into place, so a failed download leaves nothing;
 * `-o -` writes to stdout.
 */
import { lookup } from "node:dns/promises";
import { statSync, writeSync } from "node:fs";
import { isIP } from "node:net";
import { join } from "node:path";
import { type ArgsDef, defineCommand } from "citty";
import { formatHostPort, parseHostPort } from "../net/address.ts";
import { download } from "../client/download.ts";
import { checkTransferOptions, DEFAULT_RETRIES } from "../client/session.ts";
import type { TransferOptions, TransferReport } from "../client/types.ts";
import { fail, unknownOption } from "./args.ts";
import { createProgress, formatBytes, type ProgressBar } from "./progress.ts";

/** Options shared by `get` and `put`. */
export const transferArgs = {
  blksize: { type: "string", description: "Block size to ask for (8-65464)", valueHint: "N" },
  windowsize: { type: "string", description: "Window size to ask for, in blocks (1-65535)", valueHint: "N" },
  timeout: { type: "string", description: "Retransmit timeout to ask for, in seconds (1-255)", valueHint: "S" },
  mode: { type: "enum", options: ["octet", "netascii"], default: "octet", description: "Transfer mode" },
  tsize: { type: "boolean", description: "Use the tsize option (RFC 2349)" },
  retries: { type: "string", description: `Retransmissions before giving up (default ${DEFAULT_RETRIES})`, valueHint: "N" },
  verbose: { type: "boolean", description: "Print a one-line summary on stderr" },
} satisfies ArgsDef;

interface TransferFlags {
  blksize?: string;
  windowsize?: string;
  timeout?: string;
  mode?: string;
  tsize?: boolean;
  retries?: string;
}

function intFlag(command: string, name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^[0-9]{1,9}$/.test(value)) fail(command, `--${name}: not a number: "${value}"`);
  return Number(value);
}

/** Turns the shared flags into engine options, or exits with a one-line error. */
export function transferFlags(
  command: string,
  args: TransferFlags,
): Pick<TransferOptions, "blksize" | "windowsize" | "timeoutSeconds" | "mode" | "tsize" | "retries"> {
  const mode = args.mode ?? "octet";
  if (mode !== "octet" && mode !== "netascii") fail(command, `--mode: must be octet or netascii, got "${mode}"`);
  const flags = {
    blksize: intFlag(command, "blksize", args.blksize),
    windowsize: intFlag(command, "windowsize", args.windowsize),
    timeoutSeconds: intFlag(command, "timeout", args.timeout),
    retries: intFlag(command, "retries", args.retries),
    mode: mode as "octet" | "netascii",
    tsize: args.tsize === true,
  };
  try {
    checkTransferOptions({ host: "", port: 69, remote: "x", ...flags });
  } catch (e) {
    fail(command, `--${(e as Error).message}`);
  }
  return flags;
}

/** HOST[:PORT] → the address to send to (names resolved here, never in the engine). */
export async function resolveServer(
  command: string,
  spec: string,
): Promise<{ host: string; port: number; display: string }> {
  let parsed;
  try {
    parsed = parseHostPort(spec);
  } catch (e) {
    fail(command, (e as Error).message);
  }
  const display = formatHostPort(parsed.host, parsed.port);
  if (isIP(parsed.host) !== 0) return { host: parsed.host, port: parsed.port, display };
  try {
    const { address } = await lookup(parsed.host);
    return { host: address, port: parsed.port, display };
  } catch (e) {
    fail(command, `${display}: cannot resolve ${parsed.host}: ${(e as { code?: string }).code ?? (e as Error).message}`);
  }
}

/** The one error line of a failed transfer. */
function errorLine(report: TransferReport, display: string, retries: number): string {
  const e = report.error;
  if (!e) return "failed";
  if (e.source === "timeout") return `no response from ${display} after ${retries + 1} tries`;
  if (e.source === "server") return `${e.message} (TFTP error ${e.code})`;
  return e.message;
}

function summaryLine(report: TransferReport, what: string): string {
  const seconds = report.durationMs / 1000;
  const rate = seconds > 0 ? report.bytes / seconds : 0;
  return (
    `${what}: ${formatBytes(report.bytes)} (${report.bytes} bytes, ${report.blocks} blocks) in ${seconds.toFixed(3)} s` +
    ` (${formatBytes(Math.round(rate))}/s), blksize ${report.blksize}, windowsize ${report.windowsize},` +
    ` ${report.retransmits} retransmits, first response ${report.firstResponseMs?.toFixed(1) ?? "-"} ms`
  );
}

/** Aborts on Ctrl-C so the temporary file is removed; returns the cleanup. */
function abortOnInterrupt(controller: AbortController): () => void {
  const onSignal = (): void => controller.abort();
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  return () => {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  };
}

/**
 * What `get` and `put` share around the transfer itself: the progress bar, Ctrl-C, and the
 * outcome — one error line and exit 1 (130 when interrupted), or a summary with --verbose.
 */
export async function runTransfer(
  command: "get" | "put",
  server: { display: string },
  remote: string,
  opts: { retries: number | undefined; verbose: boolean; what: string },
  start: (common: Pick<TransferOptions, "onProgress" | "signal">) => Promise<TransferReport>,
): Promise<void> {
  const progress: ProgressBar | null = createProgress(remote);
  const controller = new AbortController();
  const stopSignals = abortOnInterrupt(controller);
  const report = await start({
    onProgress: progress ? (bytes, total) => progress.update(bytes, total) : undefined,
    signal: controller.signal,
  });
  stopSignals();
  if (!report.ok) {
    progress?.clear();
    const interrupted = controller.signal.aborted;
    fail(command, `${server.display} ${remote}: ${errorLine(report, server.display, opts.retries ?? DEFAULT_RETRIES)}`, interrupted ? 130 : 1);
  }
  progress?.done();
  if (opts.verbose) process.stderr.write(`tftpd ${command}: ${summaryLine(report, opts.what)}\n`);
}

function writeAllSync(fd: number, chunk: Uint8Array): void {
  let at = 0;
  while (at < chunk.length) {
    try {
      at += writeSync(fd, chunk, at, chunk.length - at);
    } catch (e) {
      if ((e as { code?: string }).code !== "EAGAIN") throw e;
      Bun.sleepSync(1); // a non-blocking pipe is full: wait for the reader
    }
  }
}

/** Last path segment of a remote name ("pxelinux.cfg/default" → "default"). */
function remoteBasename(remote: string): string {
  const parts = remote.split(/[/\\]/);
  return parts[parts.length - 1] ?? "";
}

const args = {
  server: { type: "positional", description: "HOST[:PORT] — [v6addr]:port or a bare IPv6 address; port 69 by default", required: true },
  remote: { type: "positional", description: "File name on the server", required: true },
  output: { type: "string", alias: "o", description: "Local file (default: basename of REMOTE; - for stdout)", valueHint: "FILE" },
  ...transferArgs,
} satisfies ArgsDef;

export default defineCommand({
  meta: { name: "get", description: "Download a file from a TFTP server" },
  args,
  async run({ args: a, rawArgs }) {
    const bad = unknownOption(args, rawArgs);
    if (bad !== null) fail("get", `unknown option ${bad} (see tftpd get --help)`, 2);
    const flags = transferFlags("get", a);
    const remote = a.remote;
    const toStdout = a.output === "-";
    let file: string | undefined;
    if (!toStdout) {
      file = a.output ?? remoteBasename(remote);
      if (file === "" || file === "." || file === "..") {
        fail("get", `cannot name a local file after "${remote}": use -o FILE`);
      }
      try {
        if (statSync(file).isDirectory()) file = join(file, remoteBasename(remote));
      } catch {
        // does not exist yet: fine
      }
    }
    const server = await resolveServer("get", a.server);

    await runTransfer(
      "get",
      server,
      remote,
      { retries: flags.retries, verbose: Boolean(a.verbose), what: `${server.display} ${remote} -> ${toStdout ? "stdout" : file}` },
      (common) =>
        download({
          host: server.host,
          port: server.port,
          remote,
          ...flags,
          ...(toStdout ? { onData: (chunk: Uint8Array) => writeAllSync(1, chunk) } : { file }),
          ...common,
        }),
    );
  },
});

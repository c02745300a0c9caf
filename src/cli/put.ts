/**
 * `tftpd put [options] HOST[:PORT] LOCAL [REMOTE]`: upload one file. REMOTE defaults to the
 * basename of LOCAL; LOCAL `-` reads stdin (then REMOTE is required).
 */
import { basename } from "node:path";
import { type ArgsDef, defineCommand } from "citty";
import { upload } from "../client/upload.ts";
import { DEFAULT_RETRIES } from "../client/session.ts";
import { fail, unknownOption } from "./args.ts";
import { abortOnInterrupt, errorLine, resolveServer, summaryLine, transferArgs, transferFlags } from "./get.ts";
import { createProgress } from "./progress.ts";

const args = {
  server: { type: "positional", description: "HOST[:PORT] — [v6addr]:port or a bare IPv6 address; port 69 by default", required: true },
  local: { type: "positional", description: "Local file to send (- for stdin)", required: true },
  remote: { type: "positional", description: "File name on the server (default: basename of LOCAL)", required: false },
  ...transferArgs,
} satisfies ArgsDef;

export default defineCommand({
  meta: { name: "put", description: "Upload a file to a TFTP server" },
  args,
  async run({ args: a, rawArgs }) {
    const bad = unknownOption(args, rawArgs);
    if (bad !== null) fail("put", `unknown option ${bad} (see tftpd put --help)`, 2);
    const flags = transferFlags("put", a);
    const local = a.local;
    const fromStdin = local === "-";
    const remote = a.remote ?? (fromStdin ? "" : basename(local));
    if (remote === "") fail("put", fromStdin ? "reading stdin: give REMOTE" : `cannot name a remote file after "${local}": give REMOTE`);
    const server = await resolveServer("put", a.server);
    const source = fromStdin ? await Bun.stdin.bytes() : local;

    const progress = createProgress(remote);
    const controller = new AbortController();
    const stopSignals = abortOnInterrupt(controller);
    const report = await upload({
      host: server.host,
      port: server.port,
      remote,
      ...flags,
      source,
      onProgress: progress ? (bytes, total) => progress.update(bytes, total) : undefined,
      signal: controller.signal,
    });
    stopSignals();

    if (!report.ok) {
      progress?.clear();
      const interrupted = controller.signal.aborted;
      fail("put", `${server.display} ${remote}: ${errorLine(report, server.display, flags.retries ?? DEFAULT_RETRIES)}`, interrupted ? 130 : 1);
    }
    progress?.done();
    if (a.verbose) {
      process.stderr.write(`tftpd put: ${summaryLine(report, `${fromStdin ? "stdin" : local} -> ${server.display} ${remote}`)}\n`);
    }
  },
});

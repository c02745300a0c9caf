/**
 * `tftpd put [options] HOST[:PORT] LOCAL [REMOTE]`: upload one file. REMOTE defaults to the
 * basename of LOCAL; LOCAL `-` reads stdin (then REMOTE is required).
 */
import { basename } from "node:path";
import { type ArgsDef, defineCommand } from "citty";
import { upload } from "../client/upload.ts";
import { fail, unknownOption } from "./args.ts";
import { resolveServer, runTransfer, transferArgs, transferFlags } from "./get.ts";

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

    await runTransfer(
      "put",
      server,
      remote,
      { retries: flags.retries, verbose: Boolean(a.verbose), what: `${fromStdin ? "stdin" : local} -> ${server.display} ${remote}` },
      (common) => upload({ host: server.host, port: server.port, remote, ...flags, source, ...common }),
    );
  },
});

#!/usr/bin/env bun
/**
 * The tftpd command line: one binary, one subcommand per job. Serving is `tftpd serve`: a bare
 * `tftpd` prints its usage (it never starts serving, binding ports or tuning the host unasked).
 */
import { defineCommand, renderUsage, runMain, type ArgsDef, type CommandDef } from "citty";
import bench from "./cli/bench.ts";
import cache from "./cli/cache.ts";
import cluster from "./cli/cluster.ts";
import config from "./cli/config.ts";
import get from "./cli/get.ts";
import metrics from "./cli/metrics.ts";
import profile from "./cli/profile.ts";
import put from "./cli/put.ts";
import serve from "./cli/serve.ts";
import tune from "./cli/tune.ts";
import version from "./cli/version.ts";
import { VERSION } from "./version.ts";

const subCommands = { serve, get, put, bench, metrics, profile, tune, config, cluster, version, cache };

const main = defineCommand({
  meta: { name: "tftpd", version: VERSION, description: "Datacenter TFTP server for network boot" },
  subCommands,
});

const rawArgs = process.argv.slice(2);
const first = rawArgs[0];

/** citty names only the direct parent in nested usage ("config check"); say "tftpd config check". */
async function showUsage<T extends ArgsDef = ArgsDef>(cmd: CommandDef<T>, parent?: CommandDef<T>): Promise<void> {
  const parentMeta = parent ? await (typeof parent.meta === "function" ? parent.meta() : parent.meta) : undefined;
  const name = !parent || (parent as unknown) === main ? parentMeta?.name : `tftpd ${parentMeta?.name}`;
  const usage = await renderUsage(cmd, parent ? { meta: { name, version: VERSION } } : undefined);
  console.log(`${usage}\n`);
}

if (first === undefined) {
  await showUsage(main);
} else if (first.startsWith("-") && !["--help", "-h", "--version", "-v"].includes(first)) {
  // a flag before any subcommand: `tftpd --root DIR` was serving once; say what to run
  const hint = rawArgs.some((a) => ["--root", "--listen", "--config"].includes(a.split("=")[0]!)) ? ` (to serve: tftpd serve ${rawArgs.join(" ")})` : "";
  process.stderr.write(`tftpd: unknown option ${first.split("=")[0]} before a subcommand${hint}; see tftpd --help\n`);
  process.exit(2);
} else if (!(first in subCommands) && !first.startsWith("-")) {
  process.stderr.write(`tftpd: unknown command ${first}; see tftpd --help\n`);
  process.exit(2);
} else {
  await runMain(main, { rawArgs, showUsage });
}

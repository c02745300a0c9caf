#!/usr/bin/env bun
/**
 * The tftpd command line: one binary, one subcommand per job. Serving is `tftpd serve`: a bare
 * `tftpd` prints its usage (it never starts serving, binding ports or tuning the host unasked).
 */
import { defineCommand, renderUsage, runCommand, runMain, type ArgsDef, type CommandDef } from "citty";
import { unknownOption } from "./cli/args.ts";
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
} else if (rawArgs.some((a) => ["--help", "-h"].includes(a)) || first === "--version" || first === "-v") {
  await runMain(main, { rawArgs, showUsage });
} else {
  const [path, command, rest] = await commandOf(rawArgs);
  const usageError = (message: string): never => {
    process.stderr.write(`tftpd ${path.join(" ")}: ${message} (see tftpd ${path.join(" ")} --help)\n`);
    process.exit(2);
  };
  if (command.subCommands && !command.run) usageError(rest[0] === undefined ? "which one? name a subcommand" : `unknown command ${rest[0]}`);
  const unknown = unknownOption(await resolved(command.args ?? {}), rest);
  if (unknown) usageError(`unknown option ${unknown}`);
  try {
    await runCommand(main, { rawArgs });
  } catch (error) {
    // citty's own usage errors (a missing argument, a value not among the choices): one line,
    // exit 2, where citty would print the whole help and exit 1
    if ((error as Error).name === "CLIError") usageError(plain((error as Error).message));
    throw error;
  }
}

/** The subcommand `args` name ("config check"), its definition and the arguments after its name. */
async function commandOf(args: string[]): Promise<[string[], CommandDef, string[]]> {
  let command = main as CommandDef;
  const path: string[] = [];
  let rest = args;
  for (;;) {
    const subs = (await resolved(command.subCommands ?? {})) as Record<string, CommandDef>;
    const name = rest[0];
    if (name === undefined || !(name in subs)) return [path, command, rest];
    command = await resolved(subs[name]!);
    path.push(name);
    rest = rest.slice(1);
  }
}

async function resolved<T>(value: T | (() => T | Promise<T>) | Promise<T>): Promise<T> {
  return typeof value === "function" ? await (value as () => T | Promise<T>)() : await value;
}

/** citty colours the names in its messages; a one-line error is plain text. */
function plain(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\x1b\[[0-9;]*m/g, "");
}

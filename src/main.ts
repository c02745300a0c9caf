#!/usr/bin/env bun
/** The tftpd command line: one binary, one subcommand per job; `serve` when none is named. */
import { defineCommand, runMain } from "citty";
import config from "./cli/config.ts";
import get from "./cli/get.ts";
import put from "./cli/put.ts";
import serve from "./cli/serve.ts";
import version from "./cli/version.ts";
import { VERSION } from "./version.ts";

const subCommands = { serve, get, put, config, version };

const main = defineCommand({
  meta: { name: "tftpd", version: VERSION, description: "Datacenter TFTP server for network boot" },
  subCommands,
});

const argv = process.argv.slice(2);
const first = argv[0];
// `tftpd` alone, or `tftpd --root …`, means `tftpd serve …`.
const rawArgs = first === undefined || (first.startsWith("-") && !["--help", "-h", "--version", "-v"].includes(first))
  ? ["serve", ...argv]
  : argv;

await runMain(main, { rawArgs });

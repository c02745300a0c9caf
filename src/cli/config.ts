/**
 * `tftpd config check FILE`: validate a config file (with the TFTPD_* environment applied, as
 * `serve` would) and print the effective config as JSON, byte sizes in bytes and paths resolved.
 */
import { defineCommand } from "citty";
import { loadConfig } from "../config/load.ts";

export interface CheckResult {
  exitCode: 0 | 1;
  stdout: string;
  stderr: string;
}

/** The whole of `config check`, as a pure function of the file and the environment. */
export function checkConfigFile(file: string, env: Record<string, string | undefined> = process.env): CheckResult {
  const loaded = loadConfig({ file, env });
  if (!loaded.ok) {
    return { exitCode: 1, stdout: "", stderr: loaded.errors.map((e) => `tftpd config check: ${e}\n`).join("") };
  }
  const notes = loaded.applied.map((a) => `tftpd config check: note: ${a.key} is set by ${a.source}\n`).join("");
  return { exitCode: 0, stdout: `${JSON.stringify(loaded.config, null, 2)}\n`, stderr: notes };
}

const check = defineCommand({
  meta: { name: "check", description: "Validate a config file and print the effective config" },
  args: {
    file: { type: "positional", description: "Config file (JSON)", valueHint: "FILE", required: true },
  },
  run({ args }) {
    const r = checkConfigFile(args.file);
    if (r.stdout) process.stdout.write(r.stdout);
    if (r.stderr) process.stderr.write(r.stderr);
    process.exitCode = r.exitCode;
  },
});

export default defineCommand({
  meta: { name: "config", description: "Work with config files" },
  subCommands: { check },
});

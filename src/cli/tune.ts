/**
 * `tftpd tune [--apply | --sysctl-d FILE] [--json] [--config FILE] [--sysctl-root DIR]`: current
 * vs recommended kernel settings and RLIMIT_NOFILE that the effective config needs on this
 * machine; `--apply` raises what is too low (never lowers anything, and nothing at all when the
 * config says tune.enabled false) and exits 1 when something needed could not be set;
 * `--sysctl-d` writes them as a sysctl.d file instead, for configuration management.
 */
import { writeFileSync } from "node:fs";
import { defineCommand } from "citty";
import { loadConfig, type LoadResult } from "../config/load.ts";
import {
  apply,
  applyExitCode,
  currentMachine,
  DEFAULT_SYSCTL_ROOT,
  formatSysctlD,
  formatTable,
  plan,
  sysctlDKeys,
  toRows,
  type TuneOptions,
} from "../ops/tune.ts";
import { fail, unknownOption } from "./args.ts";

export interface TuneRun {
  exitCode: 0 | 1 | 2;
  stdout: string;
  stderr: string;
}

/** Where the effective tune.enabled came from: the last variable or flag that set it, else the file. */
function enabledSource(loaded: Extract<LoadResult, { ok: true }>): string {
  const set = loaded.applied.filter((a) => a.key === "tune.enabled" || a.key === "tune").at(-1);
  return set?.source ?? loaded.source ?? "the config";
}

/** The whole of `tune`, as a function of its options (the CLI only prints the result). */
export function runTune(
  opts: { apply?: boolean; json?: boolean; sysctlD?: string; config?: string; env?: Record<string, string | undefined> } & TuneOptions,
): TuneRun {
  if (opts.apply && opts.sysctlD !== undefined) {
    return { exitCode: 2, stdout: "", stderr: "tftpd tune: --apply and --sysctl-d exclude each other: --sysctl-d writes a file instead of applying\n" };
  }
  // (citty takes the next word as the value, so `--sysctl-d --json` would write a file "--json")
  if (opts.sysctlD !== undefined && (opts.sysctlD === "" || opts.sysctlD.startsWith("-"))) {
    return { exitCode: 2, stdout: "", stderr: "tftpd tune: --sysctl-d needs a FILE to write (see tftpd tune --help)\n" };
  }
  const loaded = loadConfig({ file: opts.config, env: opts.env ?? process.env });
  if (!loaded.ok) return { exitCode: 2, stdout: "", stderr: loaded.errors.map((e) => `tftpd tune: ${e}\n`).join("") };
  const machine = opts.machine ?? currentMachine();
  const tuneOpts: TuneOptions = { sysctlRoot: opts.sysctlRoot ?? DEFAULT_SYSCTL_ROOT, limitsFile: opts.limitsFile, machine };
  const disabled = loaded.config.tune.enabled ? null : `tune.enabled is false in ${enabledSource(loaded)}`;

  // The systemd unit runs `tune --apply` before every start: the config's word is final there.
  if (opts.apply && disabled) {
    const line = `${disabled}: nothing applied`;
    const stdout = opts.json ? `${JSON.stringify({ changed: [], failed: [], unchanged: [], skipped: line }, null, 2)}\n` : `${line}\n`;
    return { exitCode: 0, stdout, stderr: "" };
  }

  const items = plan(loaded.config, tuneOpts);

  // A file for configuration management changes nothing on the host, so tune.enabled false (the
  // usual companion of such a file) does not stop it.
  if (opts.sysctlD !== undefined) {
    const source = loaded.source ? `the config ${loaded.source}` : "the default config";
    try {
      writeFileSync(opts.sysctlD, formatSysctlD(items, source, machine));
    } catch (e) {
      return { exitCode: 1, stdout: "", stderr: `tftpd tune: cannot write ${opts.sysctlD}: ${(e as Error).message}\n` };
    }
    const keys = sysctlDKeys(items);
    const stdout = opts.json
      ? `${JSON.stringify({ file: opts.sysctlD, keys }, null, 2)}\n`
      : `tune: wrote ${keys.length} settings to ${opts.sysctlD} (nothing applied)\n`;
    return { exitCode: 0, stdout, stderr: "" };
  }

  const rows = toRows(items);
  if (!opts.apply) {
    if (opts.json) return { exitCode: 0, stdout: `${JSON.stringify(rows, null, 2)}\n`, stderr: "" };
    const note = disabled ? `${disabled}: serve and tune --apply leave these settings alone\n` : "";
    return { exitCode: 0, stdout: formatTable(rows) + note, stderr: "" };
  }
  const r = apply(items, tuneOpts);
  const code = applyExitCode(r);
  if (opts.json) {
    return { exitCode: code, stdout: `${JSON.stringify({ changed: r.changed, failed: r.failed, unchanged: r.unchanged }, null, 2)}\n`, stderr: "" };
  }
  const out: string[] = [];
  for (const c of r.changed) out.push(`changed    ${c.key}: ${c.from} → ${c.to}`);
  for (const k of r.unchanged) out.push(`ok         ${k}`);
  for (const f of r.failed) out.push(`${(r.advisory.includes(f.key) ? "advice" : "not set").padEnd(10)} ${f.key}: ${f.reason}`);
  const needed = r.failed.filter((f) => !r.advisory.includes(f.key)).length;
  out.push(
    code === 0
      ? `tune: ${r.changed.length} changed, ${r.unchanged.length} already fine${r.advisory.length ? `, ${r.advisory.length} left to the service manager` : ""}`
      : `tune: ${needed} needed setting${needed === 1 ? "" : "s"} could not be applied (${r.changed.length} changed)`,
  );
  return { exitCode: code, stdout: `${out.join("\n")}\n`, stderr: "" };
}

const args = {
  apply: { type: "boolean", description: "Write the settings that are too low (never lowers one; nothing when the config says tune.enabled false)" },
  "sysctl-d": {
    type: "string",
    description: "Write the settings to FILE as a sysctl.d file instead of applying them (also with tune.enabled false: it changes nothing on the host)",
    valueHint: "FILE",
  },
  json: { type: "boolean", description: "Machine-readable output" },
  config: { type: "string", description: "Config file (default $TFTPD_CONFIG or /etc/tftpd/config.json)", valueHint: "FILE" },
  "sysctl-root": { type: "string", description: `Root of the sysctl tree (default ${DEFAULT_SYSCTL_ROOT})`, valueHint: "DIR" },
} as const;

export default defineCommand({
  meta: { name: "tune", description: "Show current vs recommended kernel settings and rlimits for the config; --apply raises them" },
  args,
  run({ args: a, rawArgs }) {
    const unknown = unknownOption(args, rawArgs);
    if (unknown) fail("tune", `unknown option ${unknown} (see tftpd tune --help)`, 2);
    const r = runTune({ apply: a.apply, json: a.json, sysctlD: a["sysctl-d"], config: a.config, sysctlRoot: a["sysctl-root"] });
    if (r.stdout) process.stdout.write(r.stdout);
    if (r.stderr) process.stderr.write(r.stderr);
    process.exitCode = r.exitCode;
  },
});

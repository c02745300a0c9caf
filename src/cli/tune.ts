/**
 * `tftpd tune [--apply] [--json] [--config FILE] [--sysctl-root DIR]`: current vs recommended
 * kernel settings and RLIMIT_NOFILE for the effective config on this machine; `--apply` raises
 * what is too low (never lowers anything) and exits 1 when something needed could not be set.
 */
import { defineCommand } from "citty";
import { loadConfig } from "../config/load.ts";
import { apply, applyExitCode, DEFAULT_SYSCTL_ROOT, formatTable, plan, toRows, type TuneOptions } from "../ops/tune.ts";

export interface TuneRun {
  exitCode: 0 | 1 | 2;
  stdout: string;
  stderr: string;
}

/** The whole of `tune`, as a function of its options (the CLI only prints the result). */
export function runTune(opts: { apply?: boolean; json?: boolean; config?: string; env?: Record<string, string | undefined> } & TuneOptions): TuneRun {
  const loaded = loadConfig({ file: opts.config, env: opts.env ?? process.env });
  if (!loaded.ok) return { exitCode: 2, stdout: "", stderr: loaded.errors.map((e) => `tftpd tune: ${e}\n`).join("") };
  const tuneOpts: TuneOptions = { sysctlRoot: opts.sysctlRoot ?? DEFAULT_SYSCTL_ROOT, limitsFile: opts.limitsFile, machine: opts.machine };
  const items = plan(loaded.config, tuneOpts);
  const rows = toRows(items);
  if (!opts.apply) {
    return { exitCode: 0, stdout: opts.json ? `${JSON.stringify(rows, null, 2)}\n` : formatTable(rows), stderr: "" };
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

export default defineCommand({
  meta: { name: "tune", description: "Show current vs recommended kernel settings and rlimits; --apply raises them" },
  args: {
    apply: { type: "boolean", description: "Write the settings that are too low (never lowers one)" },
    json: { type: "boolean", description: "Machine-readable output" },
    config: { type: "string", description: "Config file (default $TFTPD_CONFIG or /etc/tftpd/config.json)", valueHint: "FILE" },
    "sysctl-root": { type: "string", description: `Root of the sysctl tree (default ${DEFAULT_SYSCTL_ROOT})`, valueHint: "DIR" },
  },
  run({ args }) {
    const r = runTune({ apply: args.apply, json: args.json, config: args.config, sysctlRoot: args["sysctl-root"] });
    if (r.stdout) process.stdout.write(r.stdout);
    if (r.stderr) process.stderr.write(r.stderr);
    process.exitCode = r.exitCode;
  },
});

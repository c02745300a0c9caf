/**
 * dnsmasq as the DHCP server of a test's network namespace, with the options the README gives
 * operators: the README's fenced blocks are read and split into arguments by the shell's own
 * rules, so what the docs say and what the tests run cannot drift.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { run } from "./run.ts";

const SBIN_PATH = `${process.env.PATH ?? ""}:/usr/sbin:/sbin:/usr/bin:/bin`;
export const DNSMASQ = Bun.which("dnsmasq", { PATH: SBIN_PATH }) ?? "/usr/sbin/dnsmasq";

const README = new URL("../../README.md", import.meta.url).pathname;

/**
 * The fenced block right after `<!-- MARKER…-->` in README.md, evaluated by bash with
 * `dnsmasq` as a function that prints its arguments: the words dnsmasq gets, by the shell's own
 * rules (quotes, continuation lines, comments). The block must call dnsmasq exactly once.
 */
export async function readmeDnsmasqArgs(marker: string): Promise<string[]> {
  const text = readFileSync(README, "utf8");
  const at = text.indexOf(`<!-- ${marker}`);
  if (at < 0) throw new Error(`README.md has no <!-- ${marker} --> marker`);
  const block = /^```[a-z]*\n([\s\S]*?)^```$/m.exec(text.slice(at));
  if (!block || text.slice(at, at + block.index).split("\n").length > 2) {
    throw new Error(`README.md: no fenced block right after the ${marker} marker`);
  }
  const script = `set -euo pipefail\ncalls=0\ndnsmasq() { calls=$((calls + 1)); printf '%s\\0' "$@"; }\n${block[1]}\n[ "$calls" = 1 ] || { echo "the block calls dnsmasq $calls times" >&2; exit 3; }\n`;
  const r = await run(["bash", "-c", script], { timeoutMs: 10_000 });
  if (r.exitCode !== 0) throw new Error(`the ${marker} block does not run as a shell command (exit ${r.exitCode}): ${r.stderr}`);
  return r.stdout.split("\0").slice(0, -1);
}

/** Options a test adds to the README's, about the process only: foreground, no host files, logging. */
export function dnsmasqProcessOptions(dir: string): string[] {
  return [
    "--keep-in-foreground",
    "--conf-file=/dev/null", // the host's /etc/dnsmasq.conf, if any, stays out of it
    `--dhcp-leasefile=${join(dir, "dnsmasq.leases")}`,
    `--pid-file=${join(dir, "dnsmasq.pid")}`,
    "--log-facility=-",
    "--log-dhcp",
  ];
}

/**
 * What citty leaves to us: repeatable flags (it keeps only the last value) and a clear error
 * for an option nobody defined (it silently accepts them).
 */
import type { ArgsDef } from "citty";

/** Every value given to `--name VALUE` / `--name=VALUE`, in order. */
export function repeatedFlag(rawArgs: readonly string[], name: string): string[] {
  const values: string[] = [];
  const flag = `--${name}`;
  for (let i = 0; i < rawArgs.length; i++) {
    const arg = rawArgs[i]!;
    if (arg === "--") break;
    if (arg === flag && i + 1 < rawArgs.length) values.push(rawArgs[++i]!);
    else if (arg.startsWith(`${flag}=`)) values.push(arg.slice(flag.length + 1));
  }
  return values;
}

function toKebab(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** The first option in rawArgs that `args` does not define, or null. */
export function unknownOption(args: ArgsDef, rawArgs: readonly string[]): string | null {
  const known = new Set<string>(["help", "h", "version", "v"]);
  for (const [name, def] of Object.entries(args)) {
    if (def.type === "positional") continue;
    for (const spelled of [name, toKebab(name)]) {
      known.add(spelled);
      if (def.type === "boolean") known.add(`no-${spelled}`);
    }
    const alias = (def as { alias?: string | string[] }).alias;
    for (const a of Array.isArray(alias) ? alias : alias ? [alias] : []) known.add(a);
  }
  for (const arg of rawArgs) {
    if (arg === "--") break;
    if (arg === "-" || !arg.startsWith("-") || /^-\d/.test(arg)) continue;
    const name = arg.replace(/^--?/, "").split("=")[0]!;
    if (!known.has(name)) return arg.split("=")[0]!;
  }
  return null;
}

/** Prints `tftpd CMD: message` to stderr and exits non-zero: the Unix way to fail. */
export function fail(command: string, message: string, exitCode = 1): never {
  process.stderr.write(`tftpd ${command}: ${message}\n`);
  process.exit(exitCode);
}

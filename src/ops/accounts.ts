/**
 * Users and groups of this system, by name or numeric id, as the C library sees them:
 * `getent` asks NSS (so LDAP or systemd-homed accounts are found like local ones); a system
 * without getent falls back to /etc/passwd and /etc/group.
 */
import { readFileSync } from "node:fs";

export interface Account {
  name: string;
  uid: number;
  /** primary group */
  gid: number;
}

export interface Group {
  name: string;
  gid: number;
}

/** A way to find accounts; tests pass their own table. */
export interface AccountDirectory {
  user(nameOrId: string): Account | null;
  group(nameOrId: string): Group | null;
}

const ID = /^\d+$/;

/** One line of passwd(5): `name:password:uid:gid:gecos:home:shell`. */
export function parsePasswdLine(line: string): Account | null {
  const f = line.split(":");
  if (f.length < 7 || f[0] === "" || !ID.test(f[2]!) || !ID.test(f[3]!)) return null;
  return { name: f[0]!, uid: Number(f[2]), gid: Number(f[3]) };
}

/** One line of group(5): `name:password:gid:members`. */
export function parseGroupLine(line: string): Group | null {
  const f = line.split(":");
  if (f.length < 4 || f[0] === "" || !ID.test(f[2]!)) return null;
  return { name: f[0]!, gid: Number(f[2]) };
}

/** The entry of a passwd/group-format table whose name (or, for a number, id) matches. */
function findIn<T extends { name: string }>(text: string, parse: (line: string) => T | null, key: string, id: (entry: T) => number): T | null {
  for (const line of text.split("\n")) {
    const entry = parse(line);
    if (entry && (entry.name === key || (ID.test(key) && id(entry) === Number(key)))) return entry;
  }
  return null;
}

/** `getent DATABASE KEY`'s line; null when there is no entry; undefined when getent cannot run. */
function getent(database: "passwd" | "group", key: string): string | null | undefined {
  try {
    const r = Bun.spawnSync(["getent", database, key], { stdin: "ignore", stdout: "pipe", stderr: "ignore" });
    if (r.exitCode === 0) return r.stdout.toString().split("\n")[0] ?? null;
    // 2: no such entry; anything else (1: the database is unknown, 3: enumeration) falls back
    return r.exitCode === 2 ? null : undefined;
  } catch {
    return undefined;
  }
}

function lookup<T extends { name: string }>(database: "passwd" | "group", key: string, parse: (line: string) => T | null, id: (entry: T) => number): T | null {
  if (key === "" || key.includes(":") || key.includes("\n")) return null;
  const line = getent(database, key);
  if (line !== undefined) return line === null ? null : parse(line);
  try {
    return findIn(readFileSync(`/etc/${database}`, "utf8"), parse, key, id);
  } catch {
    return null;
  }
}

/** This system's accounts. */
export const systemAccounts: AccountDirectory = {
  user: (nameOrId) => lookup("passwd", nameOrId, parsePasswdLine, (a) => a.uid),
  group: (nameOrId) => lookup("group", nameOrId, parseGroupLine, (g) => g.gid),
};

/** An in-memory directory (passwd and group text), for tests and for callers that read the files themselves. */
export function accountsFrom(passwd: string, group: string): AccountDirectory {
  return {
    user: (key) => findIn(passwd, parsePasswdLine, key, (a) => a.uid),
    group: (key) => findIn(group, parseGroupLine, key, (g) => g.gid),
  };
}

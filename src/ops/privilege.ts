/**
 * Giving up root once the sockets are bound (tftp.user, `serve --user`). A TFTP server answers
 * anyone without authentication: started as root it must not keep root, or a file of mode 000
 * in its root is served like any other. Binding port 69 is the only privileged step, so the
 * drop comes right after it; from then on file permissions apply as for the chosen user.
 *
 * Bun's process.setgroups/setgid/setuid call the C library's functions, and glibc applies
 * those to every thread of the process (its setxid broadcast); the raw system calls would
 * change only the calling thread, leaving worker threads as root. The drop is checked in
 * every thread (/proc/self/task) rather than trusted.
 */
import { accessSync, constants } from "node:fs";
import { readTaskFiles } from "../net/tasks.ts";
import { dirname, resolve } from "node:path";
import type { Logger } from "../log.ts";
import type { AccountDirectory } from "./accounts.ts";

/** Used when started as root with no tftp.user: the account install.sh creates, else the conventional one. */
export const AUTOMATIC_USERS = ["tftpd", "nobody"] as const;

export interface UserSpec {
  user: string;
  group: string | null;
}

const NAME = /^[^\s:/]+$/;

/** "USER" or "USER:GROUP" (names or numeric ids); null when malformed. */
export function parseUserSpec(text: string): UserSpec | null {
  const [user, group, ...rest] = text.split(":");
  if (rest.length > 0 || user === undefined || !NAME.test(user)) return null;
  if (group !== undefined && !NAME.test(group)) return null;
  return { user, group: group ?? null };
}

export type PrivilegePlan =
  /** not started as root, and running as the user asked for (or none was asked for): nothing to do */
  | { action: "stay" }
  /** started as root and asked to stay root */
  | { action: "keep-root" }
  | { action: "drop"; user: string; uid: number; group: string; gid: number }
  /** one line: why the server cannot run as asked (the caller names the key) */
  | { action: "refuse"; reason: string };

/**
 * What to do about privileges, decided before anything is bound so a wrong setting stops the
 * start at once. `current` is the effective uid/gid the process was started with.
 */
export function planPrivileges(setting: string | null, current: { uid: number; gid: number }, accounts: AccountDirectory): PrivilegePlan {
  const asRoot = current.uid === 0;
  if (setting === null) {
    if (!asRoot) return { action: "stay" };
    for (const name of AUTOMATIC_USERS) {
      const account = accounts.user(name);
      if (account && account.uid !== 0) return dropTo(account.name, account.uid, account.gid, accounts);
    }
    return {
      action: "refuse",
      reason: `started as root with no user to run as, and neither ${AUTOMATIC_USERS.map((n) => `"${n}"`).join(" nor ")} exists: name one (--user USER[:GROUP]), or --user root to keep root`,
    };
  }
  const spec = parseUserSpec(setting);
  if (!spec) return { action: "refuse", reason: `expected "USER" or "USER:GROUP", got ${JSON.stringify(setting)}` };
  // a numeric id needs no entry in the user database (containers often run with bare ids)
  const numeric = /^\d+$/.test(spec.user) ? Number(spec.user) : null;
  const account = accounts.user(spec.user) ?? (numeric !== null ? { name: spec.user, uid: numeric, gid: null } : null);
  if (!account) return { action: "refuse", reason: `no user ${JSON.stringify(spec.user)} on this system` };
  const group = spec.group === null ? null : (accounts.group(spec.group) ?? (/^\d+$/.test(spec.group) ? { name: spec.group, gid: Number(spec.group) } : null));
  if (spec.group !== null && !group) return { action: "refuse", reason: `no group ${JSON.stringify(spec.group)} on this system` };
  if (!asRoot) {
    if (account.uid === current.uid && (group === null || group.gid === current.gid)) return { action: "stay" };
    return {
      action: "refuse",
      reason: `running as ${JSON.stringify(setting)} needs the server started as root (it runs as uid ${current.uid}, gid ${current.gid}); leave tftp.user unset to run as the current user`,
    };
  }
  if (account.uid === 0) return { action: "keep-root" };
  const gid = group?.gid ?? account.gid;
  if (gid === null) return { action: "refuse", reason: `user ${spec.user} has no entry to take a group from: name one (--user ${spec.user}:GROUP)` };
  return dropTo(account.name, account.uid, gid, accounts, group?.name);
}

function dropTo(user: string, uid: number, gid: number, accounts: AccountDirectory, groupName?: string): PrivilegePlan {
  return { action: "drop", user, uid, gid, group: groupName ?? accounts.group(String(gid))?.name ?? String(gid) };
}

export interface ServedRoot {
  /** the config key that names it, e.g. "tftp.root" or "tftp.rules[0].root" */
  key: string;
  path: string;
}

/**
 * Carries out a plan once everything is bound and opened: drops (or says it keeps root), then
 * checks the roots are still within reach. Returns one line when the server cannot go on
 * (the drop failed, or a root is out of reach for its new user), else null.
 */
export function enterPlan(plan: PrivilegePlan, opts: { log: Logger; roots: readonly ServedRoot[]; uploads: boolean }): string | null {
  const { log } = opts;
  if (plan.action === "keep-root") {
    log.warn({ user: "root" }, "running as root (tftp.user root): clients are served every file root may read");
    return null;
  }
  if (plan.action !== "drop") return null;
  try {
    dropPrivileges(plan);
  } catch (error) {
    // e.g. a system call filter that forbids setuid: the server must not serve as root by accident
    return `could not run as user ${plan.user} (uid ${plan.uid}, gid ${plan.gid}): ${(error as Error).message}`;
  }
  log.info({ user: plan.user, uid: plan.uid, group: plan.group, gid: plan.gid }, "dropped privileges");
  const who = `user ${plan.user} (uid ${plan.uid})`;
  for (const root of opts.roots) {
    const blocked = readBlockedAt(root.path);
    if (blocked) {
      const why = blocked.at === resolve(root.path) ? "may not read it" : `may not enter ${blocked.at}`;
      return `${root.key} ${root.path} is out of reach for ${who}, which the server runs as after binding: it ${why}; let it in (${blocked.fix}) or run as a user that can read the root (--user USER[:GROUP], config tftp.user)`;
    }
    if (opts.uploads && !canWriteIn(root.path)) {
      log.warn({ root: root.path, user: plan.user, uid: plan.uid }, `uploads into ${root.key} will fail: ${who} may not write in it`);
    }
  }
  return null;
}

/**
 * Becomes uid/gid in every thread, with no supplementary groups, for good: the real, effective
 * and saved ids all change, so root cannot be taken back. Throws a one-line Error when any
 * thread kept another identity.
 */
export function dropPrivileges(target: { uid: number; gid: number }): void {
  // groups first, while still allowed; the uid last, since after it nothing else may change
  process.setgroups!([]);
  process.setgid!(target.gid);
  process.setuid!(target.uid);
  const left = threadsNotRunningAs(target.uid, target.gid);
  if (left.length > 0) throw new Error(`privilege drop incomplete: thread(s) ${left.join(", ")} still run with other ids`);
  let regained = false;
  try {
    process.setuid!(0);
    regained = true;
  } catch {
    // EPERM: root is gone for good, as it should be
  }
  if (regained) throw new Error("privilege drop incomplete: root could be taken back");
}

/** Ids of the threads (tasks) of this process whose uids, gids or supplementary groups are not exactly these. */
export function threadsNotRunningAs(uid: number, gid: number, taskDir = "/proc/self/task"): string[] {
  // no /proc: no threads listed, and process.getuid and friends are all there is to check
  return readTaskFiles("status", taskDir)
    .filter((task) => !statusRunsAs(task.text, uid, gid))
    .map((task) => task.tid);
}

/** Whether a /proc status text shows uid (real, effective, saved, fs), gid likewise, and no other group. */
export function statusRunsAs(status: string, uid: number, gid: number): boolean {
  const ids = (field: string): string[] | null => {
    const m = new RegExp(`^${field}:(.*)$`, "m").exec(status);
    return m ? m[1]!.trim().split(/\s+/).filter((s) => s !== "") : null;
  };
  const uids = ids("Uid");
  const gids = ids("Gid");
  const groups = ids("Groups") ?? [];
  return (
    uids !== null &&
    gids !== null &&
    uids.length === 4 &&
    gids.length === 4 &&
    uids.every((u) => Number(u) === uid) &&
    gids.every((g) => Number(g) === gid) &&
    groups.every((g) => Number(g) === gid)
  );
}

/**
 * What keeps this process from reading and searching `dir`, checked with access(2) as the
 * process now is: null when nothing does (or when `dir` does not exist: that is no question of
 * who asks); else the first directory on the way that stops it and a command that would fix it.
 */
export function readBlockedAt(dir: string): { at: string; fix: string } | null {
  const target = resolve(dir);
  if (accessError(target, constants.R_OK | constants.X_OK) !== "EACCES") return null;
  const ancestors: string[] = [];
  for (let d = dirname(target); ; d = dirname(d)) {
    ancestors.unshift(d);
    if (d === dirname(d)) break;
  }
  for (const d of ancestors) {
    if (accessError(d, constants.X_OK) === "EACCES") return { at: d, fix: `chmod o+x ${d}` };
  }
  return { at: target, fix: `chmod o+rx ${target}` };
}

/** Whether this process may create files in `dir` (write and search); a missing `dir` is no question of permissions. */
export function canWriteIn(dir: string): boolean {
  const error = accessError(resolve(dir), constants.W_OK | constants.X_OK);
  return error !== "EACCES" && error !== "EROFS";
}

function accessError(path: string, mode: number): string | null {
  try {
    accessSync(path, mode);
    return null;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code ?? "error";
  }
}

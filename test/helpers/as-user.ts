/**
 * Code that tests run as another user (as root, they prove permission checks as `nobody`)
 * must not come from the checkout: a clone under a directory only its owner may enter (root's
 * home, mode 0700) is closed to every other user, and with it the project's sources and the
 * Bun runtime its node_modules hold. So what that user runs is put in a temporary directory
 * it can read: the code bundled with its imports into one file (`bun build`), and a program
 * it can execute.
 */
import { chmodSync, copyFileSync, existsSync, linkSync, mkdtempSync, realpathSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";

/** A fresh temporary directory (its realpath) that every user may list and enter (0755). */
export function openTempDir(prefix = "tftpd-as-user-"): string {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), prefix)));
  chmodSync(dir, 0o755);
  return dir;
}

/**
 * `entry` (a script) and everything it imports, as one file `name` in `dir`, readable by every
 * user (0644). Bun's own modules (bun:*, node:*) stay imports of the runtime.
 */
export function bundleScript(entry: string, dir: string, name = `${basename(entry).replace(/\.[cm]?[jt]s$/, "")}.js`): string {
  const outfile = join(dir, name);
  const built = Bun.spawnSync([process.execPath, "build", "--target=bun", entry, "--outfile", outfile], {
    stdout: "pipe",
    stderr: "pipe",
  });
  if (built.exitCode !== 0) {
    throw new Error(`bun build ${entry} failed (exit ${built.exitCode}): ${built.stderr.toString()}${built.stdout.toString()}`);
  }
  chmodSync(outfile, 0o644);
  return outfile;
}

/**
 * `program`, or a link to it (a copy across file systems) in `dir`, whichever the user that
 * `wrapper` (e.g. setpriv --reuid=nobody …) switches to can execute. Without a wrapper the
 * program is returned as it is.
 */
export function executableBy(wrapper: string[], program: string, dir: string): string {
  const canRun = (path: string): boolean =>
    wrapper.length === 0 || Bun.spawnSync([...wrapper, "test", "-x", path], { stdout: "ignore", stderr: "ignore" }).exitCode === 0;
  if (canRun(program)) return program;
  const reachable = join(dir, basename(program));
  try {
    linkSync(program, reachable);
  } catch {
    // on another file system: copied below
  }
  // a link shares the program's mode: if that shuts other users out, they get a copy of their own
  if (!existsSync(reachable) || (statSync(reachable).mode & 0o005) !== 0o005) {
    rmSync(reachable, { force: true });
    copyFileSync(program, reachable);
    chmodSync(reachable, 0o755);
  }
  if (!canRun(reachable)) throw new Error(`${wrapper.join(" ")} cannot execute ${program}, nor ${reachable}`);
  return reachable;
}

// Shared fixtures for the storage tests: real temporary directories, removed after each test.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { bundleScript, executableBy, openTempDir } from "../../helpers/as-user.ts";

const made: string[] = [];

/** Remove every directory `tempDir` made; each test file registers it with `afterEach`. */
export function cleanupTempDirs(): void {
  for (const dir of made.splice(0)) {
    // Restore permissions a test may have removed, so cleanup cannot fail.
    Bun.spawnSync(["chmod", "-R", "u+rwx", dir]);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** A fresh real directory (its realpath) under the system temp dir. */
export function tempDir(prefix = "tftpd-storage-"): string {
  const dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), prefix)));
  made.push(dir);
  return dir;
}

/** A layout with a TFTP root and a sibling whose name starts with the root's name. */
export function rootWithSibling(): { base: string; root: string; sibling: string; outside: string } {
  const base = tempDir();
  const root = path.join(base, "root");
  const sibling = path.join(base, "root2");
  const outside = path.join(base, "outside");
  for (const dir of [root, sibling, outside]) fs.mkdirSync(dir);
  return { base, root, sibling, outside };
}

/** Directory listing (names, sorted) including dot files. */
export function listing(dir: string): string[] {
  return fs.readdirSync(dir).sort();
}

/** Absolute path of a storage module, for probe scripts run in child processes. */
export function storageModule(name: string): string {
  return path.resolve(import.meta.dir, "../../../src/storage", name);
}

/**
 * Run `body` (top-level-await TypeScript) in a child Bun process, optionally wrapped in another
 * command (e.g. setpriv), killed after `timeoutMs`. Used where the code under test could block
 * the whole process (a fifo) or must run without privileges. The probe runs bundled with what
 * it imports, from a temporary directory every user can read, never from the checkout: a
 * checkout under a directory of mode 0700 is closed to the user a wrapper switches to.
 */
export function runProbe(
  dir: string,
  body: string,
  args: string[],
  options: { wrapper?: string[]; timeoutMs?: number } = {},
): { exitCode: number | null; signalCode: string | number | null; stdout: string; stderr: string } {
  const wrapper = options.wrapper ?? [];
  const probeDir = openTempDir("tftpd-probe-");
  try {
    const source = path.join(probeDir, "probe.ts");
    fs.writeFileSync(source, body);
    const probe = bundleScript(source, probeDir);
    const bun = executableBy(wrapper, process.execPath, probeDir);
    const child = Bun.spawnSync([...wrapper, bun, probe, ...args], {
      cwd: probeDir,
      env: { ...process.env, HOME: dir },
      timeout: options.timeoutMs ?? 10_000,
    });
    return {
      exitCode: child.exitCode,
      signalCode: child.signalCode ?? null,
      stdout: child.stdout.toString(),
      stderr: child.stderr.toString(),
    };
  } finally {
    fs.rmSync(probeDir, { recursive: true, force: true });
  }
}

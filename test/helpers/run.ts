/**
 * Runs real programs (curl, tftp, atftp, the tftpd CLI) without blocking the event loop, so
 * a server running in the same test process keeps answering. Every run is bounded in time.
 */
export interface RunResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export async function run(
  cmd: string[],
  opts: { timeoutMs?: number; cwd?: string; env?: Record<string, string | undefined>; stdin?: string } = {},
): Promise<RunResult> {
  const proc = Bun.spawn(cmd, {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    stdin: opts.stdin === undefined ? "ignore" : new TextEncoder().encode(opts.stdin),
    stdout: "pipe",
    stderr: "pipe",
  });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    proc.kill("SIGKILL");
  }, opts.timeoutMs ?? 60_000);
  const [stdout, stderr, exitCode] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  clearTimeout(timer);
  return { exitCode, stdout, stderr, timedOut };
}

export const BUN = process.execPath;
export const MAIN = new URL("../../src/main.ts", import.meta.url).pathname;

/** The tftpd CLI from source, as `bun src/main.ts ARGS`. */
export function tftpd(args: string[], opts: Parameters<typeof run>[1] = {}): Promise<RunResult> {
  return run([BUN, MAIN, ...args], opts);
}

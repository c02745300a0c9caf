/**
 * A slow disk without touching the disk or the server: strace, attached to every thread of a
 * running process, holds each call of one system call for a while (`-e inject=…:delay_enter`).
 * The process is not changed; the trace (with "(DELAYED)" on each held call) goes to
 * `tracePath`. Needs strace (Debian's package) and the right to trace the process (root here).
 */
export interface Tracer {
  stop(): Promise<void>;
}

/** Resolves once strace has attached to `pid`; rejects when it does not within 5 s. */
export async function delaySyscall(pid: number, syscall: string, delayMs: number, tracePath = "/dev/null"): Promise<Tracer> {
  const strace = Bun.spawn(["strace", "-f", "-p", String(pid), "-e", `trace=${syscall}`, "-e", `inject=${syscall}:delay_enter=${delayMs * 1000}`, "-o", tracePath], {
    stdin: "ignore",
    stdout: "ignore",
    stderr: "pipe",
  });
  const tracer: Tracer = {
    async stop() {
      strace.kill("SIGINT");
      await strace.exited;
    },
  };
  // strace says "Process N attached" on stderr for each thread
  const reader = strace.stderr.getReader();
  const decoder = new TextDecoder();
  let seen = "";
  const deadline = performance.now() + 5000;
  while (!seen.includes("attached") && performance.now() < deadline) {
    const { value, done } = await Promise.race([reader.read(), Bun.sleep(100).then(() => ({ value: undefined, done: false }))]);
    if (done) break;
    if (value) seen += decoder.decode(value);
  }
  reader.releaseLock();
  if (!seen.includes("attached")) {
    await tracer.stop();
    throw new Error(`strace did not attach to ${pid}: ${seen}`);
  }
  // the other threads' attach lines follow the first
  await Bun.sleep(200);
  return tracer;
}

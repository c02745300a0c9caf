// The pino logger: JSON lines on stdout through an async SonicBoom destination.
// Never use pino transports: they spawn worker threads from files that do not exist inside a
// `bun build --compile` binary.
import pino from "pino";
import type { LogLevel } from "./config/schema.ts";

export type Logger = pino.Logger;
export type { LogLevel };

let stdout: ReturnType<typeof pino.destination> | undefined;

/** Write whatever is buffered to stdout now (safe to call any time, also during exit). */
export function flushLogs(): void {
  try {
    stdout?.flushSync();
  } catch {
    // Not ready yet or already closed: nothing to flush.
  }
}

function destination() {
  if (!stdout) {
    stdout = pino.destination({ dest: 1, sync: false });
    process.once("exit", flushLogs);
  }
  return stdout;
}

/** A logger at `level`; all loggers share one stdout destination, flushed on process exit. */
export function createLogger(level: LogLevel = "info", bindings: Record<string, unknown> = {}): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid, ...bindings },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination(),
  );
}

/**
 * The test-only switches, `TFTPD_TEST_*` environment variables: read once at start-up into one
 * object, never config keys (config/load.ts skips them), and never set in production.
 */

export interface TestSwitches {
  /** TFTPD_TEST_DROP: datagrams to lose on purpose (the spec of server/loss.ts) */
  drop: string | null;
  /** TFTPD_TEST_WORKER_THROW: the first transfer worker throws once it has started this many transfers */
  workerThrowAfterJobs: number | null;
  /** TFTPD_TEST_SYSCTL_ROOT: tuning reads and writes this tree instead of /proc/sys */
  sysctlRoot: string | null;
  /** TFTPD_TEST_HEARTBEAT_MS: cluster heartbeats this often instead of every 2 s */
  heartbeatMs: number | null;
  /** TFTPD_TEST_CONFIG_POLL_MS: the pushed fleet config is polled this often instead of every 2 s */
  configPollMs: number | null;
}

/** Reads the switches; a value that is set but not what it must be throws, naming the variable. */
export function readTestSwitches(env: Record<string, string | undefined> = process.env): TestSwitches {
  const text = (name: string): string | null => (env[name] ? env[name]! : null);
  const count = (name: string): number | null => {
    const raw = text(name);
    if (raw === null) return null;
    const n = Number(raw);
    if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`${name}: expected a positive integer, got "${raw}"`);
    return n;
  };
  return {
    drop: text("TFTPD_TEST_DROP"),
    workerThrowAfterJobs: count("TFTPD_TEST_WORKER_THROW"),
    sysctlRoot: text("TFTPD_TEST_SYSCTL_ROOT"),
    heartbeatMs: count("TFTPD_TEST_HEARTBEAT_MS"),
    configPollMs: count("TFTPD_TEST_CONFIG_POLL_MS"),
  };
}

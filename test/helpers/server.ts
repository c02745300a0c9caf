/**
 * Test servers on loopback: the real TftpServer in-process (fast, and its transfer records
 * can be inspected), or the real CLI as a child process (flags, config, logs, signals).
 */
import type { Subprocess } from "bun";
import { TftpServer, type ServerDeps, type ServerOptions, type TransferRecord } from "../../src/server/server.ts";
import { BUN, MAIN } from "./run.ts";

export interface InProcessServer {
  server: TftpServer;
  host: string;
  port: number;
  records: TransferRecord[];
  /** resolves with the next finished transfer record */
  nextRecord(): Promise<TransferRecord>;
  stop(): Promise<void>;
}

export const defaultOptions = (root: string): ServerOptions => ({
  root,
  listen: [{ host: "127.0.0.1", port: 0 }],
  write: "off",
  uploadMax: 1 << 30,
  blksizeMax: 65464,
  windowsizeMax: 64,
  windowBytesMax: 8 << 20,
  timeoutMs: 200,
  retries: 3,
  portRange: null,
  remap: [],
  allow: [],
  deny: [],
  cacheBytes: 64 << 20,
  transferSockets: "per-transfer",
  batch: { enabled: true, size: 64 },
  gso: true,
  workers: 1,
  balance: { algorithm: "round_robin", hashKey: "client_ip" },
  limits: { maxTotal: 100_000, maxPerIp: 100_000, maxPerClient: 100_000, onLimit: "drop" },
  lifetimes: { connectionTimeoutMs: 30_000, idleTimeoutMs: 300_000, maxLifetimeMs: 3_600_000 },
  receiveBufferBytes: 4 << 20,
  sendBufferBytes: 4 << 20,
});

/** `deps` as the server takes them; its events also see every transfer record the helper collects. */
export async function startServer(root: string, options: Partial<ServerOptions> = {}, deps: ServerDeps = {}): Promise<InProcessServer> {
  const records: TransferRecord[] = [];
  const waiters: ((r: TransferRecord) => void)[] = [];
  const events = deps.events ?? {};
  const server = new TftpServer(
    { ...defaultOptions(root), ...options },
    {
      ...deps,
      events: {
        ...events,
        transferEnd(record) {
          records.push(record);
          waiters.shift()?.(record);
          events.transferEnd?.(record);
        },
      },
    },
  );
  await server.start();
  const first = server.addresses[0]!;
  return {
    server,
    host: first.host,
    port: first.port,
    records,
    nextRecord: () => new Promise((resolve) => waiters.push(resolve)),
    stop: () => server.stop(),
  };
}

/** The first transfer record after the first `from` ones that matches (waits up to `timeoutMs`). */
export async function recordAfter(
  s: { records: TransferRecord[] },
  from: number,
  match: (r: TransferRecord) => boolean,
  timeoutMs = 10_000,
): Promise<TransferRecord> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const hit = s.records.slice(from).find(match);
    if (hit) return hit;
    if (Date.now() > deadline) throw new Error(`no matching transfer record; last: ${JSON.stringify(s.records.at(-1))}`);
    await Bun.sleep(5);
  }
}

export interface ChildServer {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  /** every address the server logged as listening, e.g. "127.0.0.1:40123" */
  addresses: string[];
  port: number;
  /** the metrics endpoint, e.g. "http://127.0.0.1:40124" (null when metrics are off) */
  metricsUrl: string | null;
  /** parsed JSON log lines so far */
  logs: Record<string, unknown>[];
  /** what it wrote to stderr so far */
  stderr(): string;
  waitForLog(predicate: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  stop(signal?: NodeJS.Signals): Promise<number>;
}

/** Starts `tftpd serve ARGS` (from source, or the binary given) and waits until it listens. */
export async function spawnServer(
  args: string[],
  opts: { binary?: string; env?: Record<string, string | undefined>; expectListeners?: number } = {},
): Promise<ChildServer> {
  const cmd = opts.binary ? [opts.binary, "serve", ...args] : [BUN, MAIN, "serve", ...args];
  // Each server's metrics endpoint on a port of its own, so servers can overlap.
  // Test servers leave the machine's kernel settings alone, and keep root when started as root
  // (as the test preload arranges; build scripts use this helper without it).
  const keepUser = process.geteuid?.() === 0 ? { TFTPD_TFTP_USER: "root" } : {};
  const env = { TFTPD_METRICS_LISTEN: "127.0.0.1:0", TFTPD_TUNE_ENABLED: "false", ...keepUser, ...process.env, ...opts.env };
  const proc = Bun.spawn(cmd, { stdin: "ignore", stdout: "pipe", stderr: "pipe", env });
  const logs: Record<string, unknown>[] = [];
  let stderrText = "";
  const watchers: (() => void)[] = [];
  const notify = (): void => {
    for (const w of watchers.splice(0)) w();
  };

  (async () => {
    const decoder = new TextDecoder();
    let pending = "";
    for await (const chunk of proc.stdout) {
      pending += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        try {
          logs.push(JSON.parse(line));
        } catch {
          logs.push({ raw: line });
        }
      }
      notify();
    }
    notify();
  })();
  (async () => {
    // as it comes: a test may read what the server wrote so far (BUN_JSC_logGC lines)
    const decoder = new TextDecoder();
    for await (const chunk of proc.stderr) stderrText += decoder.decode(chunk, { stream: true });
    notify();
  })();

  const waitForLog = (predicate: (line: Record<string, unknown>) => boolean, timeoutMs = 10_000) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const deadline = setTimeout(
        () => reject(new Error(`timed out waiting for a log line; stderr: ${stderrText}; logs: ${JSON.stringify(logs.slice(-5))}`)),
        timeoutMs,
      );
      const check = (): void => {
        const hit = logs.find(predicate);
        if (hit) {
          clearTimeout(deadline);
          resolve(hit);
        } else if (proc.exitCode !== null && stderrText !== "") {
          clearTimeout(deadline);
          reject(new Error(`server exited ${proc.exitCode}: ${stderrText}`));
        } else {
          watchers.push(check);
        }
      };
      check();
    });

  try {
    await waitForLog((l) => typeof l.msg === "string" && l.msg.startsWith("ready"));
  } catch (error) {
    // a server that never became ready must not outlive the caller (holding its ports)
    proc.kill("SIGKILL");
    await proc.exited;
    throw error;
  }
  const addresses = logs.filter((l) => l.msg === "listening").map((l) => String(l.address));
  const port = Number(addresses[0]?.split(":").pop());
  const metricsAt = logs.find((l) => l.msg === "metrics listening")?.address;
  return {
    proc,
    addresses,
    port,
    metricsUrl: typeof metricsAt === "string" ? `http://${metricsAt}` : null,
    logs,
    stderr: () => stderrText,
    waitForLog,
    async stop(signal = "SIGTERM") {
      if (proc.exitCode === null) proc.kill(signal);
      return await proc.exited;
    },
  };
}

/**
 * `tftpd serve`: load the config (file < TFTPD_* env < flags), join the fleet when the config
 * names one, start the server, log each address once it is listening, reload the config file
 * on SIGHUP, and stop cleanly on SIGINT/SIGTERM.
 */
import { defineCommand } from "citty";
import { loadConfig } from "../config/load.ts";
import { httpOptions, serverOptions, unhonouredSettings } from "../config/server-options.ts";
import { readTestSwitches, type TestSwitches } from "../config/test-switches.ts";
import { joinFleet } from "../cluster/node.ts";
import { TransferTally } from "../cluster/heartbeat.ts";
import { createLogger, flushLogs } from "../log.ts";
import { keepHelperThreadsNice } from "../net/helper-threads.ts";
import { expandListenAddresses } from "../net/interfaces.ts";
import { systemAccounts } from "../ops/accounts.ts";
import type { ServerMetrics } from "../ops/metrics.ts";
import { startNodeEndpoint, type NodeEndpoint } from "../ops/node-endpoint.ts";
import { httpEvents, logReady, logTransferEngine, logUploadSweep, serverEvents } from "../ops/server-log.ts";
import { enterPlan, planPrivileges } from "../ops/privilege.ts";
import { RunningConfig } from "../ops/config-reload.ts";
import { autoTune } from "../ops/tune.ts";
import { LossPlan } from "../server/loss.ts";
import { TftpServer } from "../server/server.ts";
import { HttpFrontend } from "../http/frontend.ts";
import { FileCache } from "../storage/cache.ts";
import { loadRemapFile, type RemapRule } from "../storage/remap.ts";
import { sweepAbandonedUploads } from "../storage/upload-sweep.ts";
import { fail, repeatedFlag, unknownOption } from "./args.ts";

const args = {
  dir: { type: "positional", required: false, description: "Directory to serve, as tftpd-hpa takes it (the same as --root)", valueHint: "DIR" },
  config: { type: "string", description: "Config file (default /etc/tftpd/config.json when it exists)", valueHint: "FILE" },
  root: { type: "string", description: "Directory to serve (default /srv/tftp)", valueHint: "DIR" },
  listen: { type: "string", description: "ADDR:PORT to listen on, repeatable; IPv6 as [::1]:69", valueHint: "ADDR:PORT" },
  write: { type: "string", description: "Uploads: off (default), create (new files only), overwrite", valueHint: "off|create|overwrite" },
  "blksize-max": { type: "string", description: "Largest blksize granted (default 1468)", valueHint: "N" },
  "windowsize-max": { type: "string", description: "Largest windowsize granted (default 64)", valueHint: "N" },
  timeout: { type: "string", description: "Initial retransmit timeout in seconds (default 1)", valueHint: "S" },
  retries: { type: "string", description: "Retransmissions before a transfer is given up (default 5)", valueHint: "N" },
  "port-range": { type: "string", description: "Transfer ports LOW:HIGH (default: ephemeral)", valueHint: "LOW:HIGH" },
  remap: { type: "string", description: "File of remap rules (tftpd-hpa style)", valueHint: "FILE" },
  "log-level": { type: "string", description: "fatal|error|warn|info|debug|trace|silent", valueHint: "LEVEL" },
  redis: { type: "string", description: "Redis seed nodes HOST:PORT[,…] (config cache.redis.nodes)", valueHint: "HOST:PORT,…" },
  // (no default here: citty would print "(Default: true)"; absent means the config decides)
  tune: {
    type: "boolean",
    description: "Tune kernel settings at start-up when the config says so (tune.enabled, default true)",
    negativeDescription: "Leave the kernel's settings alone (config tune.enabled false)",
  },
  user: { type: "string", description: "Started as root: run as USER[:GROUP] once bound (default tftpd, else nobody; root keeps root)", valueHint: "USER[:GROUP]" },
  "metrics-listen": { type: "string", description: "ADDR:PORT of the metrics and health endpoint (default 127.0.0.1:9469)", valueHint: "ADDR:PORT" },
  "http-listen": { type: "string", description: "Serve the root over HTTP too, on ADDR:PORT; repeatable (config http.listen)", valueHint: "ADDR:PORT" },
} as const;

/** Flags → config key paths; values are read like TFTPD_* env values ("8192" is a number). */
const FLAG_KEYS: [flag: string, key: string][] = [
  ["root", "tftp.root"],
  ["write", "tftp.write"],
  ["blksize-max", "tftp.blksize_max"],
  ["windowsize-max", "tftp.windowsize_max"],
  ["timeout", "tftp.timeout"],
  ["retries", "tftp.retries"],
  ["port-range", "tftp.port_range"],
  ["remap", "tftp.remap"],
  ["log-level", "log.level"],
  ["redis", "cache.redis.nodes"],
  ["user", "tftp.user"],
  ["metrics-listen", "metrics.listen"],
];

function flagOverrides(
  values: Record<string, unknown>,
  rawArgs: string[],
): { overrides: Record<string, unknown>; overrideSources: Record<string, string> } {
  const overrides: Record<string, unknown> = {};
  const overrideSources: Record<string, string> = {};
  for (const [flag, key] of FLAG_KEYS) {
    if (values[flag] === undefined) continue;
    overrides[key] = values[flag];
    overrideSources[key] = `--${flag}`;
  }
  if (values.redis !== undefined) {
    // naming the fleet's Redis on the command line means joining it
    overrides["cache.type"] = "distributed";
    overrideSources["cache.type"] = "--redis";
  }
  if (typeof values.dir === "string") {
    overrides["tftp.root"] = values.dir;
    overrideSources["tftp.root"] = "DIR";
  }
  const listen = repeatedFlag(rawArgs, "listen");
  if (listen.length > 0) {
    overrides["tftp.listen"] = listen;
    overrideSources["tftp.listen"] = "--listen";
  }
  const httpListen = repeatedFlag(rawArgs, "http-listen");
  if (httpListen.length > 0) {
    // naming an HTTP address means serving HTTP there
    overrides["http.listen"] = httpListen;
    overrides["http.enabled"] = true;
    overrideSources["http.listen"] = "--http-listen";
    overrideSources["http.enabled"] = "--http-listen";
  }
  return { overrides, overrideSources };
}

/** How long running transfers may finish after SIGTERM (the unit's TimeoutStopSec is 20 s). */
const STOP_GRACE_MS = 15_000;

/** Exits 1 with one line per error on stderr. */
function exitWith(errors: string[]): never {
  for (const line of errors) process.stderr.write(`tftpd serve: ${line}\n`);
  process.exit(1);
}

export default defineCommand({
  meta: { name: "serve", description: "Run the TFTP server" },
  args,
  async run({ args: values, rawArgs }) {
    const unknown = unknownOption(args, rawArgs);
    if (unknown) fail("serve", `unknown option ${unknown} (see tftpd serve --help)`, 2);
    const positionals = (values._ as string[] | undefined) ?? [];
    if (positionals.length > 1) fail("serve", `one directory to serve, got ${positionals.length}: ${positionals.join(" ")} (see tftpd serve --help)`, 2);
    if (values.dir !== undefined && values.root !== undefined) fail("serve", `the root given twice: DIR ${values.dir} and --root ${values.root}; give one`, 2);

    const flags = flagOverrides(values, rawArgs);
    const load = (pushed?: { content: unknown; source: string }) => loadConfig({ file: values.config, env: process.env, pushed, ...flags });
    const loaded = load();
    if (!loaded.ok) exitWith(loaded.errors);
    let test: TestSwitches;
    try {
      test = readTestSwitches();
    } catch (error) {
      fail("serve", (error as Error).message, 1);
    }
    const log = createLogger(loaded.config.log.level);

    // the fleet's pushed config comes first: settings that need a restart take effect now
    const fleet = await joinFleet({ config: loaded.config, log, load, heartbeatMs: test.heartbeatMs, configPollMs: test.configPollMs });
    const config = fleet.config;
    // decided now, so a wrong user stops the start before anything is bound; carried out once all is bound
    const privileges = planPrivileges(config.tftp.user, { uid: process.geteuid!(), gid: process.getegid!() }, systemAccounts);
    if (privileges.action === "refuse") {
      const source = config.tftp.user === null ? null : (loaded.applied.filter((a) => a.key === "tftp.user").at(-1)?.source ?? loaded.source ?? "config");
      exitWith([`${source ? `${source}: ` : ""}tftp.user: ${privileges.reason}`]);
    }
    let remap: RemapRule[] = fleet.startedWith?.rules ?? [];
    if (config.tftp.remap && !fleet.startedWith?.rules) {
      const rules = loadRemapFile(config.tftp.remap);
      if (!rules.ok) exitWith(rules.errors);
      remap = rules.rules;
    }

    const options = serverOptions(config, remap);
    const expanded = expandListenAddresses(options.listen);
    options.listen = expanded.addresses;
    for (const skipped of expanded.skipped) log.debug({ address: skipped }, "not listening on link-local address");
    if (test.workerThrowAfterJobs !== null) {
      options.workerThrowAfterJobs = test.workerThrowAfterJobs;
      log.warn({ after_jobs: test.workerThrowAfterJobs }, "test switch: the first transfer worker will throw");
    }
    if (test.drop !== null) {
      options.loss = LossPlan.parse(test.drop);
      log.warn({ drop: test.drop }, "test loss injection is on");
    }

    // one file cache, shared by the local root and the fleet's files
    const cache = new FileCache(options.cacheBytes);
    // transfer counts for the fleet heartbeat (kept whether or not metrics are on)
    const tally = new TransferTally();
    let metrics: ServerMetrics | null = null;
    const events = serverEvents({ log, metrics: () => metrics, tally, receiveBufferBytes: options.receiveBufferBytes });
    const server = new TftpServer(options, { events, cache, ...fleet.serverDeps(cache) });

    if (values.tune !== false && config.tune.enabled) {
      // Raise what the config needs (never lowers); without privileges it only warns.
      const tuned = await autoTune(config, { sysctlRoot: test.sysctlRoot ?? undefined });
      for (const c of tuned.changed) log.info({ key: c.key, from: c.from, to: c.to }, "tuned");
      for (const f of tuned.failed) log.warn({ key: f.key, reason: f.reason }, "could not tune");
    }
    try {
      await server.start();
    } catch (error) {
      fail("serve", (error as Error).message);
    }
    for (const line of unhonouredSettings(config)) log.warn(line);
    logTransferEngine(log, server, options.ioLoop ?? "bun");
    const helperThreads = keepHelperThreadsNice(config.performance.cpu.runtime_threads_nice, (why) =>
      log.warn({ reason: why }, "performance.cpu.runtime_threads_nice: the runtime's background threads keep the server's priority"),
    );
    let ops: NodeEndpoint | null = null;
    if (config.metrics.enabled) {
      try {
        ops = startNodeEndpoint(config, server, fleet);
      } catch (error) {
        fail("serve", `metrics.listen ${config.metrics.listen}: ${(error as Error).message}`);
      }
      metrics = ops.metrics;
      log.info({ address: ops.address }, "metrics listening");
    }
    let http: HttpFrontend | null = null;
    if (config.http.enabled) {
      try {
        http = await HttpFrontend.start(server, httpOptions(config), httpEvents({ log, metrics: () => metrics }));
      } catch (error) {
        fail("serve", (error as Error).message);
      }
    }
    // Everything is bound and open: from here on the server is the user it serves as.
    const roots = [{ key: "tftp.root", path: config.tftp.root }, ...config.tftp.rules.flatMap((r, i) => (r.root ? [{ key: `tftp.rules[${i}].root`, path: r.root }] : []))];
    const lost = enterPlan(privileges, { log, roots, uploads: config.tftp.write !== "off" });
    if (lost) {
      flushLogs();
      exitWith([lost]);
    }
    // Crash-only uploads: temporary files of uploads an earlier process never finished go now,
    // in the background (the walk of a big root must not delay serving; live uploads are safe).
    const idleMs = Math.max(config.connection_pool.idle_timeout, config.connection_pool.connection_timeout) * 1000;
    logUploadSweep(log, config.tftp.root, sweepAbandonedUploads(config.tftp.root, { staleAfterMs: 2 * idleMs }));
    logReady(log, server.addresses, { root: config.tftp.root, config: loaded.source, write: config.tftp.write });
    // the config the server runs on: a pushed fleet config and SIGHUP change it while it runs
    const running = new RunningConfig(config, log, server, fleet.startedWith?.origin ?? null);
    fleet.serve(server, { metricsUrl: ops?.url ?? null, tally }, running);
    // SIGHUP: the config file (and its remap rule file) read again, over the flags and env as at
    // start, with the fleet's pushed config layered in as before
    process.on("SIGHUP", () => {
      const pushed = fleet.latestPushed() ?? undefined;
      running.apply(load(pushed), { name: "config file", about: { signal: "SIGHUP", config: loaded.source }, pushed, rereadRules: true });
    });

    // SIGTERM/SIGINT: stop taking requests, let running transfers finish for up to
    // STOP_GRACE_MS (a second signal ends them at once), then exit 0.
    let stopping = false;
    const shutdown = async (signal: string): Promise<void> => {
      if (stopping) {
        log.warn({ signal, active: server.activeTransfers }, "stopping now");
        await server.stop();
      } else {
        stopping = true;
        const active = server.activeTransfers;
        // no request is taken from here on (drain's first step), before anyone can read that it stops
        const draining = server.drain(STOP_GRACE_MS);
        log.info({ signal, active, grace_ms: STOP_GRACE_MS }, "stopping");
        const cut = await draining;
        if (cut > 0) log.warn({ cut }, "transfers still running at the end of the grace period were ended");
      }
      helperThreads.stop();
      ops?.stop(true);
      await http?.stop();
      await fleet.stop();
      flushLogs();
      process.exit(0);
    };
    process.on("SIGINT", () => void shutdown("SIGINT"));
    process.on("SIGTERM", () => void shutdown("SIGTERM"));
  },
});

#!/usr/bin/env bun
/**
 * Side-by-side benchmark of our server against the Debian peers (tftpd-hpa, atftpd, dnsmasq),
 * all on 127.0.0.1, the same scenarios, the same load generator (`tftpd bench --json`), one run.
 * Prints one markdown table (server × scenario) to stdout and writes build/BENCH.md.
 *
 *   bun build/bench-peers.ts [--scenarios 1,2,5a] [--servers tftpd,atftpd] [--quick]
 *                            [--ours-from-source] [--build] [--before PATH] [--bench-cmd "CMD …"]
 *                            [--run-timeout S] [--settle S] [--verify] [--out FILE] [--no-write]
 *
 * --before PATH also runs our server as it was before a change, as row "tftpd (before)" beside
 * "tftpd" in every scenario: the same flags (OURS_SERVE_FLAGS), config (OURS_CONFIG), load
 * generator and accounting, run right after "tftpd" in the same order as every server. PATH is
 * a compiled binary, or a source tree run as `bun PATH/src/main.ts serve` (its node_modules is
 * linked to this repository's when missing). Compare like with like: a binary against
 * dist/tftpd, a tree against --ours-from-source. The table's column "tftpd ÷ before" holds the
 * ratios of goodput, p99 first response and CPU per GiB.
 *
 * Peers are fetched on first use with `apt-get download` + `dpkg -x` into .bench/ (never
 * installed: tftpd-hpa and atftpd conflict as packages); see build/peers.ts.
 */
import type { BenchResult } from "../src/bench/tally.ts";
import { accessSync, chmodSync, closeSync, constants, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync, writeSync } from "node:fs";
import { randomFillSync } from "node:crypto";
import { cpus, tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { ensurePeer, type PeerBinary } from "./peers.ts";
import { alive, ignoresSigchld, machineBusySeconds, MemorySampler, peakRssKiB, ProcessAccounting, threadCpu, threadSplit, treeCpu } from "./proc.ts";
import { compiledC } from "./c-tool.ts";

const REPO = resolve(import.meta.dir, "..");
const BUN = process.execPath;
const CACHE = join(REPO, ".bench");
const OURS_BIN = join(REPO, "dist/tftpd");

/** Our server's tuning flags for the benchmark: the one place to add what the engine grows. */
const OURS_SERVE_FLAGS = ["--no-tune", "--log-level", "warn", "--windowsize-max", "64", "--blksize-max", "8192"];
/**
 * Config file given to our server (--config, so /etc/tftpd/config.json is not read): every
 * simulated client of the load generator shares 127.0.0.1, so the per-IP / per-client
 * admission limits (meant for one real machine each) are raised out of the way; the peers
 * have no such limits.
 */
const LIFTED_LIMITS = { limits: { max_connections_per_ip: 100000, max_connections_per_client: 100000, requests_per_second_per_ip: 0 } };
/**
 * The lean client (build/loadgen.c) sends each session from its own address in 127.0.0.0/8, as
 * real PXE clients have one each: with it our server runs on the product's default limits.
 */
const LEAN_SOURCES = 2000;
/** the scenarios --lean-client runs: the closed-loop storms */
const LEAN_SCENARIOS = ["1", "1u", "2"];
const DEFAULT_LIMITS = { limits: {} };
let OURS_CONFIG: BenchConfig = LIFTED_LIMITS;
/** --lean-client: sessions from LEAN_SOURCES addresses, our server on DEFAULT_LIMITS */
let manySources = false;
/** atftpd: one thread per transfer; its descriptors must stay below 1024 (select()). */
const ATFTPD_MAXTHREAD = 10000;
const ATFTPD_NOFILE = 1024;

// ───────────────────────────── scenarios ─────────────────────────────

const KiB = 1024;
const MiB = 1024 * KiB;

interface Scenario {
  id: string;
  title: string;
  file: string;
  size: number;
  concurrency: number;
  total: number;
  /** Load-generator flags besides target/concurrency/total/file/json. */
  flags: string[];
  /** One transfer: pin server and load generator to different CPUs (see --pin). */
  single?: boolean;
}

const SCENARIOS: Scenario[] = [
  { id: "1", title: "boot storm", file: "boot-1m.bin", size: 1 * MiB, concurrency: 1000, total: 5000, flags: ["--blksize", "1468", "--tsize"] },
  // UEFI firmware asks for windowsize 4 with tsize (EDK2's TFTP client)
  { id: "1u", title: "UEFI storm (windowsize 4)", file: "boot-1m.bin", size: 1 * MiB, concurrency: 1000, total: 5000, flags: ["--blksize", "1468", "--windowsize", "4", "--tsize"] },
  { id: "2", title: "kernel storm (iPXE)", file: "kernel-10m.bin", size: 10 * MiB, concurrency: 200, total: 400, flags: ["--blksize", "1432", "--tsize"] },
  { id: "3", title: "burst", file: "loader-32k.bin", size: 32 * KiB, concurrency: 10000, total: 20000, flags: ["--burst"] },
  { id: "4", title: "ramp 2000/s", file: "loader-32k.bin", size: 32 * KiB, concurrency: 10000, total: 20000, flags: ["--rate", "2000"] },
  // A windowed 100 MiB transfer takes ~0.1-0.3 s here, so one is at the mercy of a single
  // scheduling hiccup: five in a row, one at a time, give a steadier figure of the same thing.
  { id: "5a", title: "single, blksize 1468 + windowsize 64", file: "initrd-100m.bin", size: 100 * MiB, concurrency: 1, total: 5, flags: ["--blksize", "1468", "--windowsize", "64"], single: true },
  { id: "5b", title: "single, blksize 8192 + windowsize 64", file: "initrd-100m.bin", size: 100 * MiB, concurrency: 1, total: 5, flags: ["--blksize", "8192", "--windowsize", "64"], single: true },
  { id: "5c", title: "single, blksize 1468, lock-step", file: "initrd-100m.bin", size: 100 * MiB, concurrency: 1, total: 1, flags: ["--blksize", "1468"], single: true },
  // What a boot loader does between its big files: one small config after another (pxelinux
  // asks for up to a dozen names per machine). Measures what a request costs, not bandwidth.
  { id: "6", title: "config files, one after another", file: "pxelinux-default.cfg", size: 1 * KiB, concurrency: 1, total: 3000, flags: [], single: true },
];

const PROBE_FILE = "probe.bin";
/** Small requests every server answers before it is measured (measure(): warm, not cold). */
const WARM_REQUESTS = 50;
/**
 * Probe transfers in a storm's own shape before the storm is measured (--warm-storm): a
 * thousand clients at once take paths that fifty requests one at a time never warm (a JIT's
 * optimizing tiers compile after thousands of calls, and until then compete with the server
 * for the CPU).
 */
const WARM_STORM_TRANSFERS = 10_000;
/** Small files one after another (scenario 6) warm up with one unmeasured run of their own, as storms do. */
const SMALL_FILE_BYTES = 64 * 1024;

// ───────────────────────────── options ─────────────────────────────

const SERVER_NAMES = ["tftpd", "tftpd-hpa", "atftpd", "dnsmasq"] as const;
/** Our server before a change (--before): measured beside "tftpd", never counted as a peer. */
const BEFORE = "tftpd-before";
type ServerName = (typeof SERVER_NAMES)[number] | typeof BEFORE;

/** The name a server has in the table and the report. */
function serverLabel(name: ServerName): string {
  return name === BEFORE ? "tftpd (before)" : name;
}
const SERVER_ALIASES: Record<string, ServerName> = {
  tftpd: "tftpd", ours: "tftpd", "tftpd-hpa": "tftpd-hpa", hpa: "tftpd-hpa", "in.tftpd": "tftpd-hpa",
  atftpd: "atftpd", atftp: "atftpd", dnsmasq: "dnsmasq",
};

interface Options {
  scenarios: Scenario[];
  servers: ServerName[];
  quick: boolean;
  oursFromSource: boolean;
  /** --before: a binary, or a source tree, of our server before a change; null = not run. */
  before: string | null;
  build: boolean;
  benchCmd: string[] | null;
  runTimeoutS: number;
  settleS: number;
  verify: boolean;
  pin: "auto" | "on" | "off";
  /** Runs per server and scenario (median reported); null = 3 for single transfers, else 1. */
  repeat: number | null;
  out: string | null;
  /** --scaling: the boot storm against 1..CPUs transfer engines instead of the peer table */
  scaling: boolean;
  /** --warm-storm: probe transfers in the scenario's shape before a storm is measured (0: none) */
  warmStorm: number;
}

const USAGE = `usage: bun build/bench-peers.ts [options]

Benchmarks our server (dist/tftpd) against tftpd-hpa, atftpd and dnsmasq on 127.0.0.1 with
the same load generator (tftpd bench) and prints one table; writes build/BENCH.md.

  --scenarios LIST     scenario ids, comma-separated (default all: ${SCENARIOS.map((s) => s.id).join(",")})
  --servers LIST       servers, comma-separated (default all: ${SERVER_NAMES.join(",")};
                       tftpd = ours, also: ours, hpa, atftp)
  --quick              divide every total by 10 (a fast check, not a result)
  --ours-from-source   run our server as \`bun src/main.ts serve\` instead of dist/tftpd
  --before PATH        also run our server as it was before a change, row "tftpd (before)"
                       next to "tftpd" in every scenario, measured the same way; PATH is a
                       compiled binary or a source tree (run as \`bun PATH/src/main.ts serve\`;
                       a missing PATH/node_modules is linked to this repository's). Compare a
                       binary with dist/tftpd, a tree with --ours-from-source
  --build              run \`bun build/compile.ts\` (npm run build) first
  --bench-cmd "CMD"    load generator command instead of \`dist/tftpd bench\` (split on spaces)
  --scaling            instead of the peer table: the boot storm (scenario 1) against our
                       server with 1, 2, .. N transfer engines (performance.cpu.worker_threads,
                       N = the CPUs), the server pinned to the last k CPUs and the load
                       generator to the others (sharing them when none is left); writes
                       build/BENCH-scaling.md unless --out says otherwise
  --lean-client        load generator build/loadgen.c (compiled with cc into .bench/): closed-
                       loop storms only (1, 1u, 2; the others are left out, or refused when
                       --scenarios names them); uses about a third of the CPU of tftpd
                       bench, so on a small machine the storms measure the servers, not the
                       client; its sessions send from ${LEAN_SOURCES} addresses of 127.0.0.0/8, so
                       our server keeps the product's default limits
  --run-timeout S      hard limit on one load-generator run (default 300); "timeout" if hit
  --settle S           pause between runs (default 1.5)
  --warm-storm N       before each storm is measured, N transfers of the 4 KiB probe file in
                       the storm's shape (its concurrency, block size, window, tsize and
                       source addresses), unmeasured, on every server (default ${WARM_STORM_TRANSFERS};
                       0: none, the storm then meets code compiled for 50 requests only);
                       before small files one after another (6), one unmeasured run of it
  --verify             have the load generator compare every download with the file
  --repeat N          runs per server and scenario, each on a fresh server, in rounds of one
                       run per server (every other round in reverse order); the table shows
                       the median by goodput (default 3 for 5a-5c and 6, which last seconds, else 1)
  --pin auto|on|off    pin the server to CPU 1 and the load generator to CPU 0 (taskset):
                       auto (default) = only in the one-at-a-time scenarios (5a-5c, 6)
  --out FILE           report file (default build/BENCH.md)
  --no-write           print the table only
  -h, --help           this text

Scenarios:
${SCENARIOS.map((s) => `  ${s.id.padEnd(3)} ${s.title}: ${fmtBytes(s.size)}, concurrency ${s.concurrency}, total ${s.total} ${s.flags.join(" ")}`).join("\n")}
`;

function die(msg: string, code = 2): never {
  process.stderr.write(`bench-peers: ${msg}\n`);
  process.exit(code);
}

function parseOptions(argv: string[]): Options {
  const o: Options = {
    scenarios: SCENARIOS, servers: [...SERVER_NAMES], quick: false, oursFromSource: false, before: null, build: false,
    benchCmd: null, runTimeoutS: 300, settleS: 1.5, verify: false, pin: "auto", repeat: null, out: join(REPO, "build/BENCH.md"), scaling: false,
    warmStorm: WARM_STORM_TRANSFERS,
  };
  let scenariosGiven = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.indexOf("=");
    const name = arg.startsWith("--") && eq > 0 ? arg.slice(0, eq) : arg;
    const value = (): string => {
      if (arg.startsWith("--") && eq > 0) return arg.slice(eq + 1);
      const v = argv[++i];
      if (v === undefined) die(`${name} needs a value`);
      return v;
    };
    const num = (min: number): number => {
      const v = value();
      const n = Number(v);
      if (!Number.isFinite(n) || n < min) die(`${name}: bad number "${v}"`);
      return n;
    };
    switch (name) {
      case "-h": case "--help": process.stdout.write(USAGE); process.exit(0);
      case "--quick": o.quick = true; break;
      case "--scaling": o.scaling = true; break;
      case "--ours-from-source": o.oursFromSource = true; break;
      case "--build": o.build = true; break;
      case "--verify": o.verify = true; break;
      case "--no-write": o.out = null; break;
      case "--out": o.out = resolve(value()); break;
      case "--before": o.before = resolve(value()); break;
      case "--run-timeout": o.runTimeoutS = num(1); break;
      case "--settle": o.settleS = num(0); break;
      case "--warm-storm": o.warmStorm = Math.floor(num(0)); break;
      case "--repeat": o.repeat = Math.floor(num(1)); break;
      case "--bench-cmd": o.benchCmd = value().trim().split(/\s+/); break;
      case "--lean-client": o.benchCmd = [leanClient()]; OURS_CONFIG = DEFAULT_LIMITS; manySources = true; break;
      case "--pin": {
        const v = value();
        if (v !== "auto" && v !== "on" && v !== "off") die(`--pin: auto, on or off, not "${v}"`);
        o.pin = v;
        break;
      }
      case "--scenarios": {
        const ids = value().split(",").map((s) => s.trim().toLowerCase()).filter(Boolean);
        for (const id of ids) if (!SCENARIOS.some((s) => s.id === id)) die(`--scenarios: unknown scenario "${id}" (have ${SCENARIOS.map((s) => s.id).join(",")})`);
        o.scenarios = SCENARIOS.filter((s) => ids.includes(s.id));
        scenariosGiven = true;
        break;
      }
      case "--servers": {
        const names = value().split(",").map((s) => s.trim().toLowerCase()).filter(Boolean);
        const picked = new Set<ServerName>();
        for (const n of names) {
          const s = SERVER_ALIASES[n];
          if (!s) die(`--servers: unknown server "${n}" (have ${SERVER_NAMES.join(",")})`);
          picked.add(s);
        }
        o.servers = SERVER_NAMES.filter((s) => picked.has(s));
        break;
      }
      default: die(`unknown option ${arg} (see --help)`);
    }
  }
  if (manySources) {
    // build/loadgen.c keeps a set number of sessions going (no --burst or --rate), and the
    // one-at-a-time scenarios would send all their requests from one address, past the
    // product's default request rate that our server keeps under --lean-client
    const others = o.scenarios.filter((s) => !LEAN_SCENARIOS.includes(s.id));
    if (others.length > 0) {
      const ids = others.map((s) => s.id).join(", ");
      if (scenariosGiven) die(`--lean-client runs the storms ${LEAN_SCENARIOS.join(", ")} only; leave ${ids} out of --scenarios`);
      process.stderr.write(`bench-peers: --lean-client: scenarios ${ids} left out (it runs the storms ${LEAN_SCENARIOS.join(", ")} only)\n`);
      o.scenarios = o.scenarios.filter((s) => !others.includes(s));
    }
  }
  if (o.scenarios.length === 0) die("no scenario selected");
  if (o.servers.length === 0) die("no server selected");
  return o;
}

// ───────────────────────────── small helpers ─────────────────────────────

const t0 = performance.now();
function say(line: string): void {
  const s = ((performance.now() - t0) / 1000).toFixed(1).padStart(6);
  process.stderr.write(`[${s}s] ${line}\n`);
}

function fmtBytes(n: number): string {
  if (n >= MiB && n % MiB === 0) return `${n / MiB} MiB`;
  if (n >= KiB && n % KiB === 0) return `${n / KiB} KiB`;
  return `${n} B`;
}

/** Paths inside the repository shown relative to it (the report is read on other machines). */
function display(argv: string[]): string {
  return argv.map((a) => shellQuote(a.replaceAll(`${REPO}/`, ""))).join(" ");
}

function shellQuote(a: string): string {
  return /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function spawnText(argv: string[], timeoutMs = 30_000): { ok: boolean; out: string } {
  try {
    const r = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe", timeout: timeoutMs });
    return { ok: r.exitCode === 0, out: r.stdout.toString() + r.stderr.toString() };
  } catch (e) {
    return { ok: false, out: String(e) };
  }
}

/** Is some UDP socket bound to PORT on 127.0.0.1 or the wildcard (from /proc/net/udp)? */
function udpBound(port: number, anyAddress = false): boolean {
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  for (const file of ["/proc/net/udp", ...(anyAddress ? ["/proc/net/udp6"] : [])]) {
    let text = "";
    try {
      text = readFileSync(file, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const local = line.trim().split(/\s+/)[1];
      if (!local) continue;
      const [addr, p] = local.split(":");
      if (p !== hex) continue;
      if (anyAddress || addr === "0100007F" || addr === "00000000") return true;
    }
  }
  return false;
}

async function freeUdpPort(): Promise<number> {
  for (;;) {
    const sock = await Bun.udpSocket({ hostname: "127.0.0.1", port: 0 });
    const port = sock.port;
    sock.close();
    if (port !== 69) return port;
  }
}

// ───────────────────────────── child processes ─────────────────────────────

/** Every process group we started and have not seen end; killed on exit, error or signal. */
const liveGroups = new Set<number>();
let pidFile = "";

function recordPids(): void {
  if (!pidFile) return;
  try {
    writeFileSync(pidFile, [...liveGroups].join("\n") + "\n");
  } catch {
    /* best effort */
  }
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      /* gone */
    }
  }
}

function killAllNow(): void {
  ProcessAccounting.stopAll();
  for (const pid of liveGroups) killGroup(pid, "SIGKILL");
  liveGroups.clear();
  recordPids();
}

/**
 * Processes left by an earlier run of this script that died hard (SIGKILL): still holding
 * port 69 or CPU. Only pids we recorded whose executable is one of ours (or `also`: the
 * --before binary) are ended.
 */
function reapStale(also: string[]): void {
  if (!existsSync(pidFile)) return;
  // That run may have left process accounting on (it is on only while a forking server runs).
  ProcessAccounting.forceOff();
  for (const word of readFileSync(pidFile, "utf8").split(/\s+/)) {
    const pid = Number(word);
    if (!Number.isInteger(pid) || pid <= 1) continue;
    let exe = "";
    try {
      exe = readlinkSync(`/proc/${pid}/exe`);
    } catch {
      continue;
    }
    if (exe.startsWith(CACHE) || exe === OURS_BIN || exe === BUN || also.includes(exe) || exe === "/usr/bin/dash" || exe === "/bin/dash") {
      say(`ending pid ${pid} (${exe}) left by an earlier run`);
      killGroup(pid, "SIGKILL");
    }
  }
  rmSync(pidFile, { force: true });
}

interface Child {
  proc: Bun.Subprocess;
  pid: number;
}

function spawnGroup(argv: string[], logPath: string | null, extra: Partial<Parameters<typeof Bun.spawn>[1]> = {}): Child {
  const fd = logPath ? openSync(logPath, "a") : null;
  const proc = Bun.spawn(argv, {
    stdin: "ignore",
    stdout: fd ?? "pipe",
    stderr: fd ?? "pipe",
    detached: true,
    ...extra,
  } as Parameters<typeof Bun.spawn>[1]);
  if (fd !== null) closeSync(fd);
  liveGroups.add(proc.pid);
  recordPids();
  void proc.exited.then(() => {
    // The group may outlive its leader (forked children): leave it in liveGroups until stop().
  });
  return { proc, pid: proc.pid };
}

async function stopGroup(child: Child, graceMs = 3000): Promise<void> {
  killGroup(child.pid, "SIGTERM");
  const done = await Promise.race([child.proc.exited.then(() => true), sleep(graceMs).then(() => false)]);
  // Kill the rest of the group either way: forked children of tftpd-hpa, a hung leader.
  killGroup(child.pid, "SIGKILL");
  if (!done) await Promise.race([child.proc.exited, sleep(2000)]);
  liveGroups.delete(child.pid);
  recordPids();
}

// ───────────────────────────── servers ─────────────────────────────

interface ServerSpec {
  name: ServerName;
  /** Fixed port (dnsmasq's TFTP is always on 69), else a free one is picked per start. */
  fixedPort?: number;
  argv(root: string, port: number, runDir: string): string[];
  /** our server's config file, written into the run directory */
  configFile?: { name: string; config: BenchConfig };
  version: string;
  /** What the report says about how it was run. */
  note: string;
}

function oursSpec(fromSource: boolean): ServerSpec {
  const base = fromSource ? [BUN, join(REPO, "src/main.ts")] : [OURS_BIN];
  const v = spawnText([...base, "version"]).out.trim().split("\n")[0] ?? "?";
  const { config, dropped } = configKnownTo(base);
  if (dropped.length > 0) say(`tftpd: has no ${dropped.join(", ")}: left out of its config (nothing to lift)`);
  return ourServerSpec("tftpd", base, v + (fromSource ? " (from source)" : ""), fromSource ? "run from source with bun" : "compiled dist/tftpd", config);
}

/** Our server, new or before (`base` = the command up to "serve"): one set of flags for both. */
function ourServerSpec(name: "tftpd" | typeof BEFORE, base: string[], version: string, how: string, config: BenchConfig = OURS_CONFIG): ServerSpec {
  const file = name === BEFORE ? "tftpd-before-bench.json" : "tftpd-bench.json";
  return {
    name,
    argv: (root, port, runDir) => [
      ...base, "serve", "--config", join(runDir, file), "--root", root, "--listen", `127.0.0.1:${port}`, ...OURS_SERVE_FLAGS,
    ],
    configFile: { name: file, config },
    version,
    note:
      manySources
        ? `${how}; .bench/run/${file} = \`${JSON.stringify(config)}\` (the product's default limits: the load generator's sessions send from ${LEAN_SOURCES} addresses)`
        : `${how}; .bench/run/${file} = \`${JSON.stringify(config)}\` (all simulated clients share 127.0.0.1, so the per-IP/per-client admission limits and the per-IP request rate are lifted)`,
  };
}

type BenchConfig = { limits: Record<string, number>; performance?: { cpu: { worker_threads: number } } };

/**
 * OURS_CONFIG as a build of our server takes it: a limit it does not know (one from before the
 * limit existed) is one it does not have, so there is nothing to lift (its `config check` names
 * such keys "unknown key").
 */
function configKnownTo(base: string[]): { config: BenchConfig; dropped: string[] } {
  const limits: Record<string, number> = { ...OURS_CONFIG.limits };
  const dropped: string[] = [];
  const dir = mkdtempSync(join(tmpdir(), "tftpd-bench-config-"));
  try {
    for (let attempt = 0; attempt < 8; attempt++) {
      const file = join(dir, "check.json");
      // (a root that exists: `config check` refuses a config whose root it could not serve)
      writeFileSync(file, JSON.stringify({ tftp: { root: dir }, limits }));
      const checked = spawnText([...base, "config", "check", file]);
      if (checked.ok) break;
      const unknown = [...checked.out.matchAll(/limits\.([a-z_]+): unknown key/g)].map((m) => m[1]!).filter((k) => k in limits);
      if (unknown.length === 0) die(`--before: \`${display([...base, "config", "check"])}\` rejects the benchmark config:\n${checked.out.trim()}`, 1);
      for (const key of unknown) {
        delete limits[key];
        dropped.push(`limits.${key}`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return { config: { limits }, dropped };
}

/**
 * Our server before a change (--before PATH): a compiled binary, or a source tree run with the
 * same bun as --ours-from-source. A tree without node_modules (a `git archive` or worktree) gets
 * a link to this repository's; `warn` hears when its dependencies are not the same as ours.
 */
function beforeSpec(path: string, warn: (line: string) => void): { spec: ServerSpec; fromSource: boolean } {
  if (!existsSync(path)) die(`--before: ${path} does not exist`);
  const fromSource = statSync(path).isDirectory();
  let base: string[];
  if (fromSource) {
    const main = join(path, "src/main.ts");
    if (!existsSync(main)) die(`--before: ${path} is a directory without src/main.ts (want a source tree or a binary)`);
    const modules = join(path, "node_modules");
    if (!existsSync(modules)) {
      symlinkSync(join(REPO, "node_modules"), modules);
      say(`tftpd (before): linked ${modules} → ${join(REPO, "node_modules")}`);
    }
    const deps = (dir: string) => JSON.stringify((JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { dependencies?: unknown }).dependencies ?? {});
    if (existsSync(join(path, "package.json")) && readlinkOrNull(modules) === join(REPO, "node_modules") && deps(path) !== deps(REPO)) {
      warn(`${path}/package.json has other dependencies than this repository's, but its node_modules is this repository's`);
    }
    base = [BUN, main];
  } else {
    try {
      accessSync(path, constants.X_OK);
    } catch {
      die(`--before: ${path} is not executable`);
    }
    base = [path];
  }
  const v = spawnText([...base, "version"]);
  if (!v.ok) die(`--before: \`${display([...base, "version"])}\` failed:\n${v.out.trim()}`, 1);
  const version = (v.out.trim().split("\n")[0] ?? "?") + (fromSource ? " (from source)" : "");
  const { config, dropped } = configKnownTo(base);
  if (dropped.length > 0) say(`tftpd (before): has no ${dropped.join(", ")}: left out of its config (nothing to lift)`);
  return { spec: ourServerSpec(BEFORE, base, version, `${fromSource ? "run from source with bun" : "compiled"}: ${path}`, config), fromSource };
}

function readlinkOrNull(path: string): string | null {
  try {
    return readlinkSync(path);
  } catch {
    return null;
  }
}

function peerSpec(name: Exclude<ServerName, "tftpd" | typeof BEFORE>, bin: PeerBinary): ServerSpec {
  const version = `${bin.pkg} ${bin.version}`;
  switch (name) {
    case "tftpd-hpa":
      return {
        name, version,
        note: "one forked process per transfer; --user root to skip the privilege drop; no windowsize",
        argv: (root, port) => [bin.path, "--foreground", "--address", `127.0.0.1:${port}`, "--user", "root", "--secure", root],
      };
    case "atftpd":
      return {
        name, version,
        note: `one thread per transfer; started under \`ulimit -n ${ATFTPD_NOFILE}\` (select() aborts on descriptors >= 1024), --maxthread ${ATFTPD_MAXTHREAD}`,
        argv: (root, port) => [
          "sh", "-c", `ulimit -n ${ATFTPD_NOFILE} && exec "$0" "$@"`, bin.path,
          "--daemon", "--no-fork", "--user", "root", "--group", "root", "--bind-address", "127.0.0.1", "--port", String(port),
          "--maxthread", String(ATFTPD_MAXTHREAD), "--verbose=3", "--logfile", "/dev/null", root,
        ],
      };
    case "dnsmasq":
      return {
        name, version, fixedPort: 69,
        note: "single process, TFTP only (--port=0); its TFTP port is always 69; ignores windowsize",
        argv: (root, _port, runDir) => [
          bin.path, "--no-daemon", "--conf-file=/dev/null", "--port=0", "--enable-tftp", `--tftp-root=${root}`,
          "--listen-address=127.0.0.1", "--bind-interfaces", "--tftp-max=20000", "--edns-packet-max=65535",
          "--quiet-tftp", "--user=root", `--pid-file=${join(runDir, "dnsmasq.pid")}`,
        ],
      };
  }
}

interface Running {
  spec: ServerSpec;
  child: Child;
  port: number;
  log: string;
}

/** `taskset -c CPUS` in front of argv (a CPU or a list such as "1-3"), or argv when not pinned. */
function pinned(argv: string[], cpu: number | string | null): string[] {
  return cpu === null ? argv : ["taskset", "-c", String(cpu), ...argv];
}

async function startServer(spec: ServerSpec, root: string, runDir: string, tag: string, cpu: number | string | null): Promise<Running> {
  const port = spec.fixedPort ?? (await freeUdpPort());
  if (spec.fixedPort !== undefined && udpBound(port, true)) throw new Error(`UDP port ${port} is already in use`);
  const log = join(runDir, `${spec.name}-${tag}.log`);
  const child = spawnGroup(pinned(spec.argv(root, port, runDir), cpu), log);
  const deadline = performance.now() + 15_000;
  while (!udpBound(port)) {
    if (child.proc.exitCode !== null || child.proc.signalCode !== null) {
      liveGroups.delete(child.pid);
      throw new Error(`exited (${child.proc.exitCode ?? child.proc.signalCode}) before listening:\n${tail(log)}`);
    }
    if (performance.now() > deadline) {
      await stopGroup(child);
      throw new Error(`not listening on 127.0.0.1:${port} after 15 s:\n${tail(log)}`);
    }
    await sleep(50);
  }
  return { spec, child, port, log };
}

function tail(path: string, lines = 8): string {
  try {
    return readFileSync(path, "utf8").trimEnd().split("\n").slice(-lines).map((l) => `    ${l}`).join("\n");
  } catch {
    return "    (no log)";
  }
}

// ───────────────────────────── load generator ─────────────────────────────

/**
 * What `tftpd bench --json` prints (src/bench/tally.ts); the lean client adds when the first
 * reply reached the session's socket (the kernel's receive time stamp), without its own
 * lateness in reading it.
 */
type BenchJson = BenchResult & { first_arrival_ms?: BenchResult["first_response_ms"] };

interface BenchRun {
  status: "ok" | "timeout" | "error";
  json: BenchJson | null;
  argv: string[];
  detail: string;
}

function lastJsonObject(text: string): BenchJson | null {
  const lines = text.trim().split("\n");
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i]!.trim();
    if (!line.startsWith("{")) continue;
    try {
      return JSON.parse(line) as BenchJson;
    } catch {
      /* keep looking */
    }
  }
  // Pretty-printed JSON: take from the first "{" at a line start.
  const start = text.indexOf("\n{") >= 0 ? text.indexOf("\n{") + 1 : text.startsWith("{") ? 0 : -1;
  if (start >= 0) {
    try {
      return JSON.parse(text.slice(start)) as BenchJson;
    } catch {
      /* not JSON */
    }
  }
  return null;
}

async function runBench(loadgen: string[], target: string, args: string[], timeoutS: number, cpu: number | string | null = null): Promise<BenchRun> {
  const argv = [...loadgen, target, ...args, "--json"];
  const child = spawnGroup(pinned(argv, cpu), null, { stdout: "pipe", stderr: "pipe" });
  const stdoutP = new Response(child.proc.stdout as ReadableStream).text();
  const stderrP = new Response(child.proc.stderr as ReadableStream).text();
  let timedOut = false;
  let hardKill: ReturnType<typeof setTimeout> | null = null;
  // At the limit: SIGINT first (tftpd bench then prints what finished so far), SIGKILL 5 s later.
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup(child.pid, "SIGINT");
    hardKill = setTimeout(() => killGroup(child.pid, "SIGKILL"), 5000);
  }, timeoutS * 1000);
  const code = await child.proc.exited;
  clearTimeout(timer);
  if (hardKill !== null) clearTimeout(hardKill);
  killGroup(child.pid, "SIGKILL");
  liveGroups.delete(child.pid);
  recordPids();
  const [stdout, stderr] = await Promise.all([stdoutP, stderrP]);
  const json = lastJsonObject(stdout);
  if (timedOut) return { status: "timeout", json, argv, detail: `stopped after ${timeoutS} s${json ? " (partial figures in the JSON it printed)" : ""}` };
  if (json === null) {
    return { status: "error", json: null, argv, detail: `exit ${code}, no JSON; stderr: ${(stderr || stdout).trim().split("\n").slice(-3).join(" | ")}` };
  }
  return { status: "ok", json, argv, detail: code === 0 ? "" : `exit ${code}` };
}

/** build/loadgen.c, compiled into .bench/loadgen when needed. */
function leanClient(): string {
  try {
    return compiledC("loadgen");
  } catch (error) {
    die(`--lean-client: ${(error as Error).message}`, 1);
  }
}

function resolveLoadgen(o: Options): { argv: string[]; label: string } {
  if (o.benchCmd) {
    const lean = o.benchCmd.length === 1 && o.benchCmd[0] === join(REPO, ".bench/loadgen");
    return { argv: o.benchCmd, label: lean ? "build/loadgen.c (cc -O2, --lean-client)" : display(o.benchCmd) };
  }
  const hasBench = (base: string[]) => {
    const r = spawnText([...base, "bench", "--help"]);
    return r.out.includes("--concurrency");
  };
  if (existsSync(OURS_BIN) && hasBench([OURS_BIN])) return { argv: [OURS_BIN, "bench"], label: "dist/tftpd bench" };
  if (hasBench([BUN, join(REPO, "src/main.ts")])) {
    say("dist/tftpd has no bench subcommand: using `bun src/main.ts bench` as the load generator (run npm run build)");
    return { argv: [BUN, join(REPO, "src/main.ts"), "bench"], label: "bun src/main.ts bench" };
  }
  // A working tree mid-change may not run: the before server's own load generator serves
  // as well, since every server of the run meets the same one.
  if (o.before !== null && existsSync(o.before)) {
    const base = statSync(o.before).isDirectory() ? [BUN, join(o.before, "src/main.ts")] : [o.before];
    if (hasBench(base)) {
      say(`neither dist/tftpd nor src/main.ts runs \`bench\`: using --before's (${display(base)} bench) as the load generator`);
      return { argv: [...base, "bench"], label: `${display(base)} bench (from --before)` };
    }
  }
  die("no load generator: neither dist/tftpd nor src/main.ts has a `bench` subcommand yet (pass --bench-cmd)", 1);
}

// ───────────────────────────── measurement ─────────────────────────────

interface Result {
  scenario: Scenario;
  server: ServerName;
  status: "ok" | "failures" | "timeout" | "error" | "no-start" | "crashed";
  json: BenchJson | null;
  cpuS: number | null;
  /** Busy CPU seconds of the whole machine during the run (server + load generator + rest). */
  busyS: number | null;
  peakMiB: number | null;
  peakProcs: number;
  note: string;
}

/** The median run by goodput (runs without figures rank lowest); the others go in its note. */
function median(runs: Result[]): Result {
  if (runs.length === 1) return runs[0]!;
  const g = (r: Result) => (r.json && r.status !== "timeout" && r.status !== "no-start" ? r.json.goodput_mbps : -1);
  const sorted = [...runs].sort((a, b) => g(a) - g(b));
  const mid = sorted[Math.floor((sorted.length - 1) / 2)]!;
  const all = runs.map((r) => (g(r) >= 0 ? g(r).toFixed(1) : r.status)).join(", ");
  return { ...mid, note: [`median of ${runs.length} runs, goodput Mbit/s: ${all}`, mid.note].filter(Boolean).join("; ") };
}

function effective(s: Scenario, quick: boolean): { concurrency: number; total: number } {
  const total = quick ? Math.max(1, Math.ceil(s.total / 10)) : s.total;
  return { total, concurrency: Math.min(s.concurrency, total) };
}

/** The probe file in storm `s`'s shape: its concurrency (at most 1,000), protocol flags and sources. */
function warmStormArgs(s: Scenario, total: number): string[] {
  const protocol: string[] = [];
  for (let i = 0; i < s.flags.length; i++) {
    const flag = s.flags[i]!;
    if (flag === "--tsize") protocol.push(flag);
    else if (flag === "--blksize" || flag === "--windowsize") protocol.push(flag, s.flags[++i]!);
  }
  const concurrency = Math.min(s.concurrency, 1000, total);
  const sources = manySources ? ["--sources", String(LEAN_SOURCES)] : [];
  return ["--concurrency", String(concurrency), "--total", String(total), "--file", PROBE_FILE, ...protocol, ...sources];
}

function benchArgs(s: Scenario, quick: boolean, root: string, verify: boolean): string[] {
  const { concurrency, total } = effective(s, quick);
  const sources = manySources && !s.single ? ["--sources", String(LEAN_SOURCES)] : [];
  return ["--concurrency", String(concurrency), "--total", String(total), "--file", s.file, ...s.flags, ...sources, ...(verify ? ["--verify", join(root, s.file)] : [])];
}

async function measure(
  spec: ServerSpec,
  s: Scenario,
  o: Options,
  loadgen: string[],
  root: string,
  runDir: string,
  cpuSets: { server: string | null; load: string | null } | null = null,
): Promise<Result> {
  const base: Result = { scenario: s, server: spec.name, status: "error", json: null, cpuS: null, busyS: null, peakMiB: null, peakProcs: 1, note: "" };
  const pin = o.pin === "on" || (o.pin === "auto" && s.single === true);
  const [serverCpu = null, loadCpu = null]: (number | string | null)[] = cpuSets ? [cpuSets.server, cpuSets.load] : pin && cpus().length >= 2 ? [1, 0] : [null, null];
  let srv: Running;
  try {
    srv = await startServer(spec, root, runDir, s.id, serverCpu);
  } catch (e) {
    say(`  ${serverLabel(spec.name)}: did not start: ${(e as Error).message}`);
    return { ...base, status: "no-start", note: (e as Error).message.split("\n")[0]! };
  }
  const target = `127.0.0.1:${srv.port}`;
  try {
    // One small transfer: proves the server answers and the load generator speaks to it.
    const probe = await runBench(loadgen, target, ["--concurrency", "1", "--total", "1", "--file", PROBE_FILE, "--retries", "2"], 30, loadCpu);
    if (probe.status !== "ok" || !probe.json || probe.json.completed !== 1) {
      const why = probe.json ? JSON.stringify(probe.json.failures) : probe.detail;
      say(`  ${serverLabel(spec.name)}: probe transfer failed: ${why}`);
      return { ...base, status: "no-start", note: `probe transfer failed: ${why}` };
    }
    // Unmeasured transfers first: every server is measured warm, as a long-running daemon
    // serves — page cache read in, file caches filled, hot code compiled — rather than in its
    // first milliseconds after start. Fifty small requests, one at a time, take the request path
    // past a JIT's first tiers (one request leaves it interpreted, which the single-transfer
    // scenarios' first-response figures would measure); then one transfer of the scenario's own
    // file with its options.
    await runBench(loadgen, target, ["--concurrency", "1", "--total", String(WARM_REQUESTS), "--file", PROBE_FILE, "--retries", "2"], 60, loadCpu);
    const warm = await runBench(loadgen, target, ["--concurrency", "1", "--total", "1", "--file", s.file, ...s.flags], 60, loadCpu);
    if (warm.status !== "ok" || !warm.json || warm.json.completed !== 1) {
      const why = warm.json ? JSON.stringify(warm.json.failures) : warm.detail;
      say(`  ${serverLabel(spec.name)}: warm-up transfer failed: ${why}`);
    }
    if (!s.single && o.warmStorm > 0) await runBench(loadgen, target, warmStormArgs(s, o.warmStorm), 120, loadCpu);
    // thousands of requests in a second: measured cold, they would count a JIT's compiling
    if (s.single && s.size <= SMALL_FILE_BYTES && s.total > 1 && o.warmStorm > 0) await runBench(loadgen, target, benchArgs(s, o.quick, root, false), 120, loadCpu);
    const idle0 = machineBusySeconds();
    await sleep(o.settleS * 1000);
    const background = o.settleS > 0 ? (machineBusySeconds() - idle0) / o.settleS : null;

    const pid = srv.child.pid;
    // A server that ignores SIGCHLD (tftpd-hpa) has its forked children reaped by the kernel,
    // which then drops their CPU time: count them with process accounting instead.
    let acct: ProcessAccounting | null = null;
    const notes: string[] = [];
    if (ignoresSigchld(pid)) {
      acct = ProcessAccounting.start(join(runDir, `acct-${spec.name}-${s.id}.bin`));
      if (acct === null) notes.push("CPU of forked children NOT counted (process accounting refused): a lower bound");
    }
    const cpu0 = treeCpu(pid);
    const threads0 = threadCpu(pid);
    const busy0 = machineBusySeconds();
    const sampler = new MemorySampler(pid, 200);
    const run = await runBench(loadgen, target, benchArgs(s, o.quick, root, o.verify), o.runTimeoutS, loadCpu);
    await sleep(300); // let forked children finish, so their time is counted
    sampler.stop();
    const cpu1 = treeCpu(pid);
    const split = threadSplit(threads0, threadCpu(pid));
    const busyS = machineBusySeconds() - busy0;
    let cpuS = cpu1.total - cpu0.total;
    if (acct) {
      const children = acct.stop().filter((r) => r.ppid === pid);
      // A child still alive at the last sample is in cpu1 already: add only the rest.
      for (const r of children) cpuS += Math.max(0, r.cpuS - (cpu1.perPid.get(r.pid) ?? 0));
      notes.push(`CPU includes ${children.length} exited children (process accounting)`);
    }
    const hwm = peakRssKiB(pid) ?? 0;
    const peakMiB = Math.max(hwm, sampler.peakKiB) / 1024;
    if (split) notes.push(`server CPU by thread: ${split}`);
    if (run.detail) notes.push(run.detail);
    if (background !== null && background >= 0.2) notes.push(`machine already busy before the run: ${background.toFixed(2)} CPUs (other work on the machine)`);
    const crashed = !alive(srv.child.pid);
    const r: Result = { ...base, json: run.json, cpuS, busyS, peakMiB, peakProcs: sampler.peakProcesses, note: notes.join("; ") };
    if (crashed) {
      r.status = "crashed";
      r.note = `server exited during the run (${srv.child.proc.exitCode ?? srv.child.proc.signalCode}): ${tail(srv.log, 2).trim()}`;
    } else if (run.status !== "ok") r.status = run.status;
    else r.status = run.json && run.json.failed > 0 ? "failures" : "ok";
    return r;
  } finally {
    await stopGroup(srv.child);
  }
}

// ───────────────────────────── files ─────────────────────────────

let tmpRoot = "";

function makeRoot(scenarios: Scenario[]): string {
  const root = mkdtempSync(join(tmpdir(), "tftpd-bench-root-"));
  tmpRoot = root;
  chmodSync(root, 0o755);
  const files = new Map<string, number>([[PROBE_FILE, 4 * KiB]]);
  for (const s of scenarios) files.set(s.file, s.size);
  const chunk = Buffer.alloc(MiB);
  for (const [name, size] of files) {
    const path = join(root, name);
    const fd = openSync(path, "w", 0o644);
    for (let left = size; left > 0; ) {
      const n = Math.min(left, chunk.length);
      randomFillSync(chunk, 0, n);
      writeSync(fd, chunk, 0, n);
      left -= n;
    }
    closeSync(fd);
    chmodSync(path, 0o644);
  }
  say(`generated ${[...files].map(([n, sz]) => `${n} (${fmtBytes(sz)})`).join(", ")} in ${root}`);
  return root;
}

// ───────────────────────────── report ─────────────────────────────

function machine(): Record<string, string> {
  const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? cpus()[0]?.model ?? "?";
  const memKiB = Number(/^MemTotal:\s+(\d+)/m.exec(readFileSync("/proc/meminfo", "utf8"))?.[1] ?? 0);
  const nproc = spawnText(["nproc"]).out.trim();
  const kernel = spawnText(["uname", "-srm"]).out.trim();
  return { nproc, cpu: model, kernel, memory: `${(memKiB / 1024 / 1024).toFixed(1)} GiB` };
}

const SYSCTLS = ["net.core.rmem_default", "net.core.rmem_max", "net.core.wmem_default", "net.core.wmem_max", "net.core.netdev_max_backlog", "net.ipv4.ip_local_port_range"];
function sysctls(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of SYSCTLS) {
    try {
      out[k] = readFileSync(`/proc/sys/${k.replace(/\./g, "/")}`, "utf8").trim().replace(/\s+/g, " ");
    } catch {
      out[k] = "?";
    }
  }
  return out;
}

const num = (v: number | null | undefined, digits: number): string => (v === null || v === undefined || !Number.isFinite(v) ? "—" : v.toFixed(digits));

function statusCell(r: Result): string | null {
  switch (r.status) {
    case "timeout": return "timeout";
    case "no-start": return "did not start";
    case "error": return r.json ? null : "load generator error";
    case "crashed": return r.json ? null : "crashed";
    default: return null;
  }
}

const GiB = 1024 * MiB;

/** Server CPU seconds per GiB of payload the completed transfers received; null without bytes. */
function cpuPerGiB(r: Result): number | null {
  return r.cpuS !== null && r.json && r.json.bytes > 0 ? r.cpuS / (r.json.bytes / GiB) : null;
}

/** "×a/b", or "—" when either figure is missing or b is 0. */
function ratioOf(a: number | null | undefined, b: number | null | undefined): string {
  return a === null || a === undefined || b === null || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0 ? "—" : `×${(a / b).toFixed(2)}`;
}

/** The "tftpd ÷ before" cell: the new server's figures over the old one's, same scenario. */
function beforeCell(now: Result, before: Result | undefined): string {
  if (!before || statusCell(now) !== null || statusCell(before) !== null || !now.json || !before.json) return "—";
  const failed = now.json.failed !== before.json.failed ? `, failed ${now.json.failed} vs ${before.json.failed}` : "";
  return `goodput ${ratioOf(now.json.goodput_mbps, before.json.goodput_mbps)}, p99 first ${ratioOf(now.json.first_response_ms.p99, before.json.first_response_ms.p99)}, CPU/GiB ${ratioOf(cpuPerGiB(now), cpuPerGiB(before))}${failed}`;
}

function table(results: Result[], scenarios: Scenario[], servers: ServerName[], quick: boolean): string {
  const withBefore = servers.includes(BEFORE);
  const head = `| scenario | server | goodput Mbit/s | transfers/s | p99 first response ms | failed | server CPU s | CPU s/GiB | peak RSS MiB | ours ÷ best peer (goodput) |${withBefore ? " tftpd ÷ before |" : ""}`;
  const rows = [head, `| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |${withBefore ? " --- |" : ""}`];
  for (const s of scenarios) {
    const { concurrency, total } = effective(s, quick);
    const label = `${s.id} ${s.title} (${fmtBytes(s.size)} ×${total}, c${concurrency})`;
    const mine = results.filter((r) => r.scenario === s);
    const peers = mine.filter((r) => r.server !== "tftpd" && r.server !== BEFORE && r.json && r.status !== "timeout" && r.status !== "no-start");
    const best = peers.reduce<Result | null>((b, r) => (b === null || r.json!.goodput_mbps > b.json!.goodput_mbps ? r : b), null);
    const before = mine.find((x) => x.server === BEFORE);
    for (const name of servers) {
      const r = mine.find((x) => x.server === name);
      if (!r) continue;
      const j = r.json;
      const cell = statusCell(r);
      const ours = name === "tftpd" || name === BEFORE;
      let ratio = "";
      if (ours && j && best?.json && cell === null) {
        ratio = best.json.goodput_mbps > 0 ? `×${(j.goodput_mbps / best.json.goodput_mbps).toFixed(2)} (${best.server})` : "∞";
      } else if (ours) ratio = "—";
      const failed = j ? `${j.failed}/${j.requested}${r.status === "crashed" ? " (crashed)" : ""}` : "—";
      const vsBefore = withBefore ? ` ${name === "tftpd" ? beforeCell(r, before) : ""} |` : "";
      rows.push(`| ${label} | ${serverLabel(name)} | ${cell ?? num(j?.goodput_mbps, 1)} | ${cell ? "—" : num(j?.transfers_per_s, 1)} | ${cell ? "—" : num(j?.first_response_ms.p99, 2)} | ${failed} | ${num(r.cpuS, 2)} | ${num(cpuPerGiB(r), 2)} | ${num(r.peakMiB, 1)} | ${ratio} |${vsBefore}`);
    }
  }
  return rows.join("\n");
}

function details(results: Result[]): string[] {
  const lines: string[] = [];
  for (const r of results) {
    const parts: string[] = [];
    const j = r.json;
    if (j) {
      const reasons = Object.entries(j.failures ?? {}).map(([k, n]) => `${k} ×${n}`).join(", ");
      if (reasons) parts.push(`failures: ${reasons}`);
      const arrival = j.first_arrival_ms ? ` (arrived ${num(j.first_arrival_ms.p50, 2)}/${num(j.first_arrival_ms.p99, 2)} ms)` : "";
      parts.push(`wall ${num(j.wall_s, 2)} s, p50/p99 first response ${num(j.first_response_ms.p50, 2)}/${num(j.first_response_ms.p99, 2)} ms${arrival}, p99 transfer ${num(j.transfer_ms?.p99, 0)} ms, retransmits ${j.retransmits}, load generator CPU ${num((j.cpu_s?.user ?? 0) + (j.cpu_s?.system ?? 0), 2)} s, machine busy ${num(r.busyS, 2)} CPU s`);
    }
    if (r.peakProcs > 1) parts.push(`up to ${r.peakProcs} server processes at once`);
    if (r.note) parts.push(r.note);
    lines.push(`- ${r.scenario.id} / ${serverLabel(r.server)}: ${r.status}${parts.length ? ` — ${parts.join("; ")}` : ""}`);
  }
  return lines;
}

function staleBinaryWarning(): string | null {
  if (!existsSync(OURS_BIN)) return null;
  const built = statSync(OURS_BIN).mtimeMs;
  let newest = 0;
  let newestPath = "";
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".ts")) {
        const m = statSync(p).mtimeMs;
        if (m > newest) [newest, newestPath] = [m, p];
      }
    }
  };
  walk(join(REPO, "src"));
  return newest > built ? `dist/tftpd is older than ${relative(REPO, newestPath)}: rebuild with npm run build (or pass --build)` : null;
}

// ───────────────────────────── main ─────────────────────────────

/**
 * --scaling: the boot storm against our server with k = 1..CPUs transfer engines, the server
 * pinned to the last k CPUs and the load generator to the rest; one table, for a machine with
 * more cores than this one.
 */
async function scaling(o: Options, command: string, loadgen: { argv: string[]; label: string }, runDir: string): Promise<number> {
  const storm = SCENARIOS.find((sc) => sc.id === "1")!;
  const base = o.oursFromSource ? [BUN, join(REPO, "src/main.ts")] : [OURS_BIN];
  const version = spawnText([...base, "version"]).out.trim().split("\n")[0] ?? "?";
  const n = cpus().length;
  const root = makeRoot([storm]);
  const rows: string[] = [];
  try {
    for (let k = 1; k <= n; k++) {
      const config: BenchConfig = { ...configKnownTo(base).config, performance: { cpu: { worker_threads: k } } };
      const spec = ourServerSpec("tftpd", base, version, "compiled dist/tftpd", config);
      writeFileSync(join(runDir, spec.configFile!.name), `${JSON.stringify(config, null, 2)}\n`);
      const span = (a: number, b: number): string => (a === b ? String(a) : `${a}-${b}`);
      const server = span(n - k, n - 1);
      const load = k < n ? span(0, n - k - 1) : null;
      const results: Result[] = [];
      for (let i = 0; i < (o.repeat ?? 1); i++) {
        results.push(await measure(spec, storm, o, loadgen.argv, root, runDir, { server, load: load ?? server }));
        await sleep(o.settleS * 1000);
      }
      const r = median(results);
      const j = r.json;
      const line = `| ${k} | ${server} | ${load ?? `${server} (shared)`} | ${j ? num(j.goodput_mbps, 1) : r.status} | ${num(cpuPerGiB(r), 2)} | ${j ? num(j.first_response_ms.p99, 2) : "—"} | ${j ? `${j.failed}/${j.requested}` : "—"} |`;
      say(`  ${k} engine${k > 1 ? "s" : ""} on CPUs ${server}: ${line}`);
      rows.push(line);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  const m = machine();
  const md = [
    "# Scaling benchmark",
    "",
    "Generated by `build/bench-peers.ts --scaling`; do not edit by hand (rerun it).",
    "",
    `- Date: ${new Date().toISOString()}`,
    `- Command: \`${command}\``,
    `- Machine: ${m.nproc} CPUs (${m.cpu}), ${m.memory} memory, ${m.kernel}`,
    `- Load generator: \`${loadgen.label}\``,
    `- Server: ${version}; scenario 1 (${storm.title}, ${fmtBytes(storm.size)} ×${effective(storm, o.quick).total}, concurrency ${effective(storm, o.quick).concurrency} ${storm.flags.join(" ")}); config \`performance.cpu.worker_threads\` = engines, limits as in the peer benchmark`,
    "",
    "| engines | server CPUs | load generator CPUs | goodput Mbit/s | server CPU s/GiB | p99 first response ms | failed |",
    "| ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ...rows,
    "",
  ].join("\n");
  const out = o.out && o.out !== join(REPO, "build/BENCH.md") ? o.out : join(REPO, "build/BENCH-scaling.md");
  writeFileSync(out, md);
  say(`wrote ${relative(REPO, out) || out}`);
  return 0;
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  const o = parseOptions(argv);
  const command = ["bun", "build/bench-peers.ts", ...argv].map(shellQuote).join(" ");
  mkdirSync(CACHE, { recursive: true });
  pidFile = join(CACHE, "bench-peers.pids");
  reapStale(o.before !== null && existsSync(o.before) && !statSync(o.before).isDirectory() ? [o.before] : []);

  if (o.build) {
    say("building dist/tftpd (bun build/compile.ts)");
    const r = Bun.spawnSync([BUN, join(REPO, "build/compile.ts")], { cwd: REPO, stdout: "inherit", stderr: "inherit" });
    if (r.exitCode !== 0) die("build failed", 1);
  }
  const warnings: string[] = [];
  const warn = (w: string) => {
    say(`warning: ${w}`);
    warnings.push(w);
  };
  if (o.servers.includes("tftpd") && !o.oursFromSource) {
    if (!existsSync(OURS_BIN)) die("dist/tftpd is missing: run npm run build (or pass --build / --ours-from-source)", 1);
    const stale = staleBinaryWarning();
    if (stale) warn(stale);
  }
  const before = o.before !== null ? beforeSpec(o.before, warn) : null;
  if (before !== null && o.servers.includes("tftpd") && before.fromSource !== o.oursFromSource) {
    warn(`tftpd runs ${o.oursFromSource ? "from source" : "compiled"} but tftpd (before) ${before.fromSource ? "from source" : "compiled"}: not like for like (pass a binary with dist/tftpd, a source tree with --ours-from-source)`);
  }

  const loadgen = resolveLoadgen(o);
  say(`load generator: ${loadgen.label}`);

  const specs: ServerSpec[] = [];
  // (--scaling measures our server alone)
  for (const name of o.scaling ? (["tftpd"] as const) : o.servers) {
    if (name === "tftpd") specs.push(oursSpec(o.oursFromSource));
    else if (name !== BEFORE) specs.push(peerSpec(name, ensurePeer(name, CACHE, (l) => say(l))));
  }
  // Right after "tftpd" (first without it), so the two are measured back to back in every scenario.
  if (before !== null) specs.splice(specs.findIndex((sp) => sp.name === "tftpd") + 1, 0, before.spec);
  const servers = specs.map((sp) => sp.name);
  for (const sp of specs) say(`${serverLabel(sp.name)}: ${sp.version}`);

  const runDir = join(CACHE, "run");
  rmSync(runDir, { recursive: true, force: true });
  mkdirSync(runDir, { recursive: true });
  if (o.scaling) return scaling(o, command, loadgen, runDir);
  for (const sp of specs) if (sp.configFile) writeFileSync(join(runDir, sp.configFile.name), `${JSON.stringify(sp.configFile.config, null, 2)}\n`);
  const root = makeRoot(o.scenarios);
  const sysBefore = sysctls();
  const started = new Date();
  const results: Result[] = [];
  try {
    for (const s of o.scenarios) {
      const { concurrency, total } = effective(s, o.quick);
      say(`scenario ${s.id} ${s.title}: ${fmtBytes(s.size)} ×${total}, concurrency ${concurrency} ${s.flags.join(" ")}`);
      const repeat = o.repeat ?? (s.single ? 3 : 1);
      // Rounds of one run per server, every other round in reverse order (A B, B A, A B): a
      // drift of the machine over the scenario, or a cost of going first, falls on all alike.
      const runs = new Map<string, Result[]>(specs.map((spec) => [spec.name, []]));
      for (let i = 0; i < repeat; i++) {
        const order = i % 2 === 0 ? specs : [...specs].reverse();
        for (const spec of order) {
          runs.get(spec.name)!.push(await measure(spec, s, o, loadgen.argv, root, runDir));
          await sleep(o.settleS * 1000);
        }
      }
      for (const spec of specs) {
        const r = median(runs.get(spec.name)!);
        results.push(r);
        const j = r.json;
        say(`  ${serverLabel(spec.name)}: ${r.status}${j ? ` ${num(j.goodput_mbps, 1)} Mbit/s, ${num(j.transfers_per_s, 1)} transfers/s, p99 first ${num(j.first_response_ms.p99, 2)} ms, failed ${j.failed}/${j.requested}` : ""}, server CPU ${num(r.cpuS, 2)} s (${num(cpuPerGiB(r), 2)} s/GiB), peak ${num(r.peakMiB, 1)} MiB${r.note ? ` (${r.note})` : ""}`);
      }
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  const sysAfter = sysctls();

  const tbl = table(results, o.scenarios, servers, o.quick);
  process.stdout.write(`${tbl}\n`);

  const m = machine();
  const changed = SYSCTLS.filter((k) => sysBefore[k] !== sysAfter[k]);
  const md = [
    "# Peer benchmark",
    "",
    "Generated by `build/bench-peers.ts`; do not edit by hand (rerun it).",
    "",
    `- Date: ${started.toISOString()}`,
    `- Command: \`${command}\`${o.quick ? " (**quick**: totals divided by 10 — a smoke check, not a result)" : ""}`,
    `- Machine: ${m.nproc} CPUs (${m.cpu}), ${m.memory} memory, ${m.kernel}`,
    `- Load generator: \`${loadgen.label}\` (one process, the same for every server, on the same machine)`,
    ...specs.map((sp) => `- ${serverLabel(sp.name)}: ${sp.version} — ${sp.note}`),
    ...warnings.map((w) => `- **Warning:** ${w}`),
    "",
    "## Results",
    "",
    tbl,
    "",
    "## Scenarios",
    "",
    ...o.scenarios.map((s) => {
      const n = o.repeat ?? (s.single ? 3 : 1);
      return `- ${s.id} ${s.title}: \`tftpd bench 127.0.0.1:PORT ${benchArgs(s, o.quick, "ROOT", false).join(" ")} --json\`${n > 1 ? ` — ${n} runs per server, each on a fresh server, in rounds of one run per server (every other round in reverse order); the table shows the median by goodput` : ""}`;
    }),
    "",
    "## Servers as started",
    "",
    ...specs.map((sp) => `- ${serverLabel(sp.name)}: \`${display(sp.argv("ROOT", sp.fixedPort ?? 0, join(REPO, ".bench/run"))).replace(/127\.0\.0\.1:0\b/, "127.0.0.1:PORT").replace(/--port 0\b/, "--port PORT")}\``),
    "",
    "## How it was measured",
    "",
    `- Every server runs on 127.0.0.1 and is started afresh for each scenario (so peak memory and CPU belong to that scenario), answers one 4 KiB probe transfer, 50 more of it one at a time and one unmeasured warm-up transfer of the scenario's file with the scenario's options, and before a storm ${o.warmStorm > 0 ? `${o.warmStorm} unmeasured transfers of the probe file in the storm's shape (its concurrency up to 1,000, its block size, window, tsize and source addresses: the paths a thousand clients at once take, which fifty requests one at a time leave to a JIT's first tiers), and before small files one after another one unmeasured run of that scenario` : "no storm-shaped warm-up (--warm-storm 0): a JIT's optimizing tiers then compile during the storm"} (page cache, file caches and compiled code warm for every server, as for a long-running daemon), then the load generator runs once with a hard time limit of ` +
      `${o.runTimeoutS} s ("timeout" when hit). ${o.settleS} s pause between runs. Files are random bytes generated at run time in a temporary root; the page cache is warm for every server.`,
    "- goodput, transfers/s, p99 first response (request sent → first OACK/DATA/ERROR back) and failures come from the load generator's JSON. The lean client (build/loadgen.c) also reports when that reply reached the session's socket by the kernel's receive time stamp (\"arrived\" in the notes): its own lateness in reading replies (in a storm, a thousand requests are sent before any reply is read) counts in the first figure, not in this one.",
    "- server CPU by thread (notes): utime+stime of each live thread of the server (/proc/PID/task/TID/stat) over the run, summed by thread name: the transfer workers and file I/O threads (Worker), the main thread (the binary's name), and the runtime's own (JIT compiler threads, garbage collector helpers, the allocator's scavenger).",
    "- server CPU s: utime+stime+cutime+cstime from /proc/PID/stat of the server (all its threads) and its live descendants, sampled before and after the run (300 ms after it, so forked children have finished). tftpd-hpa ignores SIGCHLD, so the kernel reaps its per-transfer children and drops their times (its cutime stays 0): for a server that ignores SIGCHLD the script turns on BSD process accounting (acct(2)) for the run and adds the CPU time of every exited child whose parent was the server.",
    "- machine busy (notes): all-CPU busy time from /proc/stat over the run: server + load generator + this script + anything else running on the machine, a cross-check.",
    "- peak RSS MiB: the larger of the server's VmHWM (/proc/PID/status) and the peak of a 200 ms sampler over its process tree; while a forking server (tftpd-hpa) has live children the sampler sums Pss (/proc/PID/smaps_rollup) over the tree, so pages shared by the forked children count once.",
    "- CPU s/GiB: server CPU s divided by the GiB of payload the load generator received in completed transfers (what the server's CPU buys; failed transfers' bytes are not counted).",
    "- ours ÷ best peer: our goodput divided by the highest goodput among the peers that ran the scenario (timeouts and servers that did not start excluded).",
    ...(o.before !== null
      ? ["- tftpd (before): our server before the change (--before), started with the same flags and config as tftpd and measured next to it in every round of every scenario (tftpd first in odd rounds, the before server first in even ones). tftpd ÷ before: tftpd's goodput, p99 first response and CPU s/GiB divided by the before server's (goodput above ×1 is better, the other two below ×1), and both failure counts when they differ."]
      : []),
    "- The load generator shares the machine with the server; its own CPU is in the notes.",
    o.pin === "off"
      ? "- No CPU pinning (--pin off): single-transfer figures depend on whether the scheduler puts server and client on one core (cheap wake-ups) or two."
      : `- CPU pinning (--pin ${o.pin}): ${o.pin === "on" ? "in every scenario" : "in the one-at-a-time scenarios (5a-5c, 6)"} the server (and its threads and children) runs on CPU 1 and the load generator on CPU 0 (taskset), so every round trip crosses cores as it does between two machines; unpinned, a lock-step transfer runs several times faster or slower depending on where the scheduler puts the two.`,
    "",
    "## Notes per run",
    "",
    ...details(results),
    "",
    changed.length > 0
      ? `Kernel settings changed during the run (servers that ran after the change benefited): ${changed.map((k) => `${k} ${sysBefore[k]} → ${sysAfter[k]}`).join(", ")}.`
      : `Kernel settings, unchanged during the run: ${SYSCTLS.map((k) => `${k}=${sysBefore[k]}`).join(", ")}.`,
    "",
  ].join("\n");
  if (o.out) {
    writeFileSync(o.out, md);
    writeFileSync(join(CACHE, "last-results.json"), JSON.stringify(results.map((r) => ({ ...r, scenario: r.scenario.id })), null, 2));
    say(`wrote ${relative(REPO, o.out) || o.out} (raw results in .bench/last-results.json)`);
  }
  return 0;
}

function onSignal(sig: NodeJS.Signals): void {
  process.stderr.write(`\nbench-peers: ${sig}: stopping every server started\n`);
  killAllNow();
  if (tmpRoot) rmSync(tmpRoot, { recursive: true, force: true });
  process.exit(sig === "SIGINT" ? 130 : 143);
}
process.on("SIGINT", onSignal);
process.on("SIGTERM", onSignal);
process.on("SIGHUP", onSignal);
process.on("exit", () => killAllNow());

try {
  const code = await main();
  killAllNow();
  if (pidFile) rmSync(pidFile, { force: true });
  pidFile = ""; // nothing left to record: the exit handler must not write it again
  process.exit(code);
} catch (e) {
  killAllNow();
  process.stderr.write(`bench-peers: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
}

#!/usr/bin/env bun
/**
 * The root over HTTP against Debian's nginx on the same files, one run, side by side: wrk
 * (Debian) as the load generator on one CPU, each server pinned to the other, loopback only.
 *
 * - 100 MiB, one stream: one connection fetching the file again and again for --seconds;
 * - 100 MiB, 100 streams at once: as many connections, the same time;
 * - a 1 KiB script, 1,000 keep-alive clients: requests per second and the latency
 *   percentiles (wrk --latency), the time to first byte of a small file.
 *
 * nginx runs as its users tune it for static files (`sendfile on; tcp_nopush on;`, one
 * worker); tftpd with the per-address limits lifted (every wrk client is 127.0.0.1). Prints goodput (Mbit/s of body bytes), requests/s, p50/p99 latency and the
 * non-2xx or socket errors per server, and the ratio tftpd ÷ nginx. Installs nginx and wrk
 * with apt-get when they are missing and we are root; otherwise says the command.
 *
 *   bun build/bench-http.ts [--binary dist/tftpd] [--seconds 10] [--rounds 1]
 */
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { patternBytes } from "../test/helpers/files.ts";

const REPO = new URL("../", import.meta.url).pathname;
const { values: opts } = parseArgs({
  options: {
    binary: { type: "string", default: join(REPO, "dist/tftpd") },
    seconds: { type: "string", default: "10" },
    rounds: { type: "string", default: "1" },
  },
});
// (the servers start in a folder of their own: a relative --binary is the caller's)
const BINARY = resolve(opts.binary);
const SECONDS = Number(opts.seconds);
const ROUNDS = Number(opts.rounds);
const say = (line: string): void => console.error(`bench-http: ${line}`);
const NGINX = "/usr/sbin/nginx";
const WRK = "/usr/bin/wrk";

function ensureTools(): void {
  const missing = [
    [NGINX, "nginx"],
    [WRK, "wrk"],
  ].filter(([path]) => !existsSync(path!)).map(([, pkg]) => pkg!);
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) throw new Error(`bench-http needs ${missing.join(", ")}: sudo apt-get install -y ${missing.join(" ")}`);
  say(`apt-get install ${missing.join(" ")}`);
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  for (const cmd of [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", ...missing]]) {
    const r = Bun.spawnSync(cmd, { env, stdout: "inherit", stderr: "inherit" });
    if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")} failed (exit ${r.exitCode})`);
  }
}

async function freePort(): Promise<number> {
  const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = s.port;
  s.stop(true);
  return port;
}

async function waitForHttp(url: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      const r = await fetch(url, { method: "HEAD" });
      if (r.status === 200) return;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`${url} does not answer`);
    await Bun.sleep(50);
  }
}

interface Server {
  name: string;
  url: string;
  pid: number;
  stop(): Promise<void>;
}

async function startTftpd(root: string, dir: string): Promise<Server> {
  if (!existsSync(BINARY)) throw new Error(`no tftpd binary at ${BINARY}: run npm run build, or give --binary PATH`);
  const port = await freePort();
  const proc = Bun.spawn(
    ["taskset", "-c", "0", BINARY, "serve", "--root", root, "--listen", "127.0.0.1:0", "--http-listen", `127.0.0.1:${port}`, "--no-tune", "--log-level", "warn", "--metrics-listen", "127.0.0.1:0"],
    {
      stdout: "ignore",
      stderr: "pipe",
      cwd: dir,
      // wrk's clients all come from 127.0.0.1: the per-address limits, meant for one machine each, are lifted
      env: {
        ...process.env,
        TFTPD_LIMITS_REQUESTS_PER_SECOND_PER_IP: "0",
        TFTPD_LIMITS_MAX_CONNECTIONS_PER_IP: "100000",
        TFTPD_LIMITS_MAX_CONNECTIONS_PER_CLIENT: "100000",
      },
    },
  );
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitForHttp(`${url}/script.ipxe`);
  } catch (error) {
    proc.kill();
    throw new Error(`${(error as Error).message}: ${await new Response(proc.stderr).text()}`);
  }
  return { name: "tftpd", url, pid: proc.pid, stop: async () => void (proc.kill(), await proc.exited) };
}

async function startNginx(root: string, dir: string): Promise<Server> {
  const port = await freePort();
  const conf = join(dir, "nginx.conf");
  writeFileSync(
    conf,
    `daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  types { application/efi efi; }
  default_type application/octet-stream;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fcgi; uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  server { listen 127.0.0.1:${port}; root ${root}; }
}
`,
  );
  const proc = Bun.spawn(["taskset", "-c", "0", NGINX, "-c", conf, "-e", join(dir, "nginx-error.log")], { stdout: "ignore", stderr: "pipe" });
  const url = `http://127.0.0.1:${port}`;
  await waitForHttp(`${url}/script.ipxe`);
  return { name: "nginx", url, pid: proc.pid, stop: async () => void (proc.kill(), await proc.exited) };
}

interface Figures {
  mbits: number;
  rps: number;
  p50ms: number;
  p99ms: number;
  errors: number;
}

function ms(text: string): number {
  const m = /([\d.]+)(us|ms|s)/.exec(text);
  if (!m) return NaN;
  const v = Number(m[1]);
  return m[2] === "us" ? v / 1000 : m[2] === "s" ? v * 1000 : v;
}

/** wrk pinned to CPU 1 against `url` with `connections` for SECONDS. */
async function wrk(url: string, connections: number): Promise<Figures> {
  const proc = Bun.spawn(["taskset", "-c", "1", WRK, "-t", "1", "-c", String(connections), "-d", `${SECONDS}s`, "--latency", "--timeout", "30s", url], {
    stdout: "pipe",
    stderr: "pipe",
  });
  const [out] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
  const transfer = /Transfer\/sec:\s+([\d.]+)(B|KB|MB|GB)/.exec(out);
  const unit = { B: 1, KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3 }[(transfer?.[2] ?? "B") as "B"];
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? NaN);
  const p50 = ms(/\s50%\s+(\S+)/.exec(out)?.[1] ?? "");
  const p99 = ms(/\s99%\s+(\S+)/.exec(out)?.[1] ?? "");
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(out)?.[1] ?? 0);
  const socketErrors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const errors = non2xx + (socketErrors ? socketErrors.slice(1).reduce((a, b) => a + Number(b), 0) : 0);
  return { mbits: (Number(transfer?.[1] ?? NaN) * unit * 8) / 1e6, rps, p50ms: p50, p99ms: p99, errors };
}

ensureTools();
const dir = mkdtempSync(join(tmpdir(), "tftpd-bench-http-"));
// both servers drop to an unprivileged user when started as root: the files must be readable to it
chmodSync(dir, 0o755);
const root = join(dir, "root");
Bun.spawnSync(["mkdir", "-p", root]);
writeFileSync(join(root, "kernel-100m.bin"), patternBytes(100 * 1024 * 1024, 5));
writeFileSync(join(root, "script.ipxe"), `#!ipxe\n${"echo booting\n".repeat(78)}`.slice(0, 1024));

const scenarios = [
  { id: "a", name: "100 MiB, one stream", path: "/kernel-100m.bin", connections: 1 },
  { id: "b", name: "100 MiB, 100 streams", path: "/kernel-100m.bin", connections: 100 },
  { id: "c", name: "1 KiB script, 1,000 keep-alive clients", path: "/script.ipxe", connections: 1000 },
];
const results: { scenario: string; server: string; f: Figures }[] = [];
try {
  for (let round = 1; round <= ROUNDS; round++) {
    for (const s of scenarios) {
      for (const start of [startTftpd, startNginx]) {
        const server = await start(root, dir);
        try {
          say(`round ${round}: ${s.name} against ${server.name}`);
          results.push({ scenario: s.id, server: server.name, f: await wrk(`${server.url}${s.path}`, s.connections) });
        } finally {
          await server.stop();
        }
      }
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

const fmt = (n: number, d = 0): string => (Number.isFinite(n) ? n.toFixed(d) : "–");
console.log(`\nHTTP: tftpd (${BINARY}) and nginx, each pinned to CPU 0, wrk on CPU 1, ${SECONDS} s per run, ${ROUNDS} round(s)\n`);
console.log("| scenario | server | Mbit/s | requests/s | p50 ms | p99 ms | errors |");
console.log("| --- | --- | --- | --- | --- | --- | --- |");
for (const r of results) {
  const s = scenarios.find((x) => x.id === r.scenario)!;
  console.log(`| ${s.name} | ${r.server} | ${fmt(r.f.mbits)} | ${fmt(r.f.rps)} | ${fmt(r.f.p50ms, 2)} | ${fmt(r.f.p99ms, 2)} | ${r.f.errors} |`);
}
console.log("\ntftpd ÷ nginx (goodput for the 100 MiB rows, requests/s for the script row), per round:");
for (const s of scenarios) {
  const ours = results.filter((r) => r.scenario === s.id && r.server === "tftpd");
  const theirs = results.filter((r) => r.scenario === s.id && r.server === "nginx");
  const ratios = ours.map((o, i) => (s.id === "c" ? o.f.rps / theirs[i]!.f.rps : o.f.mbits / theirs[i]!.f.mbits));
  console.log(`- ${s.name}: ${ratios.map((x) => `×${x.toFixed(2)}`).join(", ")}`);
}

#!/usr/bin/env bun
/**
 * The root over HTTP against Debian's nginx on the same files, one run, side by side: wrk
 * (Debian) as the load generator on one CPU, each server pinned to the other, loopback only.
 *
 * - 100 MiB, one stream: one connection fetching the file again and again for --seconds;
 * - 100 MiB, 100 streams at once: as many connections, the same time;
 * - a 1 KiB script, 1,000 keep-alive clients: requests per second and the latency
 *   percentiles (wrk --latency), the time to first byte of a small file.
 * - a generated 1 KiB script, 1,000 keep-alive clients at a paced rate (build/http-paced.c:
 *   requests on a fixed schedule, each for another of 10,000 machines of the inventory): the
 *   time to first byte, p50 and p99, counted from when each request was due. nginx serves the
 *   same 10,000 scripts rendered beforehand into files, as a tree synced from a provisioning
 *   system would be.
 *
 * nginx runs as its users tune it for static files (`sendfile on; tcp_nopush on;`, one
 * worker); tftpd with the per-address limits lifted (every client is 127.0.0.1). Prints
 * goodput (Mbit/s of body bytes), requests/s, p50/p99 latency (time to first byte in the
 * paced rows), the non-2xx or socket errors and the server's CPU seconds (its process tree)
 * per run, and the ratio tftpd ÷ nginx. Installs nginx and wrk with apt-get when they are
 * missing and we are root; otherwise says the command. The paced load is compiled with cc.
 *
 *   bun build/bench-http.ts [--binary dist/tftpd] [--seconds 10] [--rounds 1]
 *                           [--scenarios a,b,c,d] [--script-rates 2,5]
 */
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { patternBytes } from "../test/helpers/files.ts";
import { compiledC } from "./c-tool.ts";
import { treeCpu } from "./proc.ts";

const REPO = new URL("../", import.meta.url).pathname;
const { values: opts } = parseArgs({
  options: {
    binary: { type: "string", default: join(REPO, "dist/tftpd") },
    seconds: { type: "string", default: "10" },
    rounds: { type: "string", default: "1" },
    // requests per second of each of the 1,000 paced clients, one row per rate
    "script-rates": { type: "string", default: "2,5" },
    scenarios: { type: "string", default: "a,b,c,d" },
  },
});
// (the servers start in a folder of their own: a relative --binary is the caller's)
const BINARY = resolve(opts.binary);
const SECONDS = Number(opts.seconds);
const ROUNDS = Number(opts.rounds);
const say = (line: string): void => console.error(`bench-http: ${line}`);
const NGINX = "/usr/sbin/nginx";
const WRK = "/usr/bin/wrk";
const SCRIPT_RATES = opts["script-rates"]!.split(",").map(Number);
const WANTED = new Set(opts.scenarios!.split(","));

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

async function startTftpd(root: string, dir: string, config?: string): Promise<Server> {
  if (!existsSync(BINARY)) throw new Error(`no tftpd binary at ${BINARY}: run npm run build, or give --binary PATH`);
  const port = await freePort();
  const proc = Bun.spawn(
    [
      "taskset", "-c", "0", BINARY, "serve", ...(config ? ["--config", config] : []), "--root", root, "--listen", "127.0.0.1:0", "--http-listen", `127.0.0.1:${port}`,
      "--no-tune", "--log-level", "warn", "--metrics-listen", "127.0.0.1:0",
    ],
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

/**
 * build/http-paced.c pinned to CPU 1: 1,000 keep-alive connections, 1,000 × `perClient`
 * requests a second on a fixed schedule for SECONDS after a 2 s warm-up, each request for the
 * next of `paths`. Its times count from when a request was due, so a queue in the server shows.
 */
async function paced(url: string, paths: string, perClient: number): Promise<Figures> {
  const { hostname, port } = new URL(url);
  const proc = Bun.spawn(
    ["taskset", "-c", "1", compiledC("http-paced"), hostname, port, "--paths", paths, "--connections", "1000", "--rate", String(1000 * perClient), "--seconds", String(SECONDS), "--warmup", "2"],
    { stdout: "pipe", stderr: "pipe" },
  );
  const [out, err] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  let j: Record<string, number>;
  try {
    j = JSON.parse(out) as Record<string, number>;
  } catch {
    throw new Error(`http-paced printed no result: ${out}${err}`);
  }
  return { mbits: NaN, rps: j.rate!, p50ms: j.ttfb_p50_ms!, p99ms: j.ttfb_p99_ms!, errors: j.failures! };
}

const MACHINES = 10_000;
const machineMac = (i: number): string => `52-54-00-${[i >> 16, (i >> 8) & 255, i & 255].map((b) => b.toString(16).padStart(2, "0")).join("-")}`;
/** about 1 KiB rendered: the kernel line, two initrds and the machine's own variables */
const MACHINE_TEMPLATE = `#!ipxe
# {{ machine.name }} ({{ client.mac }}), profile {{ profile.name }}, rack {{ machine.rack }}, role {{ machine.role }}
set base {{ server.http_base }}/{{ profile.release }}
kernel \${base}/{{ profile.kernel }} {{ profile.args }} hostname={{ machine.name }} rack={{ machine.rack }} role={{ machine.role }}
{% for initrd in profile.initrds %}initrd \${base}/{{ initrd }}
{% endfor %}${"# padding to a typical size of a generated boot script\n".repeat(14)}boot
`;

/** The inventory, template and config of the generated-script scenario, the URI list, and nginx's pre-rendered tree. */
async function prepareGenerated(dir: string): Promise<{ config: string; nginxRoot: string; paths: string }> {
  const machines = Array.from({ length: MACHINES }, (_, i) => ({
    name: `node-${i}`,
    match: { mac: machineMac(i) },
    profile: i % 3 === 0 ? "storage" : "compute",
    vars: { rack: `r${Math.floor(i / 40)}`, role: i % 3 === 0 ? "storage" : "compute" },
  }));
  const profile = (name: string) => ({ kernel: `${name}/vmlinuz`, initrds: [`${name}/initrd.img`, `${name}/firmware.cpio`], args: "console=ttyS0,115200n8 ip=dhcp quiet", vars: { release: "bookworm" } });
  writeFileSync(join(dir, "inventory.json"), JSON.stringify({ profiles: { storage: profile("storage"), compute: profile("compute") }, machines }));
  Bun.spawnSync(["mkdir", "-p", join(dir, "templates"), join(dir, "nginx-root", "ipxe")]);
  writeFileSync(join(dir, "templates", "machine.ipxe.liquid"), MACHINE_TEMPLATE);
  // what the start-up check asks for
  writeFileSync(join(dir, "nginx-root", "script.ipxe"), "#!ipxe\n");
  const config = join(dir, "tftpd-generate.json");
  writeFileSync(
    config,
    JSON.stringify({
      generate: {
        inventory: join(dir, "inventory.json"),
        templates: join(dir, "templates"),
        files: [{ path: "ipxe/{mac}.ipxe", template: "machine.ipxe.liquid" }],
      },
    }),
  );
  // nginx gets the files tftpd renders, rendered once by tftpd itself
  const server = await startTftpd(join(dir, "root"), dir, config);
  let size = 0;
  try {
    for (let i = 0; i < MACHINES; i++) {
      const r = await fetch(`${server.url}/ipxe/${machineMac(i)}.ipxe`);
      if (r.status !== 200) throw new Error(`rendering ipxe/${machineMac(i)}.ipxe: ${r.status} ${await r.text()}`);
      const text = (await r.text()).replace(server.url, "http://127.0.0.1");
      size = text.length;
      writeFileSync(join(dir, "nginx-root", "ipxe", `${machineMac(i)}.ipxe`), text);
    }
  } finally {
    await server.stop();
  }
  say(`generated scripts: ${MACHINES} machines, ${size} bytes each`);
  const paths = join(dir, "paths.txt");
  writeFileSync(paths, Array.from({ length: MACHINES }, (_, i) => `/ipxe/${machineMac(i)}.ipxe\n`).join(""));
  return {
    config,
    nginxRoot: join(dir, "nginx-root"),
    paths,
  };
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
  ...SCRIPT_RATES.map((rate) => ({
    id: `d${rate}`,
    name: `generated script of 10,000 machines, 1,000 keep-alive clients × ${rate}/s (paced)`,
    path: "",
    connections: 1000,
    rate,
  })),
].filter((s) => WANTED.has(s.id.slice(0, 1)));
const results: { scenario: string; server: string; f: Figures; cpuSeconds: number }[] = [];
try {
  const generated = scenarios.some((s) => "rate" in s) ? await prepareGenerated(dir) : null;
  for (let round = 1; round <= ROUNDS; round++) {
    for (const s of scenarios) {
      for (const start of [startTftpd, startNginx]) {
        const rate = "rate" in s ? s.rate : null;
        const server = rate === null ? await start(root, dir) : start === startTftpd ? await startTftpd(root, dir, generated!.config) : await startNginx(generated!.nginxRoot, dir);
        try {
          say(`round ${round}: ${s.name} against ${server.name}`);
          const cpuBefore = treeCpu(server.pid).total;
          const f = rate === null ? await wrk(`${server.url}${s.path}`, s.connections) : await paced(server.url, generated!.paths, rate);
          results.push({ scenario: s.id, server: server.name, f, cpuSeconds: treeCpu(server.pid).total - cpuBefore });
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
console.log(`\nHTTP: tftpd (${BINARY}) and nginx, each pinned to CPU 0, wrk or build/http-paced.c on CPU 1, ${SECONDS} s per run, ${ROUNDS} round(s)\n`);
console.log("| scenario | server | Mbit/s | requests/s | p50 ms | p99 ms | errors | server CPU s |");
console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
for (const r of results) {
  const s = scenarios.find((x) => x.id === r.scenario)!;
  console.log(`| ${s.name} | ${r.server} | ${fmt(r.f.mbits)} | ${fmt(r.f.rps)} | ${fmt(r.f.p50ms, 2)} | ${fmt(r.f.p99ms, 2)} | ${r.f.errors} | ${fmt(r.cpuSeconds, 2)} |`);
}
console.log("\ntftpd ÷ nginx (goodput for the 100 MiB rows, requests/s for the script row), per round:");
for (const s of scenarios.filter((x) => !("rate" in x))) {
  const ours = results.filter((r) => r.scenario === s.id && r.server === "tftpd");
  const theirs = results.filter((r) => r.scenario === s.id && r.server === "nginx");
  const ratios = ours.map((o, i) => (s.id === "c" ? o.f.rps / theirs[i]!.f.rps : o.f.mbits / theirs[i]!.f.mbits));
  console.log(`- ${s.name}: ${ratios.map((x) => `×${x.toFixed(2)}`).join(", ")}`);
}

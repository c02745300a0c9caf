/**
 * Two network namespaces joined by a veth pair: a real link layer (ARP, IPv6 neighbour
 * discovery, MAC addresses) for tests, without touching the machine's own interfaces. Side a
 * is 10.213.0.1 / fd00:213::1, side b 10.213.0.2 / fd00:213::2; the addresses live only inside
 * the namespaces, so pairs made by concurrent test runs cannot collide.
 *
 * Needs root and iproute2, as the tests have in CI. Without them `createVethPair` throws a
 * message that says what is missing: a test that needs a link layer fails, it never skips.
 */
import { spawnSync } from "node:child_process";
import { writeFileSync, chmodSync } from "node:fs";
import { join } from "node:path";
import { BUN, MAIN, run } from "./run.ts";

export interface NetnsEnd {
  /** the namespace, for `ip netns exec NAME` / `ip -n NAME` */
  readonly name: string;
  /** the veth device inside it */
  readonly device: string;
  readonly ipv4: string;
  readonly ipv6: string;
  /** the device's MAC, lower case aa:bb:cc:dd:ee:ff */
  readonly mac: string;
  /** the argv that runs `cmd` inside this namespace */
  command(cmd: string[]): string[];
}

export interface VethPair {
  readonly a: NetnsEnd;
  readonly b: NetnsEnd;
  /** Ends what still runs in the namespaces (only this test's processes can) and deletes them. */
  remove(): Promise<void>;
}

const PREFIX = "tftpdtest";
const SUBNET4 = { a: "10.213.0.1", b: "10.213.0.2", prefix: 30 };
const SUBNET6 = { a: "fd00:213::1", b: "fd00:213::2", prefix: 64 };

/** root's PATH may lack the sbin folders where iproute2 puts `ip` */
const IP = Bun.which("ip", { PATH: `${process.env.PATH ?? ""}:/usr/sbin:/sbin:/usr/bin:/bin` }) ?? "ip";

const live = new Set<string>();
let counter = 0;
let exitHooked = false;

function ip(args: string[]): { ok: boolean; out: string; err: string } {
  const r = spawnSync(IP, args, { encoding: "utf8", timeout: 10_000 });
  return { ok: r.status === 0, out: r.stdout ?? "", err: `${r.stderr ?? ""}${r.error ? String(r.error) : ""}`.trim() };
}

function mustIp(args: string[]): string {
  const r = ip(args);
  if (!r.ok) throw new Error(`ip ${args.join(" ")} failed: ${r.err}`);
  return r.out;
}

function deleteNamespace(name: string): void {
  const pids = ip(["netns", "pids", name]).out.split(/\s+/).filter((p) => /^\d+$/.test(p));
  for (const pid of pids) {
    try {
      process.kill(Number(pid), "SIGKILL");
    } catch {
      // gone already
    }
  }
  ip(["netns", "del", name]);
  live.delete(name);
}

/** Namespaces left by a test process that died before its cleanup (its pid is in the name). */
function sweepAbandoned(): void {
  for (const line of ip(["netns", "list"]).out.split("\n")) {
    const m = new RegExp(`^(${PREFIX}-(\\d+)-\\d+-(?:a|b|lan))\\b`).exec(line);
    if (!m || Number(m[2]) === process.pid) continue;
    try {
      process.kill(Number(m[2]), 0);
    } catch {
      deleteNamespace(m[1]!);
    }
  }
}

/** Throws, saying what is missing, when this process cannot make network namespaces. */
export function requireNetns(): void {
  if (process.getuid?.() !== 0) {
    throw new Error("this test needs root to create network namespaces (ip netns add); run the tests as root, as CI does");
  }
  const version = spawnSync(IP, ["-V"], { encoding: "utf8" });
  if (version.status !== 0) {
    throw new Error("this test needs the ip command (Debian package iproute2): apt-get install -y iproute2");
  }
}

function macOf(ns: string, device: string): string {
  const links = JSON.parse(mustIp(["-n", ns, "-j", "link", "show", "dev", device])) as { address?: string }[];
  const mac = links[0]?.address;
  if (typeof mac !== "string") throw new Error(`no MAC for ${device} in ${ns}`);
  return mac.toLowerCase();
}

function end(name: string, device: string, side: "a" | "b"): NetnsEnd {
  return {
    name,
    device,
    ipv4: SUBNET4[side],
    ipv6: SUBNET6[side],
    mac: macOf(name, device),
    command: (cmd) => [IP, "netns", "exec", name, ...cmd],
  };
}

/** Checks that namespaces can be made, deletes those of dead test processes, and hooks the exit cleanup once. */
function prepare(): void {
  requireNetns();
  sweepAbandoned();
  if (!exitHooked) {
    exitHooked = true;
    // a test process that ends without its afterAll still leaves nothing behind
    process.on("exit", () => {
      for (const name of [...live]) deleteNamespace(name);
    });
  }
}

/** Creates the two namespaces and the link between them, up, with addresses (IPv6 without DAD). */
export async function createVethPair(): Promise<VethPair> {
  prepare();
  const id = `${PREFIX}-${process.pid}-${counter++}`;
  const names = { a: `${id}-a`, b: `${id}-b` };
  try {
    for (const name of [names.a, names.b]) {
      const added = ip(["netns", "add", name]);
      if (!added.ok) throw new Error(`cannot create a network namespace (ip netns add ${name}): ${added.err}`);
      live.add(name);
      mustIp(["-n", name, "link", "set", "lo", "up"]);
    }
    mustIp(["-n", names.a, "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns", names.b]);
    for (const side of ["a", "b"] as const) {
      const ns = names[side];
      const dev = `veth-${side}`;
      mustIp(["-n", ns, "addr", "add", `${SUBNET4[side]}/${SUBNET4.prefix}`, "dev", dev]);
      mustIp(["-n", ns, "addr", "add", `${SUBNET6[side]}/${SUBNET6.prefix}`, "dev", dev, "nodad"]);
      mustIp(["-n", ns, "link", "set", dev, "up"]);
    }
    const pair = { a: end(names.a, "veth-a", "a"), b: end(names.b, "veth-b", "b") };
    return {
      ...pair,
      async remove() {
        deleteNamespace(names.a);
        deleteNamespace(names.b);
      },
    };
  } catch (error) {
    deleteNamespace(names.a);
    deleteNamespace(names.b);
    throw error;
  }
}

/**
 * Sends one UDP datagram from `from` to `to` (port 9, discard): to send it, `from` resolves
 * `to`'s MAC (ARP, or a neighbour solicitation), and `to` learns `from`'s MAC from that request,
 * as a TFTP server learns a booting client's.
 */
export async function announce(from: NetnsEnd, to: NetnsEnd, family: 4 | 6): Promise<void> {
  const address = family === 4 ? to.ipv4 : to.ipv6;
  const r = await run(from.command(["bash", "-c", `echo hello > /dev/udp/${address}/9`]), { timeoutMs: 5_000 });
  if (r.exitCode !== 0) throw new Error(`could not send from ${from.name} to ${address}: ${r.stderr}`);
}

/** The MAC `end`'s neighbour table holds for `address`, once it has one (throws after `timeoutMs`). */
export async function waitForNeighbour(end: NetnsEnd, address: string, timeoutMs = 5_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = ip(["-n", end.name, "-j", "neigh", "show", "to", address]);
    const entries = r.ok ? (JSON.parse(r.out || "[]") as { lladdr?: string }[]) : [];
    const mac = entries.find((e) => typeof e.lladdr === "string")?.lladdr;
    if (mac) return mac.toLowerCase();
    if (Date.now() > deadline) throw new Error(`${end.name} has no neighbour entry for ${address}: ${r.out}${r.err}`);
    await Bun.sleep(20);
  }
}

/**
 * An executable that runs `tftpd ARGS` from source inside `end`'s namespace, for
 * `spawnServer(args, { binary })`. Written into `dir`.
 */
export function tftpdIn(end: NetnsEnd, dir: string): string {
  const path = join(dir, `tftpd-in-${end.name}`);
  const quote = (s: string): string => `'${s.replaceAll("'", "'\\''")}'`;
  writeFileSync(path, `#!/bin/sh\nexec ${end.command([BUN, MAIN]).map(quote).join(" ")} "$@"\n`);
  chmodSync(path, 0o755);
  return path;
}

/**
 * Adds an IPv4 address (`ADDR/PREFIX`) to `end`'s veth device, beside the pair's own: a subnet
 * a test needs (the documentation range a README snippet names), or a DHCP lease the test
 * applies as a client would. Idempotent (`ip addr replace`); gone with the namespace.
 */
export function addIpv4(end: NetnsEnd, cidr: string): void {
  mustIp(["-n", end.name, "addr", "replace", cidr, "dev", end.device]);
}

/** A long-running program inside a namespace (a daemon in the foreground), bounded in time. */
export interface NetnsProcess {
  readonly pid: number;
  /** stdout and stderr so far, interleaved as they came */
  output(): string;
  /** resolves with the output once `pattern` appears in it; throws after `timeoutMs` or if the program exits first */
  waitForOutput(pattern: RegExp, timeoutMs?: number): Promise<string>;
  /** SIGTERM, SIGKILL after `graceMs`; resolves with the exit code (null when it was killed by a signal) */
  stop(graceMs?: number): Promise<number | null>;
  /** resolves with the exit code once the program has exited by itself or been stopped */
  readonly exited: Promise<number>;
}

/**
 * Starts `cmd` inside `end`'s namespace. It never outlives `lifetimeMs` (killed then, whatever
 * the test does), nor the namespace (`VethPair.remove` kills what runs there).
 */
export function spawnIn(end: NetnsEnd, cmd: string[], opts: { lifetimeMs?: number; env?: Record<string, string | undefined> } = {}): NetnsProcess {
  const proc = Bun.spawn(end.command(cmd), { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: opts.env ?? process.env });
  const lifetime = setTimeout(() => proc.kill("SIGKILL"), opts.lifetimeMs ?? 120_000);
  lifetime.unref?.();
  void proc.exited.then(() => clearTimeout(lifetime));
  let text = "";
  const watchers = new Set<() => void>();
  const pump = async (stream: ReadableStream<Uint8Array>): Promise<void> => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      text += decoder.decode(chunk, { stream: true });
      for (const w of [...watchers]) w();
    }
  };
  const pumped = Promise.all([pump(proc.stdout), pump(proc.stderr)]);
  return {
    pid: proc.pid,
    exited: proc.exited,
    output: () => text,
    waitForOutput(pattern, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const done = (): void => {
          watchers.delete(check);
          clearTimeout(timer);
        };
        const check = (): void => {
          if (pattern.test(text)) {
            done();
            resolve(text);
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`${cmd[0]} in ${end.name}: no ${pattern} within ${timeoutMs} ms; output: ${text}`));
        }, timeoutMs);
        watchers.add(check);
        void pumped.then(() => {
          if (!watchers.has(check)) return;
          check();
          if (watchers.has(check)) {
            done();
            reject(new Error(`${cmd[0]} in ${end.name} exited (${proc.exitCode ?? proc.signalCode}) before ${pattern}; output: ${text}`));
          }
        });
        check();
      });
    },
    async stop(graceMs = 3_000) {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill("SIGTERM");
        const killer = setTimeout(() => proc.kill("SIGKILL"), graceMs);
        await proc.exited;
        clearTimeout(killer);
      }
      clearTimeout(lifetime);
      return proc.exitCode;
    },
  };
}

/**
 * A boot LAN: one namespace holding a bridge with the boot server's addresses and a tap
 * device on it, for a virtual machine's NIC (QEMU `-netdev tap,ifname=TAP`). What the machine
 * sends reaches the bridge, as a booting host's frames reach a boot server on its segment.
 */
export interface BootLan {
  /** the namespace, with the bridge as its device (`ipv4` is the bridge's first address) */
  readonly host: NetnsEnd;
  /** the tap device's name inside the namespace */
  readonly tap: string;
  remove(): Promise<void>;
}

/** Creates a boot LAN whose bridge holds `addresses` (`ADDR/PREFIX`, the first one primary). */
export async function createBootLan(addresses: string[]): Promise<BootLan> {
  prepare();
  const name = `${PREFIX}-${process.pid}-${counter++}-lan`;
  const added = ip(["netns", "add", name]);
  if (!added.ok) throw new Error(`cannot create a network namespace (ip netns add ${name}): ${added.err}`);
  live.add(name);
  try {
    mustIp(["-n", name, "link", "set", "lo", "up"]);
    mustIp(["-n", name, "link", "add", "br0", "type", "bridge"]);
    for (const cidr of addresses) mustIp(["-n", name, "addr", "add", cidr, "dev", "br0"]);
    mustIp(["-n", name, "link", "set", "br0", "up"]);
    mustIp(["-n", name, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
    mustIp(["-n", name, "link", "set", "tap0", "master", "br0"]);
    mustIp(["-n", name, "link", "set", "tap0", "up"]);
    const host: NetnsEnd = {
      name,
      device: "br0",
      ipv4: addresses[0]!.split("/")[0]!,
      ipv6: "",
      mac: macOf(name, "br0"),
      command: (cmd) => [IP, "netns", "exec", name, ...cmd],
    };
    return { host, tap: "tap0", remove: async () => deleteNamespace(name) };
  } catch (error) {
    deleteNamespace(name);
    throw error;
  }
}

/** Resolves once a UDP socket is bound to `address:port` inside `end`'s namespace (throws after `timeoutMs`). */
export async function waitForUdpListener(end: NetnsEnd, address: string, port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await run(end.command(["ss", "-Hnul", `sport = :${port}`]), { timeoutMs: 5_000 });
    if (r.stdout.split("\n").some((line) => line.includes(`${address}:${port}`) || line.includes(`*:${port}`) || line.includes(`0.0.0.0:${port}`))) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on UDP ${address}:${port} in ${end.name} after ${timeoutMs} ms: ${r.stdout}${r.stderr}`);
    await Bun.sleep(50);
  }
}

/**
 * The Debian peer servers for build/bench-peers.ts, fetched without installing them
 * (tftpd-hpa and atftpd conflict as packages): `apt-get download` into .bench/debs, unpack
 * with `dpkg -x` into .bench/peers/PKG, and install only the shared libraries their binaries
 * miss (taken from the package's Depends). Idempotent: a second run only checks.
 */
import { existsSync, mkdirSync, readdirSync } from "node:fs";
import { join } from "node:path";

export interface PeerPackage {
  /** Debian package name. */
  pkg: string;
  /** Binary inside the unpacked package. */
  bin: string;
}

export const PEER_PACKAGES: Record<string, PeerPackage> = {
  "tftpd-hpa": { pkg: "tftpd-hpa", bin: "usr/sbin/in.tftpd" },
  atftpd: { pkg: "atftpd", bin: "usr/sbin/atftpd" },
  dnsmasq: { pkg: "dnsmasq-base", bin: "usr/sbin/dnsmasq" },
};

export interface PeerBinary {
  path: string;
  /** Debian package version, e.g. 5.2+20150808-1.4. */
  version: string;
  pkg: string;
}

type Say = (line: string) => void;

function run(argv: string[], cwd?: string): { ok: boolean; out: string } {
  const r = Bun.spawnSync(argv, { cwd, stdout: "pipe", stderr: "pipe", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
  return { ok: r.exitCode === 0, out: r.stdout.toString() + r.stderr.toString() };
}

let aptUpdated = false;
function aptUpdate(say: Say): void {
  if (aptUpdated) return;
  say("apt-get update");
  const r = run(["apt-get", "update", "-qq"]);
  if (!r.ok) throw new Error(`apt-get update failed:\n${r.out.trim()}`);
  aptUpdated = true;
}

function findDeb(dir: string, pkg: string): string | null {
  if (!existsSync(dir)) return null;
  const hit = readdirSync(dir).filter((n) => n.startsWith(`${pkg}_`) && n.endsWith(".deb")).sort().pop();
  return hit ? join(dir, hit) : null;
}

function missingLibs(bin: string): string[] {
  const r = run(["ldd", bin]);
  return r.out.split("\n").filter((l) => l.includes("not found")).map((l) => l.trim().split(/\s+/)[0]!);
}

function installed(pkg: string): boolean {
  const r = run(["dpkg-query", "-W", "-f=${db:Status-Status}", pkg]);
  return r.ok && r.out.trim() === "installed";
}

/** Library packages named in the .deb's Depends (first of each alternative). */
function libDepends(deb: string): string[] {
  const r = run(["dpkg-deb", "-f", deb, "Depends"]);
  if (!r.ok) return [];
  return r.out
    .split(",")
    .map((alt) => alt.split("|")[0]!.trim().split(/[\s(:]/)[0]!)
    .filter((name) => name.startsWith("lib"));
}

/** The newest .deb of `pkg` in `debDir`, fetched there with `apt-get download` when none is. */
export function downloadDeb(pkg: string, debDir: string, say: Say): string {
  mkdirSync(debDir, { recursive: true });
  let deb = findDeb(debDir, pkg);
  if (deb !== null) return deb;
  say(`apt-get download ${pkg} → ${debDir}`);
  let r = run(["apt-get", "download", pkg], debDir);
  if (!r.ok) {
    aptUpdate(say);
    r = run(["apt-get", "download", pkg], debDir);
  }
  deb = findDeb(debDir, pkg);
  if (!r.ok || deb === null) throw new Error(`apt-get download ${pkg} failed:\n${r.out.trim()}`);
  return deb;
}

/** Fetches, unpacks and checks one peer; returns the binary to run. */
export function ensurePeer(name: string, cacheDir: string, say: Say): PeerBinary {
  const spec = PEER_PACKAGES[name];
  if (!spec) throw new Error(`unknown peer ${name}`);
  const debDir = join(cacheDir, "debs");
  const unpackDir = join(cacheDir, "peers", spec.pkg);
  const bin = join(unpackDir, spec.bin);
  const deb = downloadDeb(spec.pkg, debDir, say);
  if (!existsSync(bin)) {
    say(`${name}: dpkg -x ${deb} ${unpackDir}`);
    mkdirSync(unpackDir, { recursive: true });
    const r = run(["dpkg", "-x", deb, unpackDir]);
    if (!r.ok || !existsSync(bin)) throw new Error(`dpkg -x ${deb} failed:\n${r.out.trim()}`);
  }
  let missing = missingLibs(bin);
  if (missing.length > 0) {
    const pkgs = libDepends(deb).filter((p) => !installed(p));
    say(`${name}: ${spec.bin} misses ${missing.join(", ")}; apt-get install ${pkgs.join(" ") || "(nothing in Depends?)"}`);
    if (pkgs.length > 0) {
      aptUpdate(say);
      const r = run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", ...pkgs]);
      if (!r.ok) throw new Error(`apt-get install ${pkgs.join(" ")} failed:\n${r.out.trim()}`);
    }
    missing = missingLibs(bin);
    if (missing.length > 0) throw new Error(`${bin} still misses shared libraries: ${missing.join(", ")}`);
  }
  const version = run(["dpkg-deb", "-f", deb, "Version"]).out.trim();
  return { path: bin, version, pkg: spec.pkg };
}

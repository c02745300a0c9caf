/**
 * Release helpers for build/compile.ts: the foreign-arch Bun runtime from the npm registry,
 * release tarballs, SHA256SUMS and the size summary.
 */
import { createHash } from "node:crypto";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";

export type Arch = "x64" | "arm64";

/** npm package holding the Bun runtime of an arch (the same binary `--target=bun-linux-<arch>` downloads from GitHub). */
const RUNTIME_PACKAGE: Record<Arch, string> = { x64: "@oven/bun-linux-x64", arm64: "@oven/bun-linux-aarch64" };

function sh(cmd: string[], cwd?: string, timeoutMs = 180_000): { ok: boolean; out: string } {
  const r = Bun.spawnSync(cmd, { cwd, stdout: "pipe", stderr: "pipe", timeout: timeoutMs });
  return { ok: r.exitCode === 0, out: (r.stdout.toString() + r.stderr.toString()).trim() };
}

/**
 * The Bun runtime for `arch`, version `version`, fetched with `npm pack` into `cacheDir`
 * (once; later builds reuse it). Returns its path, or an error line.
 */
export function foreignRuntime(arch: Arch, version: string, cacheDir: string): { path: string } | { error: string } {
  const pkg = `${RUNTIME_PACKAGE[arch]}@${version}`;
  const dir = resolve(cacheDir, `bun-linux-${arch}-${version}`);
  const bin = join(dir, "package", "bin", "bun");
  if (existsSync(bin)) return { path: bin };
  mkdirSync(dir, { recursive: true });
  const pack = sh(["npm", "pack", pkg], dir, 120_000); // offline: give up, do not hang the build
  const tgz = readdirSync(dir).find((f) => f.endsWith(".tgz"));
  if (!pack.ok || !tgz) return { error: `npm pack ${pkg} failed: ${pack.out.split("\n").filter(Boolean).pop() ?? "no output"}` };
  const untar = sh(["tar", "xzf", tgz], dir);
  rmSync(join(dir, tgz), { force: true });
  if (!untar.ok || !existsSync(bin)) return { error: `could not extract ${pkg}: ${untar.out}` };
  return { path: bin };
}

/**
 * dist/tftpd-<version>-linux-<arch>.tar.gz: one top directory tftpd-<version>-linux-<arch>/
 * holding tftpd, tftpd.service (when given), config.example.json and LICENSE.
 * Owner root, fixed mtime, sorted names: the same inputs give the same bytes.
 */
export function tarball(opts: {
  outdir: string;
  name: string;
  binary: string;
  service: string | null;
  configExample: string;
  license: string;
  mtime: string;
}): string {
  const stage = mkdtempSync(join(tmpdir(), "tftpd-release-"));
  try {
    const top = join(stage, opts.name);
    mkdirSync(top);
    cpSync(opts.binary, join(top, "tftpd"));
    if (opts.service) cpSync(opts.service, join(top, "tftpd.service"));
    cpSync(opts.configExample, join(top, "config.example.json"));
    cpSync(opts.license, join(top, "LICENSE"));
    const out = resolve(opts.outdir, `${opts.name}.tar.gz`);
    const r = sh(
      [
        "tar", "czf", out, "--sort=name", "--owner=0", "--group=0", "--numeric-owner",
        `--mtime=${opts.mtime}`, "-C", stage, opts.name,
      ],
    );
    if (!r.ok) throw new Error(`tar failed: ${r.out}`);
    return out;
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}

/** `sha256sum` format: "<hex>  <name>" per file, names relative to the dir. */
export function writeSha256Sums(outdir: string, files: string[]): string {
  const lines = files.map((f) => `${createHash("sha256").update(readFileSync(f)).digest("hex")}  ${basename(f)}`);
  const out = join(outdir, "SHA256SUMS");
  writeFileSync(out, lines.join("\n") + "\n");
  return out;
}

export function mib(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

export function summary(files: string[]): string {
  const width = Math.max(...files.map((f) => f.length));
  return files.map((f) => `  ${f.padEnd(width)}  ${mib(statSync(f).size).padStart(10)}`).join("\n");
}

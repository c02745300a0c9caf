/**
 * `npm run build`: self-contained executables and release files in dist/ (or --outdir DIR):
 *
 *   tftpd                              this machine's binary (tests and build/smoke.sh use it)
 *   tftpd-linux-x64, tftpd-linux-arm64 per-arch binaries; the arch that is not this machine's is
 *                                      cross-compiled with the Bun runtime from the npm registry
 *                                      (@oven/bun-linux-*), kept in .cache/; skipped with a note
 *                                      when it cannot be had
 *   tftpd-<version>-linux-<arch>.tar.gz  tftpd, tftpd.service, config.example.json, LICENSE
 *   SHA256SUMS                         `sha256sum -c` format, binaries and tarballs
 *
 * The entry files of worker threads (transfer workers, the file I/O pool) must be listed in
 * ENTRYPOINTS, or they are missing from the binary and `new Worker(...)` fails at run time.
 *
 * Options: --outdir DIR (default dist/), --no-bytecode, --no-cross (host arch only).
 */
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { parseArgs } from "node:util";
import pkg from "../package.json" with { type: "json" };
import { type Arch, foreignRuntime, summary, tarball, writeSha256Sums } from "./release.ts";

const ENTRYPOINTS = ["src/main.ts", "src/server/worker.ts", "src/storage/copy-worker.ts"];
const ROOT = resolve(import.meta.dir, "..");
const CACHE = join(ROOT, ".cache");

const { values: opts } = parseArgs({
  args: Bun.argv.slice(2),
  options: {
    outdir: { type: "string", default: "dist" },
    "no-bytecode": { type: "boolean", default: false },
    "no-cross": { type: "boolean", default: false },
  },
});
const OUTDIR = resolve(opts.outdir!);
const BYTECODE = !opts["no-bytecode"];

function git(...args: string[]): string | null {
  const out = Bun.spawnSync(["git", ...args], { cwd: ROOT, stdout: "pipe", stderr: "ignore" });
  return out.exitCode === 0 ? out.stdout.toString().trim() : null;
}

const hostArch: Arch | null = process.platform === "linux" && (process.arch === "x64" || process.arch === "arm64") ? process.arch : null;
const commit = git("rev-parse", "--short=12", "HEAD") ?? "unknown";
// Tarball mtimes: SOURCE_DATE_EPOCH, else the commit's time, so rebuilds of a commit match.
const mtime = process.env.SOURCE_DATE_EPOCH ? `@${process.env.SOURCE_DATE_EPOCH}` : (git("log", "-1", "--format=%cI") ?? new Date().toISOString());

/** bun build --compile of ENTRYPOINTS into outfile; `runtime` cross-compiles for a foreign arch. */
function compile(outfile: string, cross?: { arch: Arch; runtime: string }): boolean {
  const cmd = [
    // identifiers stay as written: a profile of the shipped binary names our functions
    // (minified, they read "bE (/$bunfs/root/tftpd:163)")
    process.execPath, "build", "--compile", "--minify-syntax", "--minify-whitespace",
    ...(BYTECODE ? ["--bytecode", "--format=esm"] : []),
    cross ? `--target=bun-linux-${cross.arch}` : "--target=bun",
    ...(cross ? [`--compile-executable-path=${cross.runtime}`] : []),
    `--define=TFTPD_BUILD_COMMIT=${JSON.stringify(commit)}`,
    ...ENTRYPOINTS, "--outfile", outfile,
  ];
  const r = Bun.spawnSync(cmd, { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) process.stderr.write(r.stdout.toString() + r.stderr.toString());
  return r.exitCode === 0;
}

mkdirSync(OUTDIR, { recursive: true });
// Old artifacts go first, so SHA256SUMS and the directory always agree (e.g. arm64 skipped now).
for (const f of readdirSync(OUTDIR)) {
  if (f === "tftpd" || f === "SHA256SUMS" || /^tftpd-linux-(x64|arm64)$/.test(f) || /^tftpd-.*-linux-(x64|arm64)\.tar\.gz$/.test(f)) {
    rmSync(join(OUTDIR, f), { force: true });
  }
}

// 1. This machine's binary.
const hostBinary = join(OUTDIR, "tftpd");
if (!compile(hostBinary)) process.exit(1);
console.log(`built ${relative(process.cwd(), hostBinary)} (tftpd ${pkg.version}, commit ${commit}${BYTECODE ? ", bytecode" : ""})`);

// 2. Per-arch binaries.
const binaries: Partial<Record<Arch, string>> = {};
if (hostArch) {
  binaries[hostArch] = join(OUTDIR, `tftpd-linux-${hostArch}`);
  copyFileSync(hostBinary, binaries[hostArch]);
} else {
  console.log(`note: ${process.platform}-${process.arch} is not linux x64/arm64: no per-arch release binary of this machine`);
}
for (const arch of ["x64", "arm64"] as const) {
  if (arch === hostArch) continue;
  if (opts["no-cross"]) {
    console.log(`skipped linux-${arch}: --no-cross`);
    continue;
  }
  const runtime = foreignRuntime(arch, Bun.version, CACHE);
  if ("error" in runtime) {
    console.log(`skipped linux-${arch}: no Bun ${Bun.version} runtime for it (${runtime.error})`);
    continue;
  }
  const out = join(OUTDIR, `tftpd-linux-${arch}`);
  if (compile(out, { arch, runtime: runtime.path })) binaries[arch] = out;
  else console.log(`skipped linux-${arch}: cross-compile failed (see above)`);
}

// 3. Tarballs.
const service = join(ROOT, "systemd", "tftpd.service");
const hasService = existsSync(service);
if (!hasService) console.log("note: systemd/tftpd.service does not exist: tarballs are without tftpd.service");
const tarballs: string[] = [];
for (const [arch, binary] of Object.entries(binaries)) {
  tarballs.push(
    tarball({
      outdir: OUTDIR,
      name: `tftpd-${pkg.version}-linux-${arch}`,
      binary,
      service: hasService ? service : null,
      configExample: join(ROOT, "config", "example.json"),
      license: join(ROOT, "LICENSE"),
      mtime,
    }),
  );
}

// 4. Checksums and summary.
const released = [...Object.values(binaries), ...tarballs];
const sums = writeSha256Sums(OUTDIR, released);
console.log(summary([hostBinary, ...released, sums].map((f) => relative(process.cwd(), f) || f)));

/**
 * `bun build/compile.ts --outdir DIR`: the release build into a temporary directory. The binary
 * carries the commit; SHA256SUMS verifies with `sha256sum -c`; the tarball holds exactly the
 * release files; the binary from the tarball serves a file to curl, through worker threads.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join, resolve } from "node:path";
import pkg from "../../package.json" with { type: "json" };
import { patternBytes, removeDir, tempDir, writeFile } from "../helpers/files.ts";
import { BUN, run } from "../helpers/run.ts";

setDefaultTimeout(120_000);

const ROOT = resolve(import.meta.dir, "../..");
const ARCH = process.arch === "arm64" ? "arm64" : "x64";
const NAME = `tftpd-${pkg.version}-linux-${ARCH}`;
const HAS_SERVICE = existsSync(join(ROOT, "systemd", "tftpd.service"));

let work: string;
let out: string;
let build: Awaited<ReturnType<typeof run>>;

/** The environment without TFTPD_* settings from outside (tune stays off, as in every test). */
function cleanEnv(extra: Record<string, string> = {}): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("TFTPD_")) env[k] = v;
  return { ...env, TFTPD_TUNE_ENABLED: "false", ...extra };
}

beforeAll(async () => {
  work = tempDir("tftpd-build-");
  out = join(work, "out");
  // --no-cross: the other arch needs a runtime from the npm registry; this test stays offline.
  build = await run([BUN, join(ROOT, "build/compile.ts"), "--outdir", out, "--no-cross"], { cwd: ROOT, timeoutMs: 100_000 });
}, 110_000);
afterAll(() => removeDir(work));

describe("bun build/compile.ts --outdir DIR", () => {
  test("builds, writes only into DIR, and prints each artifact with its size", () => {
    expect(build.stderr).toBe("");
    expect(build.timedOut).toBe(false);
    expect(build.exitCode).toBe(0);
    expect(readdirSync(out).sort()).toEqual(["SHA256SUMS", `${NAME}.tar.gz`, "tftpd", `tftpd-linux-${ARCH}`].sort());
    expect(build.stdout).toMatch(/skipped linux-(x64|arm64): --no-cross/);
    for (const f of ["tftpd", `tftpd-linux-${ARCH}`, `${NAME}.tar.gz`, "SHA256SUMS"]) {
      expect(build.stdout).toMatch(new RegExp(`${f.replaceAll(".", "\\.")}\\s+\\d+\\.\\d MiB`));
    }
  });

  test("the binary prints the version and the stamped commit, not \"dev\"", async () => {
    const r = await run([join(out, "tftpd"), "version"], { env: cleanEnv(), timeoutMs: 15_000 });
    expect(r.exitCode).toBe(0);
    const git = Bun.spawnSync(["git", "rev-parse", "--short=12", "HEAD"], { cwd: ROOT, stdout: "pipe", stderr: "ignore" });
    const commit = git.exitCode === 0 ? git.stdout.toString().trim() : "unknown";
    expect(r.stdout).toContain(`tftpd ${pkg.version} (build ${commit},`);
    expect(r.stdout).not.toContain("build dev");
  });

  test("the bundle keeps our identifiers, so a profile of the shipped binary names our functions", () => {
    const bundle = readFileSync(join(out, "tftpd")).toString("latin1");
    // module-level functions: identifier minification would have renamed them (to "bE" and the like)
    for (const name of ["function decodePacket(", "function wakeLoop(", "function listenError("]) expect(bundle).toContain(name);
  });

  test("SHA256SUMS covers the release binary and tarball and verifies with sha256sum -c", async () => {
    const sums = readFileSync(join(out, "SHA256SUMS"), "utf8");
    const names = sums.trim().split("\n").map((l) => {
      expect(l).toMatch(/^[0-9a-f]{64} {2}\S+$/);
      return l.slice(66);
    });
    expect(names.sort()).toEqual([`${NAME}.tar.gz`, `tftpd-linux-${ARCH}`].sort());
    const r = await run(["sha256sum", "-c", "SHA256SUMS"], { cwd: out, timeoutMs: 30_000 });
    expect(r.exitCode).toBe(0);
    expect(r.stdout.trim().split("\n").every((l) => l.endsWith(": OK"))).toBe(true);
  });

  test("the tarball holds exactly tftpd, tftpd.service, config.example.json, LICENSE in one directory", async () => {
    const r = await run(["tar", "tzf", join(out, `${NAME}.tar.gz`)], { timeoutMs: 30_000 });
    expect(r.exitCode).toBe(0);
    const want = [`${NAME}/`, `${NAME}/LICENSE`, `${NAME}/config.example.json`, `${NAME}/tftpd`];
    if (HAS_SERVICE) want.push(`${NAME}/tftpd.service`);
    expect(r.stdout.trim().split("\n").sort()).toEqual(want.sort());
  });

  test("the binary from the tarball serves a file to curl, through two worker threads", async () => {
    const x = join(work, "x");
    const unpack = await run(["mkdir", "-p", x]);
    expect(unpack.exitCode).toBe(0);
    expect((await run(["tar", "xzf", join(out, `${NAME}.tar.gz`), "-C", x], { timeoutMs: 30_000 })).exitCode).toBe(0);
    const bin = join(x, NAME, "tftpd");
    expect(readFileSync(join(x, NAME, "config.example.json"), "utf8")).toBe(readFileSync(join(ROOT, "config/example.json"), "utf8"));

    const root = join(work, "root");
    const bytes = patternBytes(700_000, 7);
    writeFile(root, "boot/kernel.img", bytes);
    const proc = Bun.spawn([bin, "serve", "--no-tune", "--root", root, "--listen", "127.0.0.1:0"], {
      // two workers: the worker entry point must be inside the binary
      // the test preload's TFTPD_TFTP_USER kept: the root sits in a directory only root may enter
      env: { ...cleanEnv({ TFTPD_METRICS_LISTEN: "127.0.0.1:0", TFTPD_PERFORMANCE_CPU_WORKER_THREADS: "2" }), TFTPD_TFTP_USER: process.env.TFTPD_TFTP_USER },
      stdout: "pipe",
      stderr: "pipe",
    });
    try {
      const port = await listeningPort(proc.stdout, 15_000);
      const got = join(work, "got.img");
      const curl = await run(["curl", "-sS", "--tftp-blksize", "1468", "-o", got, `tftp://127.0.0.1:${port}/boot/kernel.img`], { timeoutMs: 30_000 });
      expect(curl.stderr).toBe("");
      expect(curl.exitCode).toBe(0);
      expect(Buffer.compare(readFileSync(got), Buffer.from(bytes))).toBe(0);
    } finally {
      proc.kill("SIGTERM");
      await proc.exited;
    }
  });
});

/** The port of the `{"msg":"listening","address":"127.0.0.1:PORT"}` log line. */
async function listeningPort(stdout: ReadableStream<Uint8Array>, timeoutMs: number): Promise<number> {
  const reader = stdout.getReader();
  const decoder = new TextDecoder();
  let text = "";
  const deadline = Date.now() + timeoutMs;
  try {
    while (Date.now() < deadline) {
      const chunk = await Promise.race([
        reader.read(),
        Bun.sleep(Math.max(0, deadline - Date.now())).then(() => ({ done: true, value: undefined })),
      ]);
      if (chunk.value) text += decoder.decode(chunk.value, { stream: true });
      for (const line of text.split("\n")) {
        if (!line.startsWith("{")) continue;
        try {
          const rec = JSON.parse(line) as { msg?: string; address?: string };
          if (rec.msg === "listening" && rec.address?.startsWith("127.0.0.1:")) return Number(rec.address.slice("127.0.0.1:".length));
        } catch {
          // a partial line: wait for the rest
        }
      }
      if (chunk.done) break;
    }
  } finally {
    reader.releaseLock();
  }
  throw new Error(`no "listening" log line within ${timeoutMs} ms:\n${text}`);
}

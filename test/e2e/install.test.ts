/**
 * install.sh against a local release: a temp dir holding tftpd-linux-<arch> (a copy of
 * dist/tftpd) and its SHA256SUMS, served over HTTP (Bun.serve on loopback) and as file://.
 * Every install goes into a --prefix tree, so the machine is never touched.
 * shellcheck must be installed (apt-get install -y shellcheck): the lint test fails without it.
 */
import { compiledBinary } from "../helpers/binary.ts";
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { removeDir, sha256, tempDir, writeFile } from "../helpers/files.ts";
import { run } from "../helpers/run.ts";
import { spawnServer } from "../helpers/server.ts";

setDefaultTimeout(60_000);

const REPO = new URL("../../", import.meta.url).pathname;
const SCRIPT = join(REPO, "install.sh");
const UNIT = join(REPO, "systemd/tftpd.service");
let BINARY = "";
const ARCH = process.arch === "arm64" ? "arm64" : "x64";
const ASSET = `tftpd-linux-${ARCH}`;

let dir: string;
let releases: string; // served over HTTP and file://
let http: ReturnType<typeof Bun.serve>;
let baseUrl: string;

/** The environment without TFTPD_*, so nothing from outside picks a base URL or a config. */
function cleanEnv(extra: Record<string, string> = {}): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("TFTPD_")) env[k] = v;
  return { ...env, ...extra };
}

function install(args: string[], env: Record<string, string> = {}) {
  return run(["sh", SCRIPT, ...args], { env: cleanEnv(env), timeoutMs: 60_000 });
}

/** A release directory under `releases`: the binary and SHA256SUMS (or the given SUMS text). */
function makeRelease(name: string, sums?: string): string {
  const d = join(releases, name);
  mkdirSync(d, { recursive: true });
  copyFileSync(BINARY, join(d, ASSET));
  writeFileSync(join(d, "SHA256SUMS"), sums ?? `${sha256(readFileSync(BINARY))}  ${ASSET}\n`);
  return d;
}

const mode = (path: string): number => statSync(path).mode & 0o777;
const paths = (prefix: string) => ({
  bin: join(prefix, "usr/local/bin/tftpd"),
  config: join(prefix, "etc/tftpd/config.json"),
  unit: join(prefix, "etc/systemd/system/tftpd.service"),
  srv: join(prefix, "srv/tftp"),
});

beforeAll(async () => {
  BINARY = await compiledBinary();
  dir = tempDir("tftpd-install-");
  releases = join(dir, "releases");
  makeRelease("latest");
  makeRelease("latest/v9.9.9");
  makeRelease("tampered", `${"0".repeat(64)}  ${ASSET}\n`);
  makeRelease("noline", `${sha256(readFileSync(BINARY))}  tftpd-linux-other\n`);
  http = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const path = decodeURIComponent(new URL(req.url).pathname);
      const file = join(releases, path);
      if (path.includes("..") || !existsSync(file) || !statSync(file).isFile()) return new Response("not found", { status: 404 });
      return new Response(Bun.file(file));
    },
  });
  baseUrl = `http://127.0.0.1:${http.port}`;
});

afterAll(() => {
  http?.stop(true);
  if (dir) removeDir(dir);
});

describe("install.sh --prefix", () => {
  let prefix: string;
  beforeAll(() => {
    prefix = join(dir, "root");
  });

  test("installs binary, config, unit and /srv/tftp with the right modes", async () => {
    const r = await install(["--prefix", prefix, "--base-url", `${baseUrl}/latest`, "--no-start"]);
    expect(r.stderr).toContain("checksum ok");
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toBe("");
    expect(r.stderr).toMatch(/installed tftpd \d+\.\d+\.\d+ \(build /);
    const p = paths(prefix);
    expect(mode(p.bin)).toBe(0o755);
    expect(readFileSync(p.bin).equals(readFileSync(BINARY))).toBe(true);
    const version = await run([p.bin, "version"]);
    expect(version.exitCode).toBe(0);
    expect(version.stdout).toMatch(/^tftpd \d+\.\d+\.\d+ \(build /);

    expect(mode(p.config)).toBe(0o644);
    // (the config names /srv/tftp, which a --prefix install makes under the prefix: check does
    // look for the root, so it is pointed there)
    const check = await run([p.bin, "config", "check", p.config], { env: { ...cleanEnv(), TFTPD_TFTP_ROOT: p.srv } });
    expect(check.stderr).toBe("tftpd config check: note: tftp.root is set by TFTPD_TFTP_ROOT\n");
    expect(check.exitCode).toBe(0);
    expect(JSON.parse(check.stdout).tftp).toMatchObject({ root: p.srv, write: "off" });
    expect(JSON.parse(readFileSync(p.config, "utf8")).tftp).toMatchObject({ root: "/srv/tftp" });

    expect(readFileSync(p.unit, "utf8")).toBe(readFileSync(UNIT, "utf8"));
    expect(mode(p.unit)).toBe(0o644);
    expect(statSync(p.srv).isDirectory()).toBe(true);
    expect(mode(p.srv)).toBe(0o755);
    // no temporary files left next to the installed ones
    expect(readdirSync(join(prefix, "usr/local/bin"))).toEqual(["tftpd"]);
    expect(readdirSync(join(prefix, "etc/tftpd"))).toEqual(["config.json"]);
  });

  test("the installed binary serves a file to curl", async () => {
    const p = paths(prefix);
    const content = "hello from the installed tftpd\n";
    writeFile(p.srv, "hello.txt", content);
    const server = await spawnServer(["--no-tune", "--root", p.srv, "--listen", "127.0.0.1:0"], {
      binary: p.bin,
      env: { TFTPD_METRICS_LISTEN: "127.0.0.1:0", TFTPD_CONFIG: p.config },
    });
    try {
      expect(server.port).toBeGreaterThan(0);
      const out = join(dir, "fetched.txt");
      const r = await run(["curl", "-sS", "--max-time", "10", "-o", out, `tftp://127.0.0.1:${server.port}/hello.txt`]);
      expect(r.stderr).toBe("");
      expect(r.exitCode).toBe(0);
      expect(readFileSync(out, "utf8")).toBe(content);
    } finally {
      expect(await server.stop()).toBe(0);
    }
  });

  test("a second run upgrades in place and keeps an edited config", async () => {
    const p = paths(prefix);
    const edited = JSON.stringify({ tftp: { root: "/srv/tftp", write: "create" }, log: { level: "debug" } }, null, 2);
    writeFileSync(p.config, edited);
    const r = await install(["--prefix", prefix, "--base-url", `${baseUrl}/latest`, "--no-start"]);
    expect(r.exitCode).toBe(0);
    expect(r.stderr).toMatch(/upgraded from \d+\.\d+\.\d+ \(build \w+\) to \d+\.\d+\.\d+ \(build \w+\)/);
    expect(r.stderr).toContain("kept the existing");
    expect(readFileSync(p.config, "utf8")).toBe(edited);
    expect(mode(p.bin)).toBe(0o755);
    expect(readFileSync(p.unit, "utf8")).toBe(readFileSync(UNIT, "utf8"));
  });

  test("--uninstall removes the binary and the unit, keeps config and /srv/tftp", async () => {
    const p = paths(prefix);
    const r = await install(["--uninstall", "--prefix", prefix]);
    expect(r.exitCode).toBe(0);
    expect(existsSync(p.bin)).toBe(false);
    expect(existsSync(p.unit)).toBe(false);
    expect(existsSync(p.config)).toBe(true);
    expect(existsSync(join(p.srv, "hello.txt"))).toBe(true);
  });

  test("--uninstall --purge removes the config and /srv/tftp too", async () => {
    const p = paths(prefix);
    const r = await install(["--uninstall", "--purge", "--prefix", prefix]);
    expect(r.exitCode).toBe(0);
    expect(existsSync(p.config)).toBe(false);
    expect(existsSync(join(prefix, "etc/tftpd"))).toBe(false);
    expect(existsSync(p.srv)).toBe(false);
  });
});

describe("downloads", () => {
  test("a file:// base URL works", async () => {
    const prefix = join(dir, "file-url");
    const r = await install(["--prefix", prefix, "--base-url", `file://${join(releases, "latest")}`]);
    expect(r.exitCode).toBe(0);
    expect(readFileSync(paths(prefix).bin).equals(readFileSync(BINARY))).toBe(true);
  });

  test("--version V downloads from BASE/V/", async () => {
    const prefix = join(dir, "versioned");
    const r = await install(["--prefix", prefix, "--base-url", `${baseUrl}/latest/`, "--version", "v9.9.9"]);
    expect(r.exitCode).toBe(0);
    expect(r.stderr).toContain(`${baseUrl}/latest/v9.9.9/${ASSET}`);
    expect(existsSync(paths(prefix).bin)).toBe(true);
  });

  test("TFTPD_BASE_URL sets the base URL; --base-url overrides it", async () => {
    const a = join(dir, "env-url");
    const r1 = await install(["--prefix", a], { TFTPD_BASE_URL: `${baseUrl}/latest` });
    expect(r1.exitCode).toBe(0);
    expect(r1.stderr).toContain(`${baseUrl}/latest/${ASSET}`);
    const b = join(dir, "flag-url");
    const r2 = await install(["--prefix", b, "--base-url", `${baseUrl}/latest`], { TFTPD_BASE_URL: `${baseUrl}/nothing-here` });
    expect(r2.exitCode).toBe(0);
    expect(r2.stderr).not.toContain("nothing-here");
  });

  test("the default base URL is the release placeholder (no network needed to check)", async () => {
    expect(readFileSync(SCRIPT, "utf8")).toContain('DEFAULT_BASE_URL="https://releases.tftpd.invalid/latest"');
    const r = await install(["--help"]);
    expect(r.stderr).toContain("https://releases.tftpd.invalid/latest");
  });
});

describe("refusals: exit non-zero, nothing installed", () => {
  const refused = async (args: string[], message: string | RegExp) => {
    const prefix = tempDir("tftpd-install-refused-");
    try {
      const r = await install(["--prefix", prefix, ...args]);
      expect(r.exitCode).not.toBe(0);
      expect(r.stderr).toMatch(message);
      expect(readdirSync(prefix)).toEqual([]);
    } finally {
      removeDir(prefix);
    }
  };

  test("a tampered SHA256SUMS", () => refused(["--base-url", `${baseUrl}/tampered`], /checksum mismatch for tftpd-linux-\w+.*nothing installed/));
  test("SHA256SUMS without a line for the binary", () => refused(["--base-url", `${baseUrl}/noline`], /no line for tftpd-linux-\w+/));
  test("a missing release (404)", () => refused(["--base-url", `${baseUrl}/missing`], /download failed: .*\/missing\//));
  test("an unknown option", () => refused(["--bogus"], /unknown option: --bogus/));

  test("a truncated download of the script runs nothing", async () => {
    const text = readFileSync(SCRIPT, "utf8");
    const lines = text.trimEnd().split("\n");
    expect(lines.at(-1)).toBe('main "$@"');
    const prefix = tempDir("tftpd-install-truncated-");
    try {
      // cut anywhere before the last line: at most a syntax error, never an install
      for (const cut of [0.3, 0.6, 0.95]) {
        const partial = writeFile(dir, `truncated-${cut}.sh`, text.slice(0, Math.floor(text.length * cut)));
        const r = await run(["sh", partial, "--prefix", prefix, "--base-url", `${baseUrl}/latest`], { env: cleanEnv() });
        expect(r.stderr).not.toContain("downloading");
        expect(readdirSync(prefix)).toEqual([]);
      }
      const whole = writeFile(dir, "no-main.sh", lines.slice(0, -1).join("\n") + "\n");
      const r = await run(["sh", whole, "--prefix", prefix, "--base-url", `${baseUrl}/latest`], { env: cleanEnv() });
      expect(r.exitCode).toBe(0);
      expect(r.stderr).toBe("");
      expect(readdirSync(prefix)).toEqual([]);
    } finally {
      removeDir(prefix);
    }
  });
});

test("--help", async () => {
  const r = await install(["--help"]);
  expect(r.exitCode).toBe(0);
  for (const flag of ["--base-url", "--version", "--prefix", "--no-start", "--uninstall", "--purge"]) expect(r.stderr).toContain(flag);
});

test("shellcheck install.sh passes", async () => {
  const found = Bun.spawnSync(["sh", "-c", "command -v shellcheck"], { stdout: "pipe" }).exitCode === 0;
  if (!found) throw new Error("shellcheck is missing: run  sudo apt-get install -y shellcheck");
  const r = await run(["shellcheck", "--shell=sh", SCRIPT]);
  expect(r.stdout + r.stderr).toBe("");
  expect(r.exitCode).toBe(0);
});

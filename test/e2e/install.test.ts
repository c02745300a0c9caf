/**
 * install.sh against a local release: a temp dir holding what build/compile.ts --no-cross
 * made (tftpd-linux-<arch>, tftpd-<version>-linux-<arch>.tar.gz and SHA256SUMS), served over
 * HTTP (Bun.serve on loopback, which logs the paths asked for) and as file://.
 * Every install goes into a --prefix tree, so the machine is never touched.
 * shellcheck must be installed (apt-get install -y shellcheck): the lint test fails without it.
 */
import { compiledBinary } from "../helpers/binary.ts";
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
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
let TARBALL = ""; // tftpd-<version>-linux-<arch>.tar.gz, from the build
let TARBALL_PATH = "";
let VERSION = "";
let SUMS = ""; // the build's SHA256SUMS: the binary and the tarball

let dir: string;
let releases: string; // served over HTTP and file://
let http: ReturnType<typeof Bun.serve>;
let baseUrl: string;
let requested: string[] = []; // paths asked of the HTTP server

/** The environment without TFTPD_*, so nothing from outside picks a base URL or a config. */
function cleanEnv(extra: Record<string, string> = {}): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("TFTPD_")) env[k] = v;
  return { ...env, ...extra };
}

function install(args: string[], env: Record<string, string> = {}) {
  return run(["sh", SCRIPT, ...args], { env: cleanEnv(env), timeoutMs: 60_000 });
}

/**
 * A release directory under `releases` as a release holds it: the binary, the tarball (the
 * build's, or the given file) and SHA256SUMS (the build's, or the given text).
 */
function makeRelease(name: string, opts: { sums?: string; tarball?: string } = {}): string {
  const d = join(releases, name);
  mkdirSync(d, { recursive: true });
  copyFileSync(BINARY, join(d, ASSET));
  copyFileSync(opts.tarball ?? TARBALL_PATH, join(d, TARBALL));
  writeFileSync(join(d, "SHA256SUMS"), opts.sums ?? SUMS);
  return d;
}

/** The build's tarball repacked without `drop` (a member of its top directory), and its SHA256SUMS. */
async function tarballWithout(drop: string): Promise<{ tarball: string; sums: string }> {
  const stage = join(dir, `stage-without-${drop}`);
  mkdirSync(stage, { recursive: true });
  const top = TARBALL.replace(/\.tar\.gz$/, "");
  expect((await run(["tar", "xzf", TARBALL_PATH, "-C", stage])).exitCode).toBe(0);
  rmSync(join(stage, top, drop));
  const tarball = join(dir, `without-${drop}.tar.gz`);
  expect((await run(["tar", "czf", tarball, "-C", stage, top])).exitCode).toBe(0);
  return { tarball, sums: `${sha256(readFileSync(BINARY))}  ${ASSET}\n${sha256(readFileSync(tarball))}  ${TARBALL}\n` };
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
  const build = dirname(BINARY);
  TARBALL = readdirSync(build).find((f) => f === `tftpd-${(f.match(/^tftpd-(.+)-linux-/) ?? [])[1]}-linux-${ARCH}.tar.gz`) ?? "";
  expect(TARBALL).not.toBe("");
  TARBALL_PATH = join(build, TARBALL);
  VERSION = TARBALL.slice("tftpd-".length, -`-linux-${ARCH}.tar.gz`.length);
  SUMS = readFileSync(join(build, "SHA256SUMS"), "utf8");
  expect(SUMS).toContain(`  ${TARBALL}\n`);
  dir = tempDir("tftpd-install-");
  releases = join(dir, "releases");
  makeRelease("latest");
  makeRelease("latest/v9.9.9");
  const tarSum = sha256(readFileSync(TARBALL_PATH));
  const binSum = sha256(readFileSync(BINARY));
  makeRelease("tampered", { sums: `${binSum}  ${ASSET}\n${"0".repeat(64)}  ${TARBALL}\n` });
  // a SHA256SUMS listing the binary only (no tarball line)
  makeRelease("noline", { sums: `${binSum}  ${ASSET}\n${tarSum}  tftpd-${VERSION}-linux-other.tar.gz\n` });
  makeRelease("twoversions", { sums: `${tarSum}  ${TARBALL}\n${tarSum}  tftpd-0.0.1-linux-${ARCH}.tar.gz\n` });
  makeRelease("badversion", { sums: `${tarSum}  tftpd-../x-linux-${ARCH}.tar.gz\n` });
  makeRelease("noservice", await tarballWithout("tftpd.service"));
  makeRelease("nobinary", await tarballWithout("tftpd"));
  http = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const path = decodeURIComponent(new URL(req.url).pathname);
      requested.push(path);
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
    const tmp = join(dir, "tmp");
    mkdirSync(tmp);
    requested = [];
    const r = await install(["--prefix", prefix, "--base-url", `${baseUrl}/latest`, "--no-start"], { TMPDIR: tmp });
    expect(r.stderr).toContain(`checksum ok: ${TARBALL}`);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain(`installed tftpd ${VERSION} (build `);
    // the tarball (about half the binary's size), never the bare binary; the work dir is gone
    expect(r.stderr).toContain(`downloading ${baseUrl}/latest/${TARBALL}`);
    expect(requested.sort()).toEqual(["/latest/SHA256SUMS", `/latest/${TARBALL}`].sort());
    expect(readdirSync(tmp)).toEqual([]);
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

  test("a second run of the same release reinstalls it (not 'upgraded') and keeps an edited config", async () => {
    const p = paths(prefix);
    const edited = JSON.stringify({ tftp: { root: "/srv/tftp", write: "create" }, log: { level: "debug" } }, null, 2);
    writeFileSync(p.config, edited);
    const r = await install(["--prefix", prefix, "--base-url", `${baseUrl}/latest`, "--no-start"]);
    expect(r.exitCode).toBe(0);
    expect(r.stderr).toMatch(new RegExp(`reinstalled tftpd ${VERSION.replaceAll(".", "\\.")} \\(build \\w+\\) \\(already installed\\)`));
    expect(r.stderr).not.toContain("upgraded");
    expect(r.stderr).toContain("kept the existing");
    expect(readFileSync(p.config, "utf8")).toBe(edited);
    expect(mode(p.bin)).toBe(0o755);
    expect(readFileSync(p.unit, "utf8")).toBe(readFileSync(UNIT, "utf8"));
  });

  test("over another build it says from which version to which", async () => {
    const p = paths(prefix);
    writeFileSync(p.bin, "#!/bin/sh\necho 'tftpd 0.0.9 (build 0123456789ab, bun 1.0.0)'\n");
    chmodSync(p.bin, 0o755);
    const r = await install(["--prefix", prefix, "--base-url", `${baseUrl}/latest`, "--no-start"]);
    expect(r.exitCode).toBe(0);
    expect(r.stderr).toMatch(new RegExp(`upgraded from 0\\.0\\.9 \\(build 0123456789ab\\) to ${VERSION.replaceAll(".", "\\.")} \\(build \\w+\\)`));
    expect(r.stderr).not.toContain("reinstalled");
    expect(readFileSync(p.bin).equals(readFileSync(BINARY))).toBe(true);
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

  test("--uninstall --purge removes the config and keeps the boot files in /srv/tftp", async () => {
    const p = paths(prefix);
    const r = await install(["--uninstall", "--purge", "--prefix", prefix]);
    expect(r.exitCode).toBe(0);
    expect(existsSync(p.config)).toBe(false);
    expect(existsSync(join(prefix, "etc/tftpd"))).toBe(false);
    expect(readFileSync(join(p.srv, "hello.txt"), "utf8")).toBe("hello from the installed tftpd\n");
    expect(r.stderr).toContain(`kept ${p.srv}`);
    expect(r.stderr).toContain("--purge-data");
  });

  test("--uninstall --purge-data removes /srv/tftp too (implies --purge) and says what it removed", async () => {
    const p = paths(prefix);
    writeFile(join(prefix, "etc/tftpd"), "config.json", "{}\n");
    writeFile(p.srv, "pxelinux.cfg/default", "DEFAULT linux\n");
    const r = await install(["--uninstall", "--purge-data", "--prefix", prefix]);
    expect(r.exitCode).toBe(0);
    expect(existsSync(join(prefix, "etc/tftpd"))).toBe(false);
    expect(existsSync(p.srv)).toBe(false);
    expect(r.stderr).toContain(`removed ${join(prefix, "etc/tftpd")}`);
    expect(r.stderr).toContain(`removed ${p.srv} (2 files)`);
  });
});

describe("downloads", () => {
  test("a file:// base URL works", async () => {
    const prefix = join(dir, "file-url");
    const r = await install(["--prefix", prefix, "--base-url", `file://${join(releases, "latest")}`]);
    expect(r.exitCode).toBe(0);
    expect(readFileSync(paths(prefix).bin).equals(readFileSync(BINARY))).toBe(true);
    expect(r.stderr).toContain(`downloading file://${join(releases, "latest", TARBALL)}`);
  });

  test("--version V downloads from BASE/V/", async () => {
    const prefix = join(dir, "versioned");
    const r = await install(["--prefix", prefix, "--base-url", `${baseUrl}/latest/`, "--version", "v9.9.9"]);
    expect(r.exitCode).toBe(0);
    expect(r.stderr).toContain(`${baseUrl}/latest/v9.9.9/${TARBALL}`);
    expect(existsSync(paths(prefix).bin)).toBe(true);
  });

  test("TFTPD_BASE_URL sets the base URL; --base-url overrides it", async () => {
    const a = join(dir, "env-url");
    const r1 = await install(["--prefix", a], { TFTPD_BASE_URL: `${baseUrl}/latest` });
    expect(r1.exitCode).toBe(0);
    expect(r1.stderr).toContain(`${baseUrl}/latest/${TARBALL}`);
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

  test("a tarball without tftpd.service: the installer's own copy of the unit", async () => {
    const prefix = join(dir, "noservice");
    const r = await install(["--prefix", prefix, "--base-url", `${baseUrl}/noservice`]);
    expect(r.exitCode).toBe(0);
    expect(r.stderr).toContain("no tftpd.service");
    expect(readFileSync(paths(prefix).unit, "utf8")).toBe(readFileSync(UNIT, "utf8"));
    expect(readFileSync(paths(prefix).bin).equals(readFileSync(BINARY))).toBe(true);
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

  test("a tampered SHA256SUMS", () =>
    refused(["--base-url", `${baseUrl}/tampered`], /\ntftpd-install: error: checksum mismatch for tftpd-[^ ]+-linux-\w+\.tar\.gz \(expected 0{64}, got [0-9a-f]{64}\): nothing installed\n$/));
  test("SHA256SUMS without a line for this arch's tarball", () =>
    refused(["--base-url", `${baseUrl}/noline`], /\ntftpd-install: error: SHA256SUMS from .*\/noline has no line for tftpd-<version>-linux-\w+\.tar\.gz: nothing installed\n$/));
  test("SHA256SUMS naming two versions", () => refused(["--base-url", `${baseUrl}/twoversions`], /more than one tftpd-<version>-linux-\w+\.tar\.gz/));
  test("a version that is not one", () => refused(["--base-url", `${baseUrl}/badversion`], /not a version/));
  test("a tarball without the binary", () => refused(["--base-url", `${baseUrl}/nobinary`], /holds no tftpd-[^ ]+\/tftpd: nothing installed/));
  test("--purge-data without --uninstall", () => refused(["--purge-data"], /--purge-data goes with --uninstall/));
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
  for (const flag of ["--base-url", "--version", "--prefix", "--no-start", "--uninstall", "--purge", "--purge-data"]) expect(r.stderr).toContain(flag);
});

test("shellcheck install.sh passes", async () => {
  const found = Bun.spawnSync(["sh", "-c", "command -v shellcheck"], { stdout: "pipe" }).exitCode === 0;
  if (!found) throw new Error("shellcheck is missing: run  sudo apt-get install -y shellcheck");
  const r = await run(["shellcheck", "--shell=sh", SCRIPT]);
  expect(r.stdout + r.stderr).toBe("");
  expect(r.exitCode).toBe(0);
});

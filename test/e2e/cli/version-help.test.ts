/** `tftpd version`, `--version`, and `--help` on every command. */
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync } from "node:fs";
import { tftpd } from "../../helpers/run.ts";

setDefaultTimeout(30_000);

const pkg = JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version: string };
// eslint-disable-next-line no-control-regex
const plain = (text: string): string => text.replace(/\x1b\[[0-9;]*m/g, "");

test("tftpd version prints the version from package.json", async () => {
  const r = await tftpd(["version"]);
  expect(r.exitCode).toBe(0);
  expect(r.stdout.trim()).toStartWith(`tftpd ${pkg.version} `);
  expect(r.stdout).toContain(`bun ${Bun.version}`);
});

test("tftpd version --json", async () => {
  const r = await tftpd(["version", "--json"]);
  expect(r.exitCode).toBe(0);
  expect(JSON.parse(r.stdout)).toMatchObject({ version: pkg.version, bun: Bun.version });
});

test("tftpd --version prints the version", async () => {
  const r = await tftpd(["--version"]);
  expect(r.exitCode).toBe(0);
  expect(r.stdout.trim()).toBe(pkg.version);
});

describe("--help works on every command and exits 0", () => {
  const commands: [string[], RegExp][] = [
    [[], /USAGE\s+tftpd /],
    [["serve"], /USAGE\s+tftpd serve /],
    [["get"], /USAGE\s+tftpd get /],
    [["put"], /USAGE\s+tftpd put /],
    [["config"], /USAGE\s+tftpd config /],
    [["config", "check"], /USAGE\s+tftpd config check /],
    [["version"], /USAGE\s+tftpd version /],
  ];
  for (const [command, usage] of commands) {
    test(`tftpd ${[...command, "--help"].join(" ")}`, async () => {
      const r = await tftpd([...command, "--help"], { timeoutMs: 15_000 });
      expect(r.stderr).toBe("");
      expect(r.exitCode).toBe(0);
      expect(plain(r.stdout)).toMatch(usage);
    });
  }

  test("serve --help: no default printed for --tune, and --no-tune says what it does", async () => {
    const text = plain((await tftpd(["serve", "--help"])).stdout);
    expect(text).not.toContain("(Default: true)");
    expect(text).toMatch(/--no-tune\s+Leave the kernel's settings alone/);
    expect(text).toMatch(/USAGE\s+tftpd serve \[OPTIONS\] \[DIR\]/);
  });

  test("serve --help lists its flags", async () => {
    const text = plain((await tftpd(["serve", "--help"])).stdout);
    for (const flag of ["--root", "--listen", "--config", "--write", "--blksize-max", "--windowsize-max", "--timeout", "--retries", "--port-range", "--remap", "--log-level"]) {
      expect(text).toContain(flag);
    }
  });
});

describe("no subcommand", () => {
  test("a bare tftpd prints its usage and serves nothing", async () => {
    const r = await tftpd([], { timeoutMs: 15_000 });
    expect(r.timedOut).toBe(false);
    expect(r.exitCode).toBe(0);
    expect(plain(r.stdout)).toMatch(/USAGE\s+tftpd serve\|/);
    expect(r.stdout).not.toContain('"msg"');
  });

  test("a flag before any subcommand: exit 2, one line, and what to run to serve", async () => {
    const r = await tftpd(["--root", "/srv/boot"], { timeoutMs: 15_000 });
    expect(r.exitCode).toBe(2);
    expect(r.stdout).toBe("");
    expect(r.stderr).toBe("tftpd: unknown option --root before a subcommand (to serve: tftpd serve --root /srv/boot); see tftpd --help\n");
  });

  test("an unknown subcommand: exit 2, one line", async () => {
    const r = await tftpd(["serv"], { timeoutMs: 15_000 });
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toBe("tftpd: unknown command serv; see tftpd --help\n");
  });
});

describe("usage errors: one line, a pointer to --help, exit 2, on every subcommand", () => {
  const cases: [string[], string][] = [
    [["version", "--bogus"], "tftpd version: unknown option --bogus (see tftpd version --help)"],
    [["tune", "--bogus"], "tftpd tune: unknown option --bogus (see tftpd tune --help)"],
    [["get"], "tftpd get: Missing required positional argument: SERVER (see tftpd get --help)"],
    [["config"], "tftpd config: which one? name a subcommand (see tftpd config --help)"],
    [["config", "nope"], "tftpd config: unknown command nope (see tftpd config --help)"],
    [["config", "check", "--frob"], "tftpd config check: unknown option --frob (see tftpd config check --help)"],
    [["cache", "ls", "--frob"], "tftpd cache ls: unknown option --frob (see tftpd cache ls --help)"],
  ];
  for (const [args, line] of cases) {
    test(`tftpd ${args.join(" ")}`, async () => {
      const r = await tftpd(args, { timeoutMs: 15_000 });
      expect(r.stderr).toBe(`${line}\n`);
      expect(r.stdout).toBe("");
      expect(r.exitCode).toBe(2);
    });
  }
});

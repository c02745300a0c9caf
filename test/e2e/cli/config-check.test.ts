/**
 * `tftpd config check FILE`: the effective config as JSON on success; on failure exit 1 and one
 * stderr line per problem naming the key path (or the file and line for broken JSON).
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import { mkdirSync } from "node:fs";
import { removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { tftpd } from "../../helpers/run.ts";

setDefaultTimeout(30_000);

let dir: string;
const lines = (text: string): string[] => text.split("\n").filter((l) => l !== "");

/** Runs `config check` with no TFTPD_* variables from the outside world. */
function check(file: string, env: Record<string, string> = {}) {
  const clean: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("TFTPD_")) clean[k] = v;
  return tftpd(["config", "check", file], { env: { ...clean, ...env }, timeoutMs: 15_000 });
}

beforeAll(() => {
  dir = tempDir("tftpd-config-");
});
afterAll(() => removeDir(dir));

describe("a valid file", () => {
  test("exit 0 and the effective config as JSON: the file's values, defaults, resolved paths", async () => {
    mkdirSync(join(dir, "boot"), { recursive: true });
    const file = writeFile(dir, "ok.json", JSON.stringify({
      tftp: { root: "boot", listen: ["127.0.0.1:6970", "[::1]:6970"], write: "create", blksize_max: 8192 },
      log: { level: "debug" },
    }));
    const r = await check(file);
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    const config = JSON.parse(r.stdout);
    expect(config.tftp).toMatchObject({
      root: join(dir, "boot"), // relative to the config file
      listen: ["127.0.0.1:6970", "[::1]:6970"],
      write: "create",
      blksize_max: 8192,
      windowsize_max: 64, // a default
    });
    expect(config.log.level).toBe("debug");
  });

  test("TFTPD_* env is applied as serve would, and noted on stderr", async () => {
    const file = writeFile(dir, "env.json", JSON.stringify({ tftp: { root: "/srv/tftp" } }));
    const r = await check(file, { TFTPD_TFTP_ROOT: dir, TFTPD_LOG_LEVEL: "warn" });
    expect(r.exitCode).toBe(0);
    const config = JSON.parse(r.stdout);
    expect(config.tftp.root).toBe(dir);
    expect(config.log.level).toBe("warn");
    expect(r.stderr).toContain("TFTPD_TFTP_ROOT");
  });

  test("the demo config is valid", async () => {
    const r = await check(new URL("../../../demo/tftpd.json", import.meta.url).pathname);
    expect(r.exitCode).toBe(0);
    expect(JSON.parse(r.stdout).tftp.listen).toEqual(["127.0.0.1:6969"]);
  });
});

describe("an invalid file: exit 1, stderr names the problem", () => {
  test("an unknown key names its path (tftp.bogus)", async () => {
    const file = writeFile(dir, "unknown.json", JSON.stringify({ tftp: { root: "/srv/tftp", bogus: 1 } }));
    const r = await check(file);
    expect(r.exitCode).toBe(1);
    expect(r.stdout).toBe("");
    expect(lines(r.stderr)).toHaveLength(1);
    expect(r.stderr).toContain("tftp.bogus");
  });

  test("a bad value names its path (limits.max_total_connections)", async () => {
    const file = writeFile(dir, "bad-value.json", JSON.stringify({ limits: { max_total_connections: "lots" } }));
    const r = await check(file);
    expect(r.exitCode).toBe(1);
    expect(r.stdout).toBe("");
    expect(lines(r.stderr)).toHaveLength(1);
    expect(r.stderr).toContain("limits.max_total_connections");
    expect(r.stderr).toContain('"lots"');
  });

  test("several problems: one line each", async () => {
    const file = writeFile(dir, "several.json", JSON.stringify({ tftp: { bogus: 1, write: "sometimes" }, limits: { max_total_connections: "lots" } }));
    const r = await check(file);
    expect(r.exitCode).toBe(1);
    const errs = lines(r.stderr);
    expect(errs).toHaveLength(3);
    for (const path of ["tftp.bogus", "tftp.write", "limits.max_total_connections"]) {
      expect(errs.filter((l) => l.includes(path))).toHaveLength(1);
    }
  });

  test("invalid JSON names the file (and where)", async () => {
    const file = writeFile(dir, "broken.json", '{"tftp": {"root": "/srv/tftp",}\n');
    const r = await check(file);
    expect(r.exitCode).toBe(1);
    expect(lines(r.stderr)).toHaveLength(1);
    expect(r.stderr).toContain(file);
    expect(r.stderr).toMatch(/:1:\d+/);
  });

  test("a missing file names the file", async () => {
    const file = join(dir, "no-such.json");
    const r = await check(file);
    expect(r.exitCode).toBe(1);
    expect(lines(r.stderr)).toHaveLength(1);
    expect(r.stderr).toContain(file);
  });
});

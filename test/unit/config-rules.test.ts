/**
 * tftp.unique_root and tftp.rules: what the schema accepts, the one-line error naming the key of
 * each thing it refuses, relative rule roots, and how both reach the server's options.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig, type LoadOptions } from "../../src/config/load.ts";
import { configSchema, defaultConfig, KEYS_BY_PATH, type Config } from "../../src/config/schema.ts";
import { admissionLimits, networkRules, serverOptions, workerCount } from "../../src/config/server-options.ts";

const tmp = mkdtempSync(join(tmpdir(), "tftpd-config-rules-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let counter = 0;

function writeConfig(content: unknown): string {
  const dir = join(tmp, `c${counter++}`);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, "config.json");
  writeFileSync(file, JSON.stringify(content));
  return file;
}

function load(opts: LoadOptions) {
  return loadConfig({ env: {}, defaultFile: join(tmp, "none.json"), ...opts });
}

function configOf(tftp: Record<string, unknown>): Config {
  const r = load({ file: writeConfig({ tftp }) });
  if (!r.ok) throw new Error(`expected a config, got:\n${r.errors.join("\n")}`);
  return r.config;
}

/** The errors of a config file with these tftp settings, without the file name in front. */
function errorsOf(tftp: Record<string, unknown>, rest: Record<string, unknown> = {}): string[] {
  const file = writeConfig({ tftp, ...rest });
  const r = load({ file });
  if (r.ok) throw new Error("expected errors, got a config");
  for (const e of r.errors) expect(e).toStartWith(`${file}: `);
  return r.errors.map((e) => e.slice(file.length + 2));
}

const CIDR_HINT = 'expected a CIDR like "10.0.0.0/8" or "2001:db8::/32" (or a single address)';

describe("tftp.unique_root", () => {
  test('"off" by default; "ip" and "mac" accepted from a file and from TFTPD_TFTP_UNIQUE_ROOT', () => {
    expect(defaultConfig().tftp.unique_root).toBe("off");
    expect(configOf({ unique_root: "ip" }).tftp.unique_root).toBe("ip");
    expect(configOf({ unique_root: "mac" }).tftp.unique_root).toBe("mac");
    const r = load({ env: { TFTPD_TFTP_UNIQUE_ROOT: "mac" } });
    expect(r.ok && r.config.tftp.unique_root).toBe("mac");
  });

  test("anything else is one line naming the key", () => {
    expect(errorsOf({ unique_root: "hostname" })).toEqual(['tftp.unique_root: expected one of "off", "ip", "mac", got "hostname"']);
    expect(errorsOf({ unique_root: true })).toEqual(['tftp.unique_root: expected one of "off", "ip", "mac", got true']);
    const env = load({ env: { TFTPD_TFTP_UNIQUE_ROOT: "MAC" } });
    expect(env.ok ? [] : env.errors).toEqual(['TFTPD_TFTP_UNIQUE_ROOT: tftp.unique_root: expected one of "off", "ip", "mac", got "MAC"']);
  });
});

describe("tftp.rules", () => {
  test("empty by default; a rule's absent settings parse to the server's (null, [])", () => {
    expect(defaultConfig().tftp.rules).toEqual([]);
    expect(configOf({ rules: [{ clients: "10.8.0.0/16" }] }).tftp.rules).toEqual([
      { clients: ["10.8.0.0/16"], blksize_max: null, windowsize_max: null, refuse_options: [], root: null },
    ]);
  });

  test("clients: one CIDR or a list, made canonical; every field set", () => {
    const file = writeConfig({
      tftp: {
        rules: [
          { clients: ["192.168.1.7", "fd00::/8"], blksize_max: 1200, windowsize_max: 4, refuse_options: ["tsize", "windowsize"], root: "lab" },
          { clients: "::1", refuse_options: ["blksize", "timeout"], root: "/srv/other", blksize_max: null },
        ],
      },
    });
    const r = load({ file });
    if (!r.ok) throw new Error(r.errors.join("\n"));
    expect(r.config.tftp.rules).toEqual([
      { clients: ["192.168.1.7/32", "fd00::/8"], blksize_max: 1200, windowsize_max: 4, refuse_options: ["tsize", "windowsize"], root: join(file, "..", "lab") },
      { clients: ["::1/128"], blksize_max: null, windowsize_max: null, refuse_options: ["blksize", "timeout"], root: "/srv/other" },
    ]);
  });

  test("a relative rule root resolves like tftp.root: against the config file's dir, or the cwd for env and flags", () => {
    const file = writeConfig({ tftp: { root: "boot", rules: [{ clients: "10.0.0.0/8", root: "../lab" }] } });
    const fromFile = load({ file });
    expect(fromFile.ok && fromFile.config.tftp.rules[0]?.root).toBe(join(file, "..", "..", "lab"));
    expect(fromFile.ok && fromFile.config.tftp.root).toBe(join(file, "..", "boot"));

    const fromEnv = load({ env: { TFTPD_TFTP_RULES: '[{"clients": "10.0.0.0/8", "root": "lab"}, {"clients": "10.1.0.0/16"}]' }, cwd: "/opt/tftp" });
    expect(fromEnv.ok && fromEnv.config.tftp.rules.map((rule) => rule.root)).toEqual(["/opt/tftp/lab", null]);

    const fromFlag = load({ overrides: { "tftp.rules": [{ clients: "10.0.0.0/8", root: "./x" }] }, cwd: "/srv" });
    expect(fromFlag.ok && fromFlag.config.tftp.rules[0]?.root).toBe("/srv/x");

    const pushed = load({ pushed: { content: { tftp: { rules: [{ clients: "10.0.0.0/8", root: "p" }] } }, source: "pushed config version 3" }, cwd: "/var" });
    expect(pushed.ok && pushed.config.tftp.rules[0]?.root).toBe("/var/p");
  });

  test("the parsed rules are valid input again (config check output round trip)", () => {
    const c = configOf({ unique_root: "ip", rules: [{ clients: "10.0.0.1", windowsize_max: 8, refuse_options: ["tsize"], root: "lab" }, { clients: ["fd00::/8"] }] });
    expect(configSchema.parse(JSON.parse(JSON.stringify(c)))).toEqual(c);
  });

  test("bad clients: one line each, naming the rule and the entry", () => {
    expect(errorsOf({ rules: [{ clients: "bogus" }] })).toEqual([`tftp.rules[0].clients: ${CIDR_HINT}, got "bogus"`]);
    expect(errorsOf({ rules: [{ clients: "10.0.0.0/8" }, { clients: ["10.0.0.0/8", "10.0.0.0/33"] }] })).toEqual([
      'tftp.rules[1].clients[1]: prefix length must be 0..32, got "10.0.0.0/33"',
    ]);
    const either = 'expected a CIDR or a list of CIDRs (e.g. "10.0.0.0/8" or ["10.0.0.0/8", "fd00::/8"])';
    expect(errorsOf({ rules: [{ blksize_max: 1200 }] })).toEqual([`tftp.rules[0].clients: ${either}, got nothing`]);
    expect(errorsOf({ rules: [{ clients: [] }] })).toEqual([`tftp.rules[0].clients: ${either}, got an empty list`]);
    expect(errorsOf({ rules: [{ clients: 10 }] })).toEqual([`tftp.rules[0].clients: ${either}, got 10`]);
  });

  test("bad settings: each error names the rule's key", () => {
    expect(errorsOf({ rules: [{ clients: "10.0.0.0/8" }, { clients: "10.1.0.0/16", blksize_max: 7 }] })).toEqual([
      "tftp.rules[1].blksize_max: expected an integer from 8 to 65464, got 7",
    ]);
    expect(errorsOf({ rules: [{ clients: "10.0.0.0/8", blksize_max: "1200" }] })).toEqual(['tftp.rules[0].blksize_max: expected an integer from 8 to 65464, got "1200"']);
    expect(errorsOf({ rules: [{ clients: "10.0.0.0/8", windowsize_max: 0 }] })).toEqual(["tftp.rules[0].windowsize_max: expected an integer from 1 to 65535, got 0"]);
    expect(errorsOf({ rules: [{ clients: "10.0.0.0/8", windowsize_max: 65536 }] })).toEqual([
      "tftp.rules[0].windowsize_max: expected an integer from 1 to 65535, got 65536",
    ]);
    expect(errorsOf({ rules: [{ clients: "10.0.0.0/8", refuse_options: ["tsize", "rollover"] }] })).toEqual([
      'tftp.rules[0].refuse_options[1]: expected one of "blksize", "timeout", "tsize", "windowsize", got "rollover"',
    ]);
    expect(errorsOf({ rules: [{ clients: "10.0.0.0/8", refuse_options: ["tsize", "tsize"] }] })).toEqual(['tftp.rules[0].refuse_options[1]: duplicate of entry 0: "tsize"']);
    expect(errorsOf({ rules: [{ clients: "10.0.0.0/8", refuse_options: "tsize" }] })).toEqual(['tftp.rules[0].refuse_options: expected an array of option names, got "tsize"']);
    expect(errorsOf({ rules: [{ clients: "10.0.0.0/8", root: "" }] })).toEqual(['tftp.rules[0].root: expected a path, got ""']);
  });

  test("unknown keys and values of the wrong shape", () => {
    expect(errorsOf({ rules: [{ clients: "10.0.0.0/8", blocksize_max: 1200, colour: "red" }] })).toEqual([
      "tftp.rules[0].blocksize_max: unknown key",
      "tftp.rules[0].colour: unknown key",
    ]);
    expect(errorsOf({ rules: ["10.0.0.0/8"] })).toEqual(['tftp.rules[0]: expected an object with "clients", got "10.0.0.0/8"']);
    expect(errorsOf({ rules: { clients: "10.0.0.0/8" } })).toEqual(["tftp.rules: expected an array of rules, got an object"]);
    const env = load({ env: { TFTPD_TFTP_RULES: "10.0.0.0/8" } });
    expect(env.ok ? [] : env.errors).toEqual(['TFTPD_TFTP_RULES: tftp.rules[0]: expected an object with "clients", got "10.0.0.0/8"']);
  });

  test("a rule's blksize_max is bounded like tftp.blksize_max (window_bytes_max); it may be above the server's", () => {
    expect(configOf({ blksize_max: 1468, rules: [{ clients: "10.0.0.0/8", blksize_max: 8192 }] }).tftp.rules[0]?.blksize_max).toBe(8192);
    expect(errorsOf({ window_bytes_max: "16Ki", rules: [{ clients: "10.0.0.0/8", blksize_max: 32768 }] })).toEqual([
      "tftp.rules[0].blksize_max: must be at most tftp.window_bytes_max (16384) bytes, got 32768",
    ]);
  });

  test("tftp.rules is one key (one env variable, compared as a whole), its roots path fields", () => {
    const key = KEYS_BY_PATH.get("tftp.rules");
    expect(key?.env).toBe("TFTPD_TFTP_RULES");
    expect(key?.elementPaths).toEqual(["root"]);
    expect(key?.isPath).toBe(false);
    expect(KEYS_BY_PATH.get("tftp.root")?.elementPaths).toEqual([]);
  });
});

describe("server options", () => {
  test("unique_root and rules reach ServerOptions as uniqueRoot and NetworkRule[]", () => {
    const c = configOf({
      root: "/srv/tftp",
      unique_root: "mac",
      rules: [
        { clients: ["10.8.0.0/16", "fd00::1"], blksize_max: 1200, refuse_options: ["windowsize"] },
        { clients: "10.99.0.0/16", windowsize_max: 1, root: "/srv/lab" },
      ],
    });
    const options = serverOptions(c, []);
    expect(options.uniqueRoot).toBe("mac");
    expect(options.rules).toEqual([
      { clients: ["10.8.0.0/16", "fd00::1/128"], blksizeMax: 1200, windowsizeMax: null, refuseOptions: ["windowsize"], root: null },
      { clients: ["10.99.0.0/16"], blksizeMax: null, windowsizeMax: 1, refuseOptions: [], root: "/srv/lab" },
    ]);
    expect(networkRules(defaultConfig())).toEqual([]);
    expect(serverOptions(defaultConfig(), []).uniqueRoot).toBe("off");
  });

  test("the limits a pushed config reloads are those the server started with", () => {
    const c = configOf({});
    expect(admissionLimits(c)).toEqual(serverOptions(c, []).limits);
    expect(admissionLimits(c)).toEqual({
      maxTotal: 50000,
      maxPerIp: 100,
      maxPerClient: 10,
      maxMemory: 1024 ** 3,
      onLimit: "drop",
      requestRate: { perSecond: 100, burst: 200 },
    });
  });

  test('workerCount: "auto" is one engine per CPU but one, at least one', () => {
    expect(workerCount("auto", 1)).toBe(1);
    expect(workerCount("auto", 2)).toBe(1);
    expect(workerCount("auto", 8)).toBe(7);
    expect(workerCount(3, 8)).toBe(3);
  });
});

/**
 * `tftpd tune` from source, as a child process: the table against the real /proc/sys (read only),
 * --json, --apply against a temporary sysctl tree (--sysctl-root), including a failure and a
 * config with tune.enabled false, --sysctl-d, and an unknown option.
 * Runs `bun src/main.ts tune` once main.ts mounts the command, else a scratch entry that runs
 * citty's runMain on src/cli/tune.ts.
 */
import { spawnServer } from "../../helpers/server.ts";
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { TUNE_KEYS } from "../../../src/ops/tune.ts";
import { removeDir, tempDir } from "../../helpers/files.ts";
import { BUN, MAIN, run } from "../../helpers/run.ts";

setDefaultTimeout(20_000);

const SRC = new URL("../../../src/", import.meta.url).pathname;
let dir: string;
let configFile: string;
let command: string[];

/** Environment without TFTPD_* variables, so only --config decides. */
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("TFTPD_")));

/** The settings the test config needs: it sets no tftp.port_range, and no TCP queue is ever tuned. */
const NEEDED = TUNE_KEYS.filter((k) => k !== "net.ipv4.ip_local_port_range");

/** Every file under a tree and its content. */
function snapshot(root: string): Record<string, string> {
  const files: Record<string, string> = {};
  for (const e of readdirSync(root, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) files[join(e.parentPath, e.name)] = readFileSync(join(e.parentPath, e.name), "utf8");
  }
  return files;
}

function tune(args: string[]) {
  return run([...command, ...args], { env, timeoutMs: 15_000 });
}

function tree(root: string): void {
  const stock: Record<string, string> = {
    "net/core/rmem_max": "212992",
    "net/core/wmem_max": "212992",
    "net/core/rmem_default": "212992",
    "net/core/wmem_default": "212992",
    "net/core/netdev_max_backlog": "1000",
    "net/core/somaxconn": "4096",
    "net/ipv4/udp_mem": "381354\t508475\t762708",
    "net/ipv4/udp_rmem_min": "4096",
    "net/ipv4/ip_local_port_range": "32768\t60999",
    "net/ipv4/tcp_max_syn_backlog": "1024",
    "fs/file-max": "9223372036854775807",
  };
  for (const [p, v] of Object.entries(stock)) {
    mkdirSync(dirname(join(root, p)), { recursive: true });
    writeFileSync(join(root, p), `${v}\n`);
  }
}

beforeAll(() => {
  dir = tempDir("tftpd-tune-e2e-");
  configFile = join(dir, "config.json");
  writeFileSync(configFile, JSON.stringify({ performance: { network: { receive_buffer_size: "64Mi" } } }));
  if (readFileSync(MAIN, "utf8").includes("./cli/tune.ts")) {
    command = [BUN, MAIN, "tune"];
  } else {
    const entry = join(dir, "entry.ts");
    writeFileSync(
      entry,
      `const { runMain } = await import(${JSON.stringify(Bun.resolveSync("citty", SRC))});\n` +
        `const { default: tune } = await import(${JSON.stringify(join(SRC, "cli/tune.ts"))});\n` +
        "await runMain(tune);\n",
    );
    command = [BUN, entry];
  }
});
afterAll(() => removeDir(dir));

describe("tftpd tune", () => {
  test("--help names the options", async () => {
    const r = await tune(["--help"]);
    expect(r.exitCode).toBe(0);
    for (const opt of ["--apply", "--sysctl-d", "--json", "--config", "--sysctl-root"]) expect(r.stdout).toContain(opt);
  });

  test("an unknown option exits 2 with one line pointing to --help", async () => {
    const r = await tune(["--bogus", "--config", configFile]);
    expect(r.exitCode).toBe(2);
    expect(r.stdout).toBe("");
    expect(r.stderr).toBe("tftpd tune: unknown option --bogus (see tftpd tune --help)\n");
  });

  test("prints a table of the settings the config needs against the real /proc/sys", async () => {
    const r = await tune(["--config", configFile]);
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^SETTING\s+CURRENT\s+RECOMMENDED\s+REASON$/);
    expect(lines.slice(1).map((l) => l.split(/\s/)[0])).toEqual(NEEDED);
    for (const key of ["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.ip_local_port_range"]) expect(r.stdout).not.toContain(key);
    // Rows either say ok or show current → recommended with a reason.
    for (const line of lines.slice(1)) expect(line).toMatch(/\sok$|→ .+\s{2}\S/);
  });

  test("--json is an array of {key, current, recommended, ok, reason} that follows the config", async () => {
    const r = await tune(["--json", "--config", configFile, "--sysctl-root", "/proc/sys"]);
    expect(r.exitCode).toBe(0);
    const rows = JSON.parse(r.stdout) as { key: string; current: string | null; recommended: string; ok: boolean; reason: string }[];
    expect(rows.map((x) => x.key)).toEqual(NEEDED);
    for (const row of rows) {
      expect(Object.keys(row).sort()).toEqual(["current", "key", "ok", "reason", "recommended"]);
      expect(typeof row.ok).toBe("boolean");
    }
    const rmem = rows.find((x) => x.key === "net.core.rmem_max")!;
    expect(Number(rmem.recommended)).toBeGreaterThanOrEqual(64 * 1024 ** 2);
  });

  test("--apply --sysctl-root rewrites the tree and prints what changed", async () => {
    const root = join(dir, "sys-ok");
    tree(root);
    const r = await tune(["--apply", "--config", configFile, "--sysctl-root", root]);
    expect(r.stderr).toBe("");
    expect(readFileSync(join(root, "net/core/rmem_max"), "utf8").trim()).toBe(String(64 * 1024 ** 2));
    // Nothing in the config needs these: as they were.
    expect(readFileSync(join(root, "net/ipv4/ip_local_port_range"), "utf8")).toBe("32768\t60999\n");
    expect(readFileSync(join(root, "net/core/somaxconn"), "utf8")).toBe("4096\n");
    expect(readFileSync(join(root, "net/ipv4/tcp_max_syn_backlog"), "utf8")).toBe("1024\n");
    expect(readFileSync(join(root, "fs/file-max"), "utf8").trim()).toBe("9223372036854775807");
    expect(r.stdout).toContain("changed    net.core.rmem_max: 212992 → 67108864");
    expect(r.stdout).toContain("ok         fs.file-max");
    expect(r.exitCode).toBe(0);
    expect(r.stdout.trimEnd().split("\n").at(-1)).toMatch(/^tune: \d+ changed, 1 already fine/);

    // Run again: nothing left to change.
    const again = await tune(["--apply", "--json", "--config", configFile, "--sysctl-root", root]);
    expect(again.exitCode).toBe(0);
    expect(JSON.parse(again.stdout).changed).toEqual([]);
  });

  test("--apply with a setting it cannot write: the rest applied, exit 1, said on the last line", async () => {
    const root = join(dir, "sys-bad");
    tree(root);
    rmSync(join(root, "net/core/wmem_default"));
    const r = await tune(["--apply", "--config", configFile, "--sysctl-root", root]);
    expect(r.exitCode).toBe(1);
    expect(r.stdout).toContain("not set    net.core.wmem_default: no such setting (ENOENT)");
    expect(readFileSync(join(root, "net/core/rmem_max"), "utf8").trim()).toBe(String(64 * 1024 ** 2));
    expect(r.stdout.trimEnd().split("\n").at(-1)).toMatch(/^tune: 1 needed setting could not be applied/);
  });

  test("--apply with tune.enabled false (the unit's ExecStartPre): nothing changed, one line, exit 0", async () => {
    const root = join(dir, "sys-notune");
    tree(root);
    const notune = join(dir, "notune.json");
    writeFileSync(notune, JSON.stringify({ tune: { enabled: false }, performance: { network: { receive_buffer_size: "64Mi" } } }));
    const before = snapshot(root);
    const r = await tune(["--apply", "--config", notune, "--sysctl-root", root]);
    expect(r.exitCode).toBe(0);
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe(`tune.enabled is false in ${notune}: nothing applied\n`);
    expect(snapshot(root)).toEqual(before);
  });

  test("--sysctl-d FILE writes the settings as a sysctl.d file, applies nothing, says the file", async () => {
    const root = join(dir, "sys-d");
    tree(root);
    const before = snapshot(root);
    const out = join(dir, "99-tftpd.conf");
    const r = await tune(["--sysctl-d", out, "--config", configFile, "--sysctl-root", root]);
    expect(r.exitCode).toBe(0);
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe(`tune: wrote ${NEEDED.length - 1} settings to ${out} (nothing applied)\n`);
    expect(snapshot(root)).toEqual(before);
    const text = readFileSync(out, "utf8");
    expect(text).toContain(`\n# the server asks SO_RCVBUF 64 MiB (performance.network.receive_buffer_size); the kernel caps it here\nnet.core.rmem_max = ${64 * 1024 ** 2}\n`);
    expect(text).toContain("\nfs.file-max = 9223372036854775807\n");
    // What `sysctl -p` reads: comments, blank lines and key = value.
    for (const line of text.trimEnd().split("\n")) expect(line).toMatch(/^$|^# |^[a-z0-9_.-]+ = [\d ]+$/);
    const missing = await tune(["--sysctl-d", "--json", "--config", configFile, "--sysctl-root", root]);
    expect(missing.exitCode).toBe(2);
    expect(existsSync(join(process.cwd(), "--json"))).toBe(false);
  });

  test("a broken config file is an error naming the key, exit 2", async () => {
    const bad = join(dir, "bad.json");
    writeFileSync(bad, JSON.stringify({ limits: { max_total_connections: -1 } }));
    const r = await tune(["--config", bad]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain("limits.max_total_connections");
  });
});

describe("serve tunes at start-up", () => {
  test("with tuning on it raises what the config needs (in the tree it is pointed at) and logs it; --no-tune leaves it", async () => {
    const sysctl = join(dir, "serve-sysctl");
    tree(sysctl);
    const root = join(dir, "root");
    mkdirSync(root, { recursive: true });
    const on = await spawnServer(["--root", root, "--listen", "127.0.0.1:0"], {
      env: { TFTPD_TUNE_ENABLED: "true", TFTPD_TEST_SYSCTL_ROOT: sysctl },
    });
    try {
      const tuned = on.logs.filter((l) => l.msg === "tuned").map((l) => l.key);
      expect(tuned).toContain("net.core.rmem_max");
      expect(Number(readFileSync(join(sysctl, "net/core/rmem_max"), "utf8"))).toBeGreaterThanOrEqual(32 * 1024 * 1024);
    } finally {
      await on.stop();
    }
    tree(sysctl);
    const off = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--no-tune"], {
      env: { TFTPD_TUNE_ENABLED: "true", TFTPD_TEST_SYSCTL_ROOT: sysctl },
    });
    try {
      expect(off.logs.some((l) => l.msg === "tuned")).toBe(false);
      expect(readFileSync(join(sysctl, "net/core/rmem_max"), "utf8").trim()).toBe("212992");
    } finally {
      await off.stop();
    }
  });
});

/**
 * systemd/tftpd.service: systemd accepts it (`systemd-analyze verify`), its sandbox rates
 * "OK" or better (`systemd-analyze security --offline=true`), and its syscall filter lets
 * through what the server uses (memfd file cache, mmap, sendfile, sendmmsg, bun:ffi).
 * systemd-analyze comes from Debian's `systemd` package: installed here when missing and we
 * are root with apt-get; otherwise the test fails with the command to run.
 */
import { compiledBinary } from "../helpers/binary.ts";
import { beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { tempDir, writeFile } from "../helpers/files.ts";
import { run } from "../helpers/run.ts";

setDefaultTimeout(120_000);

const REPO = new URL("../../", import.meta.url).pathname;
const UNIT = join(REPO, "systemd/tftpd.service");
let BINARY = "";
const unitText = readFileSync(UNIT, "utf8");

function which(cmd: string): string | null {
  const r = Bun.spawnSync(["sh", "-c", `command -v ${cmd}`], { stdout: "pipe", stderr: "pipe" });
  return r.exitCode === 0 ? r.stdout.toString().trim() : null;
}

/** systemd-analyze, installed with apt-get when missing and we are root. */
async function ensureSystemdAnalyze(): Promise<void> {
  if (which("systemd-analyze")) return;
  const command = "apt-get install -y systemd";
  if (process.getuid?.() !== 0 || !existsSync("/usr/bin/apt-get")) {
    throw new Error(`systemd-analyze is missing: run  sudo ${command}`);
  }
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  for (const cmd of [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "systemd"]]) {
    const r = await run(cmd, { env, timeoutMs: 600_000 });
    if (r.exitCode !== 0) throw new Error(`'${cmd.join(" ")}' failed (exit ${r.exitCode}): ${r.stderr}; run  sudo ${command}`);
  }
  if (!which("systemd-analyze")) throw new Error(`systemd-analyze still missing after: ${command}`);
}

/** Every syscall name in a systemd syscall group, groups expanded recursively. */
async function expandGroup(group: string, seen = new Set<string>()): Promise<Set<string>> {
  const r = await run(["systemd-analyze", "syscall-filter", group]);
  expect(r.exitCode).toBe(0);
  const out = new Set<string>();
  for (const line of r.stdout.split("\n").slice(1)) {
    const name = line.trim().split(/\s+/)[0];
    if (!name || name.startsWith("#")) continue;
    if (name.startsWith("@")) {
      if (seen.has(name)) continue;
      seen.add(name);
      for (const s of await expandGroup(name, seen)) out.add(s);
    } else {
      out.add(name);
    }
  }
  return out;
}

/** Active (uncommented) `Key=value` lines of the unit. */
const settings = (key: string): string[] =>
  unitText
    .split("\n")
    .filter((l) => l.startsWith(`${key}=`))
    .map((l) => l.slice(key.length + 1));

let dir: string;
let copy: string;

beforeAll(async () => {
  await ensureSystemdAnalyze();
  BINARY = await compiledBinary();
  dir = tempDir("tftpd-systemd-");
  // The unit as installed, with its binary path pointed at the built one (verify wants the
  // ExecStart program to exist).
  copy = writeFile(dir, "tftpd.service", unitText.replaceAll("/usr/local/bin/tftpd", BINARY));
});

describe("systemd/tftpd.service", () => {
  test("systemd-analyze verify accepts it, with no warning about the unit", async () => {
    const r = await run(["systemd-analyze", "verify", copy]);
    expect(r.exitCode).toBe(0);
    const aboutUs = r.stderr.split("\n").filter((l) => l.includes("tftpd.service"));
    expect(aboutUs).toEqual([]);
  });

  test("systemd-analyze security --offline rates it OK or better (exposure <= 4.9)", async () => {
    const r = await run(["systemd-analyze", "security", "--offline=true", "--no-pager", copy]);
    expect(r.exitCode).toBe(0);
    const line = r.stdout.split("\n").find((l) => l.includes("Overall exposure level"));
    expect(line).toBeDefined();
    const m = /Overall exposure level for \S+: ([0-9.]+) (\w+)/.exec(line!);
    expect(m).not.toBeNull();
    const [, score, word] = m!;
    console.error(`tftpd.service: ${line!.trim()}`);
    expect(Number(score)).toBeLessThanOrEqual(4.9);
    expect(["OK", "SAFE"]).toContain(word!);
  });

  test("runs serve as the user tftpd with only CAP_NET_BIND_SERVICE, tuning privileged and non-fatal", () => {
    expect(settings("ExecStart")).toEqual(["/usr/local/bin/tftpd serve --no-tune --config /etc/tftpd/config.json"]);
    expect(settings("ExecStartPre")).toEqual(["-+/usr/local/bin/tftpd tune --apply --config /etc/tftpd/config.json"]);
    expect(settings("User")).toEqual(["tftpd"]);
    expect(settings("Group")).toEqual(["tftpd"]);
    expect(settings("AmbientCapabilities")).toEqual(["CAP_NET_BIND_SERVICE"]);
    expect(settings("CapabilityBoundingSet")).toEqual(["CAP_NET_BIND_SERVICE"]);
    expect(Number(settings("LimitNOFILE")[0])).toBeGreaterThanOrEqual(2 * 50_000);
    expect(settings("Restart")).toEqual(["on-failure"]);
    expect(settings("TimeoutStopSec")).toHaveLength(1);
    expect(settings("ReadOnlyPaths")).toEqual(["/srv/tftp"]);
    expect(settings("ReadWritePaths")).toEqual([]); // only as a comment, for uploads
    // Bun's JIT needs W+X memory.
    expect(settings("MemoryDenyWriteExecute")).toEqual([]);
    // Wildcard listen addresses enumerate the interfaces over netlink.
    expect(settings("RestrictAddressFamilies")[0]!.split(/\s+/)).toContain("AF_NETLINK");
  });

  test("the syscall filter allows what the server uses", async () => {
    expect(settings("SystemCallFilter")).toContain("@system-service");
    const allowed = await expandGroup("@system-service");
    const denied = settings("SystemCallFilter").includes("~@privileged") ? await expandGroup("@privileged") : new Set<string>();
    // file cache (memfd + sendfile + mmap), shared sockets (sendmmsg/recvmmsg), workers, FFI,
    const needed = ["memfd_create", "fcntl", "sendfile", "mmap", "munmap", "mprotect", "madvise", "sendmmsg", "recvmmsg",
      "clone3", "futex", "epoll_pwait2", "eventfd2", "openat", "readlink", "getrandom", "prlimit64", "sched_getaffinity",
      "setsockopt", "getsockopt", "sysinfo",
      // performance.cpu.affinity, io.read_ahead, io.write_behind
      "sched_setaffinity", "gettid", "fadvise64", "fdatasync", "fsync"];
    const blocked = needed.filter((s) => !allowed.has(s) || denied.has(s));
    expect(blocked).toEqual([]);
  });
});

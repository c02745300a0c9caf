/**
 * The privilege drop, as someone trying the server by hand meets it: started as root with no
 * user option, the server binds, then runs as "tftpd" (or "nobody" where there is no such
 * user) in every thread, so a file of mode 000 is refused with ERROR 2 and uploads belong to
 * that user; `--user root` keeps root and says so once; a root the new user cannot reach stops
 * the start with one line saying what to do. Run as any other user, nothing changes, and
 * asking for another user is an error naming the key.
 *
 * The test preload makes servers keep root (TFTPD_TFTP_USER=root); these tests unset it.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { chmodSync, chownSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { systemAccounts, type Account } from "../../../src/ops/accounts.ts";
import { compiledBinary } from "../../helpers/binary.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { BUN, MAIN, run } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

setDefaultTimeout(30_000);

const asRoot = process.geteuid?.() === 0;
/** the automatic choice: the account install.sh creates, else the conventional one */
const dropUser: Account = systemAccounts.user("tftpd") ?? systemAccounts.user("nobody")!;
const AUTOMATIC = { TFTPD_TFTP_USER: undefined };

let base = "";
let root = "";
const content = patternBytes(200_000, 7);

beforeAll(() => {
  base = tempDir("tftpd-privilege-");
  chmodSync(base, 0o755); // the dropped user walks through it to the root
  root = join(base, "root");
  mkdirSync(root, { mode: 0o755 });
  chmodSync(writeFile(root, "boot.bin", content), 0o644);
  chmodSync(writeFile(root, "secret.bin", "only root may read this\n"), 0o000);
  const incoming = join(root, "incoming");
  mkdirSync(incoming, { mode: 0o755 });
  if (asRoot) chownSync(incoming, dropUser.uid, dropUser.gid);
});

afterAll(() => {
  if (base) removeDir(base);
});

/** `tftpd serve ARGS` to its end (for starts that must fail). */
function serveToExit(args: string[], env: Record<string, string | undefined>) {
  return run([BUN, MAIN, "serve", "--listen", "127.0.0.1:0", ...args], {
    env: { ...process.env, TFTPD_METRICS_LISTEN: "127.0.0.1:0", ...env },
    timeoutMs: 15_000,
  });
}

function idsOf(status: string, field: "Uid" | "Gid" | "Groups"): number[] {
  const m = new RegExp(`^${field}:(.*)$`, "m").exec(status);
  return (m?.[1] ?? "").trim().split(/\s+/).filter((s) => s !== "").map(Number);
}

const psUser = async (pid: number) => (await run(["ps", "-o", "user=", "-p", String(pid)], { timeoutMs: 5000 })).stdout.trim();

async function tftpHpaGet(port: number, file: string, dest: string) {
  const r = await run(["tftp", "-v", "-m", "binary", "127.0.0.1", String(port), "-c", "get", file, dest], { timeoutMs: 15_000 });
  return `${r.stdout}${r.stderr}`;
}

if (asRoot) {
  describe("started as root with no user option", () => {
    let server: ChildServer;

    beforeAll(async () => {
      server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--write", "create"], {
        // worker threads on: the drop must reach them too
        env: { ...AUTOMATIC, TFTPD_PERFORMANCE_CPU_WORKER_THREADS: "2" },
      });
    });

    afterAll(async () => {
      expect(await server.stop()).toBe(0);
    });

    test(`runs as ${dropUser.name}: ps, the log line, and every thread's real, effective, saved and fs ids`, async () => {
      expect(await psUser(server.proc.pid)).toBe(dropUser.name);
      const dropped = server.logs.find((l) => l.msg === "dropped privileges");
      expect(dropped).toMatchObject({ level: "info", user: dropUser.name, uid: dropUser.uid, gid: dropUser.gid });
      const tasks = readdirSync(`/proc/${server.proc.pid}/task`);
      // the main thread, the runtime's own threads, the two transfer workers and the file I/O
      // pool's threads (each named "Worker")
      const names = tasks.map((tid) => readFileSync(`/proc/${server.proc.pid}/task/${tid}/comm`, "utf8").trim());
      const pool = server.logs.find((l) => l.msg === "file I/O pool started");
      expect(pool?.threads).toBeGreaterThanOrEqual(1);
      expect(names.filter((n) => n === "Worker")).toHaveLength(2 + Number(pool!.threads));
      for (const tid of tasks) {
        const status = readFileSync(`/proc/${server.proc.pid}/task/${tid}/status`, "utf8");
        expect({ tid, uid: idsOf(status, "Uid"), gid: idsOf(status, "Gid"), groups: idsOf(status, "Groups") }).toEqual({
          tid,
          uid: [dropUser.uid, dropUser.uid, dropUser.uid, dropUser.uid],
          gid: [dropUser.gid, dropUser.gid, dropUser.gid, dropUser.gid],
          groups: [],
        });
      }
      // said once that uploads into the root itself cannot work (root owns it, mode 0755)
      expect(server.logs.filter((l) => String(l.msg).startsWith("uploads into tftp.root will fail"))).toHaveLength(1);
    });

    test("serves a readable file; a file of mode 000 gets ERROR 2 (tftp-hpa)", async () => {
      const dest = join(base, "got.bin");
      const ok = await run(["curl", "-sS", "--max-time", "10", "-o", dest, `tftp://127.0.0.1:${server.port}/boot.bin`], { timeoutMs: 15_000 });
      expect(ok.stderr).toBe("");
      expect(sha256(readFileSync(dest))).toBe(sha256(content));

      const refused = await tftpHpaGet(server.port, "secret.bin", join(base, "secret.out"));
      expect(refused).toMatch(/Error code 2/);
      const refusal = await server.waitForLog((l) => l.msg === "request refused" && l.file === "secret.bin");
      expect(refusal).toMatchObject({ code: 2, reason: "permission denied" });
    });

    test("an upload belongs to the user the server runs as", async () => {
      const src = writeFile(base, "up.bin", patternBytes(50_000, 3));
      const r = await run(["curl", "-sS", "--max-time", "10", "-T", src, `tftp://127.0.0.1:${server.port}/incoming/up.bin`], { timeoutMs: 15_000 });
      expect(r.stderr).toBe("");
      expect(r.exitCode).toBe(0);
      const stored = statSync(join(root, "incoming/up.bin"));
      expect({ uid: stored.uid, gid: stored.gid, size: stored.size }).toEqual({ uid: dropUser.uid, gid: dropUser.gid, size: 50_000 });
    });
  });

  test("the compiled binary drops in every thread too, and refuses a file of mode 000", async () => {
    const server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0"], {
      binary: await compiledBinary(),
      env: { ...AUTOMATIC, TFTPD_PERFORMANCE_CPU_WORKER_THREADS: "2" },
    });
    try {
      expect(await psUser(server.proc.pid)).toBe(dropUser.name);
      const tasks = readdirSync(`/proc/${server.proc.pid}/task`);
      const uids = new Set(tasks.flatMap((tid) => idsOf(readFileSync(`/proc/${server.proc.pid}/task/${tid}/status`, "utf8"), "Uid")));
      expect([...uids]).toEqual([dropUser.uid]);
      expect(await tftpHpaGet(server.port, "secret.bin", join(base, "secret-binary.out"))).toMatch(/Error code 2/);
    } finally {
      expect(await server.stop()).toBe(0);
    }
  }, 120_000); // the first compiled binary of a test run is built here

  test("--user root keeps root and says so once", async () => {
    const server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--user", "root"], { env: AUTOMATIC });
    try {
      expect(await psUser(server.proc.pid)).toBe("root");
      expect(idsOf(readFileSync(`/proc/${server.proc.pid}/status`, "utf8"), "Uid")).toEqual([0, 0, 0, 0]);
      const warnings = server.logs.filter((l) => String(l.msg).startsWith("running as root"));
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatchObject({ level: "warn", user: "root" });
      expect(server.logs.some((l) => l.msg === "dropped privileges")).toBe(false);
      // root reads what it likes: this is what the drop exists to prevent
      expect(await tftpHpaGet(server.port, "secret.bin", join(base, "secret-as-root.out"))).not.toMatch(/Error code/);
    } finally {
      expect(await server.stop()).toBe(0);
    }
  });

  test("--user nobody with a root only root can enter: exit 1, one line naming the root, the user and the fix", async () => {
    const locked = tempDir("tftpd-privilege-locked-"); // mode 0700, owned by root
    try {
      const lockedRoot = join(locked, "root");
      mkdirSync(lockedRoot, { mode: 0o755 });
      const r = await serveToExit(["--root", lockedRoot, "--user", "nobody"], AUTOMATIC);
      expect(r.exitCode).toBe(1);
      const lines = r.stderr.trimEnd().split("\n");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toStartWith(`tftpd serve: tftp.root ${lockedRoot} is out of reach for user nobody (uid 65534)`);
      expect(lines[0]).toContain(`may not enter ${locked}`);
      expect(lines[0]).toContain(`chmod o+x ${locked}`);
      expect(lines[0]).toContain("--user");
    } finally {
      removeDir(locked);
    }
  });
} else {
  test("not started as root: the server keeps its user and says nothing about privileges", async () => {
    const server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0"], { env: AUTOMATIC });
    try {
      expect(idsOf(readFileSync(`/proc/${server.proc.pid}/status`, "utf8"), "Uid")[1]).toBe(process.geteuid!());
      expect(server.logs.some((l) => l.msg === "dropped privileges" || String(l.msg).startsWith("running as root"))).toBe(false);
    } finally {
      expect(await server.stop()).toBe(0);
    }
  });

  test("not started as root: another user is an error naming the key", async () => {
    const other = process.geteuid!() === dropUser.uid ? "root" : dropUser.name;
    const r = await serveToExit(["--root", root, "--user", other], AUTOMATIC);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toBe(`tftpd serve: --user: tftp.user: running as "${other}" needs the server started as root (it runs as uid ${process.geteuid!()}, gid ${process.getegid!()}); leave tftp.user unset to run as the current user\n`);
  });
}

describe("a user that is not there is a config error naming the key and where it was set", () => {
  test("from the flag", async () => {
    const r = await serveToExit(["--root", root, "--user", "no-such-user-tftpd"], AUTOMATIC);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toBe('tftpd serve: --user: tftp.user: no user "no-such-user-tftpd" on this system\n');
  });

  test("from the environment, with a group that is not there", async () => {
    const r = await serveToExit(["--root", root], { TFTPD_TFTP_USER: `${dropUser.name}:no-such-group-tftpd` });
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toBe('tftpd serve: TFTPD_TFTP_USER: tftp.user: no group "no-such-group-tftpd" on this system\n');
  });

  test("malformed, from the environment", async () => {
    const r = await serveToExit(["--root", root], { TFTPD_TFTP_USER: "a:b:c" });
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toBe('tftpd serve: TFTPD_TFTP_USER: tftp.user: expected "USER" or "USER:GROUP" (names or numeric ids), got "a:b:c"\n');
  });
});

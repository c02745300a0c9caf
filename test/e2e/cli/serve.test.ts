/**
 * `tftpd serve` as a user runs it: a child process with flags, env and config files, its JSON
 * log lines, its exit codes and signals, and real clients talking to it.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { patternBytes, removeDir, sha256, sha256File, tempDir, writeFile } from "../../helpers/files.ts";
import { run, tftpd } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";
import { listenError } from "../../../src/server/transport.ts";

setDefaultTimeout(30_000);

const CURLE_TFTP_PERM = 69;

function curl(args: string[]) {
  return run(["curl", "-sS", "--max-time", "20", ...args], { timeoutMs: 25_000 });
}

const isTransfer = (l: Record<string, unknown>): boolean => l.msg === "transfer";
const lines = (text: string): string[] => text.split("\n").filter((l) => l !== "");

let root: string;
let out: string;
let kernel: Uint8Array;
const running: ChildServer[] = [];

/** spawnServer, remembered so afterAll stops it whatever happens. */
async function serve(args: string[], env: Record<string, string | undefined> = {}): Promise<ChildServer> {
  const s = await spawnServer(args, { env });
  running.push(s);
  return s;
}

beforeAll(() => {
  root = tempDir("tftpd-serve-root-");
  out = tempDir("tftpd-serve-out-");
  kernel = patternBytes(200_003, 5);
  writeFile(root, "vmlinuz", kernel);
  writeFile(root, "images/pxelinux.0", patternBytes(40_000, 6));
});

afterAll(async () => {
  for (const s of running) await s.stop("SIGKILL");
  removeDir(root);
  removeDir(out);
});

describe("logs", () => {
  test('--listen 127.0.0.1:0 logs "listening" with the real port, then "ready", then one "transfer" line per transfer', async () => {
    const s = await serve(["--root", root, "--listen", "127.0.0.1:0"]);
    expect(s.addresses).toHaveLength(1);
    expect(s.addresses[0]).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(s.port).toBeGreaterThan(0);
    const ready = s.logs.find((l) => typeof l.msg === "string" && l.msg.startsWith("ready"))!;
    expect(s.logs.indexOf(ready)).toBeGreaterThan(s.logs.findIndex((l) => l.msg === "listening"));
    expect(ready.msg).toContain(`tftp://127.0.0.1:${s.port}/`);

    const dest = join(out, "logged.bin");
    const r = await curl(["--tftp-blksize", "1468", "-o", dest, `tftp://127.0.0.1:${s.port}/vmlinuz`]);
    expect(r.exitCode).toBe(0);
    expect(await sha256File(dest)).toBe(sha256(kernel));
    const line = await s.waitForLog(isTransfer);
    for (const field of ["client", "file", "direction", "bytes", "blksize", "windowsize", "duration_ms", "retransmits", "result"]) {
      expect(line).toHaveProperty(field);
    }
    expect(line).toMatchObject({ file: "vmlinuz", direction: "read", bytes: kernel.length, blksize: 1468, windowsize: 1, retransmits: 0, result: "ok" });
    expect(String(line.client)).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(typeof line.duration_ms).toBe("number");
    // the main thread's part of the first response comes before it (each thread counts from its
    // own time origin: a worker's clock may differ from the main thread's by a fraction of a ms)
    expect(typeof line.accepted_ms).toBe("number");
    expect(line.accepted_ms as number).toBeGreaterThanOrEqual(0);
    expect(line.accepted_ms as number).toBeLessThanOrEqual((line.first_response_ms as number) + 1);

    // one line per transfer
    const r2 = await curl(["-o", join(out, "logged2.bin"), `tftp://127.0.0.1:${s.port}/images/pxelinux.0`]);
    expect(r2.exitCode).toBe(0);
    await s.waitForLog((l) => isTransfer(l) && l.file === "images/pxelinux.0");
    expect(s.logs.filter(isTransfer)).toHaveLength(2);
  });

  test("SIGTERM stops the server with exit 0 (and SIGINT too)", async () => {
    for (const signal of ["SIGTERM", "SIGINT"] as const) {
      const s = await serve(["--root", root, "--listen", "127.0.0.1:0"]);
      const code = await Promise.race([s.stop(signal), Bun.sleep(10_000).then(() => "still running")]);
      expect(code).toBe(0);
      expect(s.logs.some((l) => l.msg === "stopping" && l.signal === signal)).toBe(true);
    }
  });
});

describe("bad command lines", () => {
  test("a missing root: exit non-zero, one stderr line naming the directory", async () => {
    const missing = join(out, "no-such-root");
    const r = await tftpd(["serve", "--root", missing, "--listen", "127.0.0.1:0"], { timeoutMs: 15_000 });
    expect(r.timedOut).toBe(false);
    expect(r.exitCode).not.toBe(0);
    expect(lines(r.stderr)).toHaveLength(1);
    expect(r.stderr).toContain(missing);
  });

  test("the root given twice (DIR and --root) or two directories: exit 2, one line", async () => {
    const twice = await tftpd(["serve", root, "--root", out, "--listen", "127.0.0.1:0"], { timeoutMs: 15_000 });
    expect(twice.exitCode).toBe(2);
    expect(lines(twice.stderr)).toEqual([`tftpd serve: the root given twice: DIR ${root} and --root ${out}; give one`]);
    const two = await tftpd(["serve", root, out, "--listen", "127.0.0.1:0"], { timeoutMs: 15_000 });
    expect(two.exitCode).toBe(2);
    expect(lines(two.stderr)).toHaveLength(1);
    expect(two.stderr).toContain("one directory to serve, got 2");
  });

  test("a listen port another program holds: one line naming the address, the port and how to find the holder", async () => {
    const holder = await Bun.udpSocket({ hostname: "127.0.0.1", port: 0 });
    try {
      const r = await tftpd(["serve", root, "--listen", `127.0.0.1:${holder.port}`, "--no-tune"], { timeoutMs: 15_000 });
      expect(r.exitCode).toBe(1);
      expect(lines(r.stderr)).toEqual([
        `tftpd serve: bind EADDRINUSE 127.0.0.1:${holder.port}: the port is taken by another program (another TFTP server? ss -ulpn 'sport = :${holder.port}' names it); stop it or listen elsewhere (tftp.listen, --listen)`,
      ]);
    } finally {
      holder.close();
    }
  });

  test("a port below 1024 without the privilege: the line names CAP_NET_BIND_SERVICE", () => {
    const error = listenError("0.0.0.0", 69, Object.assign(new Error("bind EACCES 0.0.0.0"), { code: "EACCES" }));
    expect(error.message).toStartWith("bind EACCES 0.0.0.0:69: ports below 1024 need root or CAP_NET_BIND_SERVICE");
    expect((error as NodeJS.ErrnoException).code).toBe("EACCES");
    expect(listenError("::1", 6969, Object.assign(new Error("x"), { code: "EADDRNOTAVAIL" })).message).toStartWith("bind EADDRNOTAVAIL [::1]:6969: no interface");
  });

  test("an unknown flag: exit 2, naming it", async () => {
    const r = await tftpd(["serve", "--root", root, "--listen", "127.0.0.1:0", "--frobnicate", "3"], { timeoutMs: 15_000 });
    expect(r.exitCode).toBe(2);
    expect(lines(r.stderr)).toHaveLength(1);
    expect(r.stderr).toContain("--frobnicate");
  });

  test("a bad flag value names the config key", async () => {
    const r = await tftpd(["serve", "--root", root, "--listen", "127.0.0.1:0", "--write", "sometimes"], { timeoutMs: 15_000 });
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain("tftp.write");
  });
});

test("serve DIR serves DIR, as tftpd-hpa takes its directory; --metrics-listen moves the metrics endpoint", async () => {
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const metricsPort = probe.port;
  probe.stop(true);
  const s = await spawnServer([root, "--listen", "127.0.0.1:0", "--metrics-listen", `127.0.0.1:${metricsPort}`], { env: { TFTPD_METRICS_LISTEN: undefined } });
  running.push(s);
  expect(s.metricsUrl).toBe(`http://127.0.0.1:${metricsPort}`);
  expect((await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).status).toBe(200);
  const dest = join(out, "vmlinuz.dir");
  const r = await curl(["-o", dest, `tftp://127.0.0.1:${s.port}/vmlinuz`]);
  expect(r.exitCode).toBe(0);
  expect(await sha256File(dest)).toBe(sha256(kernel));
  await s.stop();
});

test("--listen repeated (127.0.0.1 and [::1]): two listening lines, both serve", async () => {
  const s = await serve(["--root", root, "--listen", "127.0.0.1:0", "--listen", "[::1]:0"]);
  expect(s.addresses).toHaveLength(2);
  const v4 = s.addresses.find((a) => a.startsWith("127.0.0.1:"));
  const v6 = s.addresses.find((a) => a.startsWith("[::1]:"));
  expect(v4).toBeDefined();
  expect(v6).toBeDefined();
  for (const [i, address] of [v4!, v6!].entries()) {
    const dest = join(out, `dual-${i}.bin`);
    const r = await curl(["-o", dest, `tftp://${address}/vmlinuz`]);
    expect(r.exitCode).toBe(0);
    expect(await sha256File(dest)).toBe(sha256(kernel));
  }
  await s.waitForLog(() => s.logs.filter(isTransfer).length === 2);
  expect(s.logs.filter(isTransfer).map((l) => String(l.client).startsWith("[::1]:"))).toEqual([false, true]);
});

describe("uploads", () => {
  test("--write create allows uploads", async () => {
    const upRoot = tempDir("tftpd-serve-up-");
    try {
      const s = await serve(["--root", upRoot, "--listen", "127.0.0.1:0", "--write", "create"]);
      const local = writeFile(out, "upload.bin", patternBytes(123_457, 8));
      const r = await curl(["-T", local, `tftp://127.0.0.1:${s.port}/upload.bin`]);
      expect(r.exitCode).toBe(0);
      expect(await sha256File(join(upRoot, "upload.bin"))).toBe(await sha256File(local));
      const line = await s.waitForLog(isTransfer);
      expect(line).toMatchObject({ file: "upload.bin", direction: "write", bytes: 123_457, result: "ok" });
    } finally {
      removeDir(upRoot);
    }
  });

  test("by default uploads are refused with ERROR 2 (curl -T fails with CURLE_TFTP_PERM)", async () => {
    const s = await serve(["--root", root, "--listen", "127.0.0.1:0"]);
    const local = writeFile(out, "refused.bin", patternBytes(1000, 9));
    const r = await curl(["-T", local, `tftp://127.0.0.1:${s.port}/refused.bin`]);
    expect(r.exitCode).toBe(CURLE_TFTP_PERM);
    expect(existsSync(join(root, "refused.bin"))).toBe(false);
  });
});

test("--blksize-max 1024 caps curl's --tftp-blksize 1468", async () => {
  const s = await serve(["--root", root, "--listen", "127.0.0.1:0", "--blksize-max", "1024"]);
  const dest = join(out, "capped.bin");
  const r = await curl(["--tftp-blksize", "1468", "-o", dest, `tftp://127.0.0.1:${s.port}/vmlinuz`]);
  expect(r.exitCode).toBe(0);
  expect(await sha256File(dest)).toBe(sha256(kernel));
  const line = await s.waitForLog(isTransfer);
  expect(line).toMatchObject({ blksize: 1024, result: "ok" });
});

test("--port-range 40000:40010: transfers are served from a port in the range", async () => {
  const s = await serve(["--root", root, "--listen", "127.0.0.1:0", "--port-range", "40000:40010"]);
  const sources: number[] = [];
  const socket = await Bun.udpSocket({
    hostname: "127.0.0.1",
    binaryType: "uint8array",
    socket: {
      data(sock, bytes, port, address) {
        sources.push(port);
        // answer the first OACK/DATA with an ERROR: the transfer ends at once, its port is freed
        sock.send(new Uint8Array([0, 5, 0, 0, ...new TextEncoder().encode("done\0")]), port, address);
      },
    },
  });
  try {
    const enc = new TextEncoder();
    for (let i = 0; i < 3; i++) {
      const before = sources.length;
      socket.send(new Uint8Array([0, 1, ...enc.encode("vmlinuz\0octet\0")]), s.port, "127.0.0.1");
      const deadline = Date.now() + 5_000;
      while (sources.length === before && Date.now() < deadline) await Bun.sleep(5);
      expect(sources.length).toBe(before + 1);
      // The same client port asks again only once the server has ended this transfer (our
      // ERROR): until then a repeat from that port is taken for a duplicate of the request.
      const ended = i + 1;
      await s.waitForLog(() => s.logs.filter(isTransfer).length >= ended);
    }
  } finally {
    socket.close();
  }
  for (const port of sources) {
    expect(port).toBeGreaterThanOrEqual(40000);
    expect(port).toBeLessThanOrEqual(40010);
    expect(port).not.toBe(s.port);
  }
  // and a real client works through it
  const dest = join(out, "ranged.bin");
  const r = await curl(["-o", dest, `tftp://127.0.0.1:${s.port}/vmlinuz`]);
  expect(r.exitCode).toBe(0);
  expect(await sha256File(dest)).toBe(sha256(kernel));
});

test("--remap FILE: a tftpd-hpa style rule rewrites the requested name", async () => {
  const rules = writeFile(out, "remap.rules", "# boot/ is an alias of images/\nr ^boot/ images/\n");
  const s = await serve(["--root", root, "--listen", "127.0.0.1:0", "--remap", rules]);
  const dest = join(out, "remapped.bin");
  const r = await curl(["-o", dest, `tftp://127.0.0.1:${s.port}/boot/pxelinux.0`]);
  expect(r.exitCode).toBe(0);
  expect(readFileSync(dest)).toEqual(Buffer.from(readFileSync(join(root, "images/pxelinux.0"))));
  const line = await s.waitForLog(isTransfer);
  expect(line).toMatchObject({ file: "images/pxelinux.0", result: "ok" });
});

describe("precedence: config file < TFTPD_* env < flags", () => {
  let base: string;
  let dirs: Record<"A" | "B" | "C", string>;
  let configFile: string;

  beforeAll(() => {
    base = tempDir("tftpd-prec-");
    dirs = { A: join(base, "A"), B: join(base, "B"), C: join(base, "C") };
    for (const [name, dir] of Object.entries(dirs)) writeFile(dir, "which.txt", `root ${name}\n`);
    configFile = writeFile(base, "tftpd.json", JSON.stringify({ tftp: { root: "A", listen: ["127.0.0.1:0"] }, log: { level: "info" } }));
  });
  afterAll(() => removeDir(base));

  async function servedRoot(args: string[], env: Record<string, string | undefined>): Promise<string> {
    const s = await serve(args, env);
    try {
      const dest = join(out, `which-${Math.random().toString(36).slice(2)}.txt`);
      const r = await curl(["-o", dest, `tftp://127.0.0.1:${s.port}/which.txt`]);
      expect(r.exitCode).toBe(0);
      return readFileSync(dest, "utf8").trim();
    } finally {
      expect(await s.stop()).toBe(0);
    }
  }

  test("the file alone: root A (relative to the config file)", async () => {
    expect(await servedRoot(["--config", configFile], { TFTPD_TFTP_ROOT: undefined })).toBe("root A");
  });

  test("env over file: TFTPD_TFTP_ROOT=B", async () => {
    expect(await servedRoot(["--config", configFile], { TFTPD_TFTP_ROOT: dirs.B })).toBe("root B");
  });

  test("flag over env and file: --root C", async () => {
    expect(await servedRoot(["--config", configFile, "--root", dirs.C], { TFTPD_TFTP_ROOT: dirs.B })).toBe("root C");
  });

  test("TFTPD_LOG_LEVEL=warn in the env, --log-level info wins", async () => {
    const s = await serve(["--config", configFile, "--log-level", "info"], { TFTPD_LOG_LEVEL: "warn" });
    expect(s.logs.some((l) => l.msg === "listening")).toBe(true);
    await s.stop();
  });
});

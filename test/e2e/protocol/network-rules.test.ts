/**
 * Per-network rules (`tftp.rules`, first match wins) with real clients against `tftpd serve`:
 * curl asking a block size above its network's cap gets the cap, atftp asking a window its
 * network refuses gets lock-step, a lab network gets its own root; clients no rule holds get the
 * server's settings. Every file is checked byte for byte and every grant in the transfer's log
 * line.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { patternBytes, removeDir, sha256, sha256File, tempDir, writeFile } from "../../helpers/files.ts";
import { BUN, MAIN, run } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

setDefaultTimeout(30_000);

const SIZE = 200_000;
const BODY = patternBytes(SIZE, 11);
const LAB_BODY = patternBytes(SIZE, 12);

let base: string;
let root: string;
let lab: string;
let out: string;
let server: ChildServer;
let fetched = 0;

type Line = Record<string, unknown>;

/** the transfer log line of the next transfer from `client` (an address) of `file` */
function transferLine(s: ChildServer, client: string, file: string): Promise<Line> {
  return s.waitForLog((l) => l.msg === "transfer" && l.file === file && String(l.client).startsWith(`${client}:`));
}

beforeAll(async () => {
  base = tempDir("tftpd-rules-");
  out = tempDir("tftpd-rules-out-");
  root = join(base, "root");
  lab = join(base, "lab");
  writeFile(root, "kernel", BODY);
  writeFile(lab, "kernel", LAB_BODY);
  const config = {
    tftp: {
      root,
      listen: ["127.0.0.1:0"],
      blksize_max: 8192,
      windowsize_max: 64,
      rules: [
        // an overlay network: small frames
        { clients: "127.1.0.0/16", blksize_max: 600 },
        // boot ROMs that break on windowsize
        { clients: ["127.0.0.1/32"], refuse_options: ["windowsize"] },
        // a lab network with a root of its own ("lab", relative to this file's directory)
        { clients: "127.2.0.0/16", root: "lab" },
      ],
    },
  };
  const file = writeFile(base, "config.json", JSON.stringify(config));
  server = await spawnServer(["--config", file, "--no-tune", "--log-level", "info"], { env: { TFTPD_TFTP_ROOT: undefined, TFTPD_TFTP_LISTEN: undefined } });
});

afterAll(async () => {
  await server?.stop("SIGKILL");
  removeDir(base);
  removeDir(out);
});

async function curl(from: string, blksize: number): Promise<{ code: number; digest: string | null }> {
  const dest = join(out, `curl-${fetched++}`);
  const r = await run(["curl", "-sS", "--max-time", "15", "--interface", from, "--tftp-blksize", String(blksize), "-o", dest, `tftp://127.0.0.1:${server.port}/kernel`], { timeoutMs: 20_000 });
  let digest: string | null = null;
  try {
    digest = sha256(readFileSync(dest));
  } catch {
    digest = null;
  }
  return { code: r.exitCode, digest };
}

describe("blksize_max per network (curl)", () => {
  test("a client of the overlay asking blksize 1400 gets 600, and the whole file", async () => {
    const line = transferLine(server, "127.1.0.9", "kernel");
    const r = await curl("127.1.0.9", 1400);
    expect(r).toEqual({ code: 0, digest: sha256(BODY) });
    expect(await line).toMatchObject({ result: "ok", bytes: SIZE, blksize: 600 });
  });

  test("a client no rule holds gets the 1400 it asked for", async () => {
    const line = transferLine(server, "127.3.0.9", "kernel");
    const r = await curl("127.3.0.9", 1400);
    expect(r).toEqual({ code: 0, digest: sha256(BODY) });
    expect(await line).toMatchObject({ result: "ok", bytes: SIZE, blksize: 1400 });
  });
});

describe("refuse_options (atftp)", () => {
  test("atftp asking windowsize 16 from a network that refuses it gets lock-step, blksize as asked", async () => {
    const dest = join(out, "atftp-kernel");
    const line = transferLine(server, "127.0.0.1", "kernel");
    const r = await run(
      ["atftp", "--get", "-r", "kernel", "-l", dest, "--option", "blksize 1468", "--option", "windowsize 16", "127.0.0.1", String(server.port)],
      { timeoutMs: 20_000 },
    );
    expect(r.exitCode).toBe(0);
    expect(await sha256File(dest)).toBe(sha256(BODY));
    const logged = await line;
    expect(logged).toMatchObject({ result: "ok", bytes: SIZE, blksize: 1468, windowsize: 1 });
    // asked, and refused: still recorded as asked
    expect(logged.options).toContain("windowsize");
  });
});

describe("root per network", () => {
  test("a client of the lab network gets the lab's copy; the server's root stays the others'", async () => {
    expect(await curl("127.2.0.4", 512)).toEqual({ code: 0, digest: sha256(LAB_BODY) });
    expect(await curl("127.3.0.4", 512)).toEqual({ code: 0, digest: sha256(BODY) });
  });
});

test("a rule whose root does not exist stops the server at start with one line naming it", async () => {
  const file = writeFile(base, "bad.json", JSON.stringify({ tftp: { root, listen: ["127.0.0.1:0"], rules: [{ clients: "10.0.0.0/8", root: "no-such-dir" }] } }));
  const r = await run([BUN, MAIN, "serve", "--config", file, "--no-tune"], {
    timeoutMs: 15_000,
    env: { ...process.env, TFTPD_TFTP_ROOT: undefined, TFTPD_TFTP_LISTEN: undefined, TFTPD_TUNE_ENABLED: "false", TFTPD_METRICS_ENABLED: "false" },
  });
  expect(r.exitCode).not.toBe(0);
  expect(r.stderr.trim().split("\n")).toHaveLength(1);
  expect(r.stderr).toContain("tftp.rules[0].root");
  expect(r.stderr).toContain("no-such-dir");
});

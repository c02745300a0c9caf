/**
 * A root per client (`tftp.unique_root`, dnsmasq's --tftp-unique-root) and the remap macros
 * `\i` / `\x` (tftpd-hpa), with real clients against `tftpd serve`:
 *   - "ip": curl bound to another loopback address (127.1.0.5) gets ROOT/127.1.0.5/FILE;
 *   - "mac": the server in one network namespace, curl in another across a veth pair; the
 *     server finds the client's MAC in its neighbour tables (IPv4 and IPv6) and serves
 *     ROOT/<aa-bb-cc-dd-ee-ff>/FILE;
 *   - `r ^cfg$ cfg-\x`: each client gets the config named after its address, as pxelinux asks.
 * A client without a directory of its own is served from ROOT.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { macDirectoryName } from "../../../src/net/neighbours.ts";
import { removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { createVethPair, tftpdIn, waitForNeighbour, type NetnsEnd, type VethPair } from "../../helpers/netns.ts";
import { run } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

setDefaultTimeout(30_000);

/** libcurl's CURLE_TFTP_NOTFOUND and CURLE_TFTP_PERM */
const CURLE_TFTP_NOTFOUND = 68;
const CURLE_TFTP_PERM = 69;

let base: string;
let out: string;
const running: ChildServer[] = [];

beforeAll(() => {
  base = tempDir("tftpd-unique-root-");
  out = tempDir("tftpd-unique-root-out-");
});

afterAll(async () => {
  for (const s of running) await s.stop("SIGKILL");
  removeDir(base);
  removeDir(out);
});

/** `tftpd serve --config FILE` with `config` (plus test defaults), from source or inside a namespace. */
async function serve(name: string, config: Record<string, unknown>, opts: { binary?: string; args?: string[] } = {}): Promise<ChildServer> {
  const file = writeFile(base, `${name}.json`, JSON.stringify(config));
  const s = await spawnServer(["--config", file, "--no-tune", "--log-level", "info", ...(opts.args ?? [])], {
    binary: opts.binary,
    env: { TFTPD_TFTP_ROOT: undefined, TFTPD_TFTP_LISTEN: undefined },
  });
  running.push(s);
  return s;
}

function portOf(s: ChildServer, host: string): number {
  const address = s.addresses.find((a) => a.startsWith(host.includes(":") ? `[${host}]:` : `${host}:`));
  if (address === undefined) throw new Error(`no listener on ${host}: ${s.addresses.join(", ")}`);
  return Number(address.slice(address.lastIndexOf(":") + 1));
}

let fetched = 0;

/**
 * Downloads `url` with curl (optionally bound to a local address, or run inside a namespace)
 * and returns its exit code and what it got.
 */
async function curl(url: string, opts: { from?: string; inside?: NetnsEnd } = {}): Promise<{ code: number; body: string | null; stderr: string }> {
  const dest = join(out, `got-${fetched++}`);
  // --path-as-is: the name goes out as written, "../" included
  const argv = ["curl", "-sS", "--max-time", "10", "--path-as-is", ...(opts.from ? ["--interface", opts.from] : []), "-o", dest, url];
  const r = await run(opts.inside ? opts.inside.command(argv) : argv, { timeoutMs: 15_000 });
  let body: string | null = null;
  try {
    body = readFileSync(dest, "utf8");
  } catch {
    body = null;
  }
  return { code: r.exitCode, body, stderr: r.stderr };
}

describe('unique_root "ip": a client bound to another loopback address gets ROOT/<its IP>/FILE', () => {
  let root: string;
  let port: number;

  beforeAll(async () => {
    root = join(base, "ip-root");
    writeFile(root, "f", "ROOT/f\n");
    writeFile(root, "only-in-root", "ROOT/only-in-root\n");
    writeFile(root, "127.1.0.5/f", "ROOT/127.1.0.5/f\n");
    // a file, not a directory, named after a client: not a root of its own
    writeFile(root, "127.1.0.7", "a file\n");
    const s = await serve("ip", { tftp: { root, listen: ["127.0.0.1:0"], unique_root: "ip" } });
    port = portOf(s, "127.0.0.1");
  });

  test("127.1.0.5 gets its own copy", async () => {
    expect(await curl(`tftp://127.0.0.1:${port}/f`, { from: "127.1.0.5" })).toMatchObject({ code: 0, body: "ROOT/127.1.0.5/f\n" });
  });

  test("127.0.0.1 and 127.1.0.6 (no directory) get ROOT/f; so does 127.1.0.7, whose name is a file", async () => {
    expect(await curl(`tftp://127.0.0.1:${port}/f`)).toMatchObject({ code: 0, body: "ROOT/f\n" });
    expect(await curl(`tftp://127.0.0.1:${port}/f`, { from: "127.1.0.6" })).toMatchObject({ code: 0, body: "ROOT/f\n" });
    expect(await curl(`tftp://127.0.0.1:${port}/f`, { from: "127.1.0.7" })).toMatchObject({ code: 0, body: "ROOT/f\n" });
  });

  test("a client with a directory is served from it alone, as dnsmasq does: a file only in ROOT is not found", async () => {
    const r = await curl(`tftp://127.0.0.1:${port}/only-in-root`, { from: "127.1.0.5" });
    expect(r.code).toBe(CURLE_TFTP_NOTFOUND);
    expect(await curl(`tftp://127.0.0.1:${port}/only-in-root`, { from: "127.1.0.6" })).toMatchObject({ code: 0, body: "ROOT/only-in-root\n" });
  });

  test("a client's directory does not open the way out of it: ../f is refused", async () => {
    const r = await curl(`tftp://127.0.0.1:${port}/../f`, { from: "127.1.0.5" });
    expect(r.code).toBe(CURLE_TFTP_PERM);
    expect(r.body ?? "").not.toContain("ROOT/");
  });

  test('with "off" (the default) every client gets ROOT/f', async () => {
    const s = await serve("off", { tftp: { root, listen: ["127.0.0.1:0"] } });
    expect(await curl(`tftp://127.0.0.1:${portOf(s, "127.0.0.1")}/f`, { from: "127.1.0.5" })).toMatchObject({ code: 0, body: "ROOT/f\n" });
  });
});

describe('unique_root "mac": across a veth pair, the client gets ROOT/<its MAC>/FILE, IPv4 and IPv6', () => {
  let pair: VethPair;
  let root: string;
  let server: ChildServer;

  beforeAll(async () => {
    pair = await createVethPair();
    const { a, b } = pair;
    root = join(base, "mac-root");
    writeFile(root, "f", "ROOT/f\n");
    writeFile(root, `${macDirectoryName(b.mac)}/f`, `ROOT/${macDirectoryName(b.mac)}/f\n`);
    // another machine's directory, and the server's own MAC's: neither is the client's
    writeFile(root, "02-00-00-00-00-01/f", "someone else's\n");
    writeFile(root, `${macDirectoryName(a.mac)}/f`, "the server's own MAC\n");
    // the client's directory in the pxelinux form (ARP type prefix 01-) is not dnsmasq's
    writeFile(root, `01-${macDirectoryName(b.mac)}/f`, "pxelinux form\n");
    server = await serve(
      "mac",
      { tftp: { root, listen: [`${a.ipv4}:0`, `[${a.ipv6}]:0`], unique_root: "mac" } },
      { binary: tftpdIn(a, base) },
    );
  });

  afterAll(async () => {
    await server?.stop("SIGKILL");
    await pair?.remove();
  });

  test("the peer gets its own copy over IPv4 (its first contact: the server learnt its MAC from its ARP request)", async () => {
    const { a, b } = pair;
    const r = await curl(`tftp://${a.ipv4}:${portOf(server, a.ipv4)}/f`, { inside: b });
    expect(r).toMatchObject({ code: 0, body: `ROOT/${macDirectoryName(b.mac)}/f\n` });
    expect(await waitForNeighbour(a, b.ipv4)).toBe(b.mac);
  });

  test("and over IPv6 (the neighbour solicitation)", async () => {
    const { a, b } = pair;
    const r = await curl(`tftp://[${a.ipv6}]:${portOf(server, a.ipv6)}/f`, { inside: b });
    expect(r).toMatchObject({ code: 0, body: `ROOT/${macDirectoryName(b.mac)}/f\n` });
  });

  test("a client that is no neighbour (the server's own namespace, over its local route) gets ROOT/f", async () => {
    const { a } = pair;
    const r = await curl(`tftp://${a.ipv4}:${portOf(server, a.ipv4)}/f`, { inside: a });
    expect(r).toMatchObject({ code: 0, body: "ROOT/f\n" });
  });
});

describe("remap \\i and \\x with real clients", () => {
  let root: string;
  let server: ChildServer;

  beforeAll(async () => {
    root = join(base, "remap-root");
    writeFile(root, "cfg-7F010005", "config of 127.1.0.5\n");
    writeFile(root, "cfg-7F000001", "config of 127.0.0.1\n");
    writeFile(root, `cfg-${"0".repeat(31)}1`, "config of ::1\n");
    writeFile(root, "by-ip/127.1.0.5", "by-ip of 127.1.0.5\n");
    writeFile(root, "secret", "never served\n");
    const rules = writeFile(
      base,
      "remap.rules",
      ["r ^cfg$ cfg-\\x", "r ^mine$ by-ip/\\i", "a ^secret$ no\\ secrets\\ for\\ \\i", ""].join("\n"),
    );
    server = await serve("remap", { tftp: { root, listen: ["127.0.0.1:0", "[::1]:0"], remap: rules } });
  });

  test("r ^cfg$ cfg-\\x: 127.1.0.5 gets cfg-7F010005, 127.0.0.1 cfg-7F000001, ::1 its 32-digit name", async () => {
    const port = portOf(server, "127.0.0.1");
    expect(await curl(`tftp://127.0.0.1:${port}/cfg`, { from: "127.1.0.5" })).toMatchObject({ code: 0, body: "config of 127.1.0.5\n" });
    expect(await curl(`tftp://127.0.0.1:${port}/cfg`)).toMatchObject({ code: 0, body: "config of 127.0.0.1\n" });
    expect(await curl(`tftp://[::1]:${portOf(server, "::1")}/cfg`)).toMatchObject({ code: 0, body: "config of ::1\n" });
  });

  test("r ^mine$ by-ip/\\i: the client's dotted address; another client has no such file", async () => {
    const port = portOf(server, "127.0.0.1");
    expect(await curl(`tftp://127.0.0.1:${port}/mine`, { from: "127.1.0.5" })).toMatchObject({ code: 0, body: "by-ip of 127.1.0.5\n" });
    expect((await curl(`tftp://127.0.0.1:${port}/mine`, { from: "127.1.0.6" })).code).toBe(CURLE_TFTP_NOTFOUND);
  });

  test("an abort rule's ERROR text names the client (\\i): tftp-hpa shows it", async () => {
    const port = portOf(server, "127.0.0.1");
    expect((await curl(`tftp://127.0.0.1:${port}/secret`, { from: "127.1.0.5" })).code).toBe(CURLE_TFTP_PERM);
    const r = await run(["tftp", "127.0.0.1", String(port), "-c", "get", "secret", join(out, "secret")], { timeoutMs: 15_000 });
    expect(`${r.stdout}${r.stderr}`).toContain("no secrets for 127.0.0.1");
  });
});

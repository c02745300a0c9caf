/**
 * A record for every refused request, and the request rate per source address, as an operator
 * meets them: `tftpd serve` as a child, real clients (curl, raw datagrams), its stdout log and
 * its metrics. A machine that fails to boot asks for a file it is refused: that must be one
 * line at the default level, with the file name; a flood from one address must be dropped,
 * counted and summed up in one line, not one line per request.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import { parsePrometheus, type Sample } from "../../../src/ops/summary.ts";
import { patternBytes, removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { error, rawPacket, RawPeer, rrq, wrq } from "../../helpers/raw.ts";
import { run } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

setDefaultTimeout(30_000);

const CURLE_TFTP_NOTFOUND = 68;

type Line = Record<string, unknown>;
const isRefusal = (l: Line): boolean => l.msg === "request refused";
/** what `grep '"request refused"' log | grep NAME` finds */
const grepRefused = (s: ChildServer, name: string): Line[] => s.logs.filter((l) => JSON.stringify(l).includes('"request refused"') && JSON.stringify(l).includes(name));

let root: string;
let out: string;
const running: ChildServer[] = [];
const peers: RawPeer[] = [];

async function serve(args: string[], env: Record<string, string>): Promise<ChildServer> {
  const s = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--no-tune", ...args], { env });
  running.push(s);
  return s;
}

async function peer(host = "127.0.0.1"): Promise<RawPeer> {
  const p = await RawPeer.open(host);
  peers.push(p);
  return p;
}

async function scrape(s: ChildServer): Promise<Sample[]> {
  const response = await fetch(`${s.metricsUrl}/metrics`, { signal: AbortSignal.timeout(3000) });
  expect(response.status).toBe(200);
  return parsePrometheus(await response.text());
}

function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const s of samples) {
    if (s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)) total += s.value;
  }
  return total;
}

beforeAll(() => {
  root = tempDir("tftpd-refusal-root-");
  out = tempDir("tftpd-refusal-out-");
  writeFile(root, "vmlinuz", patternBytes(300_000, 3));
});

afterAll(async () => {
  for (const p of peers) p.close();
  for (const s of running) await s.stop("SIGKILL");
  removeDir(root);
  removeDir(out);
});

describe("a refused request is one info line with the file name, counted by reason", () => {
  let s: ChildServer;
  beforeAll(async () => {
    const rules = writeFile(out, "remap.rules", "r ^pxelinux\\.cfg/ cfg/\n");
    s = await serve(["--remap", rules, "--write", "create"], {
      TFTPD_LIMITS_MAX_CONNECTIONS_PER_IP: "1",
      TFTPD_LIMITS_ON_LIMIT: "busy",
      TFTPD_TFTP_DENY: '["127.0.0.9/32"]',
      TFTPD_TFTP_MAX_UPLOAD_SIZE: "1000",
    });
  });

  /** the one refusal line for `file`, after a moment for any second one to show */
  async function onlyLine(file: string): Promise<Line> {
    await s.waitForLog((l) => isRefusal(l) && l.file === file);
    await Bun.sleep(150);
    const found = grepRefused(s, file);
    expect(found).toHaveLength(1);
    return found[0]!;
  }

  test("file not found (curl): the name asked and the name after remap, ERROR 1", async () => {
    const name = "pxelinux.cfg/01-52-54-00-12-34-56";
    const r = await run(["curl", "-sS", "--max-time", "10", "-o", join(out, "cfg"), `tftp://127.0.0.1:${s.port}/${name}`], { timeoutMs: 12_000 });
    expect(r.exitCode).toBe(CURLE_TFTP_NOTFOUND);
    const line = await onlyLine(name);
    expect(line).toMatchObject({ level: "info", op: "read", file: name, remapped: "cfg/01-52-54-00-12-34-56", kind: "not_found", reason: "file not found", code: 1 });
    expect(String(line.client)).toMatch(/^127\.0\.0\.1:\d+$/);
  });

  test("access violation: a name with '..' is refused with ERROR 2", async () => {
    const p = await peer();
    p.send(rrq("../etc/passwd"), s.port);
    await p.nextError(2);
    const line = await onlyLine("../etc/passwd");
    expect(line).toMatchObject({ level: "info", op: "read", kind: "access", code: 2, client: `127.0.0.1:${p.port}` });
  });

  test("deny: a denied address is refused with ERROR 2 before remap runs", async () => {
    const p = await peer("127.0.0.9");
    p.send(rrq("denied-here.bin"), s.port, "127.0.0.1");
    expect((await p.nextError(2)).packet.message).toBe("access denied");
    const line = await onlyLine("denied-here.bin");
    expect(line).toMatchObject({ level: "info", op: "read", kind: "allow_deny", remapped: null, code: 2, client: `127.0.0.9:${p.port}` });
  });

  test("a bad option: an upload declaring a tsize over the size limit is refused with ERROR 3", async () => {
    const p = await peer();
    p.send(wrq("too-big.img", "octet", [["tsize", "5000"]]), s.port);
    await p.nextError(3);
    const line = await onlyLine("too-big.img");
    expect(line).toMatchObject({ level: "info", op: "write", kind: "options", code: 3 });
  });

  test("a limit (on_limit busy): a second transfer from the address is refused with ERROR 0", async () => {
    const holder = await peer();
    holder.send(rrq("vmlinuz"), s.port);
    const first = await holder.nextData(1);
    const p = await peer();
    p.send(rrq("vmlinuz"), s.port);
    expect((await p.nextError(0)).packet.message).toBe("busy: per-ip transfer limit reached");
    // the holder ends its transfer: the slot is given back
    holder.send(error(0, "done"), first.port);
    const line = await onlyLine("vmlinuz");
    expect(line).toMatchObject({ level: "info", op: "read", kind: "limit", reason: "busy: per-ip transfer limit reached", code: 0, client: `127.0.0.1:${p.port}` });
  });

  test("garbage at the listen port is no request: counted as malformed, never an info line", async () => {
    const before = s.logs.filter(isRefusal).length;
    const p = await peer();
    p.send(rawPacket(9, "nonsense"), s.port);
    await p.nextError(4);
    await Bun.sleep(150);
    expect(s.logs.filter(isRefusal)).toHaveLength(before);
  });

  test("the metrics count each refusal once by reason, and the ERROR codes and the limit as before", async () => {
    const m = await scrape(s);
    const reasons = ["not_found", "access", "allow_deny", "options", "limit", "malformed", "other"];
    const refused = (protocol: string) => reasons.map((reason) => value(m, "tftpd_requests_refused_total", { protocol, reason }));
    expect(refused("tftp")).toEqual([1, 1, 1, 1, 1, 1, 0]);
    // no HTTP here: its series are there all the same, at 0, for rates that need no first refusal
    expect(refused("http")).toEqual([0, 0, 0, 0, 0, 0, 0]);
    const httpSeries = m.filter((x) => x.name === "tftpd_requests_refused_total" && x.labels.protocol === "http");
    expect(httpSeries.map((x) => x.labels.reason).sort()).toEqual([...reasons].sort());
    expect(value(m, "tftpd_admission_refusals_total", { limit: "per-ip" })).toBe(1);
    const sent = (code: string) => value(m, "tftpd_errors_sent_total", { code });
    expect([sent("0"), sent("1"), sent("2"), sent("3"), sent("4")]).toEqual([1, 1, 2, 1, 1]);
    expect(value(m, "tftpd_requests_rate_limited_total")).toBe(0);
    // every refusal so far, one line each
    expect(s.logs.filter(isRefusal)).toHaveLength(5);
  });
});

describe("request rate per source address", () => {
  const BURST = 20;
  let s: ChildServer;
  beforeAll(async () => {
    s = await serve([], { TFTPD_LIMITS_REQUESTS_PER_SECOND_PER_IP: "2", TFTPD_LIMITS_REQUEST_BURST_PER_IP: String(BURST) });
  });

  test("200 requests at once from one address: about the burst answered, the rest dropped, counted and summed up in one line; another address is served", async () => {
    const flooder = await peer();
    const sent = 200;
    // paced a little, so the kernel's receive buffer drops none of them: every drop is the server's
    for (let i = 0; i < sent; i++) {
      flooder.send(rrq(`flood/missing-${i}`), s.port);
      if (i % 10 === 9) await Bun.sleep(2);
    }
    const answers = await flooder.collect(1000);
    expect(answers.every((a) => a.packet?.op === 5)).toBe(true);
    // the burst, and at 2 per second perhaps one more while the requests were sent
    expect(answers.length).toBeGreaterThanOrEqual(BURST);
    expect(answers.length).toBeLessThanOrEqual(BURST + 2);

    // another source is unaffected
    const other = await peer("127.0.0.2");
    other.send(rrq("vmlinuz"), s.port, "127.0.0.1");
    const data = await other.nextData(1);
    other.send(error(0, "done"), data.port, "127.0.0.1");

    const m = await scrape(s);
    expect(value(m, "tftpd_requests_rate_limited_total")).toBe(sent - answers.length);
    expect(value(m, "tftpd_requests_refused_total", { protocol: "tftp", reason: "not_found" })).toBe(answers.length);

    // one line per answered request, none per dropped one; one summary within the interval
    expect(s.logs.filter((l) => isRefusal(l) && String(l.file).startsWith("flood/"))).toHaveLength(answers.length);
    const summary = await s.waitForLog((l) => l.msg === "requests rate-limited", 12_000);
    expect(summary).toMatchObject({ level: "warn", address: "127.0.0.1", dropped: sent - answers.length, interval_s: 10 });
    await Bun.sleep(200);
    expect(s.logs.filter((l) => l.msg === "requests rate-limited")).toHaveLength(1);
  });
});

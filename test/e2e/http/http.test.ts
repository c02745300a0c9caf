/**
 * The root over HTTP, end to end with curl against `tftpd serve` (http.enabled): the same name
 * gets the same bytes as over TFTP, through the same remap rules and limits; HEAD, single
 * ranges, If-Range on the file's ETag, 404 and 403 with the refusal's log line, 503 with
 * Retry-After over the request rate, no listings, no redirects, and a file rewritten during a
 * download never reaching the client half old, half new.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parsePrometheus } from "../../../src/ops/summary.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { run } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

setDefaultTimeout(60_000);

let dir: string;
let root: string;
let server: ChildServer;
let base: string;

const BIG = patternBytes(3 * 1024 * 1024 + 17, 7);
const EFI = patternBytes(200_003, 3);

async function startWith(config: { tftp?: object; http?: object; [section: string]: unknown }, extraFiles: Record<string, Uint8Array | string> = {}): Promise<{ server: ChildServer; base: string; dir: string; root: string }> {
  const dir = tempDir("tftpd-http-");
  const root = join(dir, "root");
  writeFile(root, "big.bin", BIG);
  writeFile(root, "bios/ipxe.efi", EFI);
  writeFile(root, "sub/inner.txt", "inner\n");
  for (const [name, bytes] of Object.entries(extraFiles)) writeFile(dir, name, bytes);
  const file = writeFile(
    dir,
    "tftpd.json",
    JSON.stringify({
      ...config,
      tftp: { root, listen: ["127.0.0.1:0"], ...config.tftp },
      http: { enabled: true, listen: ["127.0.0.1:0"], ...config.http },
    }),
  );
  const server = await spawnServer(["--config", file, "--no-tune"]);
  const at = server.logs.find((l) => l.msg === "http listening")?.address;
  if (typeof at !== "string") throw new Error(`no "http listening" line: ${JSON.stringify(server.logs.slice(0, 12))}`);
  return { server, base: `http://${at}`, dir, root };
}

interface Curl {
  status: number;
  headers: Record<string, string>;
  body: Uint8Array;
  exitCode: number;
}

/** curl as a boot loader would use it; headers lower-cased. */
async function curl(path: string, args: string[] = []): Promise<Curl> {
  const out = join(dir, `body-${Math.random().toString(36).slice(2)}`);
  const r = await run(["curl", "-sS", "--path-as-is", "-o", out, "-D", "-", ...args, `${base}${path}`], { timeoutMs: 30_000 });
  const blocks = r.stdout.trim().split(/\r?\n\r?\n/);
  const lines = (blocks.at(-1) ?? "").split(/\r?\n/);
  const status = Number(/^HTTP\/[\d.]+ (\d+)/.exec(lines[0] ?? "")?.[1] ?? 0);
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    if (colon > 0) headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
  }
  let body = new Uint8Array(0);
  try {
    body = new Uint8Array(readFileSync(out));
  } catch {
    // no body written (HEAD, or an empty one)
  }
  return { status, headers, body, exitCode: r.exitCode };
}

/**
 * The server's record of an HTTP request for `file` that has `fields` (a record is written when
 * the response finishes, which may be after curl has returned: wait for the one meant).
 */
async function recordOf(file: string, msg = "transfer", fields: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
  const meant = (l: Record<string, unknown>): boolean =>
    l.msg === msg && l.protocol === "http" && l.file === file && Object.entries(fields).every(([k, v]) => l[k] === v);
  await server.waitForLog(meant, 5_000);
  return server.logs.filter(meant).at(-1)!;
}

describe("the root over HTTP", () => {
  beforeAll(async () => {
    ({ server, base, dir, root } = await startWith({}));
  });
  afterAll(async () => {
    await server?.stop();
    removeDir(dir);
  });

  test("GET: the bytes a TFTP read gets, with Content-Length, a type by extension, Accept-Ranges and an ETag", async () => {
    const r = await curl("/big.bin");
    expect(r.status).toBe(200);
    expect(r.headers["content-length"]).toBe(String(BIG.length));
    expect(r.headers["accept-ranges"]).toBe("bytes");
    expect(r.headers.etag).toMatch(/^"[0-9a-f-]+"$/);
    expect(r.headers["transfer-encoding"]).toBeUndefined();
    expect(sha256(r.body)).toBe(sha256(BIG));
    const rec = await recordOf("big.bin", "transfer", { method: "GET", status: 200 });
    expect(rec).toMatchObject({ method: "GET", status: 200, bytes: BIG.length, size: BIG.length, result: "ok" });
    expect(String(rec.user_agent)).toMatch(/^curl\//);

    const efi = await curl("/bios/ipxe.efi");
    expect(efi.headers["content-type"]).toBe("application/efi");
    expect(sha256(efi.body)).toBe(sha256(EFI));
    const tftp = join(dir, "via-tftp.efi");
    const t = await run(["curl", "-sS", "-o", tftp, `tftp://127.0.0.1:${server.port}/bios/ipxe.efi`]);
    expect(t.exitCode).toBe(0);
    expect(sha256(new Uint8Array(readFileSync(tftp)))).toBe(sha256(efi.body));
  });

  test("HEAD: the headers of a GET, no body", async () => {
    const r = await curl("/big.bin", ["-I"]);
    expect(r.status).toBe(200);
    expect(r.headers["content-length"]).toBe(String(BIG.length));
    const head = await fetch(`${base}/big.bin`, { method: "HEAD" });
    expect((await head.arrayBuffer()).byteLength).toBe(0);
    expect(await recordOf("big.bin", "transfer", { method: "HEAD" })).toMatchObject({ method: "HEAD", status: 200, bytes: 0 });
  });

  test("a single range: 206 with Content-Range and exactly those bytes; a suffix range; 416 past the end", async () => {
    const r = await curl("/big.bin", ["-r", "1000-1999"]);
    expect(r.status).toBe(206);
    expect(r.headers["content-range"]).toBe(`bytes 1000-1999/${BIG.length}`);
    expect(r.headers["content-length"]).toBe("1000");
    expect(sha256(r.body)).toBe(sha256(BIG.subarray(1000, 2000)));
    expect(await recordOf("big.bin", "transfer", { status: 206 })).toMatchObject({ status: 206, range: "1000-1999", bytes: 1000 });

    const tail = await curl("/big.bin", ["-r", "-17"]);
    expect(tail.status).toBe(206);
    expect(sha256(tail.body)).toBe(sha256(BIG.subarray(BIG.length - 17)));

    const past = await curl("/big.bin", ["-r", `${BIG.length}-`]);
    expect(past.status).toBe(416);
    expect(past.headers["content-range"]).toBe(`bytes */${BIG.length}`);
  });

  test("a file the cache holds goes out from its mapping: whole, and a range across the body's chunks, byte-exact", async () => {
    const hits = async (): Promise<number> => {
      const text = await (await fetch(`${server.metricsUrl}/metrics`)).text();
      return parsePrometheus(text).find((x) => x.name === "tftpd_cache_hits_total")?.value ?? 0;
    };
    // the first read fills the cache; the reads after it are hits, served from the sealed copy
    expect((await curl("/big.bin")).status).toBe(200);
    const before = await hits();
    const whole = await curl("/big.bin");
    expect(sha256(whole.body)).toBe(sha256(BIG));
    const part = await curl("/big.bin", ["-r", "262000-786500"]);
    expect(part.status).toBe(206);
    expect(sha256(part.body)).toBe(sha256(BIG.subarray(262000, 786501)));
    expect((await hits()) - before).toBeGreaterThanOrEqual(2);
  });

  test("If-Range: the current ETag keeps the range, a stale one gets the whole file", async () => {
    const etag = (await curl("/big.bin", ["-I"])).headers.etag!;
    const fresh = await curl("/big.bin", ["-r", "0-9", "-H", `If-Range: ${etag}`]);
    expect(fresh.status).toBe(206);
    expect(fresh.body.length).toBe(10);
    const stale = await curl("/big.bin", ["-r", "0-9", "-H", 'If-Range: "0-0-0-0-0"']);
    expect(stale.status).toBe(200);
    expect(sha256(stale.body)).toBe(sha256(BIG));
  });

  test("a missing file: 404 and the refusal's log line with the name asked", async () => {
    const r = await curl("/no/such/file.efi");
    expect(r.status).toBe(404);
    const line = await recordOf("no/such/file.efi", "request refused");
    expect(line).toMatchObject({ kind: "not_found", status: 404, op: "read" });
  });

  test("no listings, no way out of the root, no redirects, GET and HEAD only", async () => {
    for (const path of ["/", "/sub/"]) {
      const r = await curl(path);
      expect({ path, status: r.status }).toEqual({ path, status: 404 });
      expect(r.headers.location).toBeUndefined();
    }
    // a directory named as a file: refused as TFTP refuses it (no file to send), never listed or redirected
    const dirAsFile = await curl("/sub");
    expect([403, 404]).toContain(dirAsFile.status);
    expect(dirAsFile.headers.location).toBeUndefined();
    expect(new TextDecoder().decode(dirAsFile.body)).not.toContain("inner.txt");
    for (const path of ["/../etc/passwd", "/sub/../../etc/passwd", "/%2e%2e/etc/passwd"]) {
      const r = await curl(path);
      expect({ path, ok: r.status === 200 }).toEqual({ path, ok: false });
      expect(new TextDecoder().decode(r.body)).not.toContain("root:");
    }
    const post = await curl("/big.bin", ["-X", "POST", "--data", "x"]);
    expect(post.status).toBe(405);
    expect(post.headers.allow).toBe("GET, HEAD");
  });

  test("a file rewritten during a download: the client gets one version whole, or a download cut short, never a mix", async () => {
    const old = patternBytes(24 * 1024 * 1024, 11);
    const next = patternBytes(24 * 1024 * 1024, 12);
    writeFileSync(join(root, "changing.bin"), old);
    const out = join(dir, "changing.out");
    const download = run(["curl", "-sS", "--limit-rate", "8M", "-o", out, `${base}/changing.bin`], { timeoutMs: 30_000 });
    await Bun.sleep(600);
    // rewritten in place, byte for byte, as a careless copy would
    writeFileSync(join(root, "changing.bin"), next);
    const r = await download;
    const got = new Uint8Array(readFileSync(out));
    if (r.exitCode === 0) {
      expect(got.length).toBe(old.length);
      expect([sha256(old), sha256(next)]).toContain(sha256(got));
    } else {
      // cut short: curl says so (18: partial file), and what it has is a prefix of one version
      expect(r.exitCode).toBe(18);
      const prefixOf = (v: Uint8Array): boolean => sha256(v.subarray(0, got.length)) === sha256(got);
      expect(prefixOf(old) || prefixOf(next)).toBe(true);
    }
    // and a file renamed over (as an atomic deploy does) is served new to the next client
    writeFileSync(join(root, "changing.tmp"), old);
    renameSync(join(root, "changing.tmp"), join(root, "changing.bin"));
    expect(sha256((await curl("/changing.bin")).body)).toBe(sha256(old));
  });

  test("metrics: requests by method, status and result; bytes, transfers, time to first byte and refusals under protocol http", async () => {
    const text = await (await fetch(`${server.metricsUrl}/metrics`)).text();
    expect(text).toMatch(/tftpd_http_requests_total\{method="GET",status="200",result="ok"\} [1-9]/);
    expect(text).toMatch(/tftpd_http_requests_total\{method="GET",status="206",result="ok"\} [1-9]/);
    expect(text).toMatch(/tftpd_sent_bytes_total\{protocol="http"\} [1-9]/);
    expect(text).toMatch(/tftpd_transfers_total\{protocol="http",direction="read",result="ok"\} [1-9]/);
    expect(text).toMatch(/tftpd_first_response_seconds_count\{protocol="http"\} [1-9]/);
    expect(text).toMatch(/tftpd_requests_refused_total\{protocol="http",reason="not_found"\} [1-9]/);
    expect(text).not.toContain("tftpd_http_sent_bytes_total");
    expect(text).not.toContain("tftpd_http_first_byte_seconds");
    // one record per request feeds them all: in one scrape they agree
    const samples = parsePrometheus(text);
    const sum = (name: string, labels: Record<string, string> = {}) =>
      samples.filter((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v)).reduce((n, x) => n + x.value, 0);
    const requests = sum("tftpd_http_requests_total");
    expect(requests).toBeGreaterThan(0);
    expect(sum("tftpd_transfers_total", { protocol: "http" })).toBe(requests);
    expect(sum("tftpd_first_response_seconds_count", { protocol: "http" })).toBe(requests);
    expect(sum("tftpd_transfer_duration_seconds_count", { protocol: "http" })).toBe(requests);
    // the one TFTP read here went well, and HTTP refusals are answered with a status, not a TFTP ERROR
    expect(sum("tftpd_transfers_total", { protocol: "tftp" })).toBe(1);
    expect(sum("tftpd_errors_sent_total")).toBe(0);
  });
});

describe("HTTP takes the TFTP road: remap rules, allow/deny, request rate", () => {
  let other: Awaited<ReturnType<typeof startWith>>;
  afterAll(async () => {
    await other?.server.stop();
    if (other) removeDir(other.dir);
  });

  test("a remapped name, a denied network, and 503 with Retry-After over the request rate", async () => {
    other = await startWith(
      {
        tftp: { remap: "remap.rules", deny: ["127.0.0.9/32"] },
        limits: { requests_per_second_per_ip: 1, request_burst_per_ip: 3 },
        http: { retry_after: 7 },
      },
      { "remap.rules": "r ^ipxe\\.efi$ bios/ipxe.efi\n" },
    );
    const get = (path: string, extra: string[] = []) =>
      run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %header{retry-after}", ...extra, `${other.base}${path}`]);
    const remapped = await run(["curl", "-sS", `${other.base}/ipxe.efi`, "-o", join(other.dir, "remapped")]);
    expect(remapped.exitCode).toBe(0);
    expect(sha256(new Uint8Array(readFileSync(join(other.dir, "remapped"))))).toBe(sha256(EFI));

    const denied = await get("/bios/ipxe.efi", ["--interface", "127.0.0.9"]);
    expect(denied.stdout).toMatch(/^403/);

    // the burst is spent: the next requests from 127.0.0.1 within the second are turned away
    let answers: string[] = [];
    for (let i = 0; i < 4; i++) answers.push((await get("/bios/ipxe.efi")).stdout);
    answers = answers.filter((a) => a.startsWith("503"));
    expect(answers.length).toBeGreaterThan(0);
    expect(answers[0]).toBe("503 7");
  });
});

describe("HTTPS (http.tls.*)", () => {
  let secure: Awaited<ReturnType<typeof startWith>> | undefined;
  afterAll(async () => {
    await secure?.server.stop();
    if (secure) removeDir(secure.dir);
  });

  test("the same files over TLS with the configured certificate", async () => {
    const certDir = tempDir("tftpd-http-tls-");
    const made = await run([
      "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
      "-keyout", join(certDir, "key.pem"), "-out", join(certDir, "cert.pem"),
    ]);
    expect(made.exitCode).toBe(0);
    secure = await startWith({ http: { tls: { listen: ["127.0.0.1:0"], cert: join(certDir, "cert.pem"), key: join(certDir, "key.pem") } } });
    const tlsAt = secure.server.logs.find((l) => l.msg === "http listening" && l.tls === true)?.address;
    expect(typeof tlsAt).toBe("string");
    const out = join(secure.dir, "over-tls.efi");
    const r = await run(["curl", "-sS", "--cacert", join(certDir, "cert.pem"), "-o", out, `https://${tlsAt}/bios/ipxe.efi`]);
    removeDir(certDir);
    expect(r.stderr).toBe("");
    expect(sha256(new Uint8Array(readFileSync(out)))).toBe(sha256(EFI));
  });
});

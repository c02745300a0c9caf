/** `tftpd profile` against a running server: a real JSC sampling profile and heap snapshot. */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { patternBytes, removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { run, tftpd } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

let root: string;
let out: string;
let server: ChildServer;

beforeAll(async () => {
  root = tempDir();
  out = tempDir("tftpd-profile-out-");
  writeFile(root, "f.bin", patternBytes(2_000_000, 3));
  server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0"]);
});
afterAll(async () => {
  await server.stop();
  removeDir(root);
  removeDir(out);
});

test("a CPU profile taken under load lists hot functions and writes a valid .cpuprofile", async () => {
  // The sampler records nothing while the server waits for packets, so the load lasts until the
  // profile has been taken: a fixed number of downloads can end before the command has started.
  let profiling = true;
  const load = (async () => {
    while (profiling) {
      await run(["curl", "-sS", "--tftp-blksize", "1468", "-o", "/dev/null", `tftp://127.0.0.1:${server.port}/f.bin`], { timeoutMs: 10_000 });
    }
  })();
  const file = join(out, "p.cpuprofile");
  const r = await tftpd(["profile", "--url", server.metricsUrl!, "--seconds", "1", "--out", file, "--top", "5"]).finally(() => {
    profiling = false;
  });
  await load;
  expect(r.exitCode).toBe(0);
  expect(r.stdout).toMatch(/^cpu profile: \d+ samples of the main thread over 1 s/m);
  const rows = r.stdout.split("\n").filter((l) => /^\s+\d+\.\d\s+\d+\s+\S/.test(l));
  expect(rows.length).toBeGreaterThan(0);
  const profile = JSON.parse(readFileSync(file, "utf8"));
  expect(profile.nodes[0].callFrame.functionName).toBe("(root)");
  expect(profile.samples.length).toBe(profile.timeDeltas.length);
  expect(profile.samples.length).toBeGreaterThan(0);
  const ids = new Set(profile.nodes.map((n: { id: number }) => n.id));
  for (const id of profile.samples) expect(ids.has(id)).toBe(true);
});

test("--heap writes a V8 heap snapshot", async () => {
  const file = join(out, "h.heapsnapshot");
  const r = await tftpd(["profile", "--url", server.metricsUrl!, "--heap", file]);
  expect(r.exitCode).toBe(0);
  const snapshot = JSON.parse(readFileSync(file, "utf8"));
  expect(snapshot.snapshot).toBeDefined();
  expect(Array.isArray(snapshot.nodes)).toBe(true);
});

test("with metrics.control off the control endpoint refuses and the command says so", async () => {
  const off = await spawnServer(["--root", root, "--listen", "127.0.0.1:0"], { env: { TFTPD_METRICS_CONTROL: "false" } });
  try {
    const r = await tftpd(["profile", "--url", off.metricsUrl!, "--seconds", "1"]);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain("HTTP 404");
    expect(r.stderr).toContain("metrics.control");
  } finally {
    await off.stop();
  }
});

test("bad --seconds is a usage error", async () => {
  const r = await tftpd(["profile", "--url", server.metricsUrl!, "--seconds", "0"]);
  expect(r.exitCode).toBe(2);
  expect(r.stderr).toContain("--seconds");
});

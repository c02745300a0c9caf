/**
 * The client subcommands find the server's metrics endpoint where its config puts it:
 * `tftpd metrics --config FILE` and `tftpd profile --config FILE` ask `metrics.listen` of the
 * file (a wildcard address on loopback), `--url` still wins, and both at once is a usage error.
 */
import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { tftpd } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

setDefaultTimeout(60_000);

let dir = "";
let server: ChildServer;
let config = "";

function freePort(): number {
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = probe.port;
  probe.stop(true);
  return port;
}

beforeAll(async () => {
  dir = tempDir("tftpd-ops-address-");
  writeFile(dir, "root/hello.txt", "hello\n");
  const port = freePort();
  // the server listens on every address: the client asks loopback
  config = writeFile(dir, "tftpd.json", JSON.stringify({ tftp: { root: "root", listen: ["127.0.0.1:0"] }, metrics: { listen: `0.0.0.0:${port}` } }));
  server = await spawnServer(["--config", config], { env: { TFTPD_METRICS_LISTEN: undefined } });
  expect(server.metricsUrl).toBe(`http://0.0.0.0:${port}`);
});

afterAll(async () => {
  await server?.stop();
  removeDir(dir);
});

test("tftpd metrics --config FILE reads the endpoint of that file", async () => {
  const r = await tftpd(["metrics", "--config", config, "--raw"], { env: { ...process.env, TFTPD_METRICS_LISTEN: undefined } });
  expect(r.stderr).toBe("");
  expect(r.exitCode).toBe(0);
  expect(r.stdout).toContain("tftpd_active_transfers");
});

test("tftpd profile --config FILE reads the endpoint of that file", async () => {
  const r = await tftpd(["profile", "--config", config, "--seconds", "1", "--top", "3"], { env: { ...process.env, TFTPD_METRICS_LISTEN: undefined } });
  expect(r.stderr).toBe("");
  expect(r.exitCode).toBe(0);
  expect(r.stdout).toContain("cpu profile over 1 s");
});

test("without --config the default file and TFTPD_METRICS_LISTEN decide; --url and --config together: exit 2", async () => {
  const env = { ...process.env, TFTPD_CONFIG: config, TFTPD_METRICS_LISTEN: undefined };
  const fromEnvFile = await tftpd(["metrics", "--raw"], { env });
  expect(fromEnvFile.exitCode).toBe(0);
  const elsewhere = await tftpd(["metrics", "--raw"], { env: { ...env, TFTPD_METRICS_LISTEN: `127.0.0.1:${freePort()}` } });
  expect(elsewhere.exitCode).toBe(1);
  expect(elsewhere.stderr).toMatch(/^tftpd metrics: http:\/\/127\.0\.0\.1:\d+\/metrics: .*\(is the server running with metrics enabled\?\)\n$/);
  const both = await tftpd(["metrics", "--config", config, "--url", "http://127.0.0.1:1"]);
  expect(both.exitCode).toBe(2);
  expect(both.stderr).toBe("tftpd metrics: --url and --config both name the endpoint: give one\n");
});

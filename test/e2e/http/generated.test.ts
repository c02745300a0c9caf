/**
 * Generated files, end to end: `tftpd serve` with an inventory, a template folder and
 * `generate.files`, asked by curl over HTTP (with iPXE's query string) and by tftp-hpa's client
 * over TFTP: each gets the file rendered for the machine its path (or its address) names; a
 * path no machine matches falls through to the root; a template that fails is a 500 / ERROR 0
 * with one log line naming template and line; SIGHUP reads inventory and templates again.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { run } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

setDefaultTimeout(60_000);

let dir: string;
let server: ChildServer;
let base: string;

const inventory = (role: string) =>
  JSON.stringify({
    profiles: { debian: { kernel: "debian/vmlinuz", initrds: ["debian/initrd.gz"], args: "console=ttyS0", vars: { release: "bookworm" } } },
    machines: [
      { name: "web-1", match: { mac: "52:54:00:12:34:56" }, profile: "debian", vars: { role } },
      { name: "loopback", match: { ip: "127.0.0.1" }, profile: "debian", vars: { role: "local" } },
      { name: "by-uuid", match: { uuid: "4c4c4544-0042-3010" }, profile: "debian", vars: { role: "uuid" } },
    ],
  });

const MACHINE_TEMPLATE = `#!ipxe
# {{ machine.name }} ({{ machine.role }}), {{ client.mac | default: "no mac" }}
kernel {{ server.http_base }}/{{ profile.kernel }} {{ profile.args }} release={{ profile.release }}
{% for initrd in profile.initrds %}initrd {{ server.http_base }}/{{ initrd }}
{% endfor %}boot
`;

beforeAll(async () => {
  dir = tempDir("tftpd-generated-");
  const root = join(dir, "root");
  writeFile(root, "by-ip/10.9.9.8.ipxe", "#!ipxe\n# a file of the root\n");
  writeFile(dir, "inventory.json", inventory("web"));
  writeFile(dir, "templates/machine.ipxe.liquid", MACHINE_TEMPLATE);
  writeFile(dir, "templates/broken.liquid", "#!ipxe\nline two\n{{ machine.missing_var }}\n");
  const config = writeFile(
    dir,
    "tftpd.json",
    JSON.stringify({
      tftp: { root: "root", listen: ["127.0.0.1:0"] },
      http: { enabled: true, listen: ["127.0.0.1:0"] },
      generate: {
        inventory: "inventory.json",
        templates: "templates",
        http_base: "http://192.0.2.10",
        files: [
          { path: "ipxe/{mac}.ipxe", template: "machine.ipxe.liquid" },
          { path: "by-ip/{ip}.ipxe", template: "machine.ipxe.liquid" },
          { path: "broken/{mac}.ipxe", template: "broken.liquid" },
        ],
      },
    }),
  );
  server = await spawnServer(["--config", config, "--no-tune"]);
  base = `http://${server.logs.find((l) => l.msg === "http listening")!.address}`;
});

afterAll(async () => {
  await server?.stop();
  removeDir(dir);
});

async function httpGet(path: string): Promise<{ status: number; text: string }> {
  const r = await fetch(`${base}${path}`);
  return { status: r.status, text: await r.text() };
}

describe("generated files", () => {
  test("over HTTP: the script rendered for the MAC in the path, with the Host the client used", async () => {
    const r = await httpGet("/ipxe/52-54-00-12-34-56.ipxe");
    expect(r.status).toBe(200);
    const host = base.replace(/^http:\/\//, "");
    expect(r.text).toBe(
      `#!ipxe\n# web-1 (web), 52:54:00:12:34:56\nkernel http://${host}/debian/vmlinuz console=ttyS0 release=bookworm\ninitrd http://${host}/debian/initrd.gz\nboot\n`,
    );
  });

  test("over HTTP with iPXE's query string: the machine its uuid names", async () => {
    const r = await httpGet("/ipxe/00-00-00-00-00-01.ipxe?uuid=4C4C4544-0042-3010&arch=x86_64");
    expect(r.status).toBe(200);
    expect(r.text).toContain("(uuid)");
  });

  test("over TFTP: the same file, by the client's address, with generate.http_base", async () => {
    const out = join(dir, "by-ip.ipxe");
    const r = await run(["tftp", "-m", "binary", "127.0.0.1", String(server.port), "-c", "get", "by-ip/127.0.0.1.ipxe", out]);
    expect(r.exitCode).toBe(0);
    const text = readFileSync(out, "utf8");
    expect(text).toContain("# loopback (local), no mac");
    expect(text).toContain("kernel http://192.0.2.10/debian/vmlinuz");
    const line = await server.waitForLog((l) => l.msg === "transfer" && l.file === "by-ip/127.0.0.1.ipxe");
    expect(line).toMatchObject({ result: "ok", bytes: text.length });
  });

  test("a path no machine matches is the root's: its file if it has one, else 404", async () => {
    expect((await httpGet("/by-ip/10.9.9.8.ipxe")).text).toBe("#!ipxe\n# a file of the root\n");
    expect((await httpGet("/by-ip/10.9.9.9.ipxe")).status).toBe(404);
  });

  test("a template that fails: HTTP 500 and ERROR 0 over TFTP, one log line naming template and line, no body", async () => {
    const r = await httpGet("/broken/52-54-00-12-34-56.ipxe");
    expect(r.status).toBe(500);
    expect(r.text).not.toContain("line two");
    const line = await server.waitForLog((l) => l.msg === "request refused" && l.file === "broken/52-54-00-12-34-56.ipxe");
    expect(String(line.reason)).toBe("template error: broken.liquid:3: undefined variable: machine.missing_var");

    const tftp = await run(["tftp", "-m", "binary", "127.0.0.1", String(server.port), "-c", "get", "broken/52-54-00-12-34-56.ipxe", join(dir, "broken.out")]);
    expect(`${tftp.stdout}${tftp.stderr}`).toMatch(/Error code 0: template error: broken\.liquid:3/);
  });

  test("SIGHUP reads the inventory again; metrics count renders by template and result", async () => {
    writeFileSync(join(dir, "inventory.json"), inventory("database"));
    server.proc.kill("SIGHUP");
    await server.waitForLog((l) => l.msg === "config reloaded");
    expect((await httpGet("/ipxe/52-54-00-12-34-56.ipxe")).text).toContain("# web-1 (database)");

    const metrics = await (await fetch(`${server.metricsUrl}/metrics`)).text();
    expect(metrics).toMatch(/tftpd_generated_renders_total\{template="machine\.ipxe\.liquid",result="ok"\} [1-9]/);
    expect(metrics).toMatch(/tftpd_generated_renders_total\{template="broken\.liquid",result="error"\} [1-9]/);
  });

  test("SIGHUP with an inventory that does not parse changes nothing and says why", async () => {
    writeFileSync(join(dir, "inventory.json"), "{ broken");
    server.proc.kill("SIGHUP");
    const line = await server.waitForLog((l) => l.msg === "config file rejected");
    expect(JSON.stringify(line.errors)).toContain("inventory.json:1:");
    expect((await httpGet("/ipxe/52-54-00-12-34-56.ipxe")).text).toContain("# web-1 (database)");
  });
});

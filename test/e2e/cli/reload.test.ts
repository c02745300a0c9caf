/**
 * SIGHUP: `tftpd serve` reads its config file and remap rule file again. Keys that apply while
 * running (remap rules, limits, log level) change at once and are logged as "config reloaded";
 * the others are logged as needing a restart and left as they are; a file that does not load
 * changes nothing and says why. The server keeps running and serving throughout (SIGHUP used to
 * kill it).
 */
import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { run } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

setDefaultTimeout(60_000);

let dir = "";
let out = "";

beforeAll(() => {
  dir = tempDir("tftpd-reload-");
  out = tempDir("tftpd-reload-out-");
  writeFile(dir, "root/a.cfg", "menu a\n");
  writeFile(dir, "root/b.cfg", "menu b\n");
});

afterAll(() => {
  removeDir(dir);
  removeDir(out);
});

async function fetchText(port: number, name: string): Promise<string | null> {
  const dest = join(out, `${name}.${Date.now()}`);
  const r = await run(["curl", "-sS", "--max-time", "10", "-o", dest, `tftp://127.0.0.1:${port}/${name}`], { timeoutMs: 15_000 });
  return r.exitCode === 0 ? readFileSync(dest, "utf8") : null;
}

function writeConfig(config: unknown): void {
  writeFileSync(join(dir, "tftpd.json"), typeof config === "string" ? config : JSON.stringify(config));
}

test("SIGHUP reloads remap rules and limits at once, names what needs a restart, and keeps the running config when the file is bad", async () => {
  writeFile(dir, "remap.rules", "r ^menu\\.cfg$ a.cfg\n");
  const base = { tftp: { root: "root", remap: "remap.rules", listen: ["127.0.0.1:0"] }, limits: { max_connections_per_ip: 50 } };
  writeConfig(base);
  const server: ChildServer = await spawnServer(["--config", join(dir, "tftpd.json")]);
  try {
    expect(await fetchText(server.port, "menu.cfg")).toBe("menu a\n");

    // new rules in the same file, a reloadable limit, and a key that needs a restart
    writeFile(dir, "remap.rules", "r ^menu\\.cfg$ b.cfg\n");
    writeConfig({ ...base, tftp: { ...base.tftp, blksize_max: 1200 }, limits: { max_connections_per_ip: 60 } });
    server.proc.kill("SIGHUP");
    const reloaded = await server.waitForLog((l) => l.msg === "config reloaded" && l.signal === "SIGHUP");
    const keys = (reloaded.changes as { key: string }[]).map((c) => c.key).sort();
    expect(keys).toEqual(["limits.max_connections_per_ip", "tftp.remap"]);
    expect(reloaded.remap_rules).toBe(1);
    const restart = await server.waitForLog((l) => l.msg === "config change needs a restart" && l.signal === "SIGHUP");
    expect(restart.changes).toEqual([{ key: "tftp.blksize_max", from: 1468, to: 1200 }]);
    expect(await fetchText(server.port, "menu.cfg")).toBe("menu b\n");

    // a file that does not load: one line with the reason, and the running config stays
    writeConfig('{"tftp": {"root": "root",}');
    server.proc.kill("SIGHUP");
    const rejected = await server.waitForLog((l) => l.msg === "config file rejected");
    expect(rejected.errors).toHaveLength(1);
    expect(String((rejected.errors as string[])[0])).toContain("invalid JSON");
    // and a remap file that does not parse
    writeConfig({ ...base, tftp: { ...base.tftp, blksize_max: 1200 }, limits: { max_connections_per_ip: 60 } });
    writeFile(dir, "remap.rules", "r ^menu\\.cfg$ a.cfg\nnonsense\n");
    server.proc.kill("SIGHUP");
    const badRules = await server.waitForLog((l) => l.msg === "config file rejected" && String((l.errors as string[])[0]).startsWith("tftp.remap:"));
    expect(String((badRules.errors as string[])[0])).toContain("remap.rules:2");
    expect(await fetchText(server.port, "menu.cfg")).toBe("menu b\n");

    expect(server.proc.exitCode).toBeNull();
    expect(server.logs.filter((l) => l.msg === "stopping")).toEqual([]);
  } finally {
    expect(await server.stop()).toBe(0);
  }
});

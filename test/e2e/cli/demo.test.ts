/**
 * `npm start` as a newcomer runs it: `bun src/main.ts serve --config demo/tftpd.json --user $(id -u)`
 * from the repository root serves demo/root on 127.0.0.1:6969 and tells them how to fetch a file
 * with curl. The demo runs as whoever starts it (root stays root): a checkout may sit where no
 * other user can read it, and an unprivileged port needs no privilege to drop.
 */
import { expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { removeDir, tempDir } from "../../helpers/files.ts";
import { run } from "../../helpers/run.ts";

const REPO = new URL("../../../", import.meta.url).pathname;
const DEMO_PORT = 6969;
const DEMO_HTTP_PORT = 8080;

/** Whether UDP 127.0.0.1:PORT can be bound right now. */
async function portFree(port: number): Promise<boolean> {
  try {
    const s = await Bun.udpSocket({ hostname: "127.0.0.1", port });
    s.close();
    return true;
  } catch {
    return false;
  }
}

test("npm start: serves demo/root/hello.txt on 127.0.0.1:6969 to curl and prints the curl hint", async () => {
  const pkg = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { scripts: Record<string, string> };
  const start = pkg.scripts.start ?? "";
  expect(start).toBe("bun src/main.ts serve --config demo/tftpd.json --user $(id -u)");
  if (!(await portFree(DEMO_PORT))) {
    throw new Error(`UDP port 127.0.0.1:${DEMO_PORT} is busy (another tftpd or npm start?): stop it and rerun this test`);
  }

  // as npm runs a script: through sh, with the project's node_modules/.bin first on the PATH
  const PATH = `${join(REPO, "node_modules/.bin")}:${process.env.PATH ?? ""}`;
  const proc = Bun.spawn(["sh", "-c", `exec ${start}`], { cwd: REPO, stdin: "ignore", stdout: "pipe", stderr: "pipe", env: { ...process.env, PATH, TFTPD_CONFIG: undefined } });
  const out = tempDir("tftpd-demo-");
  let stdout = "";
  const reader = (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of proc.stdout) stdout += decoder.decode(chunk, { stream: true });
  })();
  const waitFor = async (pattern: RegExp, timeoutMs: number): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (!pattern.test(stdout)) {
      if (proc.exitCode !== null) throw new Error(`npm start exited ${proc.exitCode}: ${await new Response(proc.stderr).text()}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${pattern}; stdout so far: ${stdout}`);
      await Bun.sleep(10);
    }
  };
  let served = false;
  try {
    await waitFor(/"msg":"ready/, 10_000);
    const logs = stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(logs.filter((l) => l.msg === "listening").map((l) => l.address)).toEqual([`127.0.0.1:${DEMO_PORT}`]);
    const ready = logs.find((l) => String(l.msg).startsWith("ready"))!;
    // The hint is a command to paste: `curl -o NAME tftp://127.0.0.1:6969/NAME`, NAME either the
    // placeholder FILE or a file that really is in the demo root.
    const hint = /curl -o (\S+) tftp:\/\/127\.0\.0\.1:6969\/(\S+)/.exec(String(ready.msg));
    expect(hint).not.toBeNull();
    const named = hint![2]!;
    if (named !== "FILE") expect(existsSync(join(REPO, "demo/root", named))).toBe(true);
    expect(ready.root).toBe(join(REPO, "demo/root"));

    const dest = join(out, "hello.txt");
    const r = await run(["curl", "-sS", "--max-time", "10", "-o", dest, `tftp://127.0.0.1:${DEMO_PORT}/hello.txt`], { timeoutMs: 15_000 });
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    expect(readFileSync(dest, "utf8")).toBe(readFileSync(join(REPO, "demo/root/hello.txt"), "utf8"));
    await waitFor(/"msg":"transfer"/, 5_000);

    // the same root over HTTP, on the demo's port 8080
    expect(logs.filter((l) => l.msg === "http listening").map((l) => l.address)).toEqual([`127.0.0.1:${DEMO_HTTP_PORT}`]);
    const overHttp = await fetch(`http://127.0.0.1:${DEMO_HTTP_PORT}/hello.txt`);
    expect(overHttp.status).toBe(200);
    expect(await overHttp.text()).toBe(readFileSync(join(REPO, "demo/root/hello.txt"), "utf8"));
    served = true;
  } finally {
    if (proc.exitCode === null) proc.kill("SIGTERM");
    const code = await Promise.race([proc.exited, Bun.sleep(5_000).then(() => null)]);
    if (code === null) proc.kill("SIGKILL");
    await reader;
    removeDir(out);
    // (after a failure above, that failure is the one reported: it says why the server stopped)
    if (served) expect(code).toBe(0);
  }
}, 30_000);

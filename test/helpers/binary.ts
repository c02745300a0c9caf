/**
 * The compiled binary, for tests of what ships (installer, systemd unit): built once per test
 * run from the current source into a temporary folder (`build/compile.ts --no-cross`), so a
 * fresh clone needs no `npm run build` before `npm test`.
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BUN } from "./run.ts";

const REPO = new URL("../../", import.meta.url).pathname;
let built: Promise<string> | null = null;

export function compiledBinary(): Promise<string> {
  built ??= (async () => {
    const outdir = mkdtempSync(join(tmpdir(), "tftpd-test-build-"));
    const proc = Bun.spawn([BUN, "build/compile.ts", "--outdir", outdir, "--no-cross"], {
      cwd: REPO,
      stdout: "pipe",
      stderr: "pipe",
    });
    const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    if (code !== 0) throw new Error(`build failed (exit ${code}): ${stderr || stdout}`);
    return join(outdir, "tftpd");
  })();
  return built;
}

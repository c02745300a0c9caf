/**
 * The benchmarks' load generators written in C (build/NAME.c), compiled with cc -O2 into
 * .bench/NAME when the binary is missing or older than its source.
 */
import { existsSync, mkdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";

const REPO = new URL("../", import.meta.url).pathname;

/** The path of .bench/NAME, compiled from build/NAME.c first if needed; throws one line when cc fails. */
export function compiledC(name: string): string {
  const source = join(REPO, "build", `${name}.c`);
  const binary = join(REPO, ".bench", name);
  if (!existsSync(binary) || statSync(binary).mtimeMs < statSync(source).mtimeMs) {
    mkdirSync(dirname(binary), { recursive: true });
    const r = Bun.spawnSync(["cc", "-O2", "-o", binary, source], { stdout: "pipe", stderr: "pipe" });
    if (r.exitCode !== 0 || !existsSync(binary)) throw new Error(`cc build/${name}.c failed (apt-get install gcc): ${r.stderr.toString().trim()}`);
  }
  return binary;
}

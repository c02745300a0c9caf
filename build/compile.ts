/**
 * `npm run build`: one self-contained executable, dist/tftpd, from src/main.ts.
 * The transfer worker's entry file must be listed in ENTRYPOINTS, or it is missing from the
 * binary and `new Worker(...)` fails at run time.
 */
import { mkdirSync } from "node:fs";

const ENTRYPOINTS = ["src/main.ts", "src/server/worker.ts"];
const OUTFILE = "dist/tftpd";

function gitCommit(): string {
  const out = Bun.spawnSync(["git", "rev-parse", "--short=12", "HEAD"], { stdout: "pipe", stderr: "ignore" });
  return out.exitCode === 0 ? out.stdout.toString().trim() : "unknown";
}

mkdirSync("dist", { recursive: true });
const commit = gitCommit();
const build = Bun.spawnSync(
  [
    process.execPath, "build", "--compile", "--minify", "--target=bun",
    `--define=TFTPD_BUILD_COMMIT=${JSON.stringify(commit)}`,
    ...ENTRYPOINTS, "--outfile", OUTFILE,
  ],
  { stdout: "inherit", stderr: "inherit" },
);
if (build.exitCode !== 0) process.exit(build.exitCode ?? 1);
console.log(`built ${OUTFILE} (commit ${commit})`);

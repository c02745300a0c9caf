/**
 * A short fuzzing run (build/fuzz.ts): 20,000 hostile datagrams to a live server's listen port
 * and to the ports of running transfers, with liveness probes between batches, the canary
 * next to the root watched, and the uploads audited. The server runs from source (`--source`):
 * a dist/tftpd lying around may be older than the code under test; the long run against the
 * compiled binary is `bun build/fuzz.ts`.
 */
import { expect, test } from "bun:test";
import { resolve } from "node:path";
import { BUN, run } from "../helpers/run.ts";

const SCRIPT = resolve(import.meta.dir, "../../build/fuzz.ts");
const DATAGRAMS = 20_000;

test(`${DATAGRAMS} fuzzed datagrams: no crash, hang, failed probe or read outside the root, and memory back in bounds`, async () => {
  // A run this short is mostly the server's own warm-up (JIT, caches): its RSS bound is loose;
  // the long run holds it to 10 %.
  const args = ["--datagrams", String(DATAGRAMS), "--source", "--max-seconds", "60", "--rss-slack", "100"];
  const result = await run([BUN, SCRIPT, ...args], { timeoutMs: 110_000 });
  const lines = result.stdout.trim().split("\n");
  const last = lines.at(-1) ?? "";
  // the script's own account of what went wrong, for the failure message
  if (result.exitCode !== 0) console.error(result.stderr);
  expect(result.timedOut).toBe(false);
  expect(last).toMatch(
    new RegExp(`^fuzz: ${DATAGRAMS} datagrams, crashes 0, hangs 0, probe failures 0, outside-root reads 0, rss start/end \\d+\\.\\d/\\d+\\.\\d MiB$`),
  );
  expect(result.exitCode).toBe(0);
}, 120_000);

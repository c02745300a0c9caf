/**
 * One version, whole, or an ERROR: a 40 MiB file is rewritten in place, truncated, renamed
 * over and deleted while five downloads stand held at points early, midway and late in it
 * (pausing-client.ts), ten rounds per server, on one transfer engine and on two worker
 * threads. Cold rounds change a version nobody has read yet (its first readers read the disk
 * while the cached copy is being made), warm rounds one already cached. Each client must hold
 * exactly one version — the one there when it asked, or for a request made after the change
 * the new one — or have been told ERROR; a transfer the server logged `ok` must hold a whole
 * version.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { ErrorCode } from "../../../src/protocol/packet.ts";
import { removeDir, tempDir } from "../../helpers/files.ts";
import {
  addTo,
  emptyTally,
  formatTable,
  roundPlans,
  runRound,
  versionPool,
  violation,
  type Outcome,
  type RoundPlan,
  type Tally,
  type Version,
} from "../../helpers/integrity.ts";
import { startServer } from "../../helpers/server.ts";

setDefaultTimeout(60_000);

const MiB = 1 << 20;
const SIZE = 40 * MiB;
const ROUNDS = 10;
const CONCURRENT = 5;

let pool: Version[];
beforeAll(() => {
  // three versions, so a round's old and new always differ from the round before's
  pool = versionPool(SIZE, 3);
});

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs.splice(0)) removeDir(d);
});

describe.each([1, 2])("workers %d", (workers) => {
  test(`${ROUNDS} rounds of ${CONCURRENT} held downloads of a 40 MiB file: each gets one version whole or an ERROR`, async () => {
    const root = tempDir("tftpd-integrity-");
    dirs.push(root);
    const server = await startServer(root, {
      workers,
      // both versions of the file fit, as with the default 1 GiB
      cacheBytes: 256 * MiB,
      // a held client stays silent this long at most; the server waits for it
      timeoutMs: 500,
      retries: 5,
    });
    const rows: [string, Tally][] = [];
    const problems: string[] = [];
    const total = emptyTally();
    try {
      const plans = roundPlans(ROUNDS, CONCURRENT, 1);
      for (const [r, plan] of plans.entries()) {
        const old = pool[r % pool.length]!;
        const replacement = pool[(r + 1) % pool.length]!;
        // records of earlier rounds may name the same client port
        const recordsFrom = server.records.length;
        const outcomes = await runRound(
          {
            host: server.host,
            port: server.port,
            root,
            file: "boot.img",
            blksize: 8192,
            windowsize: 16,
            timeoutMs: 20_000,
            serverResult: async (client, began) => {
              if (!began) return null; // refused at the request: no transfer record
              const deadline = performance.now() + 3000;
              for (;;) {
                const hit = server.records.slice(recordsFrom).find((x) => x.client === client);
                if (hit || performance.now() > deadline) return hit?.result ?? null;
                await Bun.sleep(10);
              }
            },
          },
          plan,
          old,
          replacement,
        );
        const label = `${r + 1} ${plan.kind} ${plan.cache} ${plan.trigger}`;
        rows.push([label, addTo(emptyTally(), outcomes)]);
        addTo(total, outcomes);
        problems.push(...check(label, plan, outcomes));
      }
    } finally {
      await server.stop();
    }
    rows.push(["total", total]);
    console.log(`\nworkers ${workers}: 40 MiB, ${CONCURRENT} held + 1 later download per round\n${formatTable(rows, "round")}\n`);
    expect(total.old + total.new + total.error + total.corrupt + total.stale).toBe(ROUNDS * (CONCURRENT + 1));
    expect(problems).toEqual([]);
  });
});

/** What must hold in one round, beyond "one version whole or an ERROR". */
function check(label: string, plan: RoundPlan, outcomes: Outcome[]): string[] {
  const problems: string[] = [];
  for (const o of outcomes) {
    const broken = violation(o);
    if (broken) problems.push(`${label}: ${o.asked} download held at ${o.pauseAt}: ${broken}`);
  }
  // A request made after the change finds the file as the change left it.
  for (const o of outcomes.filter((x) => x.asked === "after")) {
    if (plan.kind === "delete") {
      if (o.verdict !== "error" || !o.error?.includes(`ERROR ${ErrorCode.FILE_NOT_FOUND} `)) {
        problems.push(`${label}: a request after the delete got ${o.verdict} (${o.error ?? o.provenance}), not ERROR 1`);
      }
    } else if (o.verdict !== "new") {
      problems.push(`${label}: a request after the change got ${o.verdict} (${o.error ?? o.provenance}), not the new version`);
    }
  }
  // The round tested what it says: downloads really stood still while the file changed.
  const held = outcomes.filter((x) => x.asked === "before" && x.wasPaused).length;
  if (plan.trigger === "all-paused" ? held !== plan.pauseFractions.length : held === 0) {
    problems.push(`${label}: only ${held} of ${plan.pauseFractions.length} downloads were held while the file changed`);
  }
  return problems;
}

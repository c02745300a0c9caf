/**
 * The request rate per source address on the real server (in-process, raw datagrams): new
 * limits apply to the next request (a config pushed to the fleet), and what was dropped is
 * summed up to the events, at the latest when the server stops.
 */
import { afterAll, afterEach, beforeAll, expect, test } from "bun:test";
import { TftpServer } from "../../../src/server/server.ts";
import type { RefusalRecord } from "../../../src/server/refusal-record.ts";
import type { RateLimitSummary } from "../../../src/server/request-rate.ts";
import { removeDir, tempDir } from "../../helpers/files.ts";
import { peerTracker, rrq } from "../../helpers/raw.ts";
import { defaultOptions } from "../../helpers/server.ts";

let root: string;
const peers = peerTracker();

beforeAll(() => {
  root = tempDir("tftpd-rate-root-");
});
afterEach(() => peers.closeAll());
afterAll(() => removeDir(root));

async function rateLimitedServer(perSecond: number, burst: number) {
  const refused: RefusalRecord[] = [];
  const summaries: (RateLimitSummary & { intervalMs: number })[] = [];
  const options = defaultOptions(root);
  const server = new TftpServer(
    { ...options, limits: { ...options.limits, requestRate: { perSecond, burst } } },
    { events: { refused: (r) => refused.push(r), rateLimited: (s) => summaries.push(s) } },
  );
  await server.start();
  return { server, port: server.addresses[0]!.port, refused, summaries };
}

/** Sends `n` requests for missing files and counts the ERRORs that come back. */
async function answered(port: number, n: number, tag: string): Promise<number> {
  const p = await peers.open();
  for (let i = 0; i < n; i++) p.send(rrq(`${tag}-${i}`), port);
  return (await p.collect(400)).length;
}

test("over the burst requests are dropped; raising the limits (reconfigure) applies to the next request; stop reports the drops", async () => {
  const s = await rateLimitedServer(1, 3);
  try {
    expect(await answered(s.port, 10, "a")).toBe(3);
    expect(s.server.requestsRateLimited).toBe(7);
    expect(s.refused.map((r) => r.kind)).toEqual(["not_found", "not_found", "not_found"]);

    s.server.reconfigure({ limits: { ...defaultOptions(root).limits, requestRate: { perSecond: 0, burst: 1 } } });
    expect(await answered(s.port, 10, "b")).toBe(10);
    expect(s.server.requestsRateLimited).toBe(7);
  } finally {
    await s.server.stop();
  }
  expect(s.summaries).toEqual([{ sources: [{ address: "127.0.0.1", dropped: 7 }], unreported: 0, intervalMs: 10_000 }]);
});

test("without limits.requestRate nothing is rate-limited", async () => {
  const options = defaultOptions(root);
  const server = new TftpServer(options);
  await server.start();
  try {
    expect(await answered(server.addresses[0]!.port, 50, "c")).toBe(50);
    expect(server.requestsRateLimited).toBe(0);
  } finally {
    await server.stop();
  }
});

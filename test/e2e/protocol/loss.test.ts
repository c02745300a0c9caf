/**
 * Loss injection (options.loss) against real clients: a DATA lost inside a window (RFC 7440
 * §4 rewind, atftp), lost ACKs (curl), a lost OACK, and a block that never gets through
 * (give-up). Real clients run through the async `run` helper so the in-process server answers.
 */
import { afterAll, afterEach, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { LossPlan } from "../../../src/server/loss.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { ack, peerTracker, recordWhere, rrq, waitFor } from "../../helpers/raw.ts";
import { run, tftpd } from "../../helpers/run.ts";
import type { BenchResult } from "../../../src/bench/tally.ts";
import type { TransferRecord } from "../../../src/server/server.ts";
import { startServer, type InProcessServer } from "../../helpers/server.ts";

const peers = peerTracker();
afterEach(() => peers.closeAll());

setDefaultTimeout(60_000);

const SIZE = 300_000;
const file = patternBytes(SIZE, 71);
let root: string;
let out: string;
const servers: InProcessServer[] = [];

beforeAll(() => {
  root = tempDir();
  out = tempDir("tftpd-out-");
  writeFile(root, "kernel.img", file);
});
afterEach(async () => {
  for (const s of servers.splice(0)) await s.stop();
});
afterAll(() => {
  removeDir(root);
  removeDir(out);
});

async function lossyServer(spec: string, options: Parameters<typeof startServer>[1] = {}): Promise<InProcessServer> {
  const srv = await startServer(root, { loss: LossPlan.parse(spec), timeoutMs: 200, ...options });
  servers.push(srv);
  return srv;
}

function outputHash(name: string): string {
  return sha256(readFileSync(join(out, name)));
}

describe("a DATA lost inside a window: atftp rewinds the window", () => {
  test("out:data:3 and out:data:20 with blksize 1468 windowsize 8 → byte-exact, retransmits counted", async () => {
    const srv = await lossyServer("out:data:3,out:data:20", { timeoutMs: 1000 });
    const target = join(out, "atftp.bin");
    const r = await run(
      ["atftp", "--get", "-r", "kernel.img", "-l", target, "--option", "blksize 1468", "--option", "windowsize 8", "127.0.0.1", String(srv.port)],
      { timeoutMs: 15_000 },
    );
    expect(r.timedOut).toBe(false);
    expect(r.exitCode).toBe(0);
    expect(outputHash("atftp.bin")).toBe(sha256(file));
    const record = await recordWhere(srv, (rec) => rec.file === "kernel.img");
    expect(record.result).toBe("ok");
    expect(record.blksize).toBe(1468);
    expect(record.windowsize).toBe(8);
    expect(record.retransmits).toBeGreaterThan(0);
    // the rewind came from atftp's ACK inside the window, not from the 1 s timer
    expect(record.durationMs).toBeLessThan(1000);
  });

  test("a lost OACK: atftp asks again and carries on, though its 5 s outlasted the unanswered transfer", async () => {
    const srv = await lossyServer("out:oack");
    const r = await run(
      ["atftp", "--get", "-r", "kernel.img", "-l", join(out, "oack.bin"), "--option", "blksize 1468", "127.0.0.1", String(srv.port)],
      { timeoutMs: 15_000 },
    );
    expect(r.exitCode).toBe(0);
    expect(outputHash("oack.bin")).toBe(sha256(file));
    const served = await recordWhere(srv, (rec) => rec.file === "kernel.img" && rec.result === "ok");
    expect(served.bytes).toBe(SIZE);
    // the first transfer, whose OACK was lost, ended silently after timeout × (retries + 1):
    // nothing was sent again on its timer; atftp's repeated request started the one served
    expect(srv.records.filter((rec) => rec !== served).map((rec) => [rec.result, rec.retransmits, rec.error])).toEqual([["timeout", 0, undefined]]);
  });
});

describe("lost ACKs: curl still completes", () => {
  test("in:ack:2*2 and in:ack:300, no options (server timer, with backoff)", async () => {
    const srv = await lossyServer("in:ack:2*2,in:ack:300");
    const r = await run(
      ["curl", "-sS", "--tftp-no-options", "-o", join(out, "curl1.bin"), `tftp://127.0.0.1:${srv.port}/kernel.img`],
      { timeoutMs: 15_000 },
    );
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    expect(outputHash("curl1.bin")).toBe(sha256(file));
    const record = await recordWhere(srv, (rec) => rec.file === "kernel.img");
    expect(record.result).toBe("ok");
    expect(record.retransmits).toBe(3);
  });

  test("in:ack:5 with curl's own options (tsize, blksize, timeout 1)", async () => {
    const srv = await lossyServer("in:ack:5");
    // curl derives its timeout option from the connect timeout: 5 s / 50 tries → timeout 1
    const r = await run(
      ["curl", "-sS", "--connect-timeout", "5", "-o", join(out, "curl2.bin"), `tftp://127.0.0.1:${srv.port}/kernel.img`],
      { timeoutMs: 15_000 },
    );
    expect(r.exitCode).toBe(0);
    expect(outputHash("curl2.bin")).toBe(sha256(file));
    const record = await recordWhere(srv, (rec) => rec.file === "kernel.img");
    expect(record.result).toBe("ok");
    expect(record.options).toContain("timeout");
    expect(record.retransmits).toBeGreaterThan(0);
  });
});

describe("a block that never gets through", () => {
  test("out:data:2*all → the server gives up with result timeout and frees the slot", async () => {
    const srv = await lossyServer("out:data:2*all", { timeoutMs: 100, retries: 3 });
    const peer = await peers.open();
    peer.send(rrq("kernel.img"), srv.port, "127.0.0.1");
    const d1 = await peer.nextData(1);
    peer.send(ack(1), d1.port, "127.0.0.1");
    // DATA 2 and every retransmission of it is dropped: silence until the give-up
    await peer.expectNothing(1300);
    const record = await recordWhere(srv, (rec) => rec.client === `127.0.0.1:${peer.port}`);
    expect(record.result).toBe("timeout");
    expect(record.retransmits).toBe(3);
    expect(record.bytes).toBe(512);
    await waitFor(() => srv.server.activeTransfers === 0, 1000, "the slot to be freed");
  });

  test("curl against out:data:2*all fails instead of hanging, and the server frees the slot", async () => {
    const srv = await lossyServer("out:data:2*all", { timeoutMs: 100, retries: 3 });
    const r = await run(
      ["curl", "-sS", "--tftp-no-options", "--max-time", "4", "-o", join(out, "never.bin"), `tftp://127.0.0.1:${srv.port}/kernel.img`],
      { timeoutMs: 10_000 },
    );
    expect(r.exitCode).not.toBe(0);
    const record = await recordWhere(srv, (rec) => rec.file === "kernel.img", 3000);
    expect(record.result).toBe("timeout");
    expect(srv.server.activeTransfers).toBe(0);
  });
});

describe("random loss both ways", () => {
  // Before the client's first answer the server sends one datagram per request and nothing on a
  // timer (no reflection amplifier), so a lost request, DATA 1 or ACK 1 is recovered by the
  // client's own repeats: with 20 % loss each way one try fails 36 % of the time, and 6 tries
  // would leave about one transfer in 200 failing; 9 tries leave one in 10,000.
  test("20 % loss each way, 200 downloads at concurrency 50 by clients retrying 8 × 1 s: at least 199 complete, no request resent taken for a failure", async () => {
    const small = patternBytes(32 * 1024, 72);
    writeFile(root, "small.img", small);
    writeFile(out, "small.img", small);
    // the server's defaults (timeout 1 s, 5 retries); the listener's requests are lost too
    const srv = await lossyServer("in:any%20,out:any%20,seed=3", { timeoutMs: 1000, retries: 5, transferSockets: "shared" });
    const r = await tftpd(
      [
        "bench", `127.0.0.1:${srv.port}`, "--concurrency", "50", "--total", "200", "--file", "small.img",
        "--blksize", "1468", "--retries", "8", "--no-backoff", "--verify", join(out, "small.img"), "--json",
      ],
      { timeoutMs: 55_000 },
    );
    expect(r.timedOut).toBe(false);
    const result = JSON.parse(r.stdout) as BenchResult;
    expect(result.requested).toBe(200);
    expect(result.completed).toBeGreaterThanOrEqual(199);
    // retransmitted requests started no second transfer, and none was taken for a failure
    expect(srv.records.filter((rec) => rec.error?.message.includes("superseded"))).toEqual([]);
    // The server's other ends are on the final block: the bench moves on right after its final
    // ACK (no dally), so when that ACK is lost the server cannot tell. Its transfer then times
    // out, or, when the client's next download asks from the same port, is superseded.
    const finalBlockBytes = Math.floor(small.length / 1468) * 1468;
    const lostFinalAck = (rec: TransferRecord): boolean => (rec.result === "timeout" || rec.result === "superseded") && rec.bytes === finalBlockBytes;
    const otherEnds = srv.records.filter((rec) => rec.result !== "ok" && !lostFinalAck(rec));
    // (as a list, so a failure shows the records that were not explained)
    expect(otherEnds.slice(200 - result.completed)).toEqual([]);
  });
});

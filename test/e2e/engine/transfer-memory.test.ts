/**
 * What transfers hold, through real servers on loopback. Windowed reads build their packets in
 * the thread's shared send arena: concurrent windowed downloads over a shared transfer socket
 * stay byte-exact while the arena laps many times. The memory budget (limits.max_transfer_memory)
 * admits transfers while their reservations fit and refuses the next one like the other limits
 * (ERROR "busy: memory …" or a drop), counts it under limit="memory", admits again when one ends,
 * follows a new budget without a restart, and counts a netascii read's own converted copy.
 */
import { afterAll, afterEach, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { parsePrometheus, type Sample } from "../../../src/ops/summary.ts";
import { ErrorCode } from "../../../src/protocol/packet.ts";
import { TRANSFER_MEMORY_BYTES } from "../../../src/server/admission.ts";
import { threadSendArena } from "../../../src/server/send-arena.ts";
import type { ServerOptions } from "../../../src/server/server.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { ack, concat, download, error, peerTracker, recordWhere, rrq, waitFor, type RawPeer } from "../../helpers/raw.ts";
import { defaultOptions, spawnServer, startServer, type ChildServer, type InProcessServer } from "../../helpers/server.ts";

setDefaultTimeout(30_000);

const T = TRANSFER_MEMORY_BYTES;
const MiB = 1 << 20;
/** what PXE firmware asks for: a full Ethernet frame per block, a window, the size */
const WINDOWED: [string, string][] = [["blksize", "1468"], ["windowsize", "64"], ["tsize", "0"]];

const peers = peerTracker();
const servers: InProcessServer[] = [];
let root = "";
const content = new Map<string, Uint8Array>();

beforeAll(() => {
  root = tempDir("tftpd-transfer-memory-");
  for (let i = 0; i < 6; i++) {
    const bytes = patternBytes(2 * MiB + i * 977, 40 + i);
    writeFile(root, `f${i}.img`, bytes);
    content.set(`f${i}.img`, bytes);
  }
  // netascii: 1,000 lines, each LF sent as CR LF
  const text = "set timeout=5\n".repeat(1000);
  writeFile(root, "menu.cfg", text);
  content.set("menu.cfg", new TextEncoder().encode(text));
});

afterEach(async () => {
  peers.closeAll();
  for (const s of servers.splice(0)) await s.stop();
});

afterAll(() => removeDir(root));

async function serve(options: Partial<ServerOptions>): Promise<InProcessServer> {
  const s = await startServer(root, { transferSockets: "shared", timeoutMs: 5000, ...options });
  servers.push(s);
  return s;
}

function limits(over: Partial<ServerOptions["limits"]>): ServerOptions["limits"] {
  return { ...defaultOptions(root).limits, ...over };
}

/** A windowed RRQ answered with an OACK that is never acknowledged: a half-open transfer. */
async function halfOpen(port: number, name = "f0.img", mode = "octet"): Promise<{ peer: RawPeer; tid: { port: number; address: string } }> {
  const peer = await peers.open();
  peer.send(rrq(name, mode, mode === "octet" ? WINDOWED : [["blksize", "1468"]]), port, "127.0.0.1");
  const oack = await peer.nextOack();
  return { peer, tid: { port: oack.port, address: oack.address } };
}

describe("the send arena", () => {
  test("six concurrent windowed downloads over one shared socket are byte-exact while the arena laps", async () => {
    const s = await serve({});
    const lapsBefore = threadSendArena.laps;
    const names = [...content.keys()].filter((n) => n.endsWith(".img"));
    const results = await Promise.all(
      names.map(async (name) => download(await peers.open(), s.port, name, { host: "127.0.0.1", options: WINDOWED, timeoutMs: 5000 })),
    );
    for (const [i, r] of results.entries()) expect(sha256(r.bytes)).toBe(sha256(content.get(names[i]!)!));
    // 12 MiB through a 1 MiB arena
    expect(threadSendArena.laps - lapsBefore).toBeGreaterThanOrEqual(8);
  });
});

describe("the memory budget, in-process", () => {
  test('"drop": the transfer past the budget gets no answer; a larger budget (reconfigure) admits its retry', async () => {
    const s = await serve({ limits: limits({ maxMemory: 2 * T, onLimit: "drop" }) });
    await halfOpen(s.port, "f0.img");
    await halfOpen(s.port, "f1.img");
    expect(s.server.transferMemory).toEqual({ reserved: 2 * T, budget: 2 * T });
    const third = await peers.open();
    third.send(rrq("f2.img", "octet", WINDOWED), s.port, "127.0.0.1");
    await third.expectNothing(300);
    expect(s.server.activeTransfers).toBe(2);
    expect(s.server.transferMemory.reserved).toBe(2 * T);

    s.server.reconfigure({ limits: limits({ maxMemory: 3 * T, onLimit: "drop" }) });
    third.send(rrq("f2.img", "octet", WINDOWED), s.port, "127.0.0.1");
    await third.nextOack();
    expect(s.server.transferMemory).toEqual({ reserved: 3 * T, budget: 3 * T });
  });

  test("a lowered budget lets running transfers finish and refuses new ones until enough has ended", async () => {
    const s = await serve({ limits: limits({ maxMemory: 4 * T, onLimit: "busy" }) });
    const held = [await halfOpen(s.port, "f0.img"), await halfOpen(s.port, "f1.img"), await halfOpen(s.port, "f2.img")];
    s.server.reconfigure({ limits: limits({ maxMemory: 2 * T, onLimit: "busy" }) });
    const refused = await peers.open();
    refused.send(rrq("f3.img", "octet", WINDOWED), s.port, "127.0.0.1");
    expect((await refused.nextError(ErrorCode.NOT_DEFINED)).packet.message).toContain("memory");
    // one ends (the client says so): 2 x T reserved, the budget is full still
    held[0]!.peer.send(error(0, "done"), held[0]!.tid.port, held[0]!.tid.address);
    await waitFor(() => s.server.transferMemory.reserved === 2 * T, 2000, "one reservation given back");
    refused.send(rrq("f3.img", "octet", WINDOWED), s.port, "127.0.0.1");
    expect((await refused.nextError(ErrorCode.NOT_DEFINED)).packet.message).toContain("memory");
    held[1]!.peer.send(error(0, "done"), held[1]!.tid.port, held[1]!.tid.address);
    await waitFor(() => s.server.transferMemory.reserved === T, 2000, "a second reservation given back");
    const r = await download(refused, s.port, "f3.img", { host: "127.0.0.1", options: WINDOWED, timeoutMs: 5000 });
    expect(sha256(r.bytes)).toBe(sha256(content.get("f3.img")!));
    await waitFor(() => s.server.transferMemory.reserved === T, 2000, "the download's reservation given back");
  });

  test("a netascii read reserves its converted copy: refused when the copy would not fit, given back at its end", async () => {
    const text = content.get("menu.cfg")!;
    const converted = text.length + 1000; // every LF becomes CR LF
    // room for the transfer's state and its converted copy, not for the peak of making it
    const tight = await serve({ limits: limits({ maxMemory: T + converted, onLimit: "busy" }) });
    const peer = await peers.open();
    peer.send(rrq("menu.cfg", "netascii"), tight.port, "127.0.0.1");
    expect((await peer.nextError(ErrorCode.NOT_DEFINED)).packet.message).toContain("busy: memory");
    expect(tight.server.transferMemory.reserved).toBe(0);
    // the same file in octet mode holds no copy of its own
    const octet = await download(peer, tight.port, "menu.cfg", { host: "127.0.0.1" });
    expect(sha256(octet.bytes)).toBe(sha256(text));

    const roomy = await serve({ limits: limits({ maxMemory: T + 3 * text.length, onLimit: "busy" }) });
    const held = await peers.open();
    held.send(rrq("menu.cfg", "netascii"), roomy.port, "127.0.0.1");
    const first = await held.nextData(1);
    expect(roomy.server.transferMemory.reserved).toBe(T + converted);
    held.send(error(0, "done"), first.port, first.address);
    await recordWhere(roomy, (r) => r.file === "menu.cfg" && r.result === "client-error");
    expect(roomy.server.transferMemory.reserved).toBe(0);
  });
});

describe("the memory budget, configured (tftpd serve)", () => {
  let server: ChildServer;

  beforeAll(async () => {
    server = await spawnServer(["--root", root, "--listen", "127.0.0.1:0"], {
      env: {
        TFTPD_LIMITS_MAX_TRANSFER_MEMORY: "64Ki",
        TFTPD_LIMITS_ON_LIMIT: "busy",
        // the held transfers must not time out while the test looks at them
        TFTPD_TFTP_TIMEOUT: "30",
      },
    });
  });

  afterAll(async () => {
    await server?.stop("SIGKILL");
  });

  async function metrics(): Promise<Sample[]> {
    const response = await fetch(`${server.metricsUrl}/metrics`, { signal: AbortSignal.timeout(3000) });
    return parsePrometheus(await response.text());
  }

  function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
    return samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
  }

  test("64Ki holds eight transfers; the ninth is told busy and counted; when one ends the next is served", async () => {
    const budget = 64 * 1024;
    expect(budget / T).toBe(8);
    const held = [];
    for (let i = 0; i < 8; i++) held.push(await halfOpen(server.port, `f${i % 6}.img`));
    // the reservations are taken before the first packet leaves; a worker tells the main thread
    // (which keeps the transfer table) that a transfer started once that packet is out
    let m = await metrics();
    for (const deadline = performance.now() + 2000; value(m, "tftpd_active_transfers") !== 8 && performance.now() < deadline; ) {
      await Bun.sleep(20);
      m = await metrics();
    }
    expect(value(m, "tftpd_transfer_memory_bytes")).toBe(budget);
    expect(value(m, "tftpd_transfer_memory_budget_bytes")).toBe(budget);
    expect(value(m, "tftpd_active_transfers")).toBe(8);
    expect(value(m, "tftpd_admission_refusals_total", { limit: "memory" }) ?? 0).toBe(0);

    const ninth = await peers.open();
    ninth.send(rrq("f5.img", "octet", WINDOWED), server.port, "127.0.0.1");
    const busy = await ninth.nextError(ErrorCode.NOT_DEFINED);
    expect(busy.packet.message).toBe("busy: memory transfer limit reached");
    expect(busy.port).toBe(server.port); // from the listener: no transfer began
    m = await metrics();
    expect(value(m, "tftpd_admission_refusals_total", { limit: "memory" })).toBe(1);
    expect(value(m, "tftpd_transfer_memory_bytes")).toBe(budget);

    // the first one runs to its end: its reservation comes back
    const first = held[0]!;
    first.peer.send(ack(0), first.tid.port, first.tid.address);
    const chunks: Uint8Array[] = [];
    for (let block = 1; ; block++) {
      const r = await first.peer.nextData(block & 0xffff, 3000);
      chunks.push(r.packet.data);
      const last = r.packet.data.length < 1468;
      if (last || block % 64 === 0) first.peer.send(ack(block & 0xffff), first.tid.port, first.tid.address);
      if (last) break;
    }
    expect(sha256(concat(chunks))).toBe(sha256(content.get("f0.img")!));
    let reserved = budget;
    for (let i = 0; i < 100 && reserved === budget; i++) {
      await Bun.sleep(20);
      reserved = value(await metrics(), "tftpd_transfer_memory_bytes") ?? -1;
    }
    expect(reserved).toBe(budget - T);

    const r = await download(ninth, server.port, "f5.img", { host: "127.0.0.1", options: WINDOWED, timeoutMs: 5000 });
    expect(sha256(r.bytes)).toBe(sha256(content.get("f5.img")!));
    m = await metrics();
    expect(value(m, "tftpd_admission_refusals_total", { limit: "memory" })).toBe(1);
  });
});

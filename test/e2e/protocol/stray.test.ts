/**
 * Only the client's own valid packets steer its transfer. Datagrams injected mid-transfer from
 * the client's own address and port (the same socket its ACKs and DATA leave from) — a DATA to
 * a read, a 3-byte ACK, an unknown opcode, a request or an OACK to the transfer port, an ACK of
 * a block never sent, a DATA past the window or over the block size — are dropped and counted
 * by kind; every transfer completes byte-exact. A well-formed ERROR from the client still ends
 * its transfer (RFC 1350). The counts reach the metrics from worker threads too.
 */
import { afterAll, afterEach, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parsePrometheus } from "../../../src/ops/summary.ts";
import { Opcode } from "../../../src/protocol/packet.ts";
import type { ServerOptions } from "../../../src/server/server.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import {
  ack,
  concat,
  data,
  describeReceived,
  error,
  peerTracker,
  rawPacket,
  recordWhere,
  rrq,
  wrq,
  type Options,
  type RawPeer,
} from "../../helpers/raw.ts";
import { spawnServer, startServer, type InProcessServer } from "../../helpers/server.ts";

setDefaultTimeout(20_000);

const peers = peerTracker();
const servers: InProcessServer[] = [];
afterEach(async () => {
  peers.closeAll();
  for (const s of servers.splice(0)) await s.stop();
});

const FILE = patternBytes(1468 * 40 + 333, 21);
let root: string;
beforeAll(() => {
  root = tempDir();
  writeFile(root, "boot.img", FILE);
});
afterAll(() => removeDir(root));

/** The strays injected into a read, and how each must be counted. */
function readStrays(newestSent: number, payload: number): { bytes: Uint8Array; kind: string }[] {
  return [
    { bytes: data(newestSent, new Uint8Array(payload)), kind: "unexpected-opcode" },
    { bytes: Uint8Array.of(0, Opcode.ACK, 0), kind: "malformed" },
    { bytes: rawPacket(9, "junk"), kind: "malformed" },
    { bytes: rrq("boot.img"), kind: "unexpected-opcode" },
    { bytes: rawPacket(Opcode.OACK, "blksize\u0000512\u0000"), kind: "unexpected-opcode" },
    { bytes: ack((newestSent + 1000) & 0xffff), kind: "out-of-window" },
  ];
}

function tally(kinds: string[]): Record<string, number> {
  const counted: Record<string, number> = {};
  for (const kind of kinds) counted[kind] = (counted[kind] ?? 0) + 1;
  return counted;
}

/**
 * A download played by `peer`, ACKing the last block of every window (RFC 7440 when the OACK
 * grants a window). Before ACKing the window that ends at block `at`, `inject` sends its strays
 * from the same socket, and a request to the listen port too. Only DATA from the transfer's
 * port may arrive: an ERROR or anything else fails the test.
 */
async function downloadWithStrays(
  peer: RawPeer,
  listenPort: number,
  options: Options,
  at: number,
  inject: (tid: number, newestSent: number) => void,
): Promise<Uint8Array> {
  peer.send(rrq("boot.img", "octet", options), listenPort, "127.0.0.1");
  let first = await peer.next();
  const tid = first.port;
  let blksize = 512;
  let windowsize = 1;
  if (first.packet?.op === Opcode.OACK) {
    blksize = Number(first.packet.options.get("blksize") ?? 512);
    windowsize = Number(first.packet.options.get("windowsize") ?? 1);
    peer.send(ack(0), tid, "127.0.0.1");
    first = await peer.next();
  }
  const chunks: Uint8Array[] = [];
  for (let expected = 1, got = first; ; expected++, got = await peer.next()) {
    if (got.port !== tid || got.packet?.op !== Opcode.DATA || got.packet.block !== expected) {
      throw new Error(`expected DATA ${expected} from port ${tid}, got ${describeReceived(got)}`);
    }
    chunks.push(got.packet.data);
    const last = got.packet.data.length < blksize;
    if (expected === at) {
      inject(tid, expected);
      peer.send(rrq("boot.img", "octet", options), listenPort, "127.0.0.1");
      // none of them gets an answer: no ERROR, no DATA
      await peer.expectNothing(60);
    }
    if (last || expected % windowsize === 0) peer.send(ack(expected), tid, "127.0.0.1");
    if (last) return concat(chunks);
  }
}

const readModes: { label: string; server: Partial<ServerOptions>; options: Options; at: number }[] = [
  { label: "lock-step, one engine, shared socket", server: { workers: 1, transferSockets: "shared" }, options: [], at: 7 },
  { label: "lock-step, per-transfer socket", server: { workers: 1, transferSockets: "per-transfer" }, options: [["blksize", "1468"]], at: 3 },
  {
    label: "windowed, two workers, shared sockets",
    server: { workers: 2, transferSockets: "shared" },
    options: [["blksize", "1468"], ["windowsize", "8"]],
    at: 16,
  },
];

describe("a download with strays from the client's own port", () => {
  for (const mode of readModes) {
    test(`${mode.label}: each kind dropped and counted; byte-exact`, async () => {
      const server = await startServer(root, { timeoutMs: 1000, ...mode.server });
      servers.push(server);
      const peer = await peers.open();
      const kinds: string[] = [];
      const bytes = await downloadWithStrays(peer, server.port, mode.options, mode.at, (tid, newest) => {
        for (const stray of readStrays(newest, 16)) {
          peer.send(stray.bytes, tid, "127.0.0.1");
          kinds.push(stray.kind);
        }
      });
      expect(sha256(bytes)).toBe(sha256(FILE));
      const record = await recordWhere(server, (r) => r.client === `127.0.0.1:${peer.port}`);
      expect(record.result).toBe("ok");
      expect(record.strays).toEqual(tally([...kinds, "duplicate-request"]));
      expect(server.records).toHaveLength(1);
    });
  }

  test("a well-formed ERROR from the client still ends the transfer at once", async () => {
    const server = await startServer(root, { timeoutMs: 1000 });
    servers.push(server);
    const peer = await peers.open();
    peer.send(rrq("boot.img"), server.port, "127.0.0.1");
    const d1 = await peer.nextData(1);
    peer.send(rawPacket(9, "junk"), d1.port, "127.0.0.1");
    peer.send(error(0, "user cancelled"), d1.port, "127.0.0.1");
    const record = await recordWhere(server, (r) => r.client === `127.0.0.1:${peer.port}`, 2000);
    expect(record.result).toBe("client-error");
    expect(record.error).toEqual({ code: 0, message: "user cancelled", from: "client" });
    expect(record.strays).toEqual({ malformed: 1 });
    await peer.expectNothing(100);
  });
});

describe("an upload with strays from the client's own port", () => {
  test("each kind dropped and counted; the file lands byte-exact", async () => {
    const upRoot = tempDir();
    try {
      const server = await startServer(upRoot, { write: "create", timeoutMs: 1000 });
      servers.push(server);
      const peer = await peers.open();
      const content = patternBytes(512 * 12 + 100, 22);
      peer.send(wrq("up.img"), server.port, "127.0.0.1");
      const a0 = await peer.nextAck(0);
      const tid = a0.port;
      const blocks = Math.floor(content.length / 512) + 1;
      const kinds: string[] = [];
      for (let block = 1; block <= blocks; block++) {
        if (block === 6) {
          const strays: [Uint8Array, string][] = [
            [ack(5), "unexpected-opcode"],
            [Uint8Array.of(0, Opcode.DATA, 0), "malformed"],
            [rawPacket(9, "junk"), "malformed"],
            [wrq("up.img"), "unexpected-opcode"],
            [rawPacket(Opcode.OACK, "blksize\u0000512\u0000"), "unexpected-opcode"],
            // a block the client cannot have sent yet (past its window), and one over blksize
            [data(block + 1000, new Uint8Array(512)), "out-of-window"],
            [data(block, new Uint8Array(600)), "malformed"],
          ];
          for (const [bytes, kind] of strays) {
            peer.send(bytes, tid, "127.0.0.1");
            kinds.push(kind);
          }
          peer.send(wrq("up.img"), server.port, "127.0.0.1");
          kinds.push("duplicate-request");
          await peer.expectNothing(60);
        }
        peer.send(data(block, content.subarray((block - 1) * 512, Math.min(block * 512, content.length))), tid, "127.0.0.1");
        const got = await peer.next();
        if (got.port !== tid || got.packet?.op !== Opcode.ACK || got.packet.block !== block) {
          throw new Error(`expected ACK ${block}, got ${describeReceived(got)}`);
        }
      }
      const record = await recordWhere(server, (r) => r.file === "up.img");
      expect(record.result).toBe("ok");
      expect(record.strays).toEqual(tally(kinds));
      expect(sha256(readFileSync(join(upRoot, "up.img")))).toBe(sha256(content));
    } finally {
      removeDir(upRoot);
    }
  });

  test("a well-formed ERROR from the client ends the upload and leaves no file", async () => {
    const upRoot = tempDir();
    try {
      const server = await startServer(upRoot, { write: "create", timeoutMs: 1000 });
      servers.push(server);
      const peer = await peers.open();
      peer.send(wrq("gone.img"), server.port, "127.0.0.1");
      const a0 = await peer.nextAck(0);
      peer.send(data(1, new Uint8Array(512)), a0.port, "127.0.0.1");
      await peer.nextAck(1);
      peer.send(error(3, "disk full"), a0.port, "127.0.0.1");
      const record = await recordWhere(server, (r) => r.file === "gone.img");
      expect(record.result).toBe("client-error");
      expect(existsSync(join(upRoot, "gone.img"))).toBe(false);
    } finally {
      removeDir(upRoot);
    }
  });
});

test("tftpd serve with transfer workers: the stray counts reach tftpd_stray_datagrams_total", async () => {
  const child = await spawnServer(["--root", root, "--listen", "127.0.0.1:0", "--no-tune"], {
    env: { TFTPD_PERFORMANCE_CPU_WORKER_THREADS: "2" },
  });
  try {
    const peer = await peers.open();
    const kinds: string[] = [];
    const bytes = await downloadWithStrays(peer, child.port, [["blksize", "1468"]], 5, (tid, newest) => {
      for (const stray of readStrays(newest, 16)) {
        peer.send(stray.bytes, tid, "127.0.0.1");
        kinds.push(stray.kind);
      }
    });
    expect(sha256(bytes)).toBe(sha256(FILE));
    const line = await child.waitForLog((l) => l.msg === "transfer" && l.client === `127.0.0.1:${peer.port}`);
    expect(line.result).toBe("ok");
    const expected = tally([...kinds, "duplicate-request"]);
    expect(line.strays).toEqual(expected);
    const response = await fetch(`${child.metricsUrl}/metrics`, { signal: AbortSignal.timeout(3000) });
    const samples = parsePrometheus(await response.text()).filter((s) => s.name === "tftpd_stray_datagrams_total");
    const counted = Object.fromEntries(samples.map((s) => [s.labels.kind, s.value]));
    expect(counted).toEqual(expected);
  } finally {
    await child.stop();
  }
});

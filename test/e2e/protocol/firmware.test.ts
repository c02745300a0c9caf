/**
 * Request sequences of real network-boot firmware, replayed with the raw peer exactly as the
 * ROMs send them (captured from iPXE and UEFI EDK2 on real hardware).
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { Opcode } from "../../../src/protocol/packet.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { ack, concat, download, error, peerTracker, recordWhere, rrq, waitFor } from "../../helpers/raw.ts";
import { startServer, type InProcessServer } from "../../helpers/server.ts";

const peers = peerTracker();
afterEach(() => peers.closeAll());

const LOADER_SIZE = 1024 * 1024 + 17;
const loader = patternBytes(LOADER_SIZE, 41);
let root: string;
let srv: InProcessServer;

beforeAll(async () => {
  root = tempDir();
  writeFile(root, "boot/ipxe.efi", loader);
  srv = await startServer(root, { timeoutMs: 1000 });
});
afterAll(async () => {
  await srv.stop();
  removeDir(root);
});

describe("iPXE", () => {
  test("asks octet blksize 1432 tsize 0 and resends the request 6 times from one port: exactly one transfer", async () => {
    const peer = await peers.open();
    const request = rrq("boot/ipxe.efi", "octet", [
      ["blksize", "1432"],
      ["tsize", "0"],
    ]);
    for (let i = 0; i < 6; i++) peer.send(request, srv.port, "127.0.0.1");

    // well inside the server's 1 s retransmit timeout: every datagram here answers a request
    const answers = await peer.collect(300);
    expect(answers.length).toBe(1);
    const oack = answers[0]!;
    expect(oack.packet?.op).toBe(Opcode.OACK);
    if (oack.packet?.op !== Opcode.OACK) return;
    expect(Object.fromEntries(oack.packet.options)).toEqual({ blksize: "1432", tsize: String(LOADER_SIZE) });
    expect(oack.packet.options.has("windowsize")).toBe(false);

    // lock-step to the end, from the one transfer port
    peer.send(ack(0), oack.port, "127.0.0.1");
    const chunks: Uint8Array[] = [];
    for (let block = 1; ; block++) {
      const d = await peer.nextData(block);
      expect(d.port).toBe(oack.port);
      chunks.push(d.packet.data);
      peer.send(ack(block), oack.port, "127.0.0.1");
      if (d.packet.data.length < 1432) break;
    }
    expect(sha256(concat(chunks))).toBe(sha256(loader));

    const record = await recordWhere(srv, (r) => r.client === `127.0.0.1:${peer.port}`);
    expect(record.result).toBe("ok");
    expect(record.blksize).toBe(1432);
    await waitFor(() => srv.server.activeTransfers === 0, 1000, "no stray transfers");
    expect(srv.records.filter((r) => r.client === `127.0.0.1:${peer.port}`).length).toBe(1);
    await peer.expectNothing(200);
  });
});

describe("UEFI EDK2", () => {
  test("tsize probe answered with ERROR 8, then the real download from a new port with windowsize 4", async () => {
    // 1. the size probe: OACK must carry tsize, or the boot fails
    const probe = await peers.open();
    probe.send(
      rrq("boot/ipxe.efi", "octet", [
        ["tsize", "0"],
        ["blksize", "1468"],
        ["windowsize", "4"],
      ]),
      srv.port,
      "127.0.0.1",
    );
    const oack = await probe.nextOack();
    expect([...oack.packet.options]).toEqual([
      ["tsize", String(LOADER_SIZE)],
      ["blksize", "1468"],
      ["windowsize", "4"],
    ]);
    probe.send(error(8, "User aborted the transfer"), oack.port, "127.0.0.1");
    const probeRecord = await recordWhere(srv, (r) => r.client === `127.0.0.1:${probe.port}`);
    expect(probeRecord.result).toBe("probe");
    expect(probeRecord.error).toEqual({ code: 8, message: "User aborted the transfer", from: "client" });
    await probe.expectNothing(300);

    // 2. the download proper, from a new port, without tsize
    const client = await peers.open();
    expect(client.port).not.toBe(probe.port);
    client.send(
      rrq("boot/ipxe.efi", "octet", [
        ["blksize", "1468"],
        ["windowsize", "4"],
      ]),
      srv.port,
      "127.0.0.1",
    );
    const second = await client.nextOack();
    expect([...second.packet.options]).toEqual([
      ["blksize", "1468"],
      ["windowsize", "4"],
    ]);
    client.send(ack(0), second.port, "127.0.0.1");
    // the server sends windows of 4, the client acks the last of each
    const chunks: Uint8Array[] = [];
    for (let block = 1, done = false; !done; ) {
      for (let i = 0; i < 4; i++, block++) {
        const d = await client.nextData(block & 0xffff);
        chunks.push(d.packet.data);
        if (d.packet.data.length < 1468) {
          done = true;
          client.send(ack(block & 0xffff), second.port, "127.0.0.1");
          break;
        }
      }
      if (!done) {
        // nothing beyond the window before the ACK (checked on the first windows: it costs time)
        if (block <= 13) await client.expectNothing(50);
        client.send(ack((block - 1) & 0xffff), second.port, "127.0.0.1");
      }
    }
    expect(sha256(concat(chunks))).toBe(sha256(loader));
    const record = await recordWhere(srv, (r) => r.client === `127.0.0.1:${client.port}`);
    expect(record.result).toBe("ok");
    expect(record.windowsize).toBe(4);
    expect(record.retransmits).toBe(0);
  }, 20_000);

  test("the same download with the generic client helper (windowsize 4) is byte-exact", async () => {
    const got = await download(await peers.open(), srv.port, "boot/ipxe.efi", {
      options: [
        ["blksize", "1468"],
        ["windowsize", "4"],
      ],
    });
    expect(got.oack?.get("windowsize")).toBe("4");
    expect(sha256(got.bytes)).toBe(sha256(loader));
    expect(got.datagrams).toBe(Math.floor(LOADER_SIZE / 1468) + 1);
  });
});

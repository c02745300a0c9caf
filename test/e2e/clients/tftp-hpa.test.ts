/**
 * The tftp-hpa client (`tftp`) against the in-process server: binary gets and puts, netascii
 * (ascii mode) both ways, and a missing file.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { patternBytes, removeDir, sha256, sha256File, tempDir, writeFile } from "../../helpers/files.ts";
import { run } from "../../helpers/run.ts";
import { recordAfter, startServer, type InProcessServer } from "../../helpers/server.ts";

setDefaultTimeout(60_000);


/** `tftp -m MODE 127.0.0.1 PORT -c CMD...`, bounded. tftp-hpa retries for a long time on its own. */
function tftp(port: number, mode: "binary" | "ascii", command: string[]) {
  return run(["tftp", "-v", "-m", mode, "127.0.0.1", String(port), "-c", ...command], { timeoutMs: 30_000 });
}

/** Text with LF line ends, a bare CR and a NUL: every netascii escape (RFC 764) is exercised. */
const TEXT =
  Array.from({ length: 300 }, (_, i) => `line ${i}: kernel /vmlinuz initrd=/initrd.img console=ttyS0,115200`).join("\n") +
  "\nbare\rcarriage return, and a NUL \0 here\n";
const count = (text: string, c: string): number => text.split(c).length - 1;

let root: string;
let out: string;
let server: InProcessServer;

beforeAll(async () => {
  root = tempDir("tftpd-hpa-root-");
  out = tempDir("tftpd-hpa-out-");
  writeFile(root, "boot/text.cfg", TEXT);
  writeFile(root, "uploads/.keep", ""); // uploads need an existing directory (ERROR 1 otherwise, like tftpd-hpa)
  server = await startServer(root, { write: "create" });
});

afterAll(async () => {
  await server?.stop();
  removeDir(root);
  removeDir(out);
});

describe("tftp-hpa get, binary mode", () => {
  for (const size of [0, 1, 511, 512, 513, 1 << 20]) {
    test(`${size} bytes`, async () => {
      const bytes = patternBytes(size, 900 + size);
      writeFile(root, `bin-${size}.bin`, bytes);
      const dest = join(out, `bin-${size}.bin`);
      const from = server.records.length;
      const r = await tftp(server.port, "binary", ["get", `bin-${size}.bin`, dest]);
      expect(r.exitCode).toBe(0);
      if (size > 0) expect(r.stdout).toContain(`Received ${size} bytes`); // tftp-hpa prints no stats for 0
      expect(await sha256File(dest)).toBe(sha256(bytes));
      const record = await recordAfter(server, from, (x) => x.file === `bin-${size}.bin`);
      expect(record).toMatchObject({ direction: "read", mode: "octet", result: "ok", bytes: size, blksize: 512 });
    });
  }
});

describe("netascii (ascii mode)", () => {
  test("get: LF lines arrive as LF lines; on the wire they were CR LF (and CR was CR NUL)", async () => {
    const dest = join(out, "text.cfg");
    const from = server.records.length;
    const r = await tftp(server.port, "ascii", ["get", "boot/text.cfg", dest]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toContain("[netascii]");
    expect(readFileSync(dest, "latin1")).toBe(TEXT);
    const record = await recordAfter(server, from, (x) => x.file === "boot/text.cfg");
    expect(record.mode).toBe("netascii");
    expect(record.result).toBe("ok");
    // Every LF became CR LF and every bare CR became CR NUL: one extra byte each on the wire.
    const wire = TEXT.length + count(TEXT, "\n") + count(TEXT, "\r");
    expect(record.bytes).toBe(wire);
    expect(r.stdout).toContain(`Received ${wire} bytes`);
  });

  test("the server's netascii DATA really carries CR LF and CR NUL (raw socket)", async () => {
    writeFile(root, "small.txt", "a\nb\rc\n");
    const received: Uint8Array[] = [];
    let ready: () => void = () => {};
    const got = new Promise<void>((resolve) => (ready = resolve));
    const socket = await Bun.udpSocket({
      hostname: "127.0.0.1",
      binaryType: "uint8array",
      socket: {
        data(sock, bytes, port, address) {
          received.push(bytes.slice());
          if (bytes[1] === 3) sock.send(new Uint8Array([0, 4, bytes[2]!, bytes[3]!]), port, address); // ACK
          ready();
        },
      },
    });
    try {
      const rrq = new Uint8Array([0, 1, ...new TextEncoder().encode("small.txt\0netascii\0")]);
      socket.send(rrq, server.port, "127.0.0.1");
      await Promise.race([got, Bun.sleep(5_000).then(() => { throw new Error("no answer to the RRQ"); })]);
      const data = received[0]!;
      expect(data[1]).toBe(3); // DATA, block 1
      expect(Array.from(data.subarray(4))).toEqual(Array.from(new TextEncoder().encode("a\r\nb\r\0c\r\n")));
    } finally {
      socket.close();
    }
  });

  test("put: a CR LF upload is stored with LF again", async () => {
    const local = writeFile(out, "up.cfg", TEXT);
    const from = server.records.length;
    const r = await tftp(server.port, "ascii", ["put", local, "uploads/ascii.cfg"]);
    expect(r.exitCode).toBe(0);
    expect(readFileSync(join(root, "uploads/ascii.cfg"), "latin1")).toBe(TEXT);
    const record = await recordAfter(server, from, (x) => x.file === "uploads/ascii.cfg");
    expect(record).toMatchObject({ direction: "write", mode: "netascii", result: "ok", bytes: TEXT.length });
  });
});

describe("tftp-hpa put, binary mode", () => {
  for (const size of [0, 512, 513, (1 << 20) + 1]) {
    test(`${size} bytes`, async () => {
      const local = writeFile(out, `put-${size}.bin`, patternBytes(size, 300 + size));
      const from = server.records.length;
      const r = await tftp(server.port, "binary", ["put", local, `put-${size}.bin`]);
      expect(r.exitCode).toBe(0);
      expect(await sha256File(join(root, `put-${size}.bin`))).toBe(await sha256File(local));
      const record = await recordAfter(server, from, (x) => x.file === `put-${size}.bin`);
      expect(record).toMatchObject({ direction: "write", mode: "octet", result: "ok", bytes: size });
    });
  }
});

test("a missing file: tftp-hpa reports the server's ERROR 1", async () => {
  const r = await tftp(server.port, "binary", ["get", "nope.bin", join(out, "nope.bin")]);
  expect(`${r.stdout}${r.stderr}`).toMatch(/Error code 1/);
});

test("IPv6: tftp -6 ::1 PORT against a server listening on [::1]", async () => {
  const v6 = await startServer(root, { listen: [{ host: "::1", port: 0 }] });
  try {
    const bytes = patternBytes(100_001, 66);
    writeFile(root, "v6.bin", bytes);
    const dest = join(out, "v6.bin");
    const r = await run(["tftp", "-6", "-v", "-m", "binary", "::1", String(v6.port), "-c", "get", "v6.bin", dest], { timeoutMs: 30_000 });
    expect(r.exitCode).toBe(0);
    expect(await sha256File(dest)).toBe(sha256(bytes));
    const record = await recordAfter(v6, 0, () => true);
    expect(record.result).toBe("ok");
    expect(record.client).toMatch(/^\[::1\]:\d+$/);
  } finally {
    await v6.stop();
  }
});

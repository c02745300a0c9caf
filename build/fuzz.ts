/**
 * A long fuzzing run against a live server on loopback: hostile datagrams to its listen port
 * and to the ports of transfers that are running, with liveness probes between batches.
 *
 *   bun build/fuzz.ts [--datagrams N] [--binary PATH | --source] [--seed S] [--batch B]
 *                     [--max-seconds T] [--rss-slack PCT]
 *
 * The server (the compiled binary, dist/tftpd, built with build/compile.ts when missing; or
 * `bun src/main.ts` with --source) serves a temporary root with uploads on (`--write create`).
 * Next to the root lies a canary file; the root holds symbolic links aimed at it. What is sent:
 *  - to the listen port, from many loopback addresses (so the per-address request limits
 *    stay out of the way, as with real machines): requests built from names (traversal aimed
 *    at the canary in many spellings, odd, huge, invalid UTF-8, temporary-upload-shaped),
 *    modes and options (out of range, repeated, dangling, huge), mutations of valid requests,
 *    other opcodes and random bytes;
 *  - to live transfer ports: real downloads and uploads run alongside (their DATA checked
 *    byte for byte), and their ports get mutated, duplicate, late and stray datagrams from the
 *    client's own port and from foreign ports.
 * Between batches a real download of a known file must succeed byte-exact (a liveness probe;
 * every tenth probe is an upload), and the server's RSS (/proc/PID/status VmRSS) and open
 * descriptors (/proc/PID/fd) are read. Every datagram received is searched for the canary's
 * bytes. After the run the server is stopped, and the root is audited: every upload is whole
 * (exactly the bytes a client sent) or absent, no temporary upload file is left, nothing was
 * written outside the root and the canary is unchanged.
 *
 * The last line, always:
 *   fuzz: N datagrams, crashes C, hangs H, probe failures F, outside-root reads O, rss start/end S/E MiB
 * crashes: the server exited, or a transfer worker died; hangs: probes without any answer, or
 * a server that does not stop; probe failures: failed probes, plus wrong bytes in any real
 * transfer of the run or in the upload audit; outside-root reads: datagrams holding canary
 * bytes, plus anything written outside the root. The exit status is non-zero when any of them
 * is not 0, when the RSS at the end (the median of the readings over the last 10 % of the
 * datagrams) exceeds the RSS after the warm-up (the median over the 10 % after the first 10 %)
 * by more than --rss-slack percent, when the server's descriptors do not go back once the
 * run's transfers have ended, or when the run hit --max-seconds.
 */
import type { udp } from "bun";
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { download, upload } from "../src/client/index.ts";
import { decodePacket, encodeAck, encodeData, encodeError, encodeRequest } from "../src/protocol/codec.ts";
import { toNetascii } from "../src/protocol/netascii.ts";
import { Opcode } from "../src/protocol/packet.ts";

const ROOT_DIR = resolve(import.meta.dir, "..");
const { values: opts } = parseArgs({
  args: Bun.argv.slice(2),
  options: {
    datagrams: { type: "string", default: "1000000" },
    binary: { type: "string" },
    source: { type: "boolean", default: false },
    seed: { type: "string" },
    batch: { type: "string", default: "2000" },
    "max-seconds": { type: "string" },
    "rss-slack": { type: "string", default: "10" },
    help: { type: "boolean", default: false },
  },
});
if (opts.help) {
  process.stdout.write("bun build/fuzz.ts [--datagrams N] [--binary PATH | --source] [--seed S] [--batch B] [--max-seconds T] [--rss-slack PCT]\n");
  process.exit(0);
}
const TOTAL = Number(opts.datagrams);
const BATCH = Number(opts.batch);
const SEED = opts.seed !== undefined ? Number(opts.seed) : randomBytes(4).readUInt32LE(0);
const MAX_SECONDS = opts["max-seconds"] !== undefined ? Number(opts["max-seconds"]) : 60 + TOTAL / 1000;
const RSS_SLACK = Number(opts["rss-slack"]) / 100;
for (const [name, v] of [["--datagrams", TOTAL], ["--batch", BATCH], ["--max-seconds", MAX_SECONDS]] as const) {
  if (!Number.isSafeInteger(Math.floor(v)) || v <= 0) {
    process.stderr.write(`fuzz: ${name} must be a positive number\n`);
    process.exit(2);
  }
}

/** Fuzz sources and transfer clients each get loopback addresses of their own (127.0.0.0/8). */
const SOURCES = 128;
const LIVE_SESSIONS = 12;
const SESSION_MAX_MS = 8_000;

function say(line: string): void {
  process.stderr.write(`fuzz: ${line}\n`);
}

// ───────────────────────────── randomness ─────────────────────────────

/** mulberry32: seeded, so a run can be replayed with --seed. */
let state = SEED >>> 0;
function rand(): number {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const int = (n: number): number => Math.floor(rand() * n);
const pick = <T>(items: readonly T[]): T => items[int(items.length)]!;
const chance = (p: number): boolean => rand() < p;
function bytesOf(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = int(256);
  return out;
}
const enc = new TextEncoder();

// ───────────────────────────── the server's files ─────────────────────────────

const work = fs.mkdtempSync(join(tmpdir(), "tftpd-fuzz-"));
const area = join(work, "area");
const root = join(area, "root");
fs.mkdirSync(join(root, "dir"), { recursive: true });
fs.mkdirSync(join(root, "up"));
/** Canary bytes: no NUL, CR or LF, so netascii leaves them as they are and any block shows them. */
const CANARY_BYTES = [...Array(256).keys()].filter((b) => b !== 0 && b !== 10 && b !== 13);
const canary = Buffer.from(Array.from({ length: 3000 }, () => pick(CANARY_BYTES)));
fs.writeFileSync(join(area, "canary"), canary);
const seeded = new Map<string, Buffer>([
  ["boot.bin", randomBytes(50_000)],
  ["small.txt", Buffer.from("line one\nline two\r\nbare\rcr\n".repeat(40))],
  ["empty", Buffer.alloc(0)],
  ["exact.bin", randomBytes(1024)],
  ["dir/nested.bin", randomBytes(3000)],
  ["probe.bin", randomBytes(64 * 1024)],
]);
for (const [name, bytes] of seeded) fs.writeFileSync(join(root, name), bytes);
fs.symlinkSync("../canary", join(root, "escape"));
fs.symlinkSync("..", join(root, "escdir"));
fs.symlinkSync(join(area, "canary"), join(root, "escape-abs"));
const probeFile = seeded.get("probe.bin")!;
const readable = ["boot.bin", "small.txt", "empty", "exact.bin", "dir/nested.bin"];

// ───────────────────────────── the server ─────────────────────────────

async function freeUdpPort(): Promise<number> {
  const s = await Bun.udpSocket({ hostname: "127.0.0.1", port: 0 });
  const port = s.port;
  s.close();
  return port;
}

/** A loopback TCP port nothing listens on now: the server's metrics endpoint goes there. */
function freeTcpPort(): Promise<number> {
  return new Promise((done, fail) => {
    const probe = createServer();
    probe.once("error", fail);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      probe.close(() => done(typeof address === "object" && address ? address.port : 0));
    });
  });
}

function serverCommand(): string[] {
  if (opts.source) return [process.execPath, join(ROOT_DIR, "src/main.ts")];
  const binary = resolve(opts.binary ?? join(ROOT_DIR, "dist/tftpd"));
  if (!fs.existsSync(binary)) {
    if (opts.binary !== undefined) {
      say(`no binary at ${binary}`);
      process.exit(2);
    }
    say("dist/tftpd missing: building it (build/compile.ts --no-cross)");
    const built = Bun.spawnSync([process.execPath, "build/compile.ts", "--no-cross"], { cwd: ROOT_DIR, stdout: "inherit", stderr: "inherit" });
    if (built.exitCode !== 0) process.exit(2);
  }
  return [binary];
}

const command = serverCommand();
const configPath = join(work, "config.json");
const help = Bun.spawnSync([...command, "serve", "--help"], { cwd: ROOT_DIR, stdout: "pipe", stderr: "pipe" });
// started as root, a server that drops privileges would lose the temporary root: it stays root
const userFlag = process.getuid?.() === 0 && /--user\b/.test(help.stdout.toString() + help.stderr.toString()) ? ["--user", "root"] : [];
const logPath = join(work, "server.log");
const stderrPath = join(work, "server.stderr");
let port = 0;
let server!: ReturnType<typeof Bun.spawn>;
let serverExited = false;
let stopping = false;

/**
 * Starts the server on ports free a moment ago. Another program may take one before the server
 * binds it (the suite runs other servers): then, and only then, it starts again on new ones.
 */
async function startServer(): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    port = await freeUdpPort();
    const metricsPort = await freeTcpPort();
    fs.writeFileSync(configPath, JSON.stringify({ tune: { enabled: false }, log: { level: "warn" }, metrics: { listen: `127.0.0.1:${metricsPort}` } }));
    const serverArgs = ["serve", "--config", configPath, "--root", root, "--listen", `127.0.0.1:${port}`, "--write", "create", "--no-tune", "--log-level", "warn", ...userFlag];
    say(`seed ${SEED}, server ${[...command, ...serverArgs].join(" ")}, log ${logPath}`);
    const spawned = Bun.spawn([...command, ...serverArgs], {
      cwd: ROOT_DIR,
      env: { ...process.env, TFTPD_TUNE_ENABLED: "false" },
      stdin: "ignore",
      stdout: Bun.file(logPath),
      stderr: Bun.file(stderrPath),
    });
    server = spawned;
    serverExited = false;
    const early = await Promise.race([spawned.exited.then(() => true), Bun.sleep(1500).then(() => false)]);
    const taken = early && /EADDRINUSE/.test(fs.existsSync(stderrPath) ? fs.readFileSync(stderrPath, "utf8") : "");
    if (taken && attempt < 3) {
      say(`a port was taken before the server bound it: starting again on other ports`);
      continue;
    }
    void spawned.exited.then((code) => {
      if (server !== spawned) return;
      serverExited = true;
      if (!stopping) say(`server exited on its own (status ${code}, signal ${spawned.signalCode ?? "none"})`);
    });
    return;
  }
}

await startServer();
// whatever ends this script, the server does not outlive it
process.on("exit", () => {
  if (!serverExited) server.kill("SIGKILL");
});

// ───────────────────────────── tallies ─────────────────────────────

let sent = 0;
let crashes = 0;
let hangs = 0;
let probeFailures = 0;
let outsideRoot = 0;
const notes = { received: 0, errors5: 0, reads: 0, readsDone: 0, writes: 0, writesDone: 0, probes: 0 };

function noteFailure(kind: "probe" | "outside", line: string): void {
  if (kind === "probe") probeFailures++;
  else outsideRoot++;
  say(line);
}

/** Every datagram any fuzz socket receives: canary bytes in it mean a read outside the root. */
function inspect(bytes: Uint8Array, from: number): void {
  notes.received++;
  if (bytes.length >= 12) {
    const body = Buffer.from(bytes.buffer, bytes.byteOffset + 4, Math.min(bytes.length - 4, 64));
    if (canary.indexOf(body) >= 0) noteFailure("outside", `canary bytes received from port ${from}`);
  }
  if (bytes[1] === Opcode.ERROR && bytes[3] === 5) notes.errors5++;
}

// ───────────────────────────── sockets ─────────────────────────────

type Socket = udp.Socket<"uint8array">;
type Receiver = (bytes: Uint8Array, port: number) => void;

async function openSocket(address: string, onData: Receiver): Promise<Socket> {
  return Bun.udpSocket({
    hostname: address,
    port: 0,
    binaryType: "uint8array",
    socket: {
      data(_s, bytes, fromPort) {
        inspect(bytes, fromPort);
        onData(bytes, fromPort);
      },
      error() {
        // ICMP reports about ports that closed: expected while fuzzing
      },
    },
  });
}

/** Sends one datagram of the run; none once the run's count is reached (the count is exact). */
function sendTo(socket: Socket, bytes: Uint8Array, toPort: number): void {
  if (sent >= TOTAL) return;
  sent++;
  try {
    socket.send(bytes, toPort, "127.0.0.1");
  } catch {
    // a pending ICMP error: the datagram counts, as one lost on the way would
  }
}

/** Transfer ports that answered the fuzz sources' requests, per source: more targets. */
const seenPorts: number[][] = [];
const sources: Socket[] = [];
for (let i = 0; i < SOURCES; i++) {
  seenPorts.push([]);
  sources.push(
    await openSocket(`127.99.${i >> 6}.${(i & 63) + 1}`, (_bytes, from) => {
      const seen = seenPorts[i]!;
      if (from !== port && !seen.includes(from)) {
        seen.push(from);
        if (seen.length > 8) seen.shift();
      }
    }),
  );
}

// ───────────────────────────── datagram generators ─────────────────────────────

const TRAVERSALS = [
  "../canary", "..\\canary", "/../canary", "\\..\\canary", "./../canary", "dir/../../canary", "dir/..\\..\\canary",
  "..//canary", "../root/../canary", "....//canary", "..../canary", "..;/canary", "%2e%2e/canary", "%2e%2e%2fcanary",
  "..%2fcanary", "..%5ccanary", "%252e%252e%252fcanary", "..\u2215canary", "\uff0e\uff0e/canary", "\u2024\u2024/canary",
  "escape", "/escape", "escape-abs", "escdir/canary", "escdir/escdir/canary", "escdir/root/boot.bin", "escdir",
  join(area, "canary"), `//${join(area, "canary")}`, "file:///../canary", "..", "../", ".", "/", "\\", "~/canary",
];
const ODD_NAMES = [
  "boot.bin", "/boot.bin", "\\boot.bin", "BOOT.BIN", "boot.bin ", " boot.bin", "dir/nested.bin", "dir//nested.bin",
  "./dir/./nested.bin", "dir\\nested.bin", "dir", "dir/", "empty", "small.txt", "exact.bin", "nonexistent",
  ".boot.bin.0123456789ab.tftpd-part", "a\u0001b", "tab\tname", "del\u007f", "%s%s%s%n", "\u00e9t\u00e9.bin",
  "\ufeffboot.bin", "pxelinux.cfg/01-aa-bb-cc-dd-ee-ff", "a".repeat(255), "a".repeat(256), `${"d/".repeat(300)}x`,
  "x".repeat(1010), "CON", "nul", "boot.bin/.", "boot.bin/..",
];
const MODES = ["octet", "netascii", "OCTET", "NetAscii", "mail", "binary", "", "octet ", "oct", "netascii\u0000", "m".repeat(300)];
const OPTION_VALUES = ["0", "1", "7", "8", "512", "1468", "65464", "65465", "65535", "65536", "-1", "", "abc", "99999999999999999999", "1e3", "0x10", " 8"];
const OPTION_NAMES = ["blksize", "tsize", "timeout", "windowsize", "BLKSIZE", "multicast", "rollover", "utimeout", "x", ""];

function cstring(text: string | Uint8Array): number[] {
  return [...(typeof text === "string" ? enc.encode(text) : text), 0];
}

/** A request shaped by hand: any name, mode and options, terminators sometimes missing. */
function oddRequest(): Uint8Array {
  const op = chance(0.7) ? Opcode.RRQ : chance(0.9) ? Opcode.WRQ : int(8);
  const name = chance(0.35) ? pick(TRAVERSALS) : chance(0.6) ? pick(ODD_NAMES) : chance(0.5) ? `n${int(1e6)}` : bytesOf(1 + int(40));
  const out = [0, op, ...cstring(op === Opcode.WRQ && typeof name === "string" && chance(0.5) ? `${name}-w` : name)];
  out.push(...cstring(chance(0.8) ? pick(MODES.slice(0, 4)) : chance(0.5) ? pick(MODES) : bytesOf(int(10))));
  const options = chance(0.5) ? int(6) : 0;
  for (let i = 0; i < options; i++) {
    out.push(...cstring(pick(OPTION_NAMES)));
    if (i < options - 1 || chance(0.8)) out.push(...cstring(pick(OPTION_VALUES)));
  }
  if (chance(0.05)) out.push(...new Array(int(600)).fill(0));
  if (chance(0.1)) out.pop();
  return Uint8Array.from(out);
}

function mutate(bytes: Uint8Array): Uint8Array {
  let out = Array.from(bytes);
  for (let n = 1 + int(3); n > 0; n--) {
    const at = int(out.length + 1);
    switch (int(5)) {
      case 0:
        if (out.length > 0) out[at % out.length] = int(256);
        break;
      case 1:
        out = out.slice(0, at);
        break;
      case 2:
        out.splice(at, 0, ...bytesOf(1 + int(8)));
        break;
      case 3:
        out.splice(at, 1 + int(8));
        break;
      default:
        out = out.concat(out).slice(0, 1400);
    }
  }
  return Uint8Array.from(out);
}

/** What goes to the listen port. */
function listenDatagram(): Uint8Array {
  const r = rand();
  if (r < 0.45) return oddRequest();
  if (r < 0.65) return mutate(encodeRequest(Opcode.RRQ, pick(readable), pick(["octet", "netascii"]), [["blksize", pick(OPTION_VALUES)]]));
  if (r < 0.75) return bytesOf(int(5)); // runts: 0 to 4 bytes
  if (r < 0.85) return Uint8Array.of(0, 1 + int(6), ...bytesOf(int(64)));
  return bytesOf(int(1500));
}

// ───────────────────────────── live transfers ─────────────────────────────

interface Session {
  kind: "read" | "write";
  socket: Socket;
  name: string;
  /** read: the bytes on the wire; write: the file's bytes */
  bytes: Uint8Array;
  blksize: number;
  windowsize: number;
  serverPort: number | null;
  /** read: highest block received in order; write: highest block acknowledged */
  progress: number;
  /** read: the block last acknowledged */
  acked: number;
  /** an OACK came: the options in force are the granted ones */
  negotiated: boolean;
  lastBlock: number;
  startedAt: number;
  done: boolean;
  /** the last datagram the server sent, to send back mutated */
  last: Uint8Array | null;
}

const sessions: Session[] = [];
/** uploads that may have been published: name → bytes; "complete": the final ACK arrived */
const uploads = new Map<string, { bytes: Uint8Array; complete: boolean }>();
let sessionCount = 0;

function blocksOf(length: number, blksize: number): number {
  return Math.floor(length / blksize) + 1;
}

function optionsFor(session: { blksize: number; windowsize: number }, extra: [string, string][]): [string, string][] {
  const options: [string, string][] = [...extra];
  if (session.blksize !== 512) options.push(["blksize", String(session.blksize)]);
  if (session.windowsize !== 1) options.push(["windowsize", String(session.windowsize)]);
  if (chance(0.3)) options.push(["timeout", String(1 + int(3))]);
  return options;
}

async function startSession(): Promise<void> {
  const kind = chance(0.6) ? "read" : "write";
  const index = sessionCount++;
  const blksize = pick([8, 64, 512, 512, 1468, 8192]);
  const windowsize = pick([1, 1, 1, 4, 16]);
  let session: Session;
  const socket = await openSocket(`127.98.${(index >> 6) & 255}.${(index & 63) + 1}`, (bytes, from) => onSessionData(session, bytes, from));
  if (kind === "read") {
    const name = pick(readable);
    const netascii = chance(0.2);
    const wire = netascii ? toNetascii(seeded.get(name)!) : seeded.get(name)!;
    session = { kind, socket, name, bytes: wire, blksize, windowsize, serverPort: null, progress: 0, acked: 0, negotiated: false, lastBlock: blocksOf(wire.length, blksize), startedAt: performance.now(), done: false, last: null };
    notes.reads++;
    sendTo(socket, encodeRequest(Opcode.RRQ, name, netascii ? "netascii" : "octet", optionsFor(session, chance(0.5) ? [["tsize", "0"]] : [])), port);
  } else {
    const name = `up/fuzz-${index}.bin`;
    const bytes = randomBytes(int(20_000));
    session = { kind, socket, name, bytes, blksize, windowsize, serverPort: null, progress: 0, acked: 0, negotiated: false, lastBlock: blocksOf(bytes.length, blksize), startedAt: performance.now(), done: false, last: null };
    uploads.set(name, { bytes, complete: false });
    notes.writes++;
    sendTo(socket, encodeRequest(Opcode.WRQ, name, "octet", optionsFor(session, chance(0.5) ? [["tsize", String(bytes.length)]] : [])), port);
  }
  sessions.push(session);
}

function sendBlocks(session: Session, from: number): void {
  const last = Math.min(session.lastBlock, from + session.windowsize - 1);
  for (let block = from; block <= last; block++) {
    const at = (block - 1) * session.blksize;
    sendTo(session.socket, encodeData(block & 0xffff, session.bytes.subarray(at, Math.min(session.bytes.length, at + session.blksize))), session.serverPort!);
  }
}

/** The client's side of a live transfer: a real client, apart from answering late at times. */
function onSessionData(session: Session, bytes: Uint8Array, from: number): void {
  if (session.done || from === port) return;
  if (session.serverPort === null) session.serverPort = from;
  if (from !== session.serverPort) return;
  session.last = bytes.slice();
  const decoded = decodePacket(bytes);
  if (!decoded.ok) return noteFailure("probe", `${session.name}: undecodable datagram from its transfer`);
  const packet = decoded.packet;
  if (packet.op === Opcode.ERROR) {
    session.done = true;
    return;
  }
  if (packet.op === Opcode.OACK) {
    // the server may grant less than asked
    session.negotiated = true;
    session.blksize = Number(packet.options.get("blksize") ?? 512);
    session.windowsize = Number(packet.options.get("windowsize") ?? 1);
    session.lastBlock = blocksOf(session.bytes.length, session.blksize);
    if (session.kind === "read") sendTo(session.socket, encodeAck(0), from);
    else sendBlocks(session, 1);
    return;
  }
  if (session.kind === "read" && packet.op === Opcode.DATA) {
    if (!session.negotiated) {
      // DATA without an OACK: no option granted, the RFC 1350 defaults apply
      session.negotiated = true;
      session.blksize = 512;
      session.windowsize = 1;
      session.lastBlock = blocksOf(session.bytes.length, 512);
    }
    const at = (packet.block - 1) * session.blksize;
    const expected = session.bytes.subarray(at, Math.min(session.bytes.length, at + session.blksize));
    if (packet.block < 1 || packet.block > session.lastBlock || Buffer.compare(Buffer.from(packet.data), Buffer.from(expected)) !== 0) {
      noteFailure("probe", `${session.name}: DATA ${packet.block} does not hold the file's bytes`);
      session.done = true;
      return;
    }
    if (packet.block === session.progress + 1) {
      session.progress = packet.block;
      // one ACK per window, as RFC 7440 clients do; now and then none (the server resends)
      const windowEnd = packet.block === session.lastBlock || packet.block - session.acked >= session.windowsize;
      if (windowEnd && chance(0.9)) {
        session.acked = packet.block;
        sendTo(session.socket, encodeAck(packet.block), from);
      }
    } else if (packet.block === session.progress) {
      // the window came again: our ACK was not sent, or was lost
      session.acked = packet.block;
      sendTo(session.socket, encodeAck(packet.block), from);
    }
    if (session.progress === session.lastBlock) {
      session.done = true;
      notes.readsDone++;
    }
    return;
  }
  if (session.kind === "write" && packet.op === Opcode.ACK) {
    if (!session.negotiated) {
      // ACK 0 without an OACK: no option granted, the RFC 1350 defaults apply
      session.negotiated = true;
      session.blksize = 512;
      session.windowsize = 1;
      session.lastBlock = blocksOf(session.bytes.length, 512);
    }
    if (packet.block > session.lastBlock) return noteFailure("probe", `${session.name}: ACK ${packet.block} of a block never sent`);
    session.progress = Math.max(session.progress, packet.block);
    if (packet.block === session.lastBlock) {
      uploads.get(session.name)!.complete = true;
      session.done = true;
      notes.writesDone++;
      return;
    }
    if (chance(0.95)) sendBlocks(session, packet.block + 1);
  }
}

/**
 * A DATA gets a block number no upload of this run reaches (the largest has a few thousand
 * blocks): a DATA of a block an upload can take would be taken as its client's bytes, which
 * TFTP cannot tell apart, and the upload audit would mean nothing.
 */
function unreachableBlock(bytes: Uint8Array): Uint8Array {
  if (bytes.length >= 4 && bytes[0] === 0 && bytes[1] === Opcode.DATA) {
    bytes[2] = 0xff;
    bytes[3] = 0xf0 + int(16);
  }
  return bytes;
}

/** What goes to a live transfer's port: strays from its own client's port and from others. */
function fireAtSession(session: Session): void {
  const to = session.serverPort!;
  const r = rand();
  if (r < 0.35) {
    // a stranger: the server answers ERROR 5 and the transfer goes on. (The port may have been
    // handed meanwhile to an upload this stranger asked for: a DATA of a block an upload can
    // take would be its bytes, so strangers' DATA carry block numbers no upload here reaches.)
    const from = pick(sources);
    const bytes = chance(0.5) ? encodeAck(int(0x10000)) : chance(0.5) ? encodeData(0, bytesOf(int(600))) : bytesOf(int(100));
    sendTo(from, unreachableBlock(bytes), to);
    return;
  }
  let bytes: Uint8Array;
  if (r < 0.55) bytes = encodeAck(chance(0.5) ? Math.max(0, session.progress - int(3)) : int(0x10000));
  else if (r < 0.75 && session.last) bytes = mutate(session.last);
  else if (r < 0.8) bytes = encodeRequest(pick([Opcode.RRQ, Opcode.WRQ]), session.name, "octet");
  else if (r < 0.82) bytes = encodeError(int(9), "fuzz");
  else bytes = bytesOf(int(200));
  // a DATA of a block the upload has would be taken as the client's own bytes: TFTP cannot tell
  if (session.kind === "write") unreachableBlock(bytes);
  if (bytes.length >= 4 && bytes[1] === Opcode.ERROR && bytes[0] === 0) session.done = true;
  sendTo(session.socket, bytes, to);
}

async function tendSessions(): Promise<void> {
  const now = performance.now();
  for (let i = sessions.length - 1; i >= 0; i--) {
    const s = sessions[i]!;
    if (s.done || now - s.startedAt > SESSION_MAX_MS) {
      s.done = true;
      s.socket.close();
      sessions.splice(i, 1);
    }
  }
  while (sessions.length < LIVE_SESSIONS) await startSession();
}

function fuzzOne(): void {
  const r = rand();
  if (r < 0.55) {
    sendTo(pick(sources), listenDatagram(), port);
    return;
  }
  const live = sessions.filter((s) => !s.done && s.serverPort !== null);
  if (r < 0.9 && live.length > 0) {
    fireAtSession(pick(live));
    return;
  }
  const i = int(SOURCES);
  const seen = seenPorts[i]!;
  if (seen.length === 0) {
    sendTo(sources[i]!, listenDatagram(), port);
    return;
  }
  // a transfer a fuzz request started: anything but DATA from the same port, or late strays
  const bytes = chance(0.5) ? mutate(encodeAck(int(0x10000))) : bytesOf(int(120));
  if (bytes[0] === 0 && bytes[1] === Opcode.DATA) bytes[1] = Opcode.ACK;
  sendTo(sources[i]!, bytes, pick(seen));
}

// ───────────────────────────── probes and readings ─────────────────────────────

function rssMiB(): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${server.pid}/status`, "utf8"));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

/**
 * The server's descriptors that a transfer holds: sockets, and files in the run's area (an
 * upload's temporary file). Not the file cache's memfds: files the run asked for stay cached
 * (the RSS bound covers them), and not the runtime's own (epoll, eventfd, pipes, logs).
 */
function openFds(): number | null {
  try {
    const dir = `/proc/${server.pid}/fd`;
    let held = 0;
    for (const fd of fs.readdirSync(dir)) {
      let target: string;
      try {
        target = fs.readlinkSync(`${dir}/${fd}`);
      } catch {
        continue; // closed meanwhile
      }
      if (target.startsWith("socket:") || target.startsWith(`${area}/`)) held++;
    }
    return held;
  } catch {
    return null;
  }
}

let consecutiveHangs = 0;
let probeUploads = 0;

/** A real transfer must succeed byte-exact: a download, or every tenth time an upload. */
async function probe(): Promise<void> {
  notes.probes++;
  const common = { host: "127.0.0.1", port, retransmitMs: 250, retries: 8, signal: AbortSignal.timeout(20_000) } as const;
  if (notes.probes % 10 === 0) {
    const name = `up/probe-${probeUploads++}.bin`;
    const bytes = randomBytes(5000 + int(30_000));
    uploads.set(name, { bytes, complete: false });
    const report = await upload({ ...common, remote: name, source: bytes, blksize: 1468, tsize: true });
    if (report.ok) uploads.get(name)!.complete = true;
    return judgeProbe(report.ok, report.firstResponseMs, `upload ${name}: ${report.error?.message}`);
  }
  const report = await download({ ...common, remote: "probe.bin", blksize: pick([512, 1468]), tsize: true, dallyMs: 0 });
  const exact = report.ok && report.data !== undefined && Buffer.compare(Buffer.from(report.data), probeFile) === 0;
  judgeProbe(exact, report.firstResponseMs, report.ok ? "probe.bin downloaded with wrong bytes" : `download probe.bin: ${report.error?.message}`);
}

function judgeProbe(ok: boolean, firstResponseMs: number | null, why: string): void {
  if (ok) {
    consecutiveHangs = 0;
    return;
  }
  if (firstResponseMs === null) {
    hangs++;
    consecutiveHangs++;
    say(`no answer to a probe (${why})`);
  } else {
    noteFailure("probe", `probe failed: ${why}`);
  }
}

function workerDeaths(): number {
  try {
    return (fs.readFileSync(logPath, "utf8").match(/transfer worker died/g) ?? []).length;
  } catch {
    return 0;
  }
}

// ───────────────────────────── the run ─────────────────────────────

const started = performance.now();
const deadline = started + MAX_SECONDS * 1000;
// the server is up once a probe succeeds
for (let ready = false; !ready; ) {
  if (serverExited || performance.now() - started > 30_000) {
    say("the server did not start");
    crashes++;
    break;
  }
  const report = await download({ host: "127.0.0.1", port, remote: "probe.bin", retransmitMs: 200, retries: 2, dallyMs: 0 });
  ready = report.ok;
}
const fdsStart = openFds();
let fdsMax = fdsStart ?? 0;
/**
 * RSS samples (one per batch) of the tenth after the warm-up and of the last tenth: the heap's
 * collection cycle moves a single reading by about as much as the bound, a leak moves them all.
 */
const rssAfterWarmUp: number[] = [];
const rssLastTenth: number[] = [];
let rssNow: number | null = null;
const warmUp = Math.ceil(TOTAL * 0.1);
let timedOut = false;
let tenths = 0;

while (crashes === 0 && sent < TOTAL && consecutiveHangs < 3) {
  if (performance.now() > deadline) {
    timedOut = true;
    break;
  }
  await tendSessions();
  const end = Math.min(TOTAL, sent + BATCH);
  while (sent < end) {
    fuzzOne();
    // let the answers in (and the live transfers move) every few datagrams
    if (sent % 64 === 0) await new Promise((r) => setImmediate(r));
    if (sent % 512 === 0) await tendSessions();
  }
  await probe();
  if (serverExited) crashes++;
  const fds = openFds();
  if (fds !== null) fdsMax = Math.max(fdsMax, fds);
  rssNow = rssMiB() ?? rssNow;
  if (rssNow !== null && sent >= warmUp && sent <= 2 * warmUp) rssAfterWarmUp.push(rssNow);
  if (rssNow !== null && sent >= TOTAL - warmUp) rssLastTenth.push(rssNow);
  if (Math.floor(sent / warmUp) > tenths) {
    tenths = Math.floor(sent / warmUp);
    say(`${sent} datagrams: rss ${rssNow?.toFixed(1)} MiB, fds ${fds}`);
  }
}
if (serverExited && crashes === 0) crashes++;
crashes += workerDeaths();
const elapsed = (performance.now() - started) / 1000;

// let the run's transfers end, then see whether their descriptors went back
for (const s of sessions) {
  s.done = true;
  s.socket.close();
}
// What may stay: the shared ports opened after the first probe (one per engine and kind of
// datagram). A transfer whose client went quiet ends within its patience: six times a
// client-fixed timeout of up to 3 s, and an upload's dally after it.
const FD_SLACK = 4;
const FD_WAIT_MS = 30_000;
let fdsEnd = openFds();
for (let waited = 0; !serverExited && fdsStart !== null && fdsEnd !== null && fdsEnd > fdsStart + FD_SLACK && waited < FD_WAIT_MS; waited += 500) {
  await Bun.sleep(500);
  fdsEnd = openFds();
}
const fdLeak = fdsStart !== null && fdsEnd !== null && fdsEnd > fdsStart + FD_SLACK;
say(`${elapsed.toFixed(1)} s; fds start/max/end ${fdsStart}/${fdsMax}/${fdsEnd}; received ${notes.received} (ERROR 5: ${notes.errors5}); reads ${notes.readsDone}/${notes.reads}, uploads ${notes.writesDone}/${notes.writes} completed; probes ${notes.probes}`);

// stop the server, then audit what it left
stopping = true;
if (!serverExited) {
  server.kill("SIGTERM");
  const stopped = await Promise.race([server.exited.then(() => true), Bun.sleep(25_000).then(() => false)]);
  if (!stopped) {
    hangs++;
    say("the server did not stop within 25 s of SIGTERM");
    server.kill("SIGKILL");
    await server.exited;
  }
}
for (const s of sources) s.close();

function listFiles(dir: string, prefix = ""): string[] {
  const out: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const rel = prefix + entry.name;
    if (entry.isDirectory()) out.push(...listFiles(join(dir, entry.name), `${rel}/`));
    else out.push(rel);
  }
  return out;
}

const sha = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");
const areaEntries = fs.readdirSync(area).sort();
if (areaEntries.join(",") !== "canary,root") noteFailure("outside", `written next to the root: ${areaEntries.join(", ")}`);
if (sha(fs.readFileSync(join(area, "canary"))) !== sha(canary)) noteFailure("outside", "the canary changed");
for (const rel of listFiles(root)) {
  if (rel === "escape" || rel === "escdir" || rel === "escape-abs") continue;
  const bytes = fs.readFileSync(join(root, rel));
  const known = seeded.get(rel) ?? uploads.get(rel)?.bytes;
  if (known === undefined) noteFailure("probe", `unexpected file in the root: ${JSON.stringify(rel)}`);
  else if (sha(bytes) !== sha(known)) noteFailure("probe", `${rel}: not the bytes its client sent (${bytes.length} of ${known.length})`);
}
for (const [name, u] of uploads) {
  if (u.complete && !fs.existsSync(join(root, name))) noteFailure("probe", `${name}: acknowledged in full but not published`);
}

const mib = (v: number | null): string => (v === null ? "?" : v.toFixed(1));
function median(values: number[]): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}
const rssStart = median(rssAfterWarmUp);
const rssEnd = median(rssLastTenth);
const rssGrew = rssStart !== null && rssEnd !== null && rssEnd > rssStart * (1 + RSS_SLACK);
if (rssGrew) say(`RSS grew by more than ${opts["rss-slack"]} % after the warm-up`);
if (fdLeak) say(`open descriptors did not go back (${fdsStart} at the start, ${fdsEnd} at the end)`);
if (timedOut) say(`stopped at --max-seconds ${MAX_SECONDS} after ${sent} of ${TOTAL} datagrams`);
const failed = crashes + hangs + probeFailures + outsideRoot > 0 || rssGrew || fdLeak || timedOut;
// a failed run keeps its root and the server's log for a look
if (failed) say(`kept ${work}`);
else fs.rmSync(work, { recursive: true, force: true });
process.stdout.write(
  `fuzz: ${sent} datagrams, crashes ${crashes}, hangs ${hangs}, probe failures ${probeFailures}, outside-root reads ${outsideRoot}, rss start/end ${mib(rssStart)}/${mib(rssEnd)} MiB\n`,
);
process.exit(failed ? 1 : 0);

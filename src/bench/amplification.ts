/**
 * `tftpd bench --amplification`: what a server sends to an address that asks once and never
 * answers — what one request forged in someone else's name draws onto them. Each probe sends
 * one RRQ from a socket of its own, then only listens, counting what arrives. The forged-ACK
 * probes also send the first ACK a forger would: to the server's transfer port as learnt from
 * a request of its own (a port shared by transfers is the same for every client), without
 * having seen the first packet.
 */
import { isIPv6 } from "node:net";
import { decodePacket, encodeAck, encodeError, encodeRequest } from "../protocol/codec.ts";
import { ErrorCode, Opcode } from "../protocol/packet.ts";

export interface AmplificationProbe {
  label: string;
  options: [string, string][];
  /** the block of an ACK sent, after the request, to the transfer port learnt beforehand */
  forgedAck?: number;
}

/** How long after its request a forged-ACK probe sends the ACK: the first packet has left. */
const FORGE_AFTER_MS = 100;

/** A plain request, and the options that let one answer be largest (RFC 2348, 7440, 2349). */
export const AMPLIFICATION_PROBES: readonly AmplificationProbe[] = [
  { label: "plain", options: [] },
  {
    label: "blksize 65464, windowsize 16, tsize",
    options: [
      ["blksize", "65464"],
      ["windowsize", "16"],
      ["tsize", "0"],
    ],
  },
  { label: "plain + forged ACK 1", options: [], forgedAck: 1 },
  {
    label: "blksize 1468, windowsize 16 + forged ACK 0",
    options: [
      ["blksize", "1468"],
      ["windowsize", "16"],
    ],
    forgedAck: 0,
  },
];

export interface AmplificationResult {
  label: string;
  /** the UDP payload the probe sent: its request, and its forged ACK if any */
  requestBytes: number;
  /** datagrams received in the whole wait */
  datagrams: number;
  /** their UDP payloads, in all */
  bytes: number;
  /** bytes received per byte sent */
  factor: number;
  /** datagrams by packet kind ("DATA", "OACK", "ERROR", …; "other" for undecodable ones) */
  kinds: Record<string, number>;
}

const KIND_NAMES: Record<number, string> = {
  [Opcode.RRQ]: "RRQ",
  [Opcode.WRQ]: "WRQ",
  [Opcode.DATA]: "DATA",
  [Opcode.ACK]: "ACK",
  [Opcode.ERROR]: "ERROR",
  [Opcode.OACK]: "OACK",
};

/**
 * Sends `probe`'s RRQ for `file` to host:port once (and its forged ACK to `transferPort`), and
 * counts what arrives for `seconds`.
 */
export async function probeAmplification(
  host: string,
  port: number,
  file: string,
  probe: AmplificationProbe,
  seconds: number,
  transferPort: number | null = null,
): Promise<AmplificationResult> {
  const request = encodeRequest(Opcode.RRQ, file, "octet", probe.options);
  const forged = probe.forgedAck !== undefined && transferPort !== null ? encodeAck(probe.forgedAck) : null;
  const kinds: Record<string, number> = {};
  let datagrams = 0;
  let bytes = 0;
  const socket = await Bun.udpSocket({
    hostname: isIPv6(host) ? "::" : "0.0.0.0",
    binaryType: "uint8array",
    socket: {
      data(_socket, payload) {
        datagrams++;
        bytes += payload.length;
        const decoded = decodePacket(payload);
        const kind = decoded.ok ? (KIND_NAMES[decoded.packet.op] ?? "other") : "other";
        kinds[kind] = (kinds[kind] ?? 0) + 1;
      },
      // an ICMP report about the request: nothing arrived, which is what is counted
      error() {},
    },
  });
  try {
    socket.send(request, port, host);
    if (forged) {
      await Bun.sleep(FORGE_AFTER_MS);
      socket.send(forged, transferPort!, host);
      await Bun.sleep(seconds * 1000 - FORGE_AFTER_MS);
    } else {
      await Bun.sleep(seconds * 1000);
    }
  } finally {
    socket.close();
  }
  const sent = request.length + (forged?.length ?? 0);
  return { label: probe.label, requestBytes: sent, datagrams, bytes, factor: bytes / sent, kinds };
}

/**
 * The port the server answers a plain request for `file` from (what a forger learns by asking
 * itself), its transfer then ended with an ERROR; null when nothing came within 2 s.
 */
export async function learnTransferPort(host: string, port: number, file: string): Promise<number | null> {
  const { promise, resolve } = Promise.withResolvers<number | null>();
  const socket = await Bun.udpSocket({
    hostname: isIPv6(host) ? "::" : "0.0.0.0",
    binaryType: "uint8array",
    socket: {
      data(_socket, _payload, fromPort) {
        resolve(fromPort);
      },
      error() {},
    },
  });
  const timer = setTimeout(() => resolve(null), 2000);
  try {
    socket.send(encodeRequest(Opcode.RRQ, file, "octet", []), port, host);
    const learnt = await promise;
    if (learnt !== null) socket.send(encodeError(ErrorCode.NOT_DEFINED, "port learnt"), learnt, host);
    return learnt;
  } finally {
    clearTimeout(timer);
    socket.close();
  }
}

/**
 * Every probe at once (each from its own socket), so the whole measurement takes `seconds`
 * (after the request that learns the transfer port).
 */
export async function measureAmplification(host: string, port: number, file: string, seconds: number): Promise<AmplificationResult[]> {
  const transferPort = await learnTransferPort(host, port, file);
  return Promise.all(AMPLIFICATION_PROBES.map((probe) => probeAmplification(host, port, file, probe, seconds, transferPort)));
}

export function formatAmplification(target: string, file: string, seconds: number, results: readonly AmplificationResult[]): string {
  const width = Math.max(...results.map((r) => r.label.length));
  const lines = results.map((r) => {
    const kinds = Object.entries(r.kinds)
      .map(([kind, n]) => `${kind} ${n}`)
      .join(", ");
    const what = r.datagrams === 0 ? "nothing" : `${r.datagrams} datagram${r.datagrams === 1 ? "" : "s"} (${kinds}), ${r.bytes} B`;
    return `  ${r.label.padEnd(width)}  request ${String(r.requestBytes).padStart(3)} B → ${what}: ${r.factor.toFixed(1)}×\n`;
  });
  return `amplification of ${target}, ${JSON.stringify(file)}, one request each (and the forged ACKs), never answered, ${seconds} s:\n${lines.join("")}`;
}

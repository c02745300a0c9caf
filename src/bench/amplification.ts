/**
 * `tftpd bench --amplification`: what a server sends to an address that asks once and never
 * answers — what one request forged in someone else's name draws onto them. Each probe sends
 * one RRQ from a socket of its own, then only listens, counting what arrives.
 */
import { isIPv6 } from "node:net";
import { decodePacket, encodeRequest } from "../protocol/codec.ts";
import { Opcode } from "../protocol/packet.ts";

export interface AmplificationProbe {
  label: string;
  options: [string, string][];
}

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
];

export interface AmplificationResult {
  label: string;
  /** the request's UDP payload */
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

/** Sends `probe`'s RRQ for `file` to host:port once, and counts what arrives for `seconds`. */
export async function probeAmplification(host: string, port: number, file: string, probe: AmplificationProbe, seconds: number): Promise<AmplificationResult> {
  const request = encodeRequest(Opcode.RRQ, file, "octet", probe.options);
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
    await Bun.sleep(seconds * 1000);
  } finally {
    socket.close();
  }
  return { label: probe.label, requestBytes: request.length, datagrams, bytes, factor: bytes / request.length, kinds };
}

/** Every probe at once (each from its own socket), so the whole measurement takes `seconds`. */
export function measureAmplification(host: string, port: number, file: string, seconds: number): Promise<AmplificationResult[]> {
  return Promise.all(AMPLIFICATION_PROBES.map((probe) => probeAmplification(host, port, file, probe, seconds)));
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
  return `amplification of ${target}, ${JSON.stringify(file)}, one request each, never answered, ${seconds} s:\n${lines.join("")}`;
}

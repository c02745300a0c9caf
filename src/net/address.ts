/**
 * Addresses as people write them, shared by the config schema, the server and the client:
 * listen addresses ("ADDR:PORT", IP literals only), destinations ("HOST[:PORT]", names allowed),
 * CIDRs and port ranges.
 */
import { BlockList, isIP, isIPv4, isIPv6 } from "node:net";
import { describeValue } from "../config/bytes.ts";

export interface ListenAddress extends HostPort {
  /** IP literal without brackets: "0.0.0.0", "::1", "fe80::1%eth0". */
  host: string;
  family: 4 | 6;
}

export type ParseResult<T> = { ok: true; value: T } | { ok: false; error: string };

const LISTEN_HINT = 'expected "ADDR:PORT" with an IPv4 or IPv6 address (IPv6 in brackets, e.g. "[::1]:69")';

function parsePort(text: string, min: number): number | null {
  if (!/^\d{1,5}$/.test(text)) return null;
  const port = Number(text);
  return port >= min && port <= 65535 ? port : null;
}

/**
 * Parse "ADDR:PORT" / "[V6ADDR]:PORT" without throwing. With `defaultPort`, a bare address
 * ("10.0.0.1", "::1", "[::1]") is accepted too. Port 0 is allowed: a listener on port 0 takes
 * any free port and logs which (tests and ad-hoc runs).
 */
export function safeParseListenAddress(
  text: unknown,
  opts: { defaultPort?: number } = {},
): ParseResult<ListenAddress> {
  if (typeof text !== "string") return { ok: false, error: `${LISTEN_HINT}, got ${describeValue(text)}` };
  const got = describeValue(text);
  let host: string;
  let portText: string | undefined;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0) return { ok: false, error: `${LISTEN_HINT}, got ${got} (missing "]")` };
    host = text.slice(1, close);
    const rest = text.slice(close + 1);
    if (rest === "") portText = undefined;
    else if (rest.startsWith(":")) portText = rest.slice(1);
    else return { ok: false, error: `${LISTEN_HINT}, got ${got}` };
    if (!isIPv6(host)) return { ok: false, error: `${JSON.stringify(host)} is not an IPv6 address, in ${got}` };
  } else if (opts.defaultPort !== undefined && (isIPv4(text) || isIPv6(text))) {
    host = text;
    portText = undefined;
  } else {
    const colon = text.lastIndexOf(":");
    if (colon < 0) return { ok: false, error: `${LISTEN_HINT}, got ${got} (no port)` };
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(":")) {
      return { ok: false, error: `${LISTEN_HINT}, got ${got} (put IPv6 addresses in brackets)` };
    }
    if (!isIPv4(host)) return { ok: false, error: `${JSON.stringify(host)} is not an IPv4 address, in ${got}` };
  }
  let port: number;
  if (portText === undefined) {
    if (opts.defaultPort === undefined) return { ok: false, error: `${LISTEN_HINT}, got ${got} (no port)` };
    port = opts.defaultPort;
  } else {
    const p = parsePort(portText, 0);
    if (p === null) return { ok: false, error: `port must be an integer from 0 to 65535, got ${JSON.stringify(portText)} in ${got}` };
    port = p;
  }
  return { ok: true, value: { host, port, family: isIPv6(host) ? 6 : 4 } };
}

/** Parse "ADDR:PORT" / "[V6ADDR]:PORT"; throws an Error with a one-line message when invalid. */
export function parseListenAddress(text: string, opts: { defaultPort?: number } = {}): ListenAddress {
  const r = safeParseListenAddress(text, opts);
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

export interface Cidr {
  /** Network address as written (host bits are allowed and ignored when matching). */
  address: string;
  prefix: number;
  family: 4 | 6;
  /** Canonical text "ADDR/PREFIX". */
  text: string;
}

/** "10.0.0.0/8", "2001:db8::/32"; a bare address means /32 or /128. */
export function safeParseCidr(text: unknown): ParseResult<Cidr> {
  const hint = 'expected a CIDR like "10.0.0.0/8" or "2001:db8::/32" (or a single address)';
  if (typeof text !== "string") return { ok: false, error: `${hint}, got ${describeValue(text)}` };
  const slash = text.indexOf("/");
  const address = slash < 0 ? text : text.slice(0, slash);
  const family = isIPv4(address) ? 4 : isIPv6(address) && !address.includes("%") ? 6 : 0;
  if (family === 0) return { ok: false, error: `${hint}, got ${describeValue(text)}` };
  const max = family === 4 ? 32 : 128;
  let prefix = max;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(p) || Number(p) > max) {
      return { ok: false, error: `prefix length must be 0..${max}, got ${describeValue(text)}` };
    }
    prefix = Number(p);
  }
  return { ok: true, value: { address, prefix, family, text: `${address}/${prefix}` } };
}

/** The IPv4 address inside an IPv4-mapped IPv6 one ("::ffff:10.0.0.1"); any other as it is. */
export function unmappedAddress(address: string): string {
  if (address.length > 7 && address.slice(0, 7).toLowerCase() === "::ffff:") {
    const inner = address.slice(7);
    if (isIPv4(inner)) return inner;
  }
  return address;
}

/** A set of networks to test client addresses against; CIDRs as safeParseCidr accepts them. */
export class CidrList {
  private readonly list = new BlockList();

  constructor(cidrs: readonly string[]) {
    for (const text of cidrs) {
      const cidr = safeParseCidr(text);
      if (!cidr.ok) throw new Error(cidr.error);
      this.list.addSubnet(cidr.value.address, cidr.value.prefix, cidr.value.family === 4 ? "ipv4" : "ipv6");
    }
  }

  /** The address (IPv4-mapped counts as IPv4) lies in one of the networks. */
  has(address: string): boolean {
    const plain = unmappedAddress(address);
    return this.list.check(plain, isIPv4(plain) ? "ipv4" : "ipv6");
  }
}

// HOST[:PORT] as typed on a command line or in a config: `10.0.0.1`, `10.0.0.1:6969`,
// `tftp.example`, `tftp.example:69`, `[::1]:6969`, `[::1]`, or a bare IPv6 literal `::1`.

export const DEFAULT_TFTP_PORT = 69;

export interface HostPort {
  /** Without brackets: an IP literal or a name still to resolve. */
  host: string;
  port: number;
}

/** Local UDP ports transfers may bind, both ends included (tftp.port_range). */
export interface PortRange {
  low: number;
  high: number;
}

function portIn(text: string, spec: string): number {
  if (!/^[0-9]{1,5}$/.test(text)) throw new Error(`bad port "${text}" in "${spec}"`);
  const port = Number(text);
  if (port < 1 || port > 65535) throw new Error(`port out of range in "${spec}"`);
  return port;
}

/**
 * Parses HOST[:PORT]; throws an Error whose message names the problem. `defaultPort` null
 * means the port is required.
 */
export function parseHostPort(spec: string, defaultPort: number | null = DEFAULT_TFTP_PORT): HostPort {
  const text = spec.trim();
  const orDefault = (host: string): HostPort => {
    if (defaultPort === null) throw new Error(`no port in "${spec}"`);
    return { host, port: defaultPort };
  };
  if (text === "") throw new Error("empty host");
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0) throw new Error(`missing "]" in "${spec}"`);
    const host = text.slice(1, close);
    if (isIP(host) !== 6) throw new Error(`bad IPv6 address "${host}" in "${spec}"`);
    const rest = text.slice(close + 1);
    if (rest === "") return orDefault(host);
    if (!rest.startsWith(":")) throw new Error(`unexpected "${rest}" after "]" in "${spec}"`);
    return { host, port: portIn(rest.slice(1), spec) };
  }
  const firstColon = text.indexOf(":");
  if (firstColon < 0) return orDefault(checkName(text, spec));
  if (text.indexOf(":", firstColon + 1) >= 0) {
    // Two or more colons: a bare IPv6 literal, which cannot carry a port.
    if (isIP(text) !== 6) throw new Error(`bad IPv6 address "${text}" (write [addr]:port for a port)`);
    return orDefault(text);
  }
  const host = text.slice(0, firstColon);
  return { host: checkName(host, spec), port: portIn(text.slice(firstColon + 1), spec) };
}

function checkName(host: string, spec: string): string {
  if (host === "") throw new Error(`missing host in "${spec}"`);
  if (isIP(host) === 4) return host;
  // RFC 1123 host names (letters, digits, hyphens, dots); underscores are tolerated.
  if (!/^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$/.test(host)) {
    throw new Error(`bad host name "${host}"`);
  }
  return host;
}

/** `10.0.0.1:69`, `[::1]:69`. */
export function formatHostPort(host: string, port: number): string {
  return isIP(host) === 6 || host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** "host:port" with the port required: Redis nodes in the config. */
export function safeParseHostPort(text: unknown): ParseResult<HostPort> {
  if (typeof text !== "string") return { ok: false, error: `expected "HOST:PORT", got ${describeValue(text)}` };
  try {
    return { ok: true, value: parseHostPort(text, null) };
  } catch (error) {
    return { ok: false, error: `expected "HOST:PORT" (IPv6 in brackets): ${(error as Error).message}` };
  }
}

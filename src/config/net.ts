// Address parsing shared by the config schema, the server and the client.
import { isIPv4, isIPv6 } from "node:net";
import { describeValue } from "./bytes.ts";

export interface ListenAddress {
  /** IP literal without brackets: "0.0.0.0", "::1", "fe80::1%eth0". */
  host: string;
  port: number;
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

/** Format a ListenAddress back to "ADDR:PORT" / "[V6]:PORT". */
export function formatListenAddress(a: { host: string; port: number }): string {
  return a.host.includes(":") ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

export interface HostPort {
  host: string;
  port: number;
}

/** "host:port" where host is a DNS name or an IP literal (IPv6 in brackets): Redis nodes. */
export function safeParseHostPort(text: unknown): ParseResult<HostPort> {
  const hint = 'expected "HOST:PORT" (IPv6 in brackets)';
  if (typeof text !== "string") return { ok: false, error: `${hint}, got ${describeValue(text)}` };
  if (text.startsWith("[")) {
    const r = safeParseListenAddress(text);
    return r.ok ? { ok: true, value: { host: r.value.host, port: r.value.port } } : r;
  }
  const colon = text.lastIndexOf(":");
  if (colon < 0) return { ok: false, error: `${hint}, got ${describeValue(text)} (no port)` };
  const host = text.slice(0, colon);
  const port = parsePort(text.slice(colon + 1), 1);
  if (!/^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(host) && !isIPv4(host)) {
    return { ok: false, error: `${hint}, got ${describeValue(text)}` };
  }
  if (port === null) {
    return { ok: false, error: `port must be an integer from 1 to 65535, got ${describeValue(text.slice(colon + 1))} in ${describeValue(text)}` };
  }
  return { ok: true, value: { host, port } };
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

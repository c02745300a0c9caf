/**
 * HOST[:PORT] as typed on a command line: `10.0.0.1`, `10.0.0.1:6969`, `tftp.example`,
 * `tftp.example:69`, `[::1]:6969`, `[::1]`, or a bare IPv6 literal `::1` (no port then).
 */
import { isIP } from "node:net";

export const DEFAULT_TFTP_PORT = 69;

export interface HostPort {
  /** Without brackets: an IP literal or a name still to resolve. */
  host: string;
  port: number;
}

function parsePort(text: string, spec: string): number {
  if (!/^[0-9]{1,5}$/.test(text)) throw new Error(`bad port "${text}" in "${spec}"`);
  const port = Number(text);
  if (port < 1 || port > 65535) throw new Error(`port out of range in "${spec}"`);
  return port;
}

/** Parses HOST[:PORT]; throws an Error whose message names the problem. */
export function parseHostPort(spec: string, defaultPort: number = DEFAULT_TFTP_PORT): HostPort {
  const text = spec.trim();
  if (text === "") throw new Error("empty host");
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0) throw new Error(`missing "]" in "${spec}"`);
    const host = text.slice(1, close);
    if (isIP(host) !== 6) throw new Error(`bad IPv6 address "${host}" in "${spec}"`);
    const rest = text.slice(close + 1);
    if (rest === "") return { host, port: defaultPort };
    if (!rest.startsWith(":")) throw new Error(`unexpected "${rest}" after "]" in "${spec}"`);
    return { host, port: parsePort(rest.slice(1), spec) };
  }
  const firstColon = text.indexOf(":");
  if (firstColon < 0) return { host: checkName(text, spec), port: defaultPort };
  if (text.indexOf(":", firstColon + 1) >= 0) {
    // Two or more colons: a bare IPv6 literal, which cannot carry a port.
    if (isIP(text) !== 6) throw new Error(`bad IPv6 address "${text}" (write [addr]:port for a port)`);
    return { host: text, port: defaultPort };
  }
  const host = text.slice(0, firstColon);
  return { host: checkName(host, spec), port: parsePort(text.slice(firstColon + 1), spec) };
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

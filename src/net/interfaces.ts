/**
 * Wildcard listen addresses (0.0.0.0, ::) expand to every address configured on the
 * machine's interfaces at start-up, one request socket each, so that every transfer can bind
 * the address its request arrived on and reply from it. A socket bound to the wildcard cannot
 * tell: Bun's UDP sockets do not report a datagram's destination address (no IP_PKTINFO).
 * dnsmasq's --bind-interfaces takes the same approach; interfaces that appear later need a
 * restart or an explicit listen address.
 */
import { readFileSync } from "node:fs";
import { networkInterfaces } from "node:os";
import type { HostPort } from "./address.ts";

export interface Expansion {
  addresses: HostPort[];
  /** addresses left out, with why (IPv6 link-local needs a scope the socket API lacks) */
  skipped: string[];
}

export function isWildcard(host: string): boolean {
  return host === "0.0.0.0" || host === "::";
}

export function expandListenAddresses(
  listen: readonly HostPort[],
  interfaces = networkInterfaces(),
): Expansion {
  const addresses: HostPort[] = [];
  const skipped: string[] = [];
  const seen = new Set<string>();
  const add = (host: string, port: number): void => {
    const key = `${host}|${port}`;
    if (seen.has(key)) return;
    seen.add(key);
    addresses.push({ host, port });
  };
  for (const { host, port } of listen) {
    if (!isWildcard(host)) {
      add(host, port);
      continue;
    }
    const family = host === "::" ? "IPv6" : "IPv4";
    for (const [name, infos] of Object.entries(interfaces)) {
      for (const info of infos ?? []) {
        if (info.family !== family) continue;
        if (family === "IPv6" && info.address.toLowerCase().startsWith("fe80:")) {
          skipped.push(`${info.address}%${name} (link-local)`);
          continue;
        }
        add(info.address, port);
      }
    }
  }
  return { addresses, skipped };
}

/**
 * The MTU of the interface that holds `address` (from /sys/class/net), or null when no
 * interface holds it or the MTU cannot be read.
 */
export function interfaceMtu(
  address: string,
  interfaces = networkInterfaces(),
  readMtu: (name: string) => string = (name) => readFileSync(`/sys/class/net/${name}/mtu`, "utf8"),
): number | null {
  for (const [name, infos] of Object.entries(interfaces)) {
    if (!(infos ?? []).some((info) => info.address === address)) continue;
    try {
      const mtu = Number.parseInt(readMtu(name), 10);
      return Number.isFinite(mtu) && mtu > 0 ? mtu : null;
    } catch {
      return null;
    }
  }
  return null;
}

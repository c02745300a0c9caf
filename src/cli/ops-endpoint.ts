/** Talking to a running server's metrics/control endpoint, for `tftpd metrics` and `tftpd profile`. */
import { formatHostPort, parseListenAddress } from "../net/address.ts";
import { isWildcard } from "../net/interfaces.ts";
import { fail } from "./args.ts";
import { fleetConfig } from "./fleet-link.ts";

/**
 * The endpoint's base URL, without a trailing slash: --url, else the `metrics.listen` of the
 * config the server runs with (`--config`, else the default file, and the TFTPD_* environment,
 * as `serve` loads it; a wildcard address is asked on loopback).
 */
export function opsBase(command: string, url: string | undefined, configFile: string | undefined): string {
  if (url !== undefined) return url.replace(/\/+$/, "");
  const config = fleetConfig(command, configFile);
  if (!config.metrics.enabled) fail(command, "metrics.enabled is false in the config: the server has no metrics endpoint to ask (--url names one)");
  const at = parseListenAddress(config.metrics.listen);
  const host = isWildcard(at.host) ? (at.host.includes(":") ? "::1" : "127.0.0.1") : at.host;
  return `http://${formatHostPort(host, at.port)}`;
}

/** GET `url`; any failure is one line naming the URL, and the command exits 1. */
export async function opsGet(command: string, url: string, timeoutMs: number, hint: string): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  } catch (error) {
    fail(command, `${url}: ${(error as Error).message} (${hint})`);
  }
  if (!response.ok) fail(command, `${url}: HTTP ${response.status}: ${(await response.text()).trim()}`);
  return response;
}

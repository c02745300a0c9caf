/**
 * Binding a socket to a port of a configured range (firewalls that open only a range to
 * transfers), or to a port the kernel picks when there is no range.
 */
import type { PortRange } from "./address.ts";

/** A port another socket holds (or one we may not bind): the next port of the range may do. */
function isPortTaken(error: unknown): boolean {
  const code = (error as { code?: string } | null)?.code;
  return code === "EADDRINUSE" || code === "EACCES";
}

/**
 * Calls `bind` with the ports of `range` until one binds, starting at a random one so that
 * sockets opened together spread over the range instead of all trying its first ports; with
 * no range, `bind(0)`. Any failure but a taken port ends the search with that failure.
 */
export async function bindInPortRange<T>(
  address: string,
  range: PortRange | null,
  bind: (port: number) => Promise<T>,
): Promise<T> {
  if (range === null) return bind(0);
  const span = range.high - range.low + 1;
  const start = Math.floor(Math.random() * span);
  for (let i = 0; i < span; i++) {
    try {
      return await bind(range.low + ((start + i) % span));
    } catch (error) {
      if (!isPortTaken(error)) throw error;
    }
  }
  throw new Error(`no free transfer port in ${range.low}:${range.high} on ${address}`);
}

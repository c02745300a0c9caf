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
 *
 * A `bind` that answers at once (the epoll loop's sockets: plain system calls) is answered at
 * once, so a transfer's first packet can leave in the turn its request was read; one that
 * answers with a promise (Bun's sockets) is waited for, port by port.
 */
export function bindInPortRange<T>(address: string, range: PortRange | null, bind: (port: number) => Promise<T>): Promise<T>;
export function bindInPortRange<T>(address: string, range: PortRange | null, bind: (port: number) => T): T;
export function bindInPortRange<T>(address: string, range: PortRange | null, bind: (port: number) => T | Promise<T>): T | Promise<T> {
  if (range === null) return bind(0);
  const span = range.high - range.low + 1;
  const start = Math.floor(Math.random() * span);
  const tryFrom = (first: number): T | Promise<T> => {
    for (let i = first; i < span; i++) {
      let bound: T | Promise<T>;
      try {
        bound = bind(range.low + ((start + i) % span));
      } catch (error) {
        if (isPortTaken(error)) continue;
        throw error;
      }
      if (!(bound instanceof Promise)) return bound;
      return bound.catch((error: unknown) => {
        if (!isPortTaken(error)) throw error;
        return tryFrom(i + 1);
      });
    }
    throw new Error(`no free transfer port in ${range.low}:${range.high} on ${address}`);
  };
  return tryFrom(0);
}

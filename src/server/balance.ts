/**
 * Which worker owns a new transfer (load_balancing.algorithm):
 * - round_robin: each in turn;
 * - least_connections: the one with the fewest transfers running;
 * - consistent_hashing: a hash ring over `hash_key` (the client's address, its address and
 *   port, or the file name), so the same key keeps landing on the same worker and only 1/N of
 *   keys move when a worker is added or removed.
 */
export type Algorithm = "round_robin" | "least_connections" | "consistent_hashing";
export type HashKey = "client_ip" | "client_port" | "filename";

export interface BalanceInput {
  clientAddress: string;
  clientPort: number;
  filename: string;
}

/** Points per worker on the ring: enough to even out the arcs. */
const VIRTUAL_NODES = 128;

/** FNV-1a, 32 bits: fast and well spread for short keys. */
function fnv1a(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

/**
 * FNV-1a then MurmurHash3's finalizer: FNV alone barely changes the high bits when only the
 * last characters differ ("worker-0-1", "worker-0-2", "10.0.0.7"), so ring points and keys
 * would bunch up on a few arcs. The finalizer spreads every input bit over the whole word.
 */
function ringHash(text: string): number {
  let h = fnv1a(text);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

export class LoadBalancer {
  private next = 0;
  private ring: { point: number; worker: number }[] = [];

  constructor(
    private readonly algorithm: Algorithm,
    private readonly hashKey: HashKey,
    workers: number,
  ) {
    this.resize(workers);
  }

  resize(workers: number): void {
    this.ring = [];
    for (let worker = 0; worker < workers; worker++) {
      for (let v = 0; v < VIRTUAL_NODES; v++) this.ring.push({ point: ringHash(`worker-${worker}-${v}`), worker });
    }
    this.ring.sort((a, b) => a.point - b.point);
  }

  /** @param loads transfers running on each worker */
  pick(input: BalanceInput, loads: readonly number[]): number {
    const n = loads.length;
    if (n <= 1) return 0;
    switch (this.algorithm) {
      case "round_robin":
        this.next = (this.next + 1) % n;
        return this.next;
      case "least_connections": {
        let best = 0;
        for (let i = 1; i < n; i++) if (loads[i]! < loads[best]!) best = i;
        return best;
      }
      case "consistent_hashing":
        return this.onRing(ringHash(this.keyOf(input)));
    }
  }

  private keyOf(input: BalanceInput): string {
    switch (this.hashKey) {
      case "client_ip":
        return input.clientAddress;
      case "client_port":
        return `${input.clientAddress}|${input.clientPort}`;
      case "filename":
        return input.filename;
    }
  }

  private onRing(hash: number): number {
    // first point at or after the hash, wrapping around
    let lo = 0;
    let hi = this.ring.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ring[mid]!.point < hash) lo = mid + 1;
      else hi = mid;
    }
    return this.ring[lo % this.ring.length]!.worker;
  }
}

/**
 * Admission control (limits.*): how many transfers may run at once in all, per client
 * address, and per client — one client being one address asking for one file (a ROM stuck in
 * a retry loop, or one machine fetching the same initrd over and over) — and how much memory
 * they may hold together. A request over a limit is dropped (the ROM retries later) or
 * answered "busy", as configured.
 */
export interface AdmissionLimits {
  maxTotal: number;
  maxPerIp: number;
  maxPerClient: number;
  /** bytes the running transfers may reserve together (limits.max_transfer_memory); absent: no budget */
  maxMemory?: number;
}

/** The limit a refused request ran into. */
export type LimitName = "total" | "per-ip" | "per-client" | "memory";

/**
 * What one running transfer holds beyond the buffers all transfers share (the file cache, the
 * send arena its DATA packets are built in): its state machine, channel, retransmit timer and
 * records. The same for uploads, which write each block through to their file as it arrives.
 * An estimate rounded up from what a half-open or idle transfer measures
 * (build/slot-memory.ts), so a budget of B bytes runs at most B / this many plain transfers.
 */
export const TRANSFER_MEMORY_BYTES = 8 * 1024;

/** A shared admission's answer: a token to give back, a refusal, or "could not ask". */
export type SharedVerdict =
  | { ok: true; token: string }
  | { ok: false; refusal: LimitName }
  | { ok: false; refusal: "unavailable"; error: string };

/**
 * Limits counted beyond this node (the fleet's, `limits.scope: cluster`), asked after the
 * node's own Admission admitted a request. "unavailable" (the shared store is out of reach)
 * admits: the node's own limits still hold.
 */
export interface SharedAdmission {
  acquire(address: string, limits: AdmissionLimits): Promise<SharedVerdict>;
  /** gives back a token from acquire(); never fails */
  release(token: string, address: string): void;
}

export class Admission {
  private total = 0;
  private reserved = 0;
  private readonly perIp = new Map<string, number>();
  private readonly perClient = new Map<string, number>();

  constructor(private limits: AdmissionLimits) {}

  /** New limits apply to the next admit(); transfers over a lowered limit run to their end. */
  setLimits(limits: AdmissionLimits): void {
    this.limits = limits;
  }

  get running(): number {
    return this.total;
  }

  /** bytes reserved by the running transfers */
  get reservedMemory(): number {
    return this.reserved;
  }

  /** the memory budget; Infinity when there is none */
  get memoryBudget(): number {
    return this.limits.maxMemory ?? Infinity;
  }

  /** Takes a slot and reserves `memory` bytes for it, or says which limit refused it. */
  admit(address: string, file: string, memory = 0): LimitName | null {
    if (this.total >= this.limits.maxTotal) return "total";
    const ip = this.perIp.get(address) ?? 0;
    if (ip >= this.limits.maxPerIp) return "per-ip";
    const clientKey = `${address}|${file}`;
    const client = this.perClient.get(clientKey) ?? 0;
    if (client >= this.limits.maxPerClient) return "per-client";
    if (!this.reserve(memory)) return "memory";
    this.total++;
    this.perIp.set(address, ip + 1);
    this.perClient.set(clientKey, client + 1);
    return null;
  }

  /**
   * Gives back a slot taken by admit() and `memory` bytes reserved for it (by admit and
   * reserve); a release with no slot held is ignored.
   */
  release(address: string, file: string, memory = 0): void {
    const clientKey = `${address}|${file}`;
    if (!this.perClient.has(clientKey)) return;
    this.total--;
    this.unreserve(memory);
    decrement(this.perIp, address);
    decrement(this.perClient, clientKey);
  }

  /**
   * Reserves `bytes` more for an admitted transfer (a copy of its own it is about to make);
   * false, reserving nothing, when that would pass the budget. A lowered budget refuses
   * until enough has been given back.
   */
  reserve(bytes: number): boolean {
    if (bytes > 0 && this.reserved + bytes > this.memoryBudget) return false;
    this.reserved += bytes;
    return true;
  }

  /** Gives back bytes taken by reserve() without ending the transfer (its copy turned out smaller). */
  unreserve(bytes: number): void {
    this.reserved = Math.max(0, this.reserved - bytes);
  }
}

function decrement(map: Map<string, number>, key: string): void {
  const n = (map.get(key) ?? 0) - 1;
  if (n > 0) map.set(key, n);
  else map.delete(key);
}

/**
 * Admission control (limits.*): how many transfers may run at once in all, per client
 * address, and per client — one client being one address asking for one file (a ROM stuck in
 * a retry loop, or one machine fetching the same initrd over and over). A request over a
 * limit is dropped (the ROM retries later) or answered "busy", as configured.
 */
export interface AdmissionLimits {
  maxTotal: number;
  maxPerIp: number;
  maxPerClient: number;
}

export type Refusal = "total" | "per-ip" | "per-client";

/** A shared admission's answer: a token to give back, a refusal, or "could not ask". */
export type SharedVerdict =
  | { ok: true; token: string }
  | { ok: false; refusal: Refusal }
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

  /** Takes a slot, or says which limit refused it. */
  admit(address: string, file: string): Refusal | null {
    if (this.total >= this.limits.maxTotal) return "total";
    const ip = this.perIp.get(address) ?? 0;
    if (ip >= this.limits.maxPerIp) return "per-ip";
    const clientKey = `${address}|${file}`;
    const client = this.perClient.get(clientKey) ?? 0;
    if (client >= this.limits.maxPerClient) return "per-client";
    this.total++;
    this.perIp.set(address, ip + 1);
    this.perClient.set(clientKey, client + 1);
    return null;
  }

  /** Gives back a slot taken by admit(); a release with no slot held is ignored. */
  release(address: string, file: string): void {
    const clientKey = `${address}|${file}`;
    if (!this.perClient.has(clientKey)) return;
    this.total--;
    decrement(this.perIp, address);
    decrement(this.perClient, clientKey);
  }
}

function decrement(map: Map<string, number>, key: string): void {
  const n = (map.get(key) ?? 0) - 1;
  if (n > 0) map.set(key, n);
  else map.delete(key);
}

/**
 * Admission control (limits.*): how many transfers may run at once in all, per client
 * address, and per client — one client being one address asking for one file (a ROM stuck in
 * a retry loop, or one machine fetching the same initrd over and over) — and how much memory
 * they may hold together. A request over a limit is dropped (the ROM retries later) or
 * answered "busy", as configured.
 */
import { AdmissionState } from "./admission-state.ts";

/** Most distinct clients an admission table holds at once: past it, new ones are refused as over "total". */
const MAX_TABLE_KEYS = 1 << 18;

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

/**
 * The node's admission: its counts in an AdmissionState, which other threads may share (pass
 * its buffer to them and build an Admission on it there); each Admission keeps its own limits.
 */
export class Admission {
  readonly state: AdmissionState;

  constructor(
    private limits: AdmissionLimits,
    state?: AdmissionState,
  ) {
    // room for as many clients as transfers may run, within what a table may sensibly hold
    this.state = state ?? AdmissionState.create(Math.min(limits.maxTotal, MAX_TABLE_KEYS));
  }

  /** New limits apply to the next admit(); transfers over a lowered limit run to their end. */
  setLimits(limits: AdmissionLimits): void {
    this.limits = limits;
  }

  get running(): number {
    return this.state.locked(() => this.state.total);
  }

  /** bytes reserved by the running transfers */
  get reservedMemory(): number {
    return this.state.locked(() => this.state.reserved);
  }

  /** the memory budget; Infinity when there is none */
  get memoryBudget(): number {
    return this.limits.maxMemory ?? Infinity;
  }

  /** Takes a slot and reserves `memory` bytes for it, or says which limit refused it. */
  admit(address: string, file: string, memory = 0): LimitName | null {
    const limits = this.limits;
    const state = this.state;
    const clientKey = `${address}|${file}`;
    return state.locked(() => {
      if (state.total >= limits.maxTotal) return "total";
      if (state.count("ip", address) >= limits.maxPerIp) return "per-ip";
      if (state.count("client", clientKey) >= limits.maxPerClient) return "per-client";
      if (memory > 0 && state.reserved + memory > this.memoryBudget) return "memory";
      if (!state.increment("ip", address)) return "total";
      if (!state.increment("client", clientKey)) {
        state.decrement("ip", address);
        return "total";
      }
      state.total++;
      state.reserved += memory;
      return null;
    });
  }

  /**
   * Gives back a slot taken by admit() and `memory` bytes reserved for it (by admit and
   * reserve); a release with no slot held is ignored.
   */
  release(address: string, file: string, memory = 0): void {
    const state = this.state;
    const clientKey = `${address}|${file}`;
    state.locked(() => {
      if (!state.decrement("client", clientKey)) return;
      state.decrement("ip", address);
      state.total--;
      state.reserved = Math.max(0, state.reserved - memory);
    });
  }

  /**
   * Reserves `bytes` more for an admitted transfer (a copy of its own it is about to make);
   * false, reserving nothing, when that would pass the budget. A lowered budget refuses
   * until enough has been given back.
   */
  reserve(bytes: number): boolean {
    const state = this.state;
    return state.locked(() => {
      if (bytes > 0 && state.reserved + bytes > this.memoryBudget) return false;
      state.reserved += bytes;
      return true;
    });
  }

  /** Gives back bytes taken by reserve() without ending the transfer (its copy turned out smaller). */
  unreserve(bytes: number): void {
    const state = this.state;
    state.locked(() => {
      state.reserved = Math.max(0, state.reserved - bytes);
    });
  }
}

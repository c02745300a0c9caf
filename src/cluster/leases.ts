/**
 * Transfer limits counted across the fleet (`limits.scope: cluster`). Every running transfer
 * holds a lease: a member of the per-address sorted set and of the fleet-wide one, scored by
 * its expiry. A node renews the leases it holds; a node that dies stops renewing, and its
 * leases drop out of the count once they expire — no counter can leak.
 *
 * Time: every expiry is written and compared by the Redis server that owns the key
 * (`redis.call('TIME')` inside the scripts), never by the nodes' clocks. One key's scores thus
 * all come from one clock, so a node whose clock runs fast cannot purge the live leases of
 * the others, nor one running slow keep its own alive for longer. (Redis 7 replicates a
 * script's effects, not the script, so a script may read TIME before it writes.)
 *
 * The per-address set and the fleet-wide set live in different slots of the cluster: each is
 * taken by a script of its own — the address first, then the total — and a refusal of the
 * total gives the address's lease back.
 */
import type { AdmissionLimits, SharedAdmission, SharedVerdict } from "../server/admission.ts";
import type { RedisClient, RedisLink } from "./redis.ts";

/** Drops expired leases, then adds one if fewer than the limit remain. 1 taken, 0 refused. */
const TAKE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return 1
`;

/**
 * Moves the expiry of the leases named (those still there: XX never brings back a lease
 * released meanwhile) to now + lease. Returns how many were renewed.
 */
const RENEW = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + lease, ARGV[i])
end
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return renewed
`;

/** Members per renewal command: a node with many transfers never sends one huge script call. */
const RENEW_BATCH = 1000;

interface LeaseCommands {
  tftpdLeaseTake(key: string, lease: string, limit: number, leaseMs: number): Promise<number>;
  tftpdLeaseRenew(key: string, leaseMs: number, ...leases: string[]): Promise<number>;
}

export type LeaseResult =
  | { ok: true; lease: string }
  | { ok: false; refusal: "per-ip" | "total" }
  | { ok: false; refusal: "unavailable"; error: string };

export interface LeaseOptions {
  /** names this node in its lease ids: unique in the fleet (host name and pid) */
  nodeId: string;
  /** how long a lease lives without renewal: how long a dead node's transfers still count */
  leaseMs?: number;
  /** how often held leases are renewed; well below leaseMs, so one failed renewal costs nothing */
  renewMs?: number;
}

export class ClusterLeases {
  readonly nodeId: string;
  readonly leaseMs: number;
  readonly renewMs: number;
  private readonly commands: LeaseCommands;
  /** lease id → client address, of every lease this node holds */
  private readonly holding = new Map<string, string>();
  private counter = 0;
  private renewing = false;
  private stopped = false;
  private readonly timer: ReturnType<typeof setInterval>;

  constructor(
    private readonly link: RedisLink,
    options: LeaseOptions,
  ) {
    this.nodeId = options.nodeId;
    this.leaseMs = options.leaseMs ?? 30_000;
    this.renewMs = options.renewMs ?? 10_000;
    if (this.renewMs >= this.leaseMs) throw new Error(`lease renewal every ${this.renewMs} ms must come before leases expire (${this.leaseMs} ms)`);
    const client: RedisClient = link.client;
    client.defineCommand("tftpdLeaseTake", { numberOfKeys: 1, lua: TAKE });
    client.defineCommand("tftpdLeaseRenew", { numberOfKeys: 1, lua: RENEW });
    this.commands = client as unknown as LeaseCommands;
    this.timer = setInterval(() => void this.renew(), this.renewMs);
    this.timer.unref();
  }

  /** leases this node holds: its transfers counted by the fleet */
  get held(): number {
    return this.holding.size;
  }

  /**
   * Takes a lease for a transfer of `address`, or says which fleet-wide limit refused it, or
   * that Redis could not answer within the link's command timeout.
   */
  async acquire(address: string, limits: { maxPerIp: number; maxTotal: number }): Promise<LeaseResult> {
    if (this.stopped) return { ok: false, refusal: "unavailable", error: "leases stopped" };
    if (!this.link.up) return { ok: false, refusal: "unavailable", error: this.link.lastError ?? `redis ${this.link.state}` };
    const lease = `${this.nodeId}:${++this.counter}`;
    const ipKey = this.link.keys.leasesOfIp(address);
    const totalKey = this.link.keys.leasesTotal;
    const deadline = performance.now() + this.link.settings.commandTimeoutMs;

    const ipTake = this.commands.tftpdLeaseTake(ipKey, lease, limits.maxPerIp, this.leaseMs);
    let ipTaken: number;
    try {
      ipTaken = await bounded(ipTake, deadline);
    } catch (error) {
      // the script may still run: give its lease back once it has answered
      this.removeAfter(ipTake, ipKey, lease);
      return unavailable(error);
    }
    if (ipTaken !== 1) return { ok: false, refusal: "per-ip" };

    const totalTake = this.commands.tftpdLeaseTake(totalKey, lease, limits.maxTotal, this.leaseMs);
    let totalTaken: number;
    try {
      totalTaken = await bounded(totalTake, deadline);
    } catch (error) {
      void this.remove(ipKey, lease);
      this.removeAfter(totalTake, totalKey, lease);
      return unavailable(error);
    }
    if (totalTaken !== 1) {
      await this.remove(ipKey, lease);
      return { ok: false, refusal: "total" };
    }
    if (this.stopped) {
      await this.release(lease, address);
      return { ok: false, refusal: "unavailable", error: "leases stopped" };
    }
    this.holding.set(lease, address);
    return { ok: true, lease };
  }

  /** Gives a lease back. Never fails: a lease that could not be removed expires by itself. */
  async release(lease: string, address: string): Promise<void> {
    this.holding.delete(lease);
    await Promise.all([this.remove(this.link.keys.leasesOfIp(address), lease), this.remove(this.link.keys.leasesTotal, lease)]);
  }

  /**
   * Extends every held lease to now + leaseMs: one script call per client address and one (per
   * RENEW_BATCH leases) for the total, all sent at once. A lease that expired meanwhile (Redis
   * was out of reach for longer than leaseMs) is not brought back: its transfer runs on
   * uncounted until it ends.
   */
  async renew(): Promise<void> {
    if (this.renewing || this.stopped || this.holding.size === 0 || !this.link.up) return;
    this.renewing = true;
    try {
      const byAddress = new Map<string, string[]>();
      for (const [lease, address] of this.holding) {
        const leases = byAddress.get(address);
        if (leases) leases.push(lease);
        else byAddress.set(address, [lease]);
      }
      const calls: Promise<number>[] = [];
      const send = (key: string, leases: string[]): void => {
        for (let i = 0; i < leases.length; i += RENEW_BATCH) {
          calls.push(this.commands.tftpdLeaseRenew(key, this.leaseMs, ...leases.slice(i, i + RENEW_BATCH)));
        }
      };
      for (const [address, leases] of byAddress) send(this.link.keys.leasesOfIp(address), leases);
      send(this.link.keys.leasesTotal, [...this.holding.keys()]);
      await Promise.allSettled(calls);
    } finally {
      this.renewing = false;
    }
  }

  /** Stops renewing and gives back every lease held (best effort, bounded by the command timeout). */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    const held = [...this.holding];
    this.holding.clear();
    if (!this.link.up) return;
    await Promise.all(held.map(([lease, address]) => this.release(lease, address)));
  }

  private async remove(key: string, lease: string): Promise<void> {
    try {
      await this.link.client.zrem(key, lease);
    } catch {
      // it expires anyway
    }
  }

  private removeAfter(command: Promise<unknown>, key: string, lease: string): void {
    const remove = (): void => void this.remove(key, lease);
    command.then(remove, remove);
  }
}

/** The server's view of the leases: its admission limits, counted across the fleet. */
export function leaseAdmission(leases: ClusterLeases): SharedAdmission {
  return {
    async acquire(address: string, limits: AdmissionLimits): Promise<SharedVerdict> {
      const result = await leases.acquire(address, limits);
      return result.ok ? { ok: true, token: result.lease } : result;
    },
    release(token: string, address: string): void {
      void leases.release(token, address);
    },
  };
}

function unavailable(error: unknown): { ok: false; refusal: "unavailable"; error: string } {
  return { ok: false, refusal: "unavailable", error: error instanceof Error ? error.message : String(error) };
}

/** `promise`, or a rejection once `deadline` (performance.now() time) has passed. */
function bounded<T>(promise: Promise<T>, deadline: number): Promise<T> {
  const left = deadline - performance.now();
  if (left <= 0) return Promise.reject(new Error("redis command timed out"));
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`redis did not answer within ${Math.round(left)} ms`)), left);
    }),
  ]);
}

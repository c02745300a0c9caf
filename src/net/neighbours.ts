/**
 * A client's MAC address from the kernel's neighbour tables, as dnsmasq's
 * `--tftp-unique-root=mac` finds it: IPv4 from `/proc/self/net/arp` (the table of the reader's
 * network namespace; `/proc/net` is hidden under systemd's ProcSubset=pid, `/proc/self/net` is
 * not), IPv6 from `ip -j -6 neigh show` (the kernel has no /proc file for it; iproute2 asks over
 * netlink). A client on a directly attached network is in the table because it resolved the
 * server's address (ARP, neighbour solicitation) before it could send its request; a client
 * behind a router never is, and its lookups give null.
 *
 * A boot storm asks for thousands of clients a second, so lookups share table reads: a read
 * serves every lookup for `refreshMs` after it began, concurrent lookups wait for the same read,
 * and reads begin at most once per `refreshMs`. A lookup that misses waits for one read begun
 * after it asked (its client may have arrived after the last read), and no more; a client
 * confirmed absent by such a read is answered null at once until the next read.
 */
import { readFile } from "node:fs/promises";
import { isIPv4 } from "node:net";
import { addressHex, clientAddressText } from "./client-address.ts";

export interface Neighbours {
  /** The MAC of a neighbour as lower-case `aa:bb:cc:dd:ee:ff`, or null (unknown, or unreadable). */
  macOf(address: string): Promise<string | null>;
}

/** dnsmasq's directory form of a MAC: `aa-bb-cc-dd-ee-ff` (six bytes, lower case, no ARP type prefix). */
export function macDirectoryName(mac: string): string {
  return mac.toLowerCase().replaceAll(":", "-");
}

/** Neighbour entries, by the key `neighbourKey` gives an address. */
export type NeighbourEntries = Map<string, string>;

const ETHERNET_MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const NO_MAC = "00:00:00:00:00:00";
/** /proc/net/arp's Flags column: ATF_COM, the entry is resolved. */
const ATF_COM = 0x2;
/** Neighbour states without a usable link-layer address (a stale FAILED entry may still show one). */
const UNRESOLVED_STATES = new Set(["FAILED", "INCOMPLETE"]);

/**
 * How an address is looked up: IPv4 (and IPv4-mapped) as dotted text, IPv6 as its 32 hex digits
 * so that any spelling of the same address meets; null for anything else.
 */
export function neighbourKey(address: string): string | null {
  const text = clientAddressText(address);
  if (isIPv4(text)) return text;
  const hex = addressHex(text);
  return hex === "" ? null : hex;
}

function normalizedMac(text: string): string | null {
  const mac = text.toLowerCase();
  return ETHERNET_MAC.test(mac) && mac !== NO_MAC ? mac : null;
}


/**
 * `/proc/net/arp`: a header line, then `IP HWtype Flags HWaddress Mask Device` per entry. Only
 * resolved entries with an Ethernet address count.
 */
export function parseProcNetArp(text: string): NeighbourEntries {
  const entries: NeighbourEntries = new Map();
  const lines = text.split("\n");
  for (let i = 1; i < lines.length; i++) {
    const [address, , flags, hwAddress] = lines[i]!.trim().split(/\s+/);
    if (address === undefined || flags === undefined || hwAddress === undefined) continue;
    if ((parseInt(flags, 16) & ATF_COM) === 0) continue;
    const mac = normalizedMac(hwAddress);
    // the same address on two interfaces: the first
    if (mac !== null && !entries.has(address) && isIPv4(address)) entries.set(address, mac);
  }
  return entries;
}

interface IpNeighbour {
  dst?: unknown;
  dev?: unknown;
  lladdr?: unknown;
  state?: unknown;
}

/**
 * `ip -j neigh show`: a JSON array of `{dst, dev, lladdr?, state: [...]}`; anything else gives no
 * entries. `keyOf` is `neighbourKey`, or a memo of it (see `rememberedKeys`).
 */
export function parseIpNeighJson(text: string, keyOf: (address: string) => string | null = neighbourKey): NeighbourEntries {
  const entries: NeighbourEntries = new Map();
  let list: unknown;
  try {
    list = JSON.parse(text);
  } catch {
    return entries;
  }
  if (!Array.isArray(list)) return entries;
  for (const item of list as IpNeighbour[]) {
    if (typeof item !== "object" || item === null) continue;
    const { dst, dev, lladdr, state } = item;
    if (typeof dst !== "string" || typeof lladdr !== "string") continue;
    if (Array.isArray(state) && state.some((s) => UNRESOLVED_STATES.has(String(s)))) continue;
    const mac = normalizedMac(lladdr);
    const key = mac === null ? null : keyOf(dst);
    if (key === null) continue;
    // the first entry for an address, and per interface the one on it: link-local addresses
    // repeat across links, and a link-local client's zone names its interface
    if (!entries.has(key)) entries.set(key, mac!);
    if (typeof dev === "string" && dev !== "") entries.set(`${key}%${dev}`, mac!);
  }
  return entries;
}

/** Bounds the keys remembered between reads: past it, they are forgotten and made again. */
const MAX_REMEMBERED_KEYS = 100_000;

/**
 * `neighbourKey` remembering its answers: a table read meets the same addresses as the read
 * before, and parsing an IPv6 address costs far more than finding it in a map.
 */
export function rememberedKeys(): (address: string) => string | null {
  const keys = new Map<string, string | null>();
  return (address) => {
    let key = keys.get(address);
    if (key === undefined) {
      if (keys.size >= MAX_REMEMBERED_KEYS) keys.clear();
      key = neighbourKey(address);
      keys.set(address, key);
    }
    return key;
  };
}

export interface Clock {
  now(): number;
  sleep(ms: number): Promise<void>;
}

const realClock: Clock = { now: () => performance.now(), sleep: (ms) => Bun.sleep(ms) };

interface Snapshot {
  readonly startedAt: number;
  readonly entries: NeighbourEntries;
  /** keys a lookup waited for this read to confirm absent */
  readonly absent: Set<string>;
}

/** Bounds the memory a flood of distinct absent addresses can take between two reads. */
const MAX_ABSENT = 65_536;

/** One neighbour table, read on demand and shared between lookups (see the module comment). */
class SharedTable {
  private current: Snapshot | null = null;
  private inflight: { readonly startedAt: number; readonly done: Promise<Snapshot> } | null = null;
  private queued: Promise<Snapshot> | null = null;
  private lastStart = Number.NEGATIVE_INFINITY;
  /** table reads begun */
  reads = 0;

  constructor(
    private readonly read: () => Promise<NeighbourEntries>,
    private readonly refreshMs: number,
    private readonly clock: Clock,
    private readonly failed: (error: unknown) => void,
  ) {}

  async lookup(key: string): Promise<string | null> {
    const asked = this.clock.now();
    const known = this.current;
    if (known !== null && asked - known.startedAt < this.refreshMs) {
      const mac = known.entries.get(key);
      if (mac !== undefined) return mac;
      if (known.absent.has(key)) return null;
    }
    const fresh = await this.readBegunSince(asked);
    const mac = fresh.entries.get(key);
    if (mac !== undefined) return mac;
    if (fresh.absent.size < MAX_ABSENT) fresh.absent.add(key);
    return null;
  }

  /** A read begun at `since` or later: the one under way, else the next (at most one queued). */
  private readBegunSince(since: number): Promise<Snapshot> {
    if (this.inflight !== null && this.inflight.startedAt >= since) return this.inflight.done;
    if (this.queued !== null) return this.queued;
    if (this.inflight === null && this.clock.now() - this.lastStart >= this.refreshMs) return this.begin();
    // awaits before it clears `queued`, so `queued` is set by then
    this.queued = (async () => {
      if (this.inflight !== null) await this.inflight.done;
      await this.clock.sleep(Math.max(0, this.lastStart + this.refreshMs - this.clock.now()));
      this.queued = null;
      return this.begin();
    })();
    return this.queued;
  }

  private begin(): Promise<Snapshot> {
    const startedAt = this.clock.now();
    this.lastStart = startedAt;
    this.reads++;
    const done = Promise.resolve()
      .then(() => this.read())
      .catch((error: unknown): NeighbourEntries => {
        try {
          this.failed(error);
        } catch {
          // a failing reporter must not stall the table
        }
        return new Map();
      })
      .then((entries) => {
        const snapshot: Snapshot = { startedAt, entries, absent: new Set() };
        this.current = snapshot;
        this.inflight = null;
        return snapshot;
      });
    this.inflight = { startedAt, done };
    return done;
  }
}

/** Where the tables come from; the defaults read this process's network namespace. */
export interface NeighbourSources {
  /** the text of /proc/net/arp */
  ipv4(): Promise<string>;
  /** the output of `ip -j -6 neigh show` */
  ipv6(): Promise<string>;
}

const IP_READ_TIMEOUT_MS = 2_000;
const IP_SEARCH_PATH = "/usr/sbin:/usr/bin:/sbin:/bin";

function findIp(): string | null {
  return Bun.which("ip", { PATH: `${process.env.PATH ?? ""}:${IP_SEARCH_PATH}` });
}

let ipPath: string | null | undefined;

/** Runs `ip -j -6 neigh show`, bounded in time; rejects when it cannot run or fails. */
async function runIpNeigh(): Promise<string> {
  ipPath ??= findIp();
  if (ipPath === null) throw new Error("the ip command (iproute2) is not installed");
  const proc = Bun.spawn([ipPath, "-j", "-6", "neigh", "show"], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => proc.kill("SIGKILL"), IP_READ_TIMEOUT_MS);
  try {
    const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    if (code !== 0) throw new Error(`ip -j -6 neigh show exited ${code}: ${err.trim().slice(0, 200)}`);
    return out;
  } finally {
    clearTimeout(timer);
  }
}

const kernelSources: NeighbourSources = {
  ipv4: () => readFile("/proc/self/net/arp", "utf8"),
  ipv6: runIpNeigh,
};

export interface NeighbourOptions {
  /** how long one table read serves lookups, and the least time between two reads (250 ms) */
  refreshMs?: number;
  sources?: NeighbourSources;
  clock?: Clock;
  /** a table could not be read (its lookups gave null); told once per run of failures */
  onReadError?: (family: 4 | 6, error: unknown) => void;
}

const DEFAULT_REFRESH_MS = 250;

export interface KernelNeighbours extends Neighbours {
  /** table reads begun so far, per family */
  readonly reads: { readonly ipv4: number; readonly ipv6: number };
}

/** The kernel's neighbour tables of this process's network namespace. */
export function kernelNeighbours(options: NeighbourOptions = {}): KernelNeighbours {
  const sources = options.sources ?? kernelSources;
  const refreshMs = options.refreshMs ?? DEFAULT_REFRESH_MS;
  const clock = options.clock ?? realClock;
  const table = (family: 4 | 6, read: () => Promise<NeighbourEntries>): SharedTable => {
    let failing = false;
    return new SharedTable(
      async () => {
        const entries = await read();
        failing = false;
        return entries;
      },
      refreshMs,
      clock,
      (error) => {
        const first = !failing;
        failing = true;
        if (first) options.onReadError?.(family, error);
      },
    );
  };
  const ipv4 = table(4, async () => parseProcNetArp(await sources.ipv4()));
  const ipv6Keys = rememberedKeys();
  const ipv6 = table(6, async () => parseIpNeighJson(await sources.ipv6(), ipv6Keys));
  return {
    get reads() {
      return { ipv4: ipv4.reads, ipv6: ipv6.reads };
    },
    async macOf(address) {
      try {
        const key = neighbourKey(address);
        if (key === null) return null;
        if (isIPv4(key)) return await ipv4.lookup(key);
        const zone = address.indexOf("%");
        const device = zone < 0 ? "" : address.slice(zone + 1);
        // a zone given by number cannot be matched to the table's interface names
        return await ipv6.lookup(device === "" || /^\d+$/.test(device) ? key : `${key}%${device}`);
      } catch {
        return null;
      }
    },
  };
}

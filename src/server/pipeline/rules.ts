/**
 * Per-network rules (`tftp.rules`): what differs for the clients of one network. The first rule
 * whose `clients` hold the client's address applies; a client no rule holds gets the server's
 * settings. Overlays and VPNs need a smaller block size, some boot ROMs break on an option, a
 * lab network gets a root of its own.
 */
import type { FileLookup } from "../../storage/lookup.ts";
import { CidrList } from "../../net/address.ts";
import { ErrorCode } from "../../protocol/packet.ts";
import { refused, type Refused } from "./request.ts";

export interface NetworkRule {
  /** CIDRs (a bare address is one host) */
  clients: string[];
  /** these clients' blksize_max / windowsize_max in place of the server's; null: the server's */
  blksizeMax: number | null;
  windowsizeMax: number | null;
  /** options never acknowledged to these clients (as if this server did not know them) */
  refuseOptions: string[];
  /** a root of their own (absolute), or null: the server's */
  root: string | null;
}

/** A root requests are served from: its real path and the chain its files are looked up in. */
export interface RootPlace {
  readonly real: string;
  readonly lookup: FileLookup;
}

/** What applies to one client: the server's settings, or its network's rule over them. */
export interface ClientPolicy {
  readonly root: RootPlace;
  readonly blksizeMax: number;
  readonly windowsizeMax: number;
  /** options not acknowledged to this client; null: none */
  readonly refusedOptions: ReadonlySet<string> | null;
}

/** Who may ask at all (tftp.allow / tftp.deny): CIDRs; an empty allow is everyone, deny wins. */
export interface ClientNetworks {
  allow: readonly string[];
  deny: readonly string[];
}

/**
 * Step 2, the client's network: refused by the allow/deny lists (before anything else looks at
 * the request), else the first rule holding its address, over the server's settings.
 * `roots[i]` is the place of `rules[i].root` (null: the server's root).
 */
export class NetworkRules {
  private readonly matchers: { clients: CidrList; policy: ClientPolicy }[];
  private readonly allow: CidrList | null;
  private readonly deny: CidrList | null;

  constructor(
    rules: readonly NetworkRule[],
    roots: readonly (RootPlace | null)[],
    private readonly base: ClientPolicy,
    networks: ClientNetworks = { allow: [], deny: [] },
  ) {
    this.allow = networks.allow.length > 0 ? new CidrList(networks.allow) : null;
    this.deny = networks.deny.length > 0 ? new CidrList(networks.deny) : null;
    this.matchers = rules.map((rule, i) => ({
      clients: new CidrList(rule.clients),
      policy: {
        root: roots[i] ?? base.root,
        blksizeMax: rule.blksizeMax ?? base.blksizeMax,
        windowsizeMax: rule.windowsizeMax ?? base.windowsizeMax,
        refusedOptions: rule.refuseOptions.length > 0 ? new Set(rule.refuseOptions) : base.refusedOptions,
      },
    }));
  }

  policyFor(address: string): ClientPolicy | Refused {
    if ((this.allow && !this.allow.has(address)) || this.deny?.has(address)) return refused(ErrorCode.ACCESS_VIOLATION, "access denied", "allow_deny");
    if (this.matchers.length === 0) return this.base;
    for (const { clients, policy } of this.matchers) if (clients.has(address)) return policy;
    return this.base;
  }
}

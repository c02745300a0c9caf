/**
 * The machine inventory behind generated files: profiles (a kernel, its initrds, arguments and
 * variables) and machines, each matched by what is known of a client (MAC, IP, a network, the
 * SMBIOS UUID and serial number and the architecture iPXE reports, labels) and given a profile
 * and variables of its own. The most specific match wins: a machine named by an identity (MAC,
 * UUID, serial) over one named by its address, over one by its network (the longer prefix
 * first), over one by architecture or labels alone; between equals, the first in the file.
 */
import { readFileSync } from "node:fs";
import { z } from "zod";
import { CidrList, safeParseCidr } from "../net/address.ts";
import { parseJsonc } from "../config/json.ts";

const vars = z.record(z.string(), z.unknown()).default({});

const profileSchema = z.strictObject({
  kernel: z.string().min(1).optional(),
  initrds: z.array(z.string().min(1)).default([]),
  args: z.string().default(""),
  vars,
});

const matchSchema = z
  .strictObject({
    mac: z.string().optional(),
    ip: z.string().optional(),
    cidr: z.string().refine((v) => safeParseCidr(v).ok, { error: 'expected a CIDR such as "10.0.0.0/8"' }).optional(),
    uuid: z.string().optional(),
    serial: z.string().optional(),
    arch: z.string().optional(),
    labels: z.record(z.string(), z.string()).optional(),
  })
  .refine((m) => Object.keys(m).length > 0, { error: "a match needs at least one of mac, ip, cidr, uuid, serial, arch, labels" });

const machineSchema = z.strictObject({
  name: z.string().optional(),
  match: matchSchema,
  profile: z.string().min(1),
  vars,
});

const inventorySchema = z
  .strictObject({
    profiles: z.record(z.string(), profileSchema).default({}),
    machines: z.array(machineSchema).default([]),
  })
  .superRefine((inv, ctx) => {
    inv.machines.forEach((m, i) => {
      if (!(m.profile in inv.profiles)) ctx.addIssue({ code: "custom", path: ["machines", i, "profile"], message: `no profile named ${JSON.stringify(m.profile)}` });
    });
  });

type Profile = z.output<typeof profileSchema>;
type Machine = z.output<typeof machineSchema>;
type InventoryData = z.output<typeof inventorySchema>;

/** What is known of the client a file is generated for. */
export interface ClientFacts {
  ip: string | null;
  /** lower case, colon-separated */
  mac: string | null;
  uuid: string | null;
  serial: string | null;
  arch: string | null;
  labels: Readonly<Record<string, string>>;
}

/** A MAC in any of the usual spellings (01-02-…, 01:02:…, 0102…), lower case with colons; null if it is none. */
export function normalMac(text: string): string | null {
  const hex = text.toLowerCase().replace(/[-:.]/g, "");
  if (!/^[0-9a-f]{12}$/.test(hex)) return null;
  return hex.match(/../g)!.join(":");
}

interface CompiledMachine {
  machine: Machine;
  /** its place in the file: the first of equals wins */
  order: number;
  mac: string | null;
  cidr: { list: CidrList; prefix: number } | null;
  score: number;
}

/** The key a machine is found by without a scan: the first identity or address its match names. */
type IndexKey = `${"mac" | "uuid" | "serial" | "ip"}=${string}`;

function indexKey(c: CompiledMachine): IndexKey | null {
  const m = c.machine.match;
  if (c.mac !== null) return `mac=${c.mac}`;
  if (m.uuid !== undefined) return `uuid=${m.uuid.toLowerCase()}`;
  if (m.serial !== undefined) return `serial=${m.serial}`;
  if (m.ip !== undefined) return `ip=${m.ip}`;
  return null;
}

export class Inventory {
  /**
   * Machines by the one identity or address each names (a fleet's inventory is mostly MACs):
   * a request looks at the few its facts can match, not the whole inventory.
   */
  private readonly byKey = new Map<IndexKey, CompiledMachine[]>();
  /** machines matched by network, architecture or labels only: tried for every request */
  private readonly scanned: CompiledMachine[] = [];

  private constructor(private readonly data: InventoryData) {
    data.machines.forEach((machine, order) => {
      const m = machine.match;
      const parsed = m.cidr ? safeParseCidr(m.cidr) : null;
      const cidr = parsed?.ok ? { list: new CidrList([parsed.value.text]), prefix: parsed.value.prefix } : null;
      // identities over addresses over networks over the rest; a longer prefix is more specific
      const score =
        (m.mac || m.uuid || m.serial ? 1_000_000 : 0) + (m.ip ? 100_000 : 0) + (cidr ? 1_000 + cidr.prefix : 0) + (m.arch ? 10 : 0) + Object.keys(m.labels ?? {}).length;
      const compiled: CompiledMachine = { machine, order, mac: m.mac ? normalMac(m.mac) : null, cidr, score };
      const key = indexKey(compiled);
      if (key === null) this.scanned.push(compiled);
      else {
        const same = this.byKey.get(key);
        if (same) same.push(compiled);
        else this.byKey.set(key, [compiled]);
      }
    });
  }

  /** Parses an inventory (JSON, comments allowed); throws one line naming the file and the field at fault. */
  static parse(text: string, source: string): Inventory {
    const json = parseJsonc(text);
    if (!json.ok) throw new Error(`${source}:${json.line}:${json.column}: ${json.message}`);
    const parsed = inventorySchema.safeParse(json.value);
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      throw new Error(`${source}: ${issue.path.join(".") || "(top)"}: ${issue.message}`);
    }
    for (const [i, m] of parsed.data.machines.entries()) {
      if (m.match.mac && normalMac(m.match.mac) === null) throw new Error(`${source}: machines.${i}.match.mac: not a MAC address: ${JSON.stringify(m.match.mac)}`);
    }
    return new Inventory(parsed.data);
  }

  static load(path: string): Inventory {
    let text: string;
    try {
      text = readFileSync(path, "utf8");
    } catch (error) {
      throw new Error(`generate.inventory ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
    }
    return Inventory.parse(text, path);
  }

  /** The machine `client` is, by the most specific match, with its profile; null when none matches. */
  match(client: ClientFacts): { machine: Machine; profile: Profile & { name: string } } | null {
    // the machines its facts can name, then those found by network, architecture or labels
    const candidates = [
      client.mac !== null ? this.byKey.get(`mac=${client.mac}`) : undefined,
      client.uuid !== null ? this.byKey.get(`uuid=${client.uuid.toLowerCase()}`) : undefined,
      client.serial !== null ? this.byKey.get(`serial=${client.serial}`) : undefined,
      client.ip !== null ? this.byKey.get(`ip=${client.ip}`) : undefined,
      this.scanned,
    ];
    let found: CompiledMachine | null = null;
    for (const list of candidates) {
      for (const c of list ?? []) {
        if (!matches(c, client)) continue;
        if (!found || c.score > found.score || (c.score === found.score && c.order < found.order)) found = c;
      }
    }
    if (!found) return null;
    const name = found.machine.profile;
    return { machine: found.machine, profile: { ...this.data.profiles[name]!, name } };
  }
}

function matches(c: CompiledMachine, client: ClientFacts): boolean {
  const m = c.machine.match;
  if (c.mac !== null && c.mac !== client.mac) return false;
  if (m.ip !== undefined && m.ip !== client.ip) return false;
  if (c.cidr !== null && (client.ip === null || !c.cidr.list.has(client.ip))) return false;
  if (m.uuid !== undefined && m.uuid.toLowerCase() !== client.uuid?.toLowerCase()) return false;
  if (m.serial !== undefined && m.serial !== client.serial) return false;
  if (m.arch !== undefined && m.arch !== client.arch) return false;
  for (const [k, v] of Object.entries(m.labels ?? {})) if (client.labels[k] !== v) return false;
  return true;
}

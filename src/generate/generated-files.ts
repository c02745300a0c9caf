/**
 * Files made per request instead of kept in the root: `generate.files` names paths with the
 * tokens {mac} and {ip} ("ipxe/{mac}.ipxe"), each rendered from a template with what the
 * inventory says of the machine the path names. They are the first link of the lookup chain,
 * so TFTP and HTTP clients get them alike, through the same rules and limits. A path that
 * names no machine of the inventory is the next link's (a file of that name in the root, if
 * any); a template that fails to render refuses the request (ERROR 0, HTTP 500) with the
 * template and line in the reason, never half a file.
 */
import { memorySource } from "../storage/source.ts";
import { ErrorCode, refuse } from "../storage/refusal.ts";
import type { LookupLink, Requester } from "../storage/lookup.ts";
import { Inventory, normalMac, type ClientFacts } from "./inventory.ts";
import { Templates } from "./templates.ts";

interface GeneratedFileSpec {
  /** below the root, with {mac} and/or {ip} */
  path: string;
  /** a template of the templates folder */
  template: string;
}

export interface GenerateSettings {
  inventory: string | null;
  templates: string | null;
  files: readonly GeneratedFileSpec[];
  /** server.http_base in templates, for requests that do not say it themselves (TFTP) */
  httpBase?: string | null;
}

interface CompiledSpec {
  spec: GeneratedFileSpec;
  pattern: RegExp;
}

const TOKEN = /\{(mac|ip)\}/g;
/** query parameters the client facts name; any other is a label */
const FACT_PARAMS = new Set(["mac", "ip", "uuid", "serial", "arch"]);
const TOKEN_VALUE: Record<string, string> = {
  // 01-02-03-04-05-06 (as pxelinux names files), 01:02:…, or 12 hex digits
  mac: "(?<mac>[0-9A-Fa-f]{2}(?:[-:]?[0-9A-Fa-f]{2}){5})",
  ip: "(?<ip>[0-9A-Fa-f:.]+)",
};

function compile(spec: GeneratedFileSpec): CompiledSpec {
  const parts = spec.path.split(TOKEN);
  let source = "^";
  parts.forEach((part, i) => {
    source += i % 2 === 1 ? TOKEN_VALUE[part]! : part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  });
  return { spec, pattern: new RegExp(`${source}$`) };
}

/** A set of generated files, as loaded from the config: replaced whole when it is reloaded. */
export class GeneratedFiles {
  private readonly specs: CompiledSpec[];

  constructor(
    private readonly inventory: Inventory,
    private readonly templates: Templates,
    files: readonly GeneratedFileSpec[],
  ) {
    this.specs = files.map(compile);
  }

  /** Reads the inventory and the templates the settings name; throws one line naming what is at fault. */
  static load(settings: GenerateSettings): GeneratedFiles | null {
    if (settings.files.length === 0) return null;
    if (settings.inventory === null) throw new Error("generate.inventory: required when generate.files is set");
    if (settings.templates === null) throw new Error("generate.templates: required when generate.files is set");
    const inventory = Inventory.load(settings.inventory);
    const templates = Templates.load(settings.templates);
    const broken = templates.check();
    if (broken) throw new Error(`generate.templates: ${broken}`);
    settings.files.forEach((f, i) => {
      if (!templates.has(f.template)) throw new Error(`generate.files[${i}].template: no template ${JSON.stringify(f.template)} in ${settings.templates}`);
    });
    return new GeneratedFiles(inventory, templates, settings.files);
  }

  /** The bytes of `relative` for `requester`, a refusal (the template failed), or null: not a generated file here. */
  async generate(relative: string, requester: Requester): Promise<{ template: string; bytes: Uint8Array } | { template: string; error: string } | null> {
    for (const { spec, pattern } of this.specs) {
      const m = pattern.exec(relative);
      if (!m) continue;
      // the path names the machine (as an iPXE script's ${mac} does); else the requester is it
      const named = m.groups ?? {};
      const mac = named.mac !== undefined ? normalMac(named.mac) : await requester.mac();
      const params = requester.params;
      const labels: Record<string, string> = {};
      for (const [k, v] of Object.entries(params)) if (!FACT_PARAMS.has(k)) labels[k] = v;
      const client: ClientFacts = {
        ip: named.ip ?? requester.ip,
        mac,
        uuid: params.uuid ?? null,
        serial: params.serial ?? null,
        arch: params.arch ?? null,
        labels,
      };
      const found = this.inventory.match(client);
      if (!found) continue;
      const rendered = this.templates.render(spec.template, {
        client,
        machine: { ...found.machine.vars, name: found.machine.name ?? null },
        profile: { name: found.profile.name, kernel: found.profile.kernel ?? null, initrds: found.profile.initrds, args: found.profile.args, ...found.profile.vars },
        server: requester.server,
      });
      if (!rendered.ok) return { template: spec.template, error: rendered.error };
      return { template: spec.template, bytes: new TextEncoder().encode(rendered.text) };
    }
    return null;
  }
}

/**
 * The lookup chain's first link: the generated files in force (`current()`: a reload replaces
 * them between requests, never under one).
 */
export function generatedLink(current: () => GeneratedFiles | null, rendered?: (template: string, ok: boolean) => void): LookupLink {
  return {
    async open(wanted) {
      const files = current();
      if (!files || !wanted.requester) return null;
      const made = await files.generate(wanted.relative, wanted.requester);
      if (made === null) return null;
      rendered?.(made.template, "bytes" in made);
      if ("bytes" in made) return { ok: true, source: memorySource(made.bytes) };
      return refuse(ErrorCode.NOT_DEFINED, `template error: ${made.error}`);
    },
  };
}

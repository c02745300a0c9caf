// The config file's JSON Schema (draft-07, which every editor's JSON support reads), printed by
// `tftpd config schema` for editors: VS Code's "$schema" key or its json.schemas setting.
//
// Generated from the zod schema, so keys, types, bounds, enums and descriptions cannot drift from
// what the server accepts. zod cannot export the leaves schema.ts parses by hand (byte sizes,
// addresses, CIDRs, port ranges, CPU lists, "auto" | N): those get a form written here, found by
// the type label schema.ts gives them. A leaf left without one fails generation (and the tests).
import { z } from "zod";
import { parseByteSize } from "./bytes.ts";
import { CONFIG_KEYS, configSchema } from "./schema.ts";

type JsonObject = { [key: string]: unknown };

const IPV4 = String.raw`\d{1,3}(?:\.\d{1,3}){3}`;
/** Loose on purpose: the server checks the address; the editor only catches a wrong shape. */
const IPV6 = String.raw`[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*`;
const PORT = String.raw`\d{1,5}`;

const LISTEN_ADDRESS: JsonObject = {
  type: "string",
  pattern: String.raw`^(?:${IPV4}|\[${IPV6}(?:%[^\]]+)?\]):${PORT}$`,
  description: '"ADDR:PORT": an IPv4 or IPv6 literal, IPv6 in brackets ("0.0.0.0:69", "[::1]:6969")',
};

const HOST_PORT: JsonObject = {
  type: "string",
  pattern: String.raw`^\s*(?:\[${IPV6}(?:%[^\]]+)?\]|[^\s:\[\]]+):${PORT}\s*$`,
  description: '"HOST:PORT": a DNS name, an IPv4 address or an IPv6 address in brackets',
};

const CIDR: JsonObject = {
  type: "string",
  pattern: String.raw`^(?:${IPV4}|${IPV6})(?:/\d{1,3})?$`,
  description: 'A network "ADDR/PREFIX" ("10.0.0.0/8", "2001:db8::/32") or a single address',
};

const CIDRS: JsonObject = { anyOf: [CIDR, { type: "array", items: CIDR, minItems: 1 }] };

const PORT_NUMBER: JsonObject = { type: "integer", minimum: 1, maximum: 65535 };

/** The string form, the object form `config check` prints, or null. */
const PORT_RANGE: JsonObject = {
  anyOf: [
    { type: "string", pattern: String.raw`^\s*\d{1,5}\s*[:-]\s*\d{1,5}\s*$`, description: '"LOW:HIGH", 1 <= LOW <= HIGH <= 65535' },
    { type: "object", properties: { low: PORT_NUMBER, high: PORT_NUMBER }, required: ["low", "high"], additionalProperties: false },
    { type: "null" },
  ],
};

const CPU: JsonObject = { type: "integer", minimum: 0, maximum: 65535 };

const CPU_AFFINITY: JsonObject = {
  anyOf: [
    { type: "string", enum: ["auto", "none"] },
    CPU,
    { type: "array", items: CPU, minItems: 1 },
    { type: "string", pattern: String.raw`^\s*\d+\s*(?:-\s*\d+\s*)?(?:,\s*\d+\s*(?:-\s*\d+\s*)?)*$`, description: 'CPU numbers and ranges, "0-3,8"' },
  ],
};

/** The string form mirrors src/config/bytes.ts; its lower bound is the server's to check. */
function byteSize(min: number): JsonObject {
  return {
    anyOf: [
      { type: "integer", minimum: min },
      {
        type: "string",
        pattern: String.raw`^\s*(?:\d+(?:\.\d+)?|\.\d+)\s*(?:[KkMmGgTtPp][Ii]?)?[Bb]?\s*$`,
        description: 'A number of bytes with an optional unit: "512", "64Ki" (x 1024), "10MB" (x 1000), "1.5Gi"',
      },
    ],
  };
}

/** The form of a leaf zod cannot export, by its type label in schema.ts; null for the others. */
function handWritten(label: string): JsonObject | null {
  const bytes = /^byte size(?: >= (\S+))?$/.exec(label);
  if (bytes) {
    const min = bytes[1] === undefined ? { ok: true as const, bytes: 0 } : parseByteSize(bytes[1]);
    if (!min.ok) throw new Error(`config JSON Schema: cannot read the bound of "${label}"`);
    return byteSize(min.bytes);
  }
  const autoOrInt = /^"auto" \| integer (\d+)\.\.(\d+)$/.exec(label);
  if (autoOrInt) return { anyOf: [{ type: "string", const: "auto" }, { type: "integer", minimum: Number(autoOrInt[1]), maximum: Number(autoOrInt[2]) }] };
  switch (label) {
    case '"ADDR:PORT"':
      return LISTEN_ADDRESS;
    case 'array of "ADDR:PORT" addresses':
      return { items: LISTEN_ADDRESS };
    case 'array of "HOST:PORT" addresses':
      return { items: HOST_PORT };
    case "array of CIDRs":
      return { items: CIDR };
    case "array of rules":
      return { items: { properties: { clients: CIDRS } } };
    case '"LOW:HIGH" | null':
      return PORT_RANGE;
    case '"auto" | "none" | CPU list':
      return CPU_AFFINITY;
    case "content types by extension":
      return { additionalProperties: { type: "string", pattern: String.raw`^[\w.+-]+/[\w.+-]+(\s*;.*)?$` } };
    default:
      return null;
  }
}

function isObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** `form` laid over `node`: objects merge key by key, anything else is replaced. */
function overlay(node: JsonObject, form: JsonObject): void {
  for (const [k, v] of Object.entries(form)) {
    const here = node[k];
    if (isObject(here) && isObject(v)) overlay(here, v);
    else node[k] = structuredClone(v);
  }
}

const CONSTRAINTS = ["type", "anyOf", "oneOf", "allOf", "enum", "const", "$ref", "not"];

/** Throws on a node that accepts anything: a leaf zod could not export and no form covers. */
function assertConstrained(node: unknown, where: string): void {
  if (!isObject(node)) return;
  if (!CONSTRAINTS.some((k) => k in node)) {
    throw new Error(`config JSON Schema: ${where} accepts anything: give its type label a form in src/config/json-schema.ts`);
  }
  if (isObject(node.properties)) for (const [k, v] of Object.entries(node.properties)) assertConstrained(v, where ? `${where}.${k}` : k);
  if (node.items !== undefined) assertConstrained(node.items, `${where}[]`);
  if (isObject(node.additionalProperties)) assertConstrained(node.additionalProperties, `${where}.*`);
  if (Array.isArray(node.anyOf)) for (const v of node.anyOf) assertConstrained(v, where);
}

function nodeAt(root: JsonObject, path: readonly string[]): JsonObject {
  let node = root;
  for (const name of path) {
    const next = isObject(node.properties) ? node.properties[name] : undefined;
    if (!isObject(next)) throw new Error(`config JSON Schema: no property ${path.join(".")}`);
    node = next;
  }
  return node;
}

/** The config file's JSON Schema (draft-07). */
export function configJsonSchema(): JsonObject {
  // "input": what a config file may say (defaults make keys optional, "4Gi" rather than bytes)
  const root = z.toJSONSchema(configSchema, { target: "draft-7", io: "input", unrepresentable: "any" }) as JsonObject;
  for (const key of CONFIG_KEYS) {
    const node = nodeAt(root, key.path);
    const form = handWritten(key.type);
    if (form) overlay(node, form);
    // as a config file writes it ("4Gi"); zod leaves out some defaults (lists with checks)
    node.default = structuredClone(key.default);
    node.description = key.description;
  }
  const { $schema: draft, ...rest } = root;
  const schema: JsonObject = {
    $schema: draft,
    title: "tftpd config",
    description: "The config file of tftpd (`tftpd config schema` prints this schema); comments and trailing commas are allowed.",
    ...rest,
    properties: {
      $schema: { type: "string", description: "Where this JSON Schema is (a path or URL), for editors; tftpd ignores the key." },
      ...(rest.properties as JsonObject),
    },
  };
  assertConstrained(schema, "");
  return schema;
}

/**
 * `tftpd config schema`: the config file's JSON Schema (draft-07) for editors, generated from the
 * zod schema. No JSON Schema validator is among the dependencies, so the demo config and the
 * documented example are checked with the small part of draft-07 this schema uses (the test
 * fails if the schema starts using more), and a few keys' shapes are checked as written.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync } from "node:fs";
import { CONFIG_KEYS } from "../../../src/config/schema.ts";
import { removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { tftpd } from "../../helpers/run.ts";

setDefaultTimeout(30_000);

type Schema = { [key: string]: unknown };

let dir: string;
let schema: Schema;
let printed: Awaited<ReturnType<typeof tftpd>>;

const repoFile = (path: string) => new URL(`../../../${path}`, import.meta.url).pathname;

/** The runs see no TFTPD_* variables from the outside world. */
function cleanEnv(): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("TFTPD_")) env[k] = v;
  return env;
}

beforeAll(async () => {
  dir = tempDir("tftpd-config-schema-");
  printed = await tftpd(["config", "schema"], { env: cleanEnv(), timeoutMs: 15_000 });
  schema = JSON.parse(printed.stdout) as Schema;
});
afterAll(() => removeDir(dir));

// ---------------------------------------------------------------------------------------------
// The part of draft-07 the schema uses.

const KEYWORDS = new Set([
  "$schema", "title", "description", "default", "type", "properties", "additionalProperties", "required",
  "items", "minItems", "anyOf", "enum", "const", "pattern", "minLength", "minimum", "maximum", "exclusiveMinimum",
  "propertyNames",
]);
/** Keywords whose value is data, not subschemas. */
const DATA = new Set(["default", "enum", "const", "required"]);

function keywordsOf(node: unknown, found = new Set<string>()): Set<string> {
  if (Array.isArray(node)) for (const n of node) keywordsOf(n, found);
  else if (isObject(node)) {
    for (const [k, v] of Object.entries(node)) {
      found.add(k);
      if (k === "properties" && isObject(v)) for (const child of Object.values(v)) keywordsOf(child, found);
      else if (!DATA.has(k)) keywordsOf(v, found);
    }
  }
  return found;
}

function isObject(v: unknown): v is Schema {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function hasType(value: unknown, type: string): boolean {
  switch (type) {
    case "integer":
      return Number.isInteger(value);
    case "number":
      return typeof value === "number";
    case "null":
      return value === null;
    case "array":
      return Array.isArray(value);
    case "object":
      return isObject(value);
    default:
      return typeof value === type;
  }
}

/** Every way `value` breaks `node`, as "path: why". */
function violations(node: Schema, value: unknown, at = "(root)"): string[] {
  const out: string[] = [];
  if (Array.isArray(node.anyOf) && !node.anyOf.some((s) => violations(s as Schema, value, at).length === 0)) out.push(`${at}: matches none of anyOf`);
  if (typeof node.type === "string" && !hasType(value, node.type)) return [...out, `${at}: not of type ${node.type}`];
  if (Array.isArray(node.enum) && !node.enum.some((e) => Bun.deepEquals(e, value))) out.push(`${at}: not one of ${JSON.stringify(node.enum)}`);
  if ("const" in node && !Bun.deepEquals(node.const, value)) out.push(`${at}: not ${JSON.stringify(node.const)}`);
  if (typeof value === "string") {
    if (typeof node.minLength === "number" && value.length < node.minLength) out.push(`${at}: shorter than ${node.minLength}`);
    if (typeof node.pattern === "string" && !new RegExp(node.pattern, "u").test(value)) out.push(`${at}: does not match ${node.pattern}`);
  }
  if (typeof value === "number") {
    if (typeof node.minimum === "number" && value < node.minimum) out.push(`${at}: below ${node.minimum}`);
    if (typeof node.maximum === "number" && value > node.maximum) out.push(`${at}: above ${node.maximum}`);
    if (typeof node.exclusiveMinimum === "number" && value <= node.exclusiveMinimum) out.push(`${at}: not above ${node.exclusiveMinimum}`);
  }
  if (Array.isArray(value)) {
    if (typeof node.minItems === "number" && value.length < node.minItems) out.push(`${at}: fewer than ${node.minItems} items`);
    if (isObject(node.items)) value.forEach((item, i) => out.push(...violations(node.items as Schema, item, `${at}[${i}]`)));
  }
  if (isObject(value)) {
    const properties = isObject(node.properties) ? node.properties : {};
    for (const name of Array.isArray(node.required) ? (node.required as string[]) : []) if (!(name in value)) out.push(`${at}: lacks ${name}`);
    for (const [name, v] of Object.entries(value)) {
      const child = properties[name];
      if (isObject(node.propertyNames)) out.push(...violations(node.propertyNames, name, `${at}: key ${name}`));
      if (isObject(child)) out.push(...violations(child, v, `${at}.${name}`));
      else if (node.additionalProperties === false) out.push(`${at}: ${name} is not allowed`);
      else if (isObject(node.additionalProperties)) out.push(...violations(node.additionalProperties, v, `${at}.${name}`));
    }
  }
  return out;
}

/** The node of a dotted key in the schema. */
function nodeOf(path: readonly string[]): Schema {
  let node = schema;
  for (const name of path) node = (node.properties as Schema)[name] as Schema;
  return node;
}

/** The example config of docs/configuration.md (its "## Example" block). */
function docsExample(): unknown {
  const markdown = readFileSync(repoFile("docs/configuration.md"), "utf8");
  const block = /## Example\n\n```json\n([\s\S]*?)\n```/.exec(markdown);
  if (!block?.[1]) throw new Error('docs/configuration.md: no "## Example" JSON block');
  return JSON.parse(block[1]);
}

// ---------------------------------------------------------------------------------------------

describe("tftpd config schema", () => {
  test("exits 0 and prints one JSON document, a draft-07 schema", () => {
    expect(printed.exitCode).toBe(0);
    expect(printed.stderr).toBe("");
    expect(printed.stdout.endsWith("}\n")).toBe(true);
    expect(schema.$schema).toBe("http://json-schema.org/draft-07/schema#");
    expect(schema.type).toBe("object");
    expect(schema.additionalProperties).toBe(false);
    expect(schema.required).toBeUndefined(); // an empty file is a working config
  });

  test("uses only the draft-07 keywords the checks below know", () => {
    expect([...keywordsOf(schema)].filter((k) => !KEYWORDS.has(k))).toEqual([]);
  });

  test("every key is there, with its description and its default as a file writes it", () => {
    for (const key of CONFIG_KEYS) {
      const node = nodeOf(key.path);
      expect(node, key.dotted).toBeDefined();
      expect(typeof node.description === "string" && node.description.length > 0, key.dotted).toBe(true);
      expect(node.default, key.dotted).toEqual(key.default as never);
      expect(violations(node, node.default), key.dotted).toEqual([]);
    }
  });

  test("a top-level $schema key is allowed", () => {
    expect(nodeOf(["$schema"]).type).toBe("string");
    expect(violations(schema, { $schema: "./tftpd.schema.json", log: { level: "info" } })).toEqual([]);
  });

  test("keys of a few kinds: integers, enums, byte sizes, addresses, rules", () => {
    expect(nodeOf(["tftp", "blksize_max"])).toMatchObject({ type: "integer", minimum: 8, maximum: 65464, default: 1468 });
    expect(nodeOf(["tftp", "write"])).toMatchObject({ type: "string", enum: ["off", "create", "overwrite"], default: "off" });
    expect(nodeOf(["tftp", "timeout"])).toMatchObject({ type: "number", exclusiveMinimum: 0, default: 1 });
    expect(nodeOf(["tftp", "user"]).anyOf).toEqual([{ type: "string", minLength: 1 }, { type: "null" }]);
    expect(nodeOf(["tftp"]).additionalProperties).toBe(false);

    const upload = nodeOf(["tftp", "max_upload_size"]);
    expect(upload.default).toBe("4Gi");
    for (const ok of [0, 1048576, "4Gi", "512", "64KiB", "10 MB", "1.5Gi"]) expect(violations(upload, ok), String(ok)).toEqual([]);
    for (const bad of ["lots", "5i", -1, 1.5, true]) expect(violations(upload, bad), String(bad)).not.toEqual([]);
    // a byte size with a lower bound keeps it for the number form
    expect(violations(nodeOf(["limits", "max_transfer_memory"]), 65535)).not.toEqual([]);
    expect(violations(nodeOf(["limits", "max_transfer_memory"]), 65536)).toEqual([]);

    const listen = nodeOf(["tftp", "listen"]);
    expect(listen).toMatchObject({ type: "array", minItems: 1, default: ["0.0.0.0:69", "[::]:69"] });
    expect(violations(listen, ["0.0.0.0:69", "[::1]:6969", "[fe80::1%eth0]:69"])).toEqual([]);
    for (const bad of [[], ["0.0.0.0"], ["::1:69"], ["tftp.example:69"]]) expect(violations(listen, bad), JSON.stringify(bad)).not.toEqual([]);
    expect(violations(nodeOf(["cache", "redis", "nodes"]), ["redis-1:6379", "[fd00::5]:7001"])).toEqual([]);
    expect(violations(nodeOf(["tftp", "port_range"]), "30000:39999")).toEqual([]);
    expect(violations(nodeOf(["tftp", "port_range"]), { low: 30000, high: 39999 })).toEqual([]);
    expect(violations(nodeOf(["performance", "cpu", "affinity"]), "0-3,8")).toEqual([]);
    expect(violations(nodeOf(["performance", "cpu", "worker_threads"]), "auto")).toEqual([]);
    expect(violations(nodeOf(["performance", "cpu", "worker_threads"]), "many")).not.toEqual([]);

    const rule = (nodeOf(["tftp", "rules"]).items ?? {}) as Schema;
    expect(rule.required).toEqual(["clients"]);
    expect(rule.additionalProperties).toBe(false);
    expect(violations(rule, { clients: "10.8.0.0/16", blksize_max: 1200 })).toEqual([]);
    expect(violations(rule, { clients: ["10.99.0.0/16", "fd00:99::/32"], refuse_options: ["windowsize"] })).toEqual([]);
    expect(violations(rule, { blksize_max: 1200 })).not.toEqual([]);
  });

  test("the demo config and the documented example validate; broken configs do not", () => {
    expect(violations(schema, JSON.parse(readFileSync(repoFile("demo/tftpd.json"), "utf8")))).toEqual([]);
    expect(violations(schema, docsExample())).toEqual([]);
    expect(violations(schema, { tftp: { bogus: 1 } })).toEqual(["(root).tftp: bogus is not allowed"]);
    expect(violations(schema, { limits: { max_total_connections: "lots" } })).not.toEqual([]);
  });

  test("what config check prints validates too (its output is valid input)", async () => {
    const file = writeFile(dir, "checked.json", JSON.stringify({ tftp: { root: dir, port_range: "30000:39999", rules: [{ clients: "10.8.0.0/16" }] } }));
    const r = await tftpd(["config", "check", file], { env: cleanEnv(), timeoutMs: 15_000 });
    expect(r.exitCode).toBe(0);
    expect(violations(schema, JSON.parse(r.stdout))).toEqual([]);
  });

  test("a config file pointing at the saved schema passes config check", async () => {
    writeFile(dir, "tftpd.schema.json", printed.stdout);
    const file = writeFile(dir, "with-schema.json", `{\n  "$schema": "./tftpd.schema.json",\n  // comments too\n  "tftp": { "root": ${JSON.stringify(dir)} },\n}\n`);
    const r = await tftpd(["config", "check", file], { env: cleanEnv(), timeoutMs: 15_000 });
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    expect(JSON.parse(r.stdout).$schema).toBeUndefined();
  });

  test("an unknown option or an argument is a usage error (exit 2)", async () => {
    const option = await tftpd(["config", "schema", "--bogus"], { env: cleanEnv(), timeoutMs: 15_000 });
    expect(option.exitCode).toBe(2);
    expect(option.stderr).toBe("tftpd config schema: unknown option --bogus (see tftpd config schema --help)\n");
    const argument = await tftpd(["config", "schema", "extra"], { env: cleanEnv(), timeoutMs: 15_000 });
    expect(argument.exitCode).toBe(2);
    expect(argument.stdout).toBe("");
  });
});

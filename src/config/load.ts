// Loading the effective config: defaults < file < pushed (the fleet's config) < TFTPD_* environment
// < overrides (CLI flags).
// Errors are values: one line each, "<source>: <key.path>: <message>".
import { existsSync, readFileSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import type { z } from "zod";
import { describeValue } from "./bytes.ts";
import { parseJsonc } from "./json.ts";
import { CONFIG_KEYS, KEYS_BY_ENV, KEYS_BY_PATH, REMOVED_KEYS, SECTION_KEYS, configSchema, envName, type Config, type ConfigKey } from "./schema.ts";

export type { Config } from "./schema.ts";

const DEFAULT_CONFIG_FILE = "/etc/tftpd/config.json";
/** Env var naming the config file (when no file is passed explicitly). */
const CONFIG_FILE_ENV = "TFTPD_CONFIG";
/** TFTPD_TEST_* variables are test-only switches, never config keys. */
const TEST_ENV_PREFIX = "TFTPD_TEST_";
/** The one top-level key a config file may have beyond the schema's: where its JSON Schema is, for editors. */
const SCHEMA_KEY = "$schema";

export interface LoadOptions {
  /** Config file to read; a missing file is an error. */
  file?: string;
  /** Read when `file` is undefined and TFTPD_CONFIG is unset, if it exists. Default /etc/tftpd/config.json. */
  defaultFile?: string;
  /** Environment; default process.env. */
  env?: Record<string, string | undefined>;
  /** Dotted path -> value, e.g. {"tftp.root": "/x", "tftp.blksize_max": 8192}. Strings are read like env values. */
  overrides?: Record<string, unknown>;
  /** Dotted path -> name shown in errors, e.g. {"tftp.root": "--root"}; default "override". */
  overrideSources?: Record<string, string>;
  /** Base for relative paths given in env/overrides; default process.cwd(). */
  cwd?: string;
  /**
   * A config pushed to the fleet (`tftpd config push`), already parsed: layered over the file and
   * under the environment, so the node's own file fills what it leaves out. `source` names it in
   * errors. Relative paths in it resolve against `cwd`.
   */
  pushed?: { content: unknown; source: string };
}

/** A setting that came from the environment or an override. */
export interface AppliedSetting {
  source: string;
  key: string;
}

export type LoadResult =
  | { ok: true; config: Config; source: string | null; applied: AppliedSetting[] }
  | { ok: false; errors: string[] };

type Obj = Record<string, unknown>;

function isPlainObject(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Provenance: dotted path -> the source that set it (last writer wins). */
class Provenance {
  private map = new Map<string, string>();
  record(path: readonly (string | number)[], source: string, value: unknown) {
    this.map.set(path.join("."), source);
    if (isPlainObject(value)) for (const [k, v] of Object.entries(value)) this.record([...path, k], source, v);
  }
  lookup(path: readonly PropertyKey[]): string | undefined {
    for (let n = path.length; n > 0; n--) {
      const s = this.map.get(path.slice(0, n).map(String).join("."));
      if (s !== undefined) return s;
    }
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------

export function loadConfig(opts: LoadOptions = {}): LoadResult {
  const env = opts.env ?? process.env;
  const cwd = opts.cwd ?? process.cwd();
  const errors: string[] = [];
  const prov = new Provenance();
  const applied: AppliedSetting[] = [];

  // 1. Which file.
  let file: string | null = null;
  if (opts.file !== undefined) file = opts.file;
  else if (env[CONFIG_FILE_ENV]) file = env[CONFIG_FILE_ENV] ?? null;
  else {
    const def = opts.defaultFile ?? DEFAULT_CONFIG_FILE;
    if (existsSync(def)) file = def;
  }

  // 2. The file layer.
  let fileLayer: Obj = {};
  if (file !== null) {
    const r = readConfigLayer(file, cwd);
    if (!r.ok) return { ok: false, errors: [r.error] };
    fileLayer = r.value;
    prov.record([], file, fileLayer);
  }

  // 2b. The pushed layer.
  let pushedLayer: Obj = {};
  if (opts.pushed !== undefined) {
    const { content, source } = opts.pushed;
    if (!isPlainObject(content)) {
      return { ok: false, errors: [`${source}: the config must be a JSON object, got ${describeValue(content)}`] };
    }
    pushedLayer = structuredClone(content);
    resolvePaths(pushedLayer, cwd);
    prov.record([], source, pushedLayer);
  }

  // 3. The environment layer.
  const envLayer: Obj = {};
  for (const name of Object.keys(env).sort()) {
    const text = env[name];
    if (!name.startsWith("TFTPD_") || text === undefined) continue;
    if (name === CONFIG_FILE_ENV || name.startsWith(TEST_ENV_PREFIX)) continue;
    const key = KEYS_BY_ENV.get(name);
    const removed = REMOVED_BY_ENV.get(name);
    if (removed) {
      errors.push(`${name}: ${removed}: ${REMOVED_KEYS.get(removed)}`);
      continue;
    }
    if (!key) {
      const guess = suggest(name, [...KEYS_BY_ENV.keys(), CONFIG_FILE_ENV]);
      errors.push(`${name}: unknown environment variable${guess ? ` (did you mean ${guess}?)` : ""}`);
      continue;
    }
    const value = withPathsResolved(key, coerceText(key, text), cwd);
    setIn(envLayer, key.path, value);
    prov.record(key.path, name, value);
    applied.push({ source: name, key: key.dotted });
  }

  // 4. The override layer.
  const overrideLayer: Obj = {};
  for (const [dotted, raw] of Object.entries(opts.overrides ?? {})) {
    if (raw === undefined) continue;
    const source = opts.overrideSources?.[dotted] ?? "override";
    const path = dotted.split(".");
    const key = KEYS_BY_PATH.get(dotted);
    if (!key && !(SECTION_KEYS.has(dotted) && dotted !== "")) {
      errors.push(`${source}: ${dotted}: ${unknownKey(path)}`);
      continue;
    }
    let value = key && typeof raw === "string" ? coerceText(key, raw) : raw;
    if (key) value = withPathsResolved(key, value, cwd);
    else if (isPlainObject(value)) resolvePaths(value, cwd, path);
    setIn(overrideLayer, path, value);
    prov.record(path, source, value);
    applied.push({ source, key: dotted });
  }

  // 5. Merge and validate (also when some settings were already rejected: report everything).
  const merged = deepMerge(deepMerge(deepMerge(fileLayer, pushedLayer), envLayer), overrideLayer);
  const result = validate(merged, (path) => prov.lookup(path), file ?? "config");
  if (!result.ok) errors.push(...result.errors);
  if (errors.length > 0 || !result.ok) return { ok: false, errors };
  return { ok: true, config: result.config, source: file, applied };
}

function validate(
  raw: Obj,
  lookup: (path: readonly PropertyKey[]) => string | undefined,
  fallback: string,
): { ok: true; config: Config } | { ok: false; errors: string[] } {
  // Cross-field issues carry params.related: blame whoever set either key.
  const sourceOf = (path: readonly PropertyKey[], related?: string) =>
    lookup(path) ?? (related ? lookup(related.split(".")) : undefined) ?? fallback;
  const r = configSchema.safeParse(raw, { error: genericMessage });
  if (r.success) return { ok: true, config: r.data };
  const errors: string[] = [];
  for (const issue of r.error.issues) {
    if (issue.code === "unrecognized_keys") {
      for (const k of issue.keys) {
        const path = [...issue.path, k];
        errors.push(`${sourceOf(path)}: ${formatPath(path)}: ${unknownKey(path.map(String))}`);
      }
      continue;
    }
    const related = issue.code === "custom" ? (issue.params as { related?: string } | undefined)?.related : undefined;
    const src = sourceOf(issue.path, related);
    errors.push(issue.path.length > 0 ? `${src}: ${formatPath(issue.path)}: ${issue.message}` : `${src}: ${issue.message}`);
  }
  return { ok: false, errors: [...new Set(errors)] };
}

/** Messages for issues whose schema has no message of its own. */
function genericMessage(iss: z.core.$ZodRawIssue): string {
  const got = describeValue(iss.input);
  switch (iss.code) {
    case "invalid_type": {
      const expected = String(iss.expected);
      const what =
        expected === "boolean" ? "true or false" : /^[aeiou]/.test(expected) ? `an ${expected}` : `a ${expected}`;
      return `expected ${what}, got ${got}`;
    }
    case "invalid_value":
      return `expected one of ${iss.values.map((v) => JSON.stringify(v)).join(", ")}, got ${got}`;
    case "too_small":
      return `must be ${iss.inclusive ? ">=" : ">"} ${String(iss.minimum)}, got ${got}`;
    case "too_big":
      return `must be ${iss.inclusive ? "<=" : "<"} ${String(iss.maximum)}, got ${got}`;
    case "unrecognized_keys":
      return `unknown key ${iss.keys.join(", ")}`;
    default:
      return `invalid value ${got}`;
  }
}

function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) {
    if (typeof p === "number") out += `[${p}]`;
    else out += out === "" ? String(p) : `.${String(p)}`;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// File reading

/**
 * A config file's own settings, as written (no defaults, no environment), with relative paths
 * resolved against the file's directory. Errors are one line naming the file.
 */
export function readConfigLayer(file: string, cwd = process.cwd()): { ok: true; value: Obj } | { ok: false; error: string } {
  const r = readConfigFile(file);
  if (!r.ok) return r;
  resolvePaths(r.value, dirname(resolve(cwd, file)));
  return r;
}

function readConfigFile(file: string): { ok: true; value: Obj } | { ok: false; error: string } {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === "ENOENT"
        ? "no such file"
        : code === "EACCES"
          ? "permission denied"
          : code === "EISDIR"
            ? "is a directory, not a config file"
            : `cannot read: ${e instanceof Error ? e.message : String(e)}`;
    return { ok: false, error: `${file}: ${why}` };
  }
  // JSONC: comments and trailing commas are allowed (operators annotate their configs)
  const parsed = parseJsonc(text);
  if (!parsed.ok) return { ok: false, error: `${file}:${parsed.line}:${parsed.column}: invalid JSON: ${parsed.message}` };
  if (!isPlainObject(parsed.value)) {
    return { ok: false, error: `${file}: the config must be a JSON object, got ${describeValue(parsed.value)}` };
  }
  // "$schema" only points an editor at `tftpd config schema`'s output: not a setting
  const { [SCHEMA_KEY]: schemaRef, ...settings } = parsed.value;
  if (schemaRef !== undefined && typeof schemaRef !== "string") {
    return { ok: false, error: `${file}: ${SCHEMA_KEY}: expected a string (where the JSON Schema is), got ${describeValue(schemaRef)}` };
  }
  return { ok: true, value: settings };
}

/** Resolve relative path leaves inside `layer` (rooted at `prefix`) against `base`. */
function resolvePaths(layer: Obj, base: string, prefix: string[] = []) {
  for (const key of CONFIG_KEYS) {
    if (!key.isPath && key.elementPaths.length === 0) continue;
    if (prefix.some((p, i) => key.path[i] !== p)) continue;
    const rel = key.path.slice(prefix.length);
    const parent = getIn(layer, rel.slice(0, -1));
    const leaf = rel[rel.length - 1];
    if (!isPlainObject(parent) || leaf === undefined || !(leaf in parent)) continue;
    parent[leaf] = withPathsResolved(key, parent[leaf], base);
  }
}

/** A key's value with relative paths resolved against `base`: a path leaf, or the path fields of a list's objects. */
function withPathsResolved(key: ConfigKey, value: unknown, base: string): unknown {
  const absolute = (v: unknown) => (typeof v === "string" && v !== "" && !isAbsolute(v) ? resolve(base, v) : v);
  if (key.isPath) return absolute(value);
  if (key.elementPaths.length === 0 || !Array.isArray(value)) return value;
  return value.map((item: unknown) => {
    if (!isPlainObject(item)) return item;
    const resolved = { ...item };
    for (const field of key.elementPaths) if (field in resolved) resolved[field] = absolute(resolved[field]);
    return resolved;
  });
}

// ---------------------------------------------------------------------------------------------
// Env / flag text

function tryJson(text: string): { ok: true; value: unknown } | { ok: false } {
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch {
    return { ok: false };
  }
}

/**
 * Read a string from the environment or a flag for `key`: string keys keep the text; other keys
 * take it as JSON when it parses (numbers, booleans, null, arrays), else as a string; array keys
 * also accept a comma-separated list.
 */
export function coerceText(key: Pick<ConfigKey, "kind" | "nullable">, text: string): unknown {
  if (key.kind === "string") {
    if (key.nullable && (text === "" || text === "null")) return null;
    return text;
  }
  if (key.kind === "array") {
    const t = text.trim();
    if (t.startsWith("[")) {
      const j = tryJson(t);
      return j.ok ? j.value : text;
    }
    if (t === "") return [];
    return t.split(",").map((part) => {
      const p = part.trim();
      const j = tryJson(p);
      return j.ok && typeof j.value !== "object" ? j.value : p;
    });
  }
  const j = tryJson(text);
  return j.ok ? j.value : text;
}

// ---------------------------------------------------------------------------------------------
// Small object helpers

function getIn(obj: Obj, path: readonly string[]): unknown {
  let cur: unknown = obj;
  for (const p of path) {
    if (!isPlainObject(cur)) return undefined;
    cur = cur[p];
  }
  return cur;
}

function setIn(obj: Obj, path: readonly string[], value: unknown) {
  let cur = obj;
  for (const p of path.slice(0, -1)) {
    const next = cur[p];
    if (isPlainObject(next)) cur = next;
    else {
      const fresh: Obj = {};
      cur[p] = fresh;
      cur = fresh;
    }
  }
  const last = path[path.length - 1];
  if (last !== undefined) cur[last] = value;
}

function deepMerge(base: Obj, over: Obj): Obj {
  const out: Obj = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] = isPlainObject(b) && isPlainObject(v) ? deepMerge(b, v) : v;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// "Did you mean"

function distance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0] ?? 0;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j] ?? 0;
      prev[j] = Math.min(up + 1, (prev[j - 1] ?? 0) + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = up;
    }
  }
  return prev[b.length] ?? 0;
}

function suggest(word: string, candidates: Iterable<string>): string | null {
  let best: string | null = null;
  let bestD = Infinity;
  const w = word.toLowerCase();
  for (const c of candidates) {
    const d = distance(w, c.toLowerCase());
    if (d < bestD) {
      bestD = d;
      best = c;
    }
  }
  return best !== null && bestD <= Math.max(2, Math.floor(word.length / 4)) ? best : null;
}

/** Environment variables of the removed keys, to their keys. */
const REMOVED_BY_ENV = new Map([...REMOVED_KEYS.keys()].map((dotted) => [envName(dotted.split(".")), dotted]));

/** Why a key the schema does not have is refused: it was removed (and what to do), or it never was one. */
function unknownKey(path: readonly string[]): string {
  return REMOVED_KEYS.get(path.join(".")) ?? `unknown key${didYouMean(path)}`;
}

function didYouMean(path: readonly string[]): string {
  const parent = path.slice(0, -1).join(".");
  const leaf = path[path.length - 1];
  const siblings = SECTION_KEYS.get(parent);
  if (!siblings || leaf === undefined) return "";
  const guess = suggest(leaf, siblings);
  return guess ? ` (did you mean "${guess}"?)` : "";
}

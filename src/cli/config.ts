/**
 * `tftpd config check FILE`: validate a config file (with the TFTPD_* environment applied, as
 * `serve` would) and print the effective config as JSON, byte sizes in bytes and paths resolved.
 *
 * `tftpd config push FILE`: validate it the same way, then store it in the fleet's Redis for
 * every node to apply (src/cluster/config-sync.ts).
 *
 * `tftpd config schema`: print the config file's JSON Schema, for editors.
 */
import { defineCommand } from "citty";
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { configJsonSchema } from "../config/json-schema.ts";
import { loadConfig, readConfigLayer, type Config } from "../config/load.ts";
import type { RedisLink } from "../cluster/redis.ts";
import { unhonouredSettings } from "../config/server-options.ts";
import { rootProblem } from "../ops/http.ts";
import { loadRemapFile, parseRemapRules } from "../storage/remap.ts";
import { fail, unknownOption } from "./args.ts";
import { withFleetLink } from "./fleet-link.ts";

export interface CheckResult {
  exitCode: 0 | 1;
  stdout: string;
  stderr: string;
}

/**
 * What `serve` would refuse or could not serve although the file is valid: a root (the
 * server's or a rule's) that is missing or not searchable, a remap file it cannot read or
 * parse. One line each, naming where the setting came from and the key.
 */
function pathProblems(loaded: Extract<ReturnType<typeof loadConfig>, { ok: true }>): string[] {
  const { config } = loaded;
  const sourceOf = (key: string) => loaded.applied.filter((a) => a.key === key).at(-1)?.source ?? loaded.source ?? "config";
  const problems: string[] = [];
  const roots = [{ key: "tftp.root", path: config.tftp.root }, ...config.tftp.rules.flatMap((r, i) => (r.root ? [{ key: `tftp.rules[${i}].root`, path: r.root, via: "tftp.rules" }] : []))];
  for (const root of roots) {
    const problem = rootProblem(root.path);
    if (problem) problems.push(`${sourceOf("via" in root ? root.via : root.key)}: ${root.key}: ${problem}`);
  }
  if (config.tftp.remap) {
    const rules = loadRemapFile(config.tftp.remap);
    if (!rules.ok) problems.push(...rules.errors.map((e) => `${sourceOf("tftp.remap")}: tftp.remap: ${e}`));
  }
  return problems;
}

/** The whole of `config check`, as a pure function of the file and the environment. */
export function checkConfigFile(file: string, env: Record<string, string | undefined> = process.env): CheckResult {
  const loaded = loadConfig({ file, env });
  if (!loaded.ok) {
    return { exitCode: 1, stdout: "", stderr: loaded.errors.map((e) => `tftpd config check: ${e}\n`).join("") };
  }
  const problems = pathProblems(loaded);
  if (problems.length > 0) return { exitCode: 1, stdout: "", stderr: problems.map((e) => `tftpd config check: ${e}\n`).join("") };
  const notes = [...loaded.applied.map((a) => `${a.key} is set by ${a.source}`), ...unhonouredSettings(loaded.config)]
    .map((note) => `tftpd config check: note: ${note}\n`)
    .join("");
  return { exitCode: 0, stdout: `${JSON.stringify(loaded.config, null, 2)}\n`, stderr: notes };
}

const check = defineCommand({
  meta: { name: "check", description: "Validate a config file and print the effective config" },
  args: {
    file: { type: "positional", description: "Config file (JSON, comments allowed)", valueHint: "FILE", required: false },
    // as serve takes it: `config check --config FILE` checks what `serve --config FILE` would load
    config: { type: "string", description: "The same as FILE", valueHint: "FILE" },
  },
  run({ args }) {
    if (args.file !== undefined && args.config !== undefined) fail("config check", "the file given twice (FILE and --config): give one (see tftpd config check --help)", 2);
    const file = args.file ?? args.config;
    if (file === undefined) fail("config check", "which file? tftpd config check FILE (see tftpd config check --help)", 2);
    const r = checkConfigFile(file);
    if (r.stdout) process.stdout.write(r.stdout);
    if (r.stderr) process.stderr.write(r.stderr);
    process.exitCode = r.exitCode;
  },
});

/** What `config push` stores: the file's own settings and the text of its remap rules. */
export interface PushDocument {
  /** the file's keys as written (paths resolved against its directory), as JSON */
  json: string;
  /** the remap rule file's text when tftp.remap names one, else null */
  remap: string | null;
  /** the file with the TFTPD_* environment applied: where the Redis settings come from */
  config: Config;
}

/**
 * Validate `file` as `config check` does, and read its remap rules when it names a rule file.
 * Errors are one line each, naming the key path (or the file and line).
 */
function preparePush(
  file: string,
  env: Record<string, string | undefined> = process.env,
): { ok: true; document: PushDocument } | { ok: false; errors: string[] } {
  const loaded = loadConfig({ file, env });
  if (!loaded.ok) return loaded;
  const layer = readConfigLayer(file);
  if (!layer.ok) return { ok: false, errors: [layer.error] };
  const tftp = layer.value.tftp;
  const rulesFile = typeof tftp === "object" && tftp !== null ? (tftp as Record<string, unknown>).remap : undefined;
  let remap: string | null = null;
  if (typeof rulesFile === "string") {
    try {
      remap = readFileSync(rulesFile, "utf8");
    } catch (error) {
      return { ok: false, errors: [`${file}: tftp.remap: cannot read ${rulesFile}: ${(error as Error).message}`] };
    }
    const rules = parseRemapRules(remap, rulesFile);
    if (!rules.ok) return { ok: false, errors: rules.errors.map((e) => `${file}: tftp.remap: ${e}`) };
  }
  return { ok: true, document: { json: JSON.stringify(layer.value), remap, config: loaded.config } };
}

/**
 * The config whose Redis settings a push uses: the pushed file's when it names nodes or
 * `--redis` does, else the local config's (the key prefix, password and TLS go with the nodes).
 */
function pushVia(pushed: Config, nodesFlag: string | undefined, localConfig: () => Config | null): Config {
  if (pushed.cache.redis.nodes.length > 0 || nodesFlag !== undefined) return pushed;
  const local = localConfig();
  return local && local.cache.redis.nodes.length > 0 ? local : pushed;
}

/** Store `document` as the fleet's next config version; resolves to the version number. */
async function pushDocument(link: RedisLink, document: PushDocument, by = hostname()): Promise<number> {
  const key = link.keys.config;
  const tx = link.client
    .multi()
    .hincrby(key, "version", 1)
    .hset(key, { json: document.json, pushed_at: new Date().toISOString(), pushed_by: by });
  if (document.remap === null) tx.hdel(key, "remap");
  else tx.hset(key, "remap", document.remap);
  const results = await tx.exec();
  if (!results) throw new Error("the transaction was aborted");
  for (const [error] of results) if (error) throw error;
  return Number(results[0]?.[1]);
}

const pushArgs = {
  file: { type: "positional", description: "Config file (JSON)", valueHint: "FILE", required: true },
  redis: { type: "string", description: "Redis seed nodes HOST:PORT[,…] (default: cache.redis.nodes)", valueHint: "HOST:PORT,…" },
} as const;

const push = defineCommand({
  meta: { name: "push", description: "Validate a config file and push it to every node of the fleet through Redis" },
  args: pushArgs,
  async run({ args, rawArgs }) {
    const unknown = unknownOption(pushArgs, rawArgs);
    if (unknown) fail("config push", `unknown option ${unknown} (see tftpd config push --help)`, 2);

    const prepared = preparePush(args.file);
    if (!prepared.ok) {
      for (const line of prepared.errors) process.stderr.write(`tftpd config push: ${line}\n`);
      process.exit(1);
    }
    const { document } = prepared;
    const via = pushVia(document.config, args.redis, () => {
      const local = loadConfig({ env: process.env });
      return local.ok ? local.config : null;
    });
    const { version, nodes } = await withFleetLink("config push", via, args.redis, async (link) => ({
      version: await pushDocument(link, document),
      nodes: link.settings.nodes.join(","),
    }));
    process.stdout.write(`pushed config version ${version} to ${nodes}\n`);
  },
});

const schema = defineCommand({
  meta: { name: "schema", description: "Print the config file's JSON Schema (draft-07), for editors" },
  args: {},
  run({ rawArgs }) {
    const option = unknownOption({}, rawArgs);
    if (option) fail("config schema", `unknown option ${option} (see tftpd config schema --help)`, 2);
    const extra = rawArgs.find((arg) => !arg.startsWith("-"));
    if (extra !== undefined) fail("config schema", `unexpected argument ${JSON.stringify(extra)}: it takes none`, 2);
    process.stdout.write(`${JSON.stringify(configJsonSchema(), null, 2)}\n`);
  },
});

export default defineCommand({
  meta: { name: "config", description: "Work with config files" },
  subCommands: { check, push, schema },
});

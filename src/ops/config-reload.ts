/**
 * The config a running server is on, and how a new one reaches it: a pushed fleet config
 * (cluster/config-sync.ts) or the config file read again on SIGHUP (cli/serve.ts). Both give
 * the whole effective config (defaults < file < pushed < TFTPD_* env < flags); what differs
 * from the running one and can change while running is applied at once:
 * `limits.*` but `limits.scope` (admission of new requests), `tftp.remap` (the rules; on SIGHUP
 * the rule file is read again even when its name is the same), `generate.*` (the inventory and
 * templates are read again on SIGHUP too) and `log.level`. Every other changed key is logged as
 * needing a restart and left as it is. A config that cannot be used (invalid, a remap file
 * that does not parse) changes nothing and says why in one line per error.
 */
import type { AppliedSetting, LoadResult } from "../config/load.ts";
import { KEYS_BY_PATH, type Config } from "../config/schema.ts";
import { admissionLimits, generateSettings } from "../config/server-options.ts";
import type { Logger } from "../log.ts";
import type { TftpServer } from "../server/server.ts";
import { loadRemapFile, parseRemapRules, type RemapRule } from "../storage/remap.ts";

/** One changed setting, by its dotted key path. */
export interface ConfigChange {
  key: string;
  from: unknown;
  to: unknown;
}

type Obj = Record<string, unknown>;

function isPlainObject(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * The settings that differ between two configs, by key path, in schema order. A leaf key of the
 * schema (an array, `tftp.port_range`) is compared as a whole.
 */
export function diffConfig(a: Config, b: Config): ConfigChange[] {
  const changes: ConfigChange[] = [];
  const walk = (x: unknown, y: unknown, path: string[]): void => {
    const key = path.join(".");
    if (!KEYS_BY_PATH.has(key) && isPlainObject(x) && isPlainObject(y)) {
      const names = [...Object.keys(x), ...Object.keys(y).filter((k) => !(k in x))];
      for (const name of names) walk(x[name], y[name], [...path, name]);
      return;
    }
    if (!Bun.deepEquals(x, y, true)) changes.push({ key, from: x, to: y });
  };
  walk(a, b, []);
  return changes;
}

/** Whether a running node applies a change of `key` without a restart. */
export function isReloadable(key: string): boolean {
  // limits.scope decides whether the node needs Redis at all: a restart
  return key === "log.level" || key === "tftp.remap" || key.startsWith("generate.") || (key.startsWith("limits.") && key !== "limits.scope");
}

const SECRET_KEYS = new Set(["cache.redis.password"]);

/** A change as it goes into the log: secrets are not written out. */
function shown(change: ConfigChange): ConfigChange {
  return SECRET_KEYS.has(change.key) ? { key: change.key, from: "(hidden)", to: "(hidden)" } : change;
}

/** Where the remap rules in effect come from. */
export type RulesOrigin =
  | { kind: "none" }
  | { kind: "file"; path: string }
  | { kind: "pushed"; path: string; text: string };

function sameOrigin(a: RulesOrigin, b: RulesOrigin): boolean {
  if (a.kind === "none" || b.kind === "none") return a.kind === b.kind;
  if (a.kind !== b.kind || a.path !== b.path) return false;
  return a.kind === "file" || (b.kind === "pushed" && a.text === b.text);
}

/** Where the rules of `next` come from: the pushed text when the pushed config set tftp.remap. */
export function rulesOrigin(next: Config, applied: AppliedSetting[], content: unknown, text: string | null): RulesOrigin {
  const path = next.tftp.remap;
  if (path === null) return { kind: "none" };
  const tftp = isPlainObject(content) ? content.tftp : undefined;
  const pushedSetsIt = isPlainObject(tftp) && tftp.remap !== undefined && !applied.some((a) => a.key === "tftp.remap");
  return pushedSetsIt && text !== null ? { kind: "pushed", path, text } : { kind: "file", path };
}

function setIn(obj: Obj, path: readonly string[], value: unknown): void {
  let cur = obj;
  for (const p of path.slice(0, -1)) {
    const next = cur[p];
    if (!isPlainObject(next)) return;
    cur = next;
  }
  const last = path[path.length - 1];
  if (last !== undefined) cur[last] = structuredClone(value);
}


/**
 * A pushed fleet config as layered into a node's (its file < pushed < env < flags): its own
 * settings, their source name for errors, and the remap rules' text when it carries them.
 */
export interface PushedLayer {
  content: unknown;
  source: string;
  remap: string | null;
}

/** Where a new config comes from, for the log lines about it. */
export interface ReloadSource {
  /** what it is, for the line that rejects it ("pushed config", "config file") */
  name: string;
  /** what a remap error starts with (the pushed version's name), before "tftp.remap: " */
  errorPrefix?: string;
  /** fields every line about it carries (the pushed version, or the signal) */
  about: Record<string, unknown>;
  /** the pushed config's own settings and remap text, when the new config has one layered in */
  pushed?: PushedLayer;
  /** read the remap rule file again even when its name did not change (SIGHUP) */
  rereadRules?: boolean;
}

export class RunningConfig {
  /** the config in effect: the start-up config with every reloaded change applied */
  private running: Config;
  private rules: RulesOrigin;

  constructor(
    config: Config,
    private readonly log: Logger,
    private readonly server: Pick<TftpServer, "reconfigure" | "reloadGenerated">,
    /** where the start-up rules came from when not from the file `config` names (a pushed text) */
    startedWith: RulesOrigin | null = null,
  ) {
    this.running = structuredClone(config);
    this.rules = startedWith ?? (config.tftp.remap === null ? { kind: "none" } : { kind: "file", path: config.tftp.remap });
  }

  /** The config in effect now. */
  get config(): Config {
    return this.running;
  }

  /**
   * Moves the server to `loaded` as far as it can while running, and logs what it did: "config
   * reloaded" (the changes applied), "config change needs a restart" (the others), "config up
   * to date" (none), or "NAME rejected" (errors: nothing changed). Returns false when rejected.
   */
  apply(loaded: LoadResult, from: ReloadSource): boolean {
    const { log } = this;
    const reject = (errors: string[]): boolean => {
      log.error({ ...from.about, errors }, `${from.name} rejected`);
      return false;
    };
    if (!loaded.ok) return reject(loaded.errors);
    const next = loaded.config;

    const origin = rulesOrigin(next, loaded.applied, from.pushed?.content, from.pushed?.remap ?? null);
    // a rule file is read again when asked: the same name may hold new rules
    const remapChanged = (from.rereadRules === true && origin.kind === "file") || !sameOrigin(this.rules, origin);
    let rules: RemapRule[] | undefined;
    if (remapChanged) {
      const parsed = origin.kind === "none" ? null : origin.kind === "pushed" ? parseRemapRules(origin.text, origin.path) : loadRemapFile(origin.path);
      if (parsed && !parsed.ok) return reject(parsed.errors.map((e) => `${from.errorPrefix ?? ""}tftp.remap: ${e}`));
      rules = parsed ? parsed.rules : [];
    }

    const changes = diffConfig(this.running, next);
    if (remapChanged && !changes.some((c) => c.key === "tftp.remap")) {
      // same rule file name, new rules (or read again)
      changes.push({ key: "tftp.remap", from: this.running.tftp.remap, to: next.tftp.remap });
    }
    // the inventory and the templates are read again on SIGHUP (the same names may hold new
    // machines), and whenever a generate.* setting changed; a set that does not load changes nothing
    const regenerate = (from.rereadRules === true && next.generate.files.length > 0) || changes.some((c) => c.key.startsWith("generate."));
    if (regenerate) {
      try {
        this.server.reloadGenerated(generateSettings(next));
      } catch (error) {
        return reject([(error as Error).message]);
      }
      if (!changes.some((c) => c.key.startsWith("generate."))) changes.push({ key: "generate.inventory", from: next.generate.inventory, to: next.generate.inventory });
    }
    const reload = changes.filter((c) => isReloadable(c.key));
    const restart = changes.filter((c) => !isReloadable(c.key));

    if (reload.length > 0) {
      const limits = reload.some((c) => c.key.startsWith("limits.")) ? admissionLimits(next) : undefined;
      this.server.reconfigure({ limits, remap: rules });
      if (rules) this.rules = origin;
      for (const c of reload) setIn(this.running, c.key.split("."), c.to);
      // the line is written at the more verbose of the old and new levels
      const line = () => log.info({ ...from.about, changes: reload.map(shown), ...(rules ? { remap_rules: rules.length } : {}) }, "config reloaded");
      if (log.isLevelEnabled("info")) {
        line();
        log.level = next.log.level;
      } else {
        log.level = next.log.level;
        line();
      }
    }
    if (restart.length > 0) log.warn({ ...from.about, changes: restart.map(shown) }, "config change needs a restart");
    if (changes.length === 0) log.info(from.about, "config up to date");
    return true;
  }
}

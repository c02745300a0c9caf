/**
 * The fleet's configuration on one node: polls the hash `tftpd config push` writes and, for each
 * new version, computes the node's effective config with the pushed settings layered in
 * (defaults < its own file < pushed < its TFTPD_* environment < its flags), then applies what can
 * change while running.
 *
 * Reloadable: `limits.*` but `limits.scope` (admission of new requests), `tftp.remap` (rules from
 * the pushed text) and `log.level`. Every other changed key is reported as needing a restart and
 * left as it is. A pushed config this node cannot use is reported and nothing of it is applied.
 * While Redis is down the polls fail quietly; the latest version is applied once it is back.
 */
import type { AppliedSetting, LoadResult } from "../config/load.ts";
import { KEYS_BY_PATH, type Config } from "../config/schema.ts";
import { admissionLimits } from "../config/server-options.ts";
import type { Logger } from "../log.ts";
import type { TftpServer } from "../server/server.ts";
import { loadRemapFile, parseRemapRules, type RemapRule } from "../storage/remap.ts";
import type { RedisLink } from "./redis.ts";

/** One changed setting, by its dotted key path. */
export interface ConfigChange {
  key: string;
  from: unknown;
  to: unknown;
}

/** How often a node asks Redis for the pushed config's version. */
const DEFAULT_POLL_MS = 2000;

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
  return key === "log.level" || key === "tftp.remap" || (key.startsWith("limits.") && key !== "limits.scope");
}

const SECRET_KEYS = new Set(["cache.redis.password"]);

/** A change as it goes into the log: secrets are not written out. */
function shown(change: ConfigChange): ConfigChange {
  return SECRET_KEYS.has(change.key) ? { key: change.key, from: "(hidden)", to: "(hidden)" } : change;
}

/** Where the remap rules in effect come from. */
type RulesOrigin =
  | { kind: "none" }
  | { kind: "file"; path: string }
  | { kind: "pushed"; path: string; text: string };

function sameOrigin(a: RulesOrigin, b: RulesOrigin): boolean {
  if (a.kind === "none" || b.kind === "none") return a.kind === b.kind;
  if (a.kind !== b.kind || a.path !== b.path) return false;
  return a.kind === "file" || (b.kind === "pushed" && a.text === b.text);
}

/** Where the rules of `next` come from: the pushed text when the pushed config set tftp.remap. */
function rulesOrigin(next: Config, applied: AppliedSetting[], content: unknown, text: string | null): RulesOrigin {
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

export interface ConfigSyncOptions {
  redis: RedisLink;
  log: Logger;
  /** the effective config the node started with */
  config: Config;
  /** the node's effective config with a pushed config layered in (its file < pushed < env < flags) */
  load(pushed: { content: unknown; source: string }): LoadResult;
  server: Pick<TftpServer, "reconfigure">;
  pollMs?: number;
  /** the pushed version `config` already holds (see startupConfig): not applied again */
  startedWith?: StartupConfig | null;
}

/** The latest pushed config; null when none was pushed. Throws when Redis does not answer. */
export async function readPushed(redis: RedisLink): Promise<Pushed | null> {
  const { client, keys } = redis;
  const [v, json, remap, pushedAt, pushedBy] = await client.hmget(keys.config, "version", "json", "remap", "pushed_at", "pushed_by");
  if (v == null) return null;
  return { stamp: `${v}@${pushedAt}`, version: v, json: json ?? null, remap: remap ?? null, pushedAt: pushedAt ?? null, pushedBy: pushedBy ?? null };
}

/** A node's start-up config with the pushed config in it, so restart-only keys take effect. */
export interface StartupConfig {
  config: Config;
  /** the remap rules to start with when they come from the pushed text, else null (read the file) */
  rules: RemapRule[] | null;
  stamp: string;
  version: number;
  origin: RulesOrigin;
}

/**
 * The config a node starts with when a config was pushed: its file < pushed < env < flags.
 * Errors are the lines of a config the node cannot use (the node then starts on its own).
 */
export function startupConfig(pushed: Pushed, load: ConfigSyncOptions["load"]): { ok: true; value: StartupConfig } | { ok: false; errors: string[] } {
  const source = `pushed config version ${pushed.version}`;
  if (pushed.json === null) return { ok: false, errors: [`${source}: no json field`] };
  let content: unknown;
  try {
    content = JSON.parse(pushed.json);
  } catch (error) {
    return { ok: false, errors: [`${source}: invalid JSON: ${(error as Error).message}`] };
  }
  const loaded = load({ content, source });
  if (!loaded.ok) return { ok: false, errors: loaded.errors };
  const origin = rulesOrigin(loaded.config, loaded.applied, content, pushed.remap);
  let rules: RemapRule[] | null = null;
  if (origin.kind === "pushed") {
    const parsed = parseRemapRules(origin.text, origin.path);
    if (!parsed.ok) return { ok: false, errors: parsed.errors.map((e) => `${source}: tftp.remap: ${e}`) };
    rules = parsed.rules;
  }
  return { ok: true, value: { config: loaded.config, rules, stamp: pushed.stamp, version: Number(pushed.version), origin } };
}

/** One version of the pushed config as read from Redis. */
export interface Pushed {
  stamp: string;
  version: string;
  json: string | null;
  remap: string | null;
  pushedAt: string | null;
  pushedBy: string | null;
}

export class ConfigSync {
  /** the config in effect: the start-up config with every reloaded change applied */
  private running: Config;
  private rules: RulesOrigin;
  /**
   * The last version handled (applied or rejected), as "VERSION@PUSHED_AT": each one is reported
   * once, and a counter that restarts (Redis lost its data) still reads as new.
   */
  private seen: string | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private polling = false;
  private stopped = false;
  private offState: (() => void) | null = null;
  private readonly pollMs: number;

  constructor(private readonly opts: ConfigSyncOptions) {
    this.running = structuredClone(opts.config);
    this.rules = opts.config.tftp.remap === null ? { kind: "none" } : { kind: "file", path: opts.config.tftp.remap };
    if (opts.startedWith) {
      this.rules = opts.startedWith.origin;
      this.seen = opts.startedWith.stamp;
    }
    this.pollMs = opts.pollMs ?? DEFAULT_POLL_MS;
  }

  /** Apply the latest pushed config now (or as soon as Redis answers), then follow new versions. */
  start(): void {
    this.offState = this.opts.redis.onState((state) => {
      if (state === "up") void this.poll();
    });
    void this.poll();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.offState?.();
  }

  /** The config in effect now. */
  get config(): Config {
    return this.running;
  }

  /** One round: read the version and handle it when it is new. Never rejects. */
  async poll(): Promise<void> {
    if (this.polling || this.stopped) return;
    this.polling = true;
    try {
      const pushed = await this.fetch();
      if (pushed && !this.stopped) {
        this.seen = pushed.stamp;
        this.handle(pushed);
      }
    } catch (error) {
      this.opts.log.error({ error: (error as Error).message }, "applying the pushed config failed");
    } finally {
      this.polling = false;
      this.schedule();
    }
  }

  private schedule(): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.poll(), this.pollMs);
    this.timer.unref?.();
  }

  /** The pushed config when its version is new; null when it is not, or Redis does not answer. */
  private async fetch(): Promise<Pushed | null> {
    const { client, keys } = this.opts.redis;
    try {
      const [version, at] = await client.hmget(keys.config, "version", "pushed_at");
      if (version == null || `${version}@${at}` === this.seen) return null;
      return await readPushed(this.opts.redis);
    } catch {
      // Redis down or slow: the next round asks again
      return null;
    }
  }

  private handle(pushed: Pushed): void {
    const { log } = this.opts;
    const version = Number(pushed.version);
    const source = `pushed config version ${pushed.version}`;
    const reject = (errors: string[]): void => log.error({ version, errors }, "pushed config rejected");

    if (pushed.json === null) return reject([`${source}: no json field`]);
    let content: unknown;
    try {
      content = JSON.parse(pushed.json);
    } catch (error) {
      return reject([`${source}: invalid JSON: ${(error as Error).message}`]);
    }
    const loaded = this.opts.load({ content, source });
    if (!loaded.ok) return reject(loaded.errors);
    const next = loaded.config;

    const origin = rulesOrigin(next, loaded.applied, content, pushed.remap);
    const remapChanged = !sameOrigin(this.rules, origin);
    let rules: RemapRule[] | undefined;
    if (remapChanged) {
      const parsed = origin.kind === "none" ? null : origin.kind === "pushed" ? parseRemapRules(origin.text, origin.path) : loadRemapFile(origin.path);
      if (parsed && !parsed.ok) return reject(parsed.errors.map((e) => `${source}: tftp.remap: ${e}`));
      rules = parsed ? parsed.rules : [];
    }

    const changes = diffConfig(this.running, next);
    if (remapChanged && !changes.some((c) => c.key === "tftp.remap")) {
      // same rule file name, new rules
      changes.push({ key: "tftp.remap", from: this.running.tftp.remap, to: next.tftp.remap });
    }
    const reload = changes.filter((c) => isReloadable(c.key));
    const restart = changes.filter((c) => !isReloadable(c.key));
    const about = { version, pushed_by: pushed.pushedBy, pushed_at: pushed.pushedAt };

    if (reload.length > 0) {
      const limits = reload.some((c) => c.key.startsWith("limits.")) ? admissionLimits(next) : undefined;
      this.opts.server.reconfigure({ limits, remap: rules });
      if (rules) this.rules = origin;
      for (const c of reload) setIn(this.running, c.key.split("."), c.to);
      // the line is written at the more verbose of the old and new levels
      const line = () => log.info({ ...about, changes: reload.map(shown), ...(rules ? { remap_rules: rules.length } : {}) }, "config reloaded");
      if (log.isLevelEnabled("info")) {
        line();
        log.level = next.log.level;
      } else {
        log.level = next.log.level;
        line();
      }
    }
    if (restart.length > 0) log.warn({ ...about, changes: restart.map(shown) }, "config change needs a restart");
    if (changes.length === 0) log.info(about, "config up to date");
  }

}

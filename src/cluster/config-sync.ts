/**
 * The fleet's configuration on one node: polls the hash `tftpd config push` writes and, for each
 * new version, computes the node's effective config with the pushed settings layered in
 * (defaults < its own file < pushed < its TFTPD_* environment < its flags), then applies what can
 * change while running.
 *
 * What is reloadable and how it is applied: ops/config-reload.ts (the same as for SIGHUP). A
 * pushed config this node cannot use is reported and nothing of it is applied. While Redis is
 * down the polls fail quietly; the latest version is applied once it is back.
 */
import type { LoadResult } from "../config/load.ts";
import type { Config } from "../config/schema.ts";
import type { Logger } from "../log.ts";
import { rulesOrigin, type PushedLayer, type RulesOrigin, type RunningConfig } from "../ops/config-reload.ts";
import { parseRemapRules, type RemapRule } from "../storage/remap.ts";
import type { RedisLink } from "./redis.ts";

/** How often a node asks Redis for the pushed config's version. */
const DEFAULT_POLL_MS = 2000;

export interface ConfigSyncOptions {
  redis: RedisLink;
  log: Logger;
  /** the node's effective config with a pushed config layered in (its file < pushed < env < flags) */
  load(pushed?: { content: unknown; source: string }): LoadResult;
  /** the config the server runs on, where a new version is applied */
  running: RunningConfig;
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
  /** the pushed settings and remap text, layered in again when the file is read again */
  pushed: PushedLayer;
}


/**
 * The config a node starts with when a config was pushed: its file < pushed < env < flags.
 * Errors are the lines of a config the node cannot use (the node then starts on its own).
 */
export function startupConfig(pushed: Pushed, load: ConfigSyncOptions["load"]): { ok: true; value: StartupConfig } | { ok: false; errors: string[] } {
  const read = pushedLayer(pushed);
  if (!read.ok) return read;
  const layer = read.layer;
  const { content, source } = layer;
  const loaded = load(layer);
  if (!loaded.ok) return { ok: false, errors: loaded.errors };
  const origin = rulesOrigin(loaded.config, loaded.applied, content, pushed.remap);
  let rules: RemapRule[] | null = null;
  if (origin.kind === "pushed") {
    const parsed = parseRemapRules(origin.text, origin.path);
    if (!parsed.ok) return { ok: false, errors: parsed.errors.map((e) => `${source}: tftp.remap: ${e}`) };
    rules = parsed.rules;
  }
  return {
    ok: true,
    value: { config: loaded.config, rules, stamp: pushed.stamp, version: Number(pushed.version), origin, pushed: layer },
  };
}

/** A pushed version's settings as a layer of the node's config, or why it has none. */
function pushedLayer(pushed: Pushed): { ok: true; layer: PushedLayer } | { ok: false; errors: string[] } {
  const source = `pushed config version ${pushed.version}`;
  if (pushed.json === null) return { ok: false, errors: [`${source}: no json field`] };
  try {
    return { ok: true, layer: { content: JSON.parse(pushed.json), source, remap: pushed.remap } };
  } catch (error) {
    return { ok: false, errors: [`${source}: invalid JSON: ${(error as Error).message}`] };
  }
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
  /** the latest pushed config handled, layered in again when the file is read again */
  private latest: PushedLayer | null = null;
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
    if (opts.startedWith) {
      this.seen = opts.startedWith.stamp;
      this.latest = opts.startedWith.pushed;
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
    return this.opts.running.config;
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
    const version = Number(pushed.version);
    const about = { version, pushed_by: pushed.pushedBy, pushed_at: pushed.pushedAt };
    const read = pushedLayer(pushed);
    if (!read.ok) {
      this.opts.log.error({ ...about, errors: read.errors }, "pushed config rejected");
      return;
    }
    this.latest = read.layer;
    this.opts.running.apply(this.opts.load(read.layer), { name: "pushed config", errorPrefix: `${read.layer.source}: `, about, pushed: read.layer });
  }

  /** the latest pushed config handled (or started with), to layer in when the file is read again */
  get latestPushed(): PushedLayer | null {
    return this.latest;
  }
}

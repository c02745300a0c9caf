/**
 * The Redis link of the commands that talk to the fleet (cache, cluster, metrics --cluster):
 * the config as `serve` would load it (file < TFTPD_* env), `--redis` replacing its nodes.
 * Any problem is one line naming the key, flag or addresses at fault, and exit 1.
 */
import { loadConfig, type Config } from "../config/load.ts";
import { connectOrFail, redisSettings, splitNodes, type RedisLink } from "../cluster/redis.ts";
import type { ArgsDef } from "citty";
import { fail, unknownOption } from "./args.ts";

export const fleetArgs = {
  redis: { type: "string", description: "Redis seed nodes HOST:PORT[,…] (default: cache.redis.nodes of the config)", valueHint: "HOST:PORT,…" },
  config: { type: "string", description: "Config file (default /etc/tftpd/config.json when it exists)", valueHint: "FILE" },
} as const;

/**
 * The start of every fleet subcommand: an option nobody defined is a usage error, then the
 * config (`--config`, else the default file, and the TFTPD_* environment).
 */
export function fleetCommandConfig(command: string, args: ArgsDef, rawArgs: readonly string[], file: string | undefined): Config {
  const unknown = unknownOption(args, rawArgs);
  if (unknown) fail(command, `unknown option ${unknown} (see tftpd ${command} --help)`, 2);
  return fleetConfig(command, file);
}

export function fleetConfig(command: string, file: string | undefined): Config {
  const loaded = loadConfig({ file, env: process.env });
  if (!loaded.ok) {
    for (const line of loaded.errors) process.stderr.write(`tftpd ${command}: ${line}\n`);
    process.exit(1);
  }
  return loaded.config;
}

export async function openFleetLink(command: string, config: Config, redisFlag: string | undefined): Promise<RedisLink> {
  if (redisFlag !== undefined) {
    try {
      splitNodes(redisFlag);
    } catch (error) {
      fail(command, (error as Error).message, 2);
    }
  } else if (config.cache.redis.nodes.length === 0) {
    fail(command, "no Redis nodes: pass --redis HOST:PORT[,…] or set cache.redis.nodes", 2);
  }
  try {
    return await connectOrFail(redisSettings(config, redisFlag));
  } catch (error) {
    fail(command, (error as Error).message);
  }
}

/** The config (file < env) and its Redis link, `--redis` replacing the nodes. */
export function connectFleet(command: string, flags: { config?: string; redis?: string }): Promise<RedisLink> {
  return openFleetLink(command, fleetConfig(command, flags.config), flags.redis);
}

/**
 * Runs `work` on a link to the fleet's Redis and closes it; an error is one line naming the
 * Redis nodes it came from, and exit 1.
 */
export async function withFleetLink<T>(command: string, config: Config, redisFlag: string | undefined, work: (link: RedisLink) => Promise<T>): Promise<T> {
  const link = await openFleetLink(command, config, redisFlag);
  try {
    return await work(link);
  } catch (error) {
    await link.close();
    fail(command, `${(error as Error).message} (Redis at ${link.settings.nodes.join(",")})`);
  } finally {
    await link.close();
  }
}

/**
 * `tftpd cache put FILE [--name NAME]`, `tftpd cache ls`, `tftpd cache rm NAME`: the boot
 * files published to the fleet's shared cache in Redis. Any node whose root lacks a file
 * serves it from there (src/cluster/files.ts).
 */
import { defineCommand } from "citty";
import { statSync } from "node:fs";
import { basename } from "node:path";
import { parseByteSize } from "../config/bytes.ts";
import { DEFAULT_CHUNK_SIZE, listFiles, publish, remove } from "../cluster/content.ts";
import { cacheLines, formatBytes } from "../cluster/fleet.ts";
import { resolveRequestPath } from "../storage/resolve.ts";
import { fail } from "./args.ts";
import { fleetArgs, fleetCommandConfig, withFleetLink } from "./fleet-link.ts";

/** A published name follows the rules of a request path: what a client asks for finds it. */
function publishedName(command: string, name: string): string {
  const resolved = resolveRequestPath("/", name);
  if (!resolved.ok) fail(command, `--name ${name}: ${resolved.message}`, 2);
  return resolved.relative;
}

const putArgs = {
  file: { type: "positional", description: "File to publish", valueHint: "FILE", required: true },
  name: { type: "string", description: "Name clients ask for, e.g. boot/initrd.img (default: the file's name)", valueHint: "NAME" },
  ttl: { type: "string", description: "Seconds it stays published, 0 = until removed (default cache.ttl)", valueHint: "S" },
  "chunk-size": { type: "string", description: "Bytes per stored chunk (default 1Mi)", valueHint: "BYTES" },
  compression: { type: "string", description: "gzip or none (default: compression.enabled of the config)", valueHint: "gzip|none" },
  ...fleetArgs,
} as const;

const put = defineCommand({
  meta: { name: "put", description: "Publish a file to the fleet's shared cache" },
  args: putArgs,
  async run({ args: a, rawArgs }) {
    const command = "cache put";
    const config = fleetCommandConfig(command, putArgs, rawArgs, a.config);
    const name = publishedName(command, a.name ?? basename(a.file));
    const ttl = a.ttl === undefined ? config.cache.ttl : Number(a.ttl);
    if (!Number.isSafeInteger(ttl) || ttl < 0) fail(command, `--ttl must be a whole number of seconds >= 0, got ${a.ttl}`, 2);
    let chunkSize = DEFAULT_CHUNK_SIZE;
    if (a["chunk-size"] !== undefined) {
      const parsed = parseByteSize(a["chunk-size"]);
      if (!parsed.ok || parsed.bytes < 4096 || parsed.bytes > 64 << 20) fail(command, `--chunk-size must be a byte size from 4Ki to 64Mi, got ${a["chunk-size"]}`, 2);
      chunkSize = parsed.bytes;
    }
    if (a.compression !== undefined && a.compression !== "gzip" && a.compression !== "none") {
      fail(command, `--compression must be gzip or none, got ${a.compression}`, 2);
    }
    let stat;
    try {
      stat = statSync(a.file);
    } catch {
      fail(command, `${a.file}: no such file`);
    }
    if (!stat.isFile()) fail(command, `${a.file}: not a regular file`);
    const bytes = await Bun.file(a.file).bytes();

    const started = performance.now();
    const { manifest, evicted } = await withFleetLink(command, config, a.redis, (link) =>
      publish(link, name, bytes, {
        chunkSize,
        ttlS: ttl,
        maxSizeBytes: config.cache.max_size,
        mtimeMs: stat.mtimeMs,
        compression: {
          enabled: a.compression === undefined ? config.compression.enabled : a.compression === "gzip",
          level: config.compression.level,
          minSize: config.compression.min_size,
        },
      }),
    );
    for (const victim of evicted) console.log(`evicted ${victim} (least recently served) to stay within cache.max_size`);
    console.log(
      `published ${manifest.name} size ${formatBytes(manifest.size)} stored ${formatBytes(manifest.stored)} chunks ${manifest.chunks.length} ` +
        `compression ${manifest.compression} sha256 ${manifest.sha256} ttl ${manifest.ttlS === 0 ? "none" : `${manifest.ttlS}s`} ` +
        `in ${Math.round(performance.now() - started)} ms`,
    );
  },
});

const lsArgs = {
  json: { type: "boolean", description: "Print the files as JSON" },
  ...fleetArgs,
} as const;

const ls = defineCommand({
  meta: { name: "ls", description: "List the files in the fleet's shared cache" },
  args: lsArgs,
  async run({ args: a, rawArgs }) {
    const command = "cache ls";
    const config = fleetCommandConfig(command, lsArgs, rawArgs, a.config);
    const files = await withFleetLink(command, config, a.redis, listFiles);
    if (a.json) console.log(JSON.stringify({ files, maxSize: config.cache.max_size }));
    else console.log(cacheLines(files, Date.now(), config.cache.max_size).join("\n"));
  },
});

const rmArgs = {
  name: { type: "positional", description: "Published name to remove", valueHint: "NAME", required: true },
  ...fleetArgs,
} as const;

const rm = defineCommand({
  meta: { name: "rm", description: "Remove a file from the fleet's shared cache" },
  args: rmArgs,
  async run({ args: a, rawArgs }) {
    const command = "cache rm";
    const config = fleetCommandConfig(command, rmArgs, rawArgs, a.config);
    const name = publishedName(command, a.name);
    const removed = await withFleetLink(command, config, a.redis, (link) => remove(link, name));
    if (!removed) fail(command, `${name} is not in the shared cache`);
    console.log(`removed ${name}`);
  },
});

export default defineCommand({
  meta: { name: "cache", description: "Publish, list and remove files in the fleet's shared cache (Redis)" },
  subCommands: { put, ls, rm },
});

// The configuration schema: the single source of config types, defaults and validation.
//
// Every object is strict (unknown keys are errors) and every key has a default, so
// `configSchema.parse({})` is the full default config. Byte sizes parse to numbers of bytes;
// `tftp.port_range` parses to {low, high} | null; `tftp.allow`/`deny` to canonical "ADDR/PREFIX".
// The output of a parse is itself valid input (config check output can be fed back).
import { z } from "zod";
import { BYTE_SIZE_HINT, describeValue, formatByteSize, parseByteSize } from "./bytes.ts";
import { safeParseCidr, safeParseHostPort, safeParseListenAddress, type ParseResult, type PortRange } from "../net/address.ts";
import { parseCpuList, type AffinitySetting } from "../net/affinity.ts";
import { LOWEST_NICE } from "../net/helper-threads.ts";
import { parseUserSpec } from "../ops/privilege.ts";
import { BLKSIZE_MAX, BLKSIZE_MIN, KNOWN_OPTIONS, TIMEOUT_MAX, WINDOWSIZE_MAX, WINDOWSIZE_MIN } from "../protocol/options.ts";
import { DATA_HEADER_SIZE } from "../protocol/packet.ts";

// ---------------------------------------------------------------------------------------------
// Leaf builders. Each one carries its own one-line error messages ("expected X, got Y") and a
// type label for the documentation.

/** Type labels for docs, keyed by schema instance. */
const typeLabels = new WeakMap<object, string>();
/** Leaves holding filesystem paths: relative values resolve against the config file's dir. */
const pathLeaves = new WeakSet<object>();

function labelled<T extends object>(schema: T, label: string): T {
  typeLabels.set(schema, label);
  return schema;
}

type Issue = { input?: unknown };

function intIn(min: number, max?: number) {
  const what =
    max !== undefined
      ? `an integer from ${min} to ${max}`
      : min === 0
        ? "a non-negative integer"
        : min === 1
          ? "a positive integer"
          : `an integer >= ${min}`;
  const error = (iss: Issue) => `expected ${what}, got ${describeValue(iss.input)}`;
  let s = z.number({ error }).int({ error }).min(min, { error });
  if (max !== undefined) s = s.max(max, { error });
  return labelled(s, max !== undefined ? `integer ${min}..${max}` : `integer >= ${min}`);
}

/** A number in (gtMin, max]: used for seconds that may be fractional. */
function numberAbove(gtMin: number, max: number) {
  const what = `a number > ${gtMin} and <= ${max}`;
  const error = (iss: Issue) => `expected ${what}, got ${describeValue(iss.input)}`;
  return labelled(z.number({ error }).gt(gtMin, { error }).max(max, { error }), `number > ${gtMin}, <= ${max}`);
}

function bool() {
  return labelled(z.boolean({ error: (iss: Issue) => `expected true or false, got ${describeValue(iss.input)}` }), "boolean");
}

function nonEmptyString(what = "a non-empty string") {
  const error = (iss: Issue) => `expected ${what}, got ${describeValue(iss.input)}`;
  return labelled(z.string({ error }).min(1, { error }), "string");
}

function filePath() {
  const s = nonEmptyString("a path");
  pathLeaves.add(s);
  return labelled(s, "path");
}

function oneOf<const T extends readonly [string, ...string[]]>(values: T) {
  const list = values.map((v) => JSON.stringify(v)).join(", ");
  return labelled(
    z.enum(values, { error: (iss: Issue) => `expected one of ${list}, got ${describeValue(iss.input)}` }),
    values.map((v) => JSON.stringify(v)).join(" | "),
  );
}

/** A leaf parsed by a hand-written function returning a value or a one-line error. */
function parsedBy<T>(label: string, fn: (v: unknown) => ParseResult<T>) {
  return labelled(
    z.unknown().transform((v, ctx): T => {
      const r = fn(v);
      if (!r.ok) {
        ctx.addIssue({ code: "custom", message: r.error, input: v });
        return z.NEVER;
      }
      return r.value;
    }),
    label,
  );
}

function bytes(min = 0) {
  const range = min > 0 ? ` >= ${formatByteSize(min)}` : "";
  const label = min > 0 ? `byte size >= ${formatByteSize(min)}` : "byte size";
  return parsedBy<number>(label, (v) => {
    const r = parseByteSize(v);
    if (!r.ok) return r;
    if (r.bytes < min) {
      return { ok: false, error: `expected ${BYTE_SIZE_HINT}${range}, got ${describeValue(v)}` };
    }
    return { ok: true, value: r.bytes };
  });
}

function listOf<T extends z.ZodType>(element: T, what: string, opts: { min?: number; unique?: boolean } = {}) {
  const error = (iss: Issue & { code?: string }) =>
    iss.code === "too_small"
      ? `expected at least ${opts.min ?? 0} ${what}`
      : `expected an array of ${what}, got ${describeValue(iss.input)}`;
  let arr = z.array(element, { error });
  if (opts.min) arr = arr.min(opts.min, { error });
  const out = opts.unique
    ? arr.superRefine((items, ctx) => {
        const seen = new Map<string, number>();
        items.forEach((item, i) => {
          const k = JSON.stringify(item);
          const first = seen.get(k);
          if (first !== undefined) ctx.addIssue({ code: "custom", path: [i], message: `duplicate of entry ${first}: ${k}` });
          else seen.set(k, i);
        });
      })
    : arr;
  return labelled(out, `array of ${what}`);
}

const listenAddress = () =>
  parsedBy<string>('"ADDR:PORT"', (v) => {
    const r = safeParseListenAddress(v);
    return r.ok ? { ok: true, value: v as string } : r;
  });

const hostPort = () =>
  parsedBy<string>('"HOST:PORT"', (v) => {
    const r = safeParseHostPort(v);
    return r.ok ? { ok: true, value: v as string } : r;
  });

const cidr = () =>
  parsedBy<string>("CIDR", (v) => {
    const r = safeParseCidr(v);
    return r.ok ? { ok: true, value: r.value.text } : r;
  });

/** A CIDR or a non-empty list of them, parsed to the list of canonical CIDRs (valid input again). */
const cidrs = () =>
  labelled(
    z.unknown().transform((v, ctx): string[] => {
      const hint = 'expected a CIDR or a list of CIDRs (e.g. "10.0.0.0/8" or ["10.0.0.0/8", "fd00::/8"])';
      const list = typeof v === "string" ? [v] : v;
      if (!Array.isArray(list) || list.length === 0) {
        ctx.addIssue({ code: "custom", message: `${hint}, got ${Array.isArray(list) ? "an empty list" : describeValue(v)}`, input: v });
        return z.NEVER;
      }
      const out: string[] = [];
      list.forEach((item: unknown, i) => {
        const r = safeParseCidr(item);
        if (r.ok) out.push(r.value.text);
        else ctx.addIssue({ code: "custom", message: r.error, input: item, path: typeof v === "string" ? [] : [i] });
      });
      return out.length === list.length ? out : z.NEVER;
    }),
    "CIDR | array of CIDRs",
  );

/**
 * One per-network rule of `tftp.rules`. Absent settings parse to null / [] ("the server's"), so
 * the printed config shows every field of a rule.
 */
function networkRule() {
  const error = (iss: Issue) => `expected an object with "clients", got ${describeValue(iss.input)}`;
  return z.strictObject(
    {
      clients: cidrs(),
      blksize_max: intIn(BLKSIZE_MIN, BLKSIZE_MAX).nullable().default(null),
      windowsize_max: intIn(WINDOWSIZE_MIN, WINDOWSIZE_MAX).nullable().default(null),
      refuse_options: listOf(oneOf(KNOWN_OPTIONS), "option names", { unique: true }).default([]),
      root: filePath().nullable().default(null),
    },
    { error },
  );
}

function parsePortRange(v: unknown): ParseResult<PortRange | null> {
  const hint = 'expected "LOW:HIGH" with 1 <= LOW <= HIGH <= 65535, or null';
  if (v === null) return { ok: true, value: null };
  let low: unknown;
  let high: unknown;
  if (typeof v === "string") {
    const m = /^\s*(\d{1,5})\s*[:-]\s*(\d{1,5})\s*$/.exec(v);
    if (!m) return { ok: false, error: `${hint}, got ${describeValue(v)}` };
    low = Number(m[1]);
    high = Number(m[2]);
  } else if (typeof v === "object" && !Array.isArray(v)) {
    const o = v as Record<string, unknown>;
    const extra = Object.keys(o).filter((k) => k !== "low" && k !== "high");
    if (extra.length > 0) return { ok: false, error: `${hint}, got an object with unknown key ${JSON.stringify(extra[0])}` };
    low = o.low;
    high = o.high;
  } else {
    return { ok: false, error: `${hint}, got ${describeValue(v)}` };
  }
  const okPort = (p: unknown): p is number => typeof p === "number" && Number.isInteger(p) && p >= 1 && p <= 65535;
  if (!okPort(low) || !okPort(high) || low > high) {
    return { ok: false, error: `${hint}, got ${typeof v === "string" ? describeValue(v) : JSON.stringify(v)}` };
  }
  return { ok: true, value: { low, high } };
}

/** "auto" | "none" | CPU index | list of CPU indexes | "0-3,8" (ranges, handy in env vars). */
function parseAffinity(v: unknown): ParseResult<AffinitySetting> {
  const hint = 'expected "auto", "none", or a list of CPU numbers (e.g. [0, 1, 2] or "0-3,8")';
  if (v === "auto" || v === "none") return { ok: true, value: v };
  let cpus: number[] = [];
  const okCpu = (n: unknown): n is number => typeof n === "number" && Number.isInteger(n) && n >= 0 && n < 65536;
  if (typeof v === "number") {
    if (!okCpu(v)) return { ok: false, error: `${hint}, got ${v}` };
    cpus = [v];
  } else if (Array.isArray(v)) {
    for (const n of v) {
      if (!okCpu(n)) return { ok: false, error: `${hint}, got an array containing ${describeValue(n)}` };
      cpus.push(n);
    }
  } else if (typeof v === "string") {
    const list = parseCpuList(v);
    if (list === null || !list.every(okCpu)) return { ok: false, error: `${hint}, got ${describeValue(v)}` };
    cpus = list;
  } else {
    return { ok: false, error: `${hint}, got ${describeValue(v)}` };
  }
  if (cpus.length === 0) return { ok: false, error: `${hint}, got an empty list` };
  return { ok: true, value: [...new Set(cpus)].sort((a, b) => a - b) };
}

function autoOrInt(min: number, max: number) {
  return parsedBy<"auto" | number>(`"auto" | integer ${min}..${max}`, (v) => {
    if (v === "auto") return { ok: true, value: "auto" };
    if (typeof v === "number" && Number.isInteger(v) && v >= min && v <= max) return { ok: true, value: v };
    return { ok: false, error: `expected "auto" or an integer from ${min} to ${max}, got ${describeValue(v)}` };
  });
}

/** A strict section whose own default is {} (so inner defaults apply). */
function section<T extends z.core.$ZodLooseShape>(shape: T) {
  const obj = z.strictObject(shape, { error: (iss: Issue) => `expected an object, got ${describeValue(iss.input)}` });
  return obj.prefault({} as z.input<typeof obj>);
}

/**
 * Keys the schema no longer has, and what to do instead: a config that still sets one is
 * refused with this, not with "unknown key".
 */
export const REMOVED_KEYS: ReadonlyMap<string, string> = new Map([
  [
    "performance.memory.buffer_size",
    `removed: no buffer is sized by it; a DATA packet is the block size each transfer negotiates plus ${DATA_HEADER_SIZE} bytes, so tftp.blksize_max (and a rule's blksize_max) bounds it: delete the key, and set tftp.blksize_max to bound the packet size`,
  ],
]);

// ---------------------------------------------------------------------------------------------
// Sections

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

const tftp = section({
  root: filePath()
    .default("/srv/tftp")
    .describe("Directory served; every request is confined to it. Relative paths resolve against the config file's directory."),
  listen: listOf(listenAddress(), '"ADDR:PORT" addresses', { min: 1, unique: true })
    .default(["0.0.0.0:69", "[::]:69"])
    .describe('UDP addresses the server listens on for requests; IPv6 in brackets ("[::1]:69").'),
  user: labelled(
    nonEmptyString().refine((v) => parseUserSpec(v) !== null, {
      error: (iss: Issue) => `expected "USER" or "USER:GROUP" (names or numeric ids), got ${describeValue(iss.input)}`,
    }),
    '"USER" | "USER:GROUP"',
  )
    .nullable()
    .default(null)
    .describe(
      'Started as root, the server binds its sockets and then runs as this user (every thread; the group is GROUP, else the user\'s primary group; supplementary groups are cleared), so file permissions apply as for that user. null = "tftpd" if that user exists, else "nobody"; "root" keeps root (said once in the log). Started as any other user, nothing changes (another user here is an error). Names or numeric ids.',
    ),
  port_range: parsedBy<PortRange | null>('"LOW:HIGH" | null', parsePortRange)
    .prefault(null)
    .describe('Local UDP ports for transfers, "LOW:HIGH" (parsed to {"low", "high"}); null = any ephemeral port.'),
  write: oneOf(["off", "create", "overwrite"])
    .default("off")
    .describe('Write requests (WRQ): "off" refuses them, "create" allows new files only, "overwrite" also replaces existing files.'),
  max_upload_size: bytes()
    .prefault("4Gi")
    .describe("Largest file a client may upload; larger uploads are aborted and the partial file removed."),
  remap: filePath()
    .nullable()
    .default(null)
    .describe("File of path remap rules applied to requested file names (tftpd-hpa style), or null. Relative paths resolve against the config file's directory."),
  blksize_max: intIn(BLKSIZE_MIN, BLKSIZE_MAX)
    .default(1468)
    .describe("Largest block size granted to a client's blksize option (RFC 2348); 1468 fills a 1500-byte Ethernet MTU."),
  windowsize_max: intIn(WINDOWSIZE_MIN, WINDOWSIZE_MAX)
    .default(64)
    .describe("Largest window (blocks sent before an ACK) granted to a client's windowsize option (RFC 7440)."),
  window_bytes_max: bytes(1)
    .prefault("4Mi")
    .describe("A window never carries more bytes than this: the granted windowsize is lowered to fit blksize x windowsize."),
  timeout: numberAbove(0, TIMEOUT_MAX)
    .default(1)
    .describe("Initial retransmit timeout in seconds when the client sets no timeout option (RFC 2349)."),
  retries: intIn(1, 100)
    .default(5)
    .describe("Retransmissions of an unacknowledged packet before the transfer is abandoned."),
  allow: listOf(cidr(), "CIDRs")
    .default([])
    .describe('Client networks allowed to use the server ("10.0.0.0/8", "2001:db8::/32", or a single address); empty = all. Parsed to "ADDR/PREFIX".'),
  deny: listOf(cidr(), "CIDRs")
    .default([])
    .describe("Client networks refused; deny wins over allow. Parsed to \"ADDR/PREFIX\"."),
  unique_root: oneOf(["off", "ip", "mac"])
    .default("off")
    .describe(
      'A root per client (dnsmasq\'s --tftp-unique-root): "ip" serves a client from `ROOT/<client IP>/FILE`, "mac" from `ROOT/<client MAC>/FILE` (the MAC written `01-02-03-04-aa-bb`, from the kernel\'s neighbour table, IPv4 and IPv6) when that directory exists; otherwise, and with "off", from `ROOT/FILE`. ROOT is the root of the client\'s rule when it has one, else tftp.root.',
    ),
  rules: listOf(networkRule(), "rules")
    .default([])
    .describe(
      'Per-network rules; the first whose clients hold the client\'s address applies: {"clients": CIDR or list of CIDRs (required), "blksize_max" and "windowsize_max" (in place of the server\'s), "refuse_options" (options never acknowledged to these clients: "blksize", "timeout", "tsize", "windowsize"), "root" (a root of their own; relative paths resolve against the config file\'s directory)}. A setting left out or null is the server\'s. E.g. a VPN needs a smaller block size, a boot ROM breaks on an option, a lab network has its own root.',
    ),
  transfer_sockets: oneOf(["per-transfer", "shared"])
    .default("shared")
    .describe(
      '"per-transfer": a new UDP port for every transfer. "shared": transfers to different clients share ports per local address, so datagrams are sent and received in batches (each transfer is still its own TID pair): lock-step transfers one port, windowed ones a port drawn at random per transfer from a pool of windowsize ports (a forged ACK must be sent to every port of the pool to reach a transfer, so it draws one block per datagram on average, as on the lock-step port); a window over 128 KiB gets a port of its own.',
    ),
  single_port: bool()
    .default(false)
    .describe(
      "Serve every transfer from the port its request came to (69), told apart by the client's address and port, for NAT, containers and firewalls that open only that port. Transfers then run on the main thread, next to the listeners, and share its batches; a windowed transfer there is reachable by anyone who knows the port, as every transfer is",
    ),
});

/** Content types by file extension (lower case, with the dot), before http.mime's own. */
export const DEFAULT_MIME: Readonly<Record<string, string>> = {
  ".efi": "application/efi",
  ".ipxe": "text/plain; charset=utf-8",
  ".cfg": "text/plain; charset=utf-8",
  ".txt": "text/plain; charset=utf-8",
  ".json": "application/json",
  ".iso": "application/x-iso9660-image",
  ".img": "application/octet-stream",
};

const mimeType = parsedBy<string>('"type/subtype"', (v) =>
  typeof v === "string" && /^[\w.+-]+\/[\w.+-]+(\s*;.*)?$/.test(v) ? { ok: true, value: v } : { ok: false, error: `expected a content type such as "application/efi", got ${describeValue(v)}` },
);

const http = section({
  enabled: bool()
    .default(false)
    .describe("Serve the same files over HTTP (GET and HEAD), through the same remap rules, roots, per-network rules, allow/deny, limits and cache as TFTP"),
  listen: listOf(listenAddress(), '"ADDR:PORT" addresses', { min: 1, unique: true })
    .default(["0.0.0.0:80", "[::]:80"])
    .describe('TCP addresses of the HTTP listener; IPv6 in brackets ("[::1]:8080")'),
  tls: section({
    listen: listOf(listenAddress(), '"ADDR:PORT" addresses', { unique: true })
      .default([])
      .describe("TCP addresses of the HTTPS listener (none: no HTTPS); needs http.tls.cert and http.tls.key"),
    cert: filePath().nullable().default(null).describe("PEM certificate chain for HTTPS. Relative paths resolve against the config file's directory."),
    key: filePath().nullable().default(null).describe("PEM private key for HTTPS. Relative paths resolve against the config file's directory."),
  }),
  retry_after: intIn(1, 3600)
    .default(5)
    .describe("Seconds a client turned away over a limit is told to wait (Retry-After of the 503, which iPXE honours)"),
  mime: labelled(
    z.record(z.string().regex(/^\.[a-z0-9._+-]+$/, { error: 'expected a file extension in lower case with its dot, such as ".efi"' }), mimeType),
    "content types by extension",
  )
    .default({})
    .describe('Content types by file extension, over the built-in ones (".efi" application/efi, ".ipxe" text/plain, ...); anything else is application/octet-stream'),
});

const generatedFile = labelled(
  z.strictObject(
    {
      path: nonEmptyString().refine((v) => /\{(mac|ip)\}/.test(v) && !v.startsWith("/") && !v.split("/").includes(".."), {
        error: 'expected a path below the root with {mac} or {ip} in it, such as "ipxe/{mac}.ipxe"',
      }),
      template: nonEmptyString("a template name below generate.templates"),
    },
    { error: (iss: Issue) => `expected {"path": "...{mac}...", "template": "NAME"}, got ${describeValue(iss.input)}` },
  ),
  '{"path", "template"}',
);

const generate = section({
  inventory: filePath()
    .nullable()
    .default(null)
    .describe('JSON inventory of the machines generated files are made for: {"profiles": {NAME: {"kernel", "initrds", "args", "vars"}}, "machines": [{"match": {"mac"|"ip"|"cidr"|"uuid"|"serial"|"arch"|"labels"}, "profile", "vars"}]}; the most specific match wins. Relative paths resolve against the config file\'s directory.'),
  templates: filePath()
    .nullable()
    .default(null)
    .describe("Folder of the LiquidJS templates generated files are rendered from. Relative paths resolve against the config file's directory."),
  files: listOf(generatedFile, "generated files", { unique: true })
    .default([])
    .describe('Files made per request, for TFTP and HTTP clients alike: {"path": "ipxe/{mac}.ipxe", "template": "machine.ipxe.liquid"}; {mac} and {ip} in the path name the machine. A path that names no machine of the inventory is looked for in the root.'),
  http_base: z
    .string()
    .regex(/^https?:\/\/[^/\s]+$/, { error: 'expected "http://HOST[:PORT]" or "https://HOST[:PORT]"' })
    .nullable()
    .default(null)
    .describe("server.http_base in templates for TFTP requests (an HTTP request names its own from its Host header), e.g. \"http://192.0.2.10\""),
});

const metrics = section({
  enabled: bool().default(true).describe(`Serve Prometheus metrics over HTTP`),
  listen: listenAddress().default("127.0.0.1:9469").describe(`TCP address of the metrics / control endpoint`),
  control: bool().default(true).describe(`Expose the control endpoints (profile, cluster status) on the metrics listener`),
});

const log = section({
  level: oneOf(LOG_LEVELS).default("info").describe("Log level of the JSON log on stdout."),
});

const tune = section({
  enabled: bool().default(true).describe(`Auto-tune kernel parameters and rlimits on startup (serve --no-tune disables)`),
});

const performance = section({
  cpu: section({
    affinity: parsedBy<AffinitySetting>('"auto" | "none" | CPU list', parseAffinity)
      .prefault("auto")
      .describe(
        'Pin each transfer worker\'s thread to a CPU (sched_setaffinity): "auto" gives worker i the i-th CPU from the last one this process may use when two CPUs are left over (for the main thread, interrupts and the rest; so not with the default worker_threads), else leaves it to the kernel; "none" leaves it to the kernel; a CPU list ([0,1,2] or "0-3,8") is shared out round robin. CPUs this process may not use are left out, said in one line',
      ),
    runtime_threads_nice: intIn(0, LOWEST_NICE)
      .default(LOWEST_NICE)
      .describe(
        "Nice value of the runtime's background threads (JavaScriptCore's JIT compilers and heap warm-up, set through setpriority and looked over each second, as the runtime replaces them after idle spells): at 19 a compile runs whenever a CPU would idle and never holds up a thread with packets to answer; 0 leaves them at the server's priority",
      ),
    thread_pool_size: intIn(1, 4096).default(4).describe("The most threads the file I/O pool may have: it has min(io.io_threads, this)"),
    worker_threads: autoOrInt(1, 1024)
      .prefault("auto")
      .describe('Number of transfer engines: 1 runs transfers on the main thread, N > 1 starts N worker threads; "auto" = one per CPU but one (the main thread keeps listeners, admission and the cache)'),
  }),
  memory: section({
    cache_size: bytes().prefault("1Gi").describe("Cap of the local file cache: bytes of sealed in-memory (memfd) copies of served files, shared by all transfers and workers"),
    connection_pool_size: intIn(0, 1_000_000)
      .default(1024)
      .describe(
        "Transfer slots allocated at start, shared out over the transfer workers (at most connection_pool.max_connections): a slot is what a transfer with a port of its own (a window over 128 KiB, or every transfer with tftp.transfer_sockets \"per-transfer\") sends and receives through, about 11 KiB; a storm of such transfers takes warm slots instead of allocating and collecting buffers per transfer. Used by network.epoll's loop (Bun's sockets keep buffers of their own)",
      ),
  }),
  network: section({
    tcp_nodelay: bool().default(true).describe("TCP_NODELAY on the connections to Redis (cluster mode)"),
    tcp_keepalive: bool().default(true).describe("SO_KEEPALIVE on the connections to Redis (cluster mode): a dead peer is noticed without traffic"),
    receive_buffer_size: bytes(1).prefault("32Mi").describe("SO_RCVBUF of the UDP request and shared transfer sockets (set and read back; capped by net.core.rmem_max unless the process has CAP_NET_ADMIN); 32Mi holds a burst of about 25,000 requests"),
    send_buffer_size: bytes(1).prefault("4Mi").describe("SO_SNDBUF of the UDP request and shared transfer sockets (set and read back; capped by net.core.wmem_max)"),
  }),
});

const cache = section({
  enabled: bool().default(true).describe(`Cache served files (local cache; plus the shared cluster cache when type is "distributed")`),
  type: oneOf(["local", "distributed"])
    .default("local")
    .describe('"local": each node caches the files of its own root; "distributed": also serve files published to the fleet\'s shared cache in Redis (`tftpd cache put`) when the root lacks them'),
  backend: oneOf(["redis"]).default("redis").describe("Backend of the distributed cache"),
  redis: section({
    cluster_mode: bool().default(true).describe("Talk to a Redis Cluster (true) or a single Redis server (false)"),
    nodes: listOf(hostPort(), '"HOST:PORT" addresses', { unique: true })
      .default([])
      .describe('Seed nodes "HOST:PORT" (--redis); required when cache.type is "distributed", limits.scope is "cluster" or cache.metadata_ttl is above 0'),
    password: z.string().nullable().default(null).describe("Redis password, or null"),
    tls: bool().default(false).describe("Connect to Redis over TLS"),
    key_prefix: nonEmptyString()
      .refine((s) => !/[{}]/.test(s), { message: "must not contain { or } (they choose the cluster slot of a key)" })
      .default("tftpd:")
      .describe("Prefix of every Redis key the fleet writes: fleets sharing one Redis keep apart by prefix"),
  }),
  ttl: intIn(0).default(3600).describe(`Seconds a file published with \`tftpd cache put\` stays in the shared cache; 0 keeps it until removed or evicted`),
  max_size: bytes().prefault("4Gi").describe("Cap of the bytes stored in the shared cache; publishing past it evicts the least recently served files"),
  metadata_ttl: intIn(0, 86_400)
    .default(0)
    .describe(
      'Seconds a node keeps what it learnt of its root (file sizes and times, missing names, directory listings) in Redis, so a slow or network-mounted root is not asked per request; a change on disk is seen after at most this long. 0 = off (on a local disk, asking it is faster than a Redis round trip)',
    ),
  metadata_scope: oneOf(["node", "fleet"])
    .default("node")
    .describe('"node": each node caches what it saw of its own root; "fleet": nodes that mount the same tree at the same tftp.root share it'),
});

const compression = section({
  enabled: bool().default(false).describe("Gzip the chunks `tftpd cache put` stores in the shared cache, each one only when it gets smaller"),
  algorithm: oneOf(["gzip"]).default("gzip").describe("Compression algorithm"),
  level: intIn(1, 9).default(6).describe("Compression level, 1 (fast) .. 9 (small)"),
  min_size: bytes().prefault(1024).describe("Chunks smaller than this are stored uncompressed"),
});

const load_balancing = section({
  algorithm: oneOf(["round_robin", "least_connections", "consistent_hashing"])
    .default("round_robin")
    .describe("How new transfers are spread over workers"),
  hash_key: oneOf(["client_ip", "client_port", "filename"])
    .default("client_ip")
    .describe('Key hashed by "consistent_hashing": the client address, address and port, or the file name'),
});

const connection_pool = section({
  max_connections: intIn(0, 10_000_000)
    .default(10000)
    .describe(
      "Most transfer slots (performance.memory.connection_pool_size) the workers hold, busy and idle together; a transfer past them gets buffers of its own, collected after it ends. 0: no slots are kept. Transfers themselves are capped by the limits section",
    ),
  min_connections: intIn(0, 10_000_000)
    .default(0)
    .describe("Idle transfer slots kept however long they go unused (the ones past them are given up after idle_timeout idle); <= max_connections"),
  idle_timeout: numberAbove(0, 86400)
    .default(300)
    .describe("Seconds a transfer may go without progress before it is ended; also how long a transfer slot past min_connections may sit idle before it is given up"),
  max_lifetime: numberAbove(0, 604800).default(3600).describe("Longest a single transfer may run, in seconds"),
  connection_timeout: numberAbove(0, 3600)
    .default(30)
    .describe("Seconds a new transfer may wait for the client's first answer (ACK of the OACK or first DATA)"),
});

const limits = section({
  max_connections_per_client: intIn(1)
    .default(10)
    .describe("Concurrent transfers per client, a client being one source address asking for one file"),
  max_connections_per_ip: intIn(1).default(100).describe("Concurrent transfers per source IP address"),
  max_total_connections: intIn(1).default(50000).describe("Concurrent transfers in total"),
  max_transfer_memory: bytes(64 * 1024)
    .prefault("1Gi")
    .describe(
      "Memory the running transfers may hold together: each reserves its estimate when admitted (its state, 8 KiB; a netascii read also its converted copy) and gives it back when it ends, and a request that would pass the budget is refused as on_limit says. File bytes are not counted: cached copies are shared (performance.memory.cache_size caps them)",
    ),
  scope: oneOf(["node", "cluster"])
    .default("node")
    .describe('Count the per-IP and total limits per node, or across the fleet ("cluster": expiring leases in Redis; while Redis is unavailable each node applies its own limits)'),
  requests_per_second_per_ip: intIn(0, 1_000_000)
    .default(100)
    .describe(
      "Requests a source IP address may send per second on average (a token bucket; 0 turns it off). Requests over it are dropped, counted (tftpd_requests_rate_limited_total) and logged as one line per address every 10 s. One machine's boot asks for a handful to a few dozen files; a machine in a retry loop or a flood asks for far more. Load generators that send from one address need it raised or off",
    ),
  request_burst_per_ip: intIn(1, 1_000_000)
    .default(200)
    .describe("Requests a source IP address may send at once before requests_per_second_per_ip applies: a whole boot's requests (config search, modules, size probes) fit, a few times over"),
  on_limit: oneOf(["drop", "busy"])
    .default("drop")
    .describe(
      'Over a limit: "drop" ignores the request (the client retries later, which PXE ROMs handle well); "busy" answers with a TFTP ERROR',
    ),
});

const io = section({
  async_io: bool().default(true).describe("The file cache's copies from disk run on the file I/O pool's threads, so a slow disk never holds the main thread; false: on the main thread, between its other work"),
  direct_io: bool().default(false).describe("The file cache copies files from disk with O_DIRECT, past the page cache (which would hold them twice); a file system without O_DIRECT is said at start"),
  read_ahead: bytes().prefault("1Mi").describe("Bytes of a file served from disk (larger than the cache, or the cache off) asked of the kernel ahead of where its transfer reads (posix_fadvise WILLNEED); 0: the kernel's own read-ahead only"),
  write_behind: bool()
    .default(false)
    .describe(
      "When an upload's final ACK goes: false (the default), once the file is on disk (fdatasync) and published under its name, so an acknowledged upload survives a crash; true, as soon as the last block is in, the sync and the publish after it (the client goes on at once, a crash right after may lose the upload, never leaves it half-written). Either way the disk is waited for off the event loop",
    ),
  io_threads: intIn(1, 1024).default(4).describe("Threads of the file I/O pool (io.async_io), capped by performance.cpu.thread_pool_size"),
});

const network = section({
  requests_on_workers: bool()
    .default(true)
    .describe(
      "The transfer workers (network.epoll) take the listen ports' requests themselves: each joins the listen sockets through SO_REUSEPORT and the kernel steers every client address to one worker (a classic BPF program). An octet read of a file already served from the cache starts on the worker that took it, with no hand-over; every other request goes to the main thread's request path as before. Only where no policy depends on the client (no allow/deny, tftp.rules, remap rules, unique_root, generated files or fleet); elsewhere the workers hand every request over. false: the main thread takes every request and hands each transfer to a worker",
    ),
  epoll: bool()
    .default(true)
    .describe(
      "Run the transfer workers' sockets on an epoll loop through libc (recvmmsg / sendmmsg of whole batches, peers as binary addresses) instead of Bun.udpSocket's callback per datagram; every transfer engine then runs in a worker thread (worker_threads 1 included), the main thread keeps listeners and uploads. false: Bun's sockets, and worker_threads 1 runs transfers on the main thread",
    ),
  io_uring: bool()
    .default(false)
    .describe(
      "Not available in this build: Bun has no io_uring interface and the engine drives no ring of its own, so true is accepted, said once at start and by `config check`, and transfers use network.epoll's loop",
    ),
  zero_copy: bool()
    .default(true)
    .describe(
      "A window leaves as one UDP GSO send (the kernel cuts it into DATA packets of 4 + blksize bytes) instead of one send per block: on a port of its own as a socket option, on the window pool's shared ports per message of a sendmmsg batch (network.epoll's loop; Bun's sockets send such windows block by block); where the kernel refuses GSO, windows leave block by block and the server says so once at start",
    ),
});

const batch = section({
  enabled: bool().default(true).describe("Batch outgoing datagrams of shared transfer sockets into one sendMany call per event-loop round"),
  batch_size: intIn(1, 1024).default(64).describe("Most datagrams per sendMany call"),
  batch_timeout: intIn(0, 1000)
    .default(1)
    .describe(
      "Longest a datagram may wait to be batched, in milliseconds: datagrams queued in one loop turn leave together at its end, and on the epoll loop a turn that keeps reading (a flood) sends once the oldest has waited this long. 0: every datagram leaves at once (as batch.enabled false)",
    ),
});

const rootShape = {
  tftp,
  http,
  generate,
  metrics,
  log,
  tune,
  performance,
  cache,
  compression,
  load_balancing,
  connection_pool,
  limits,
  io,
  network,
  batch,
};

export const configSchema = z
  .strictObject(rootShape, {
    error: (iss: Issue) => `the config must be a JSON object, got ${describeValue(iss.input)}`,
  })
  .superRefine((c, ctx) => {
    if (c.http.tls.listen.length > 0) {
      for (const key of ["cert", "key"] as const) {
        if (c.http.tls[key] === null) {
          ctx.addIssue({ code: "custom", path: ["http", "tls", key], message: `required when http.tls.listen is set (HTTPS needs a certificate and its key)` });
        }
      }
    }
    if (c.tftp.window_bytes_max < c.tftp.blksize_max) {
      ctx.addIssue({
        code: "custom",
        path: ["tftp", "window_bytes_max"],
        params: { related: "tftp.blksize_max" },
        message: `must be at least tftp.blksize_max (${c.tftp.blksize_max}) bytes, got ${c.tftp.window_bytes_max}`,
      });
    }
    // a rule's block size takes the place of tftp.blksize_max for its clients: the same bounds hold
    c.tftp.rules.forEach((rule, i) => {
      if (rule.blksize_max === null) return;
      const path = ["tftp", "rules", i, "blksize_max"];
      if (c.tftp.window_bytes_max < rule.blksize_max) {
        ctx.addIssue({
          code: "custom",
          path,
          params: { related: "tftp.window_bytes_max" },
          message: `must be at most tftp.window_bytes_max (${c.tftp.window_bytes_max}) bytes, got ${rule.blksize_max}`,
        });
      }
    });
    if (c.connection_pool.min_connections > c.connection_pool.max_connections) {
      ctx.addIssue({
        code: "custom",
        path: ["connection_pool", "min_connections"],
        params: { related: "connection_pool.max_connections" },
        message: `must be <= connection_pool.max_connections (${c.connection_pool.max_connections}), got ${c.connection_pool.min_connections}`,
      });
    }
    if (c.cache.enabled && c.cache.type === "distributed" && c.cache.redis.nodes.length === 0) {
      ctx.addIssue({
        code: "custom",
        path: ["cache", "redis", "nodes"],
        params: { related: "cache.type" },
        message: 'needs at least one "HOST:PORT" when cache.type is "distributed"',
      });
    }
    if (c.cache.metadata_ttl > 0 && c.cache.redis.nodes.length === 0) {
      ctx.addIssue({
        code: "custom",
        path: ["cache", "metadata_ttl"],
        params: { related: "cache.redis.nodes" },
        message: "a metadata cache needs Redis nodes in cache.redis.nodes",
      });
    }
    if (c.limits.scope === "cluster" && c.cache.redis.nodes.length === 0) {
      ctx.addIssue({
        code: "custom",
        path: ["limits", "scope"],
        params: { related: "cache.redis.nodes" },
        message: '"cluster" needs Redis nodes in cache.redis.nodes',
      });
    }
  });

export type Config = z.infer<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;
export type TftpConfig = Config["tftp"];

/** The full default config. */
export function defaultConfig(): Config {
  return configSchema.parse({});
}

// ---------------------------------------------------------------------------------------------
// Walking the schema: leaf keys, their env names, kinds and docs.

export interface ConfigKey {
  /** ["tftp", "root"] */
  path: string[];
  /** "tftp.root" */
  dotted: string;
  /** "TFTPD_TFTP_ROOT" */
  env: string;
  /** How env/flag strings are read: "string" keeps the text; "array" also splits on commas. */
  kind: "string" | "array" | "other";
  nullable: boolean;
  /** A filesystem path: relative values resolve against the config file's directory. */
  isPath: boolean;
  /** A list of objects: the fields of each that are paths, resolved like isPath leaves ("root" of tftp.rules). */
  elementPaths: string[];
  /** Type for the docs. */
  type: string;
  /** Default as written in a config file (e.g. "4Gi"). */
  default: unknown;
  description: string;
}

interface Def {
  type: string;
  innerType?: ZodLike;
  in?: ZodLike;
  shape?: Record<string, ZodLike>;
  defaultValue?: unknown;
  entries?: Record<string, unknown>;
  values?: unknown[];
  element?: ZodLike;
}
interface ZodLike {
  _zod: { def: Def };
  description?: string;
}

const WRAPPERS = new Set(["default", "prefault", "optional", "nullable", "readonly", "catch", "nonoptional"]);

interface Unwrapped {
  base: ZodLike;
  chain: ZodLike[];
  nullable: boolean;
  defaultValue: unknown;
}

function unwrap(schema: ZodLike): Unwrapped {
  const chain: ZodLike[] = [];
  let s = schema;
  let nullable = false;
  let defaultValue: unknown;
  let haveDefault = false;
  for (;;) {
    chain.push(s);
    const d = s._zod.def;
    if (d.type === "nullable") nullable = true;
    if ((d.type === "default" || d.type === "prefault") && !haveDefault) {
      defaultValue = d.defaultValue;
      haveDefault = true;
    }
    if (WRAPPERS.has(d.type) && d.innerType) s = d.innerType;
    else if (d.type === "pipe" && d.in && d.in._zod.def.type !== "unknown") s = d.in;
    else break;
  }
  return { base: s, chain, nullable, defaultValue };
}

function kindOf(base: ZodLike): ConfigKey["kind"] {
  const t = base._zod.def.type;
  if (t === "array") return "array";
  if (t === "string" || t === "enum") return "string";
  return "other";
}

/** The path fields of the objects a list holds (none for other keys). */
function elementPathsOf(base: ZodLike): string[] {
  const element = base._zod.def.type === "array" ? base._zod.def.element : undefined;
  const shape = element?._zod.def.type === "object" ? element._zod.def.shape : undefined;
  if (!shape) return [];
  return Object.entries(shape)
    .filter(([, field]) => unwrap(field).chain.some((s) => pathLeaves.has(s)))
    .map(([name]) => name);
}

function walk(shape: Record<string, ZodLike>, prefix: string[], keys: ConfigKey[], children: Map<string, string[]>) {
  children.set(prefix.join("."), Object.keys(shape));
  for (const [name, schema] of Object.entries(shape)) {
    const path = [...prefix, name];
    const u = unwrap(schema);
    if (u.base._zod.def.type === "object" && u.base._zod.def.shape) {
      walk(u.base._zod.def.shape, path, keys, children);
      continue;
    }
    const description = u.chain.map((s) => s.description).find((d) => d !== undefined) ?? "";
    let type = u.chain.map((s) => typeLabels.get(s)).find((l) => l !== undefined);
    // parsedBy leaves: the label sits on the pipe under the wrappers.
    if (type === undefined) type = typeLabels.get(u.base) ?? u.base._zod.def.type;
    if (u.nullable && !type.includes("null")) type += " | null";
    keys.push({
      path,
      dotted: path.join("."),
      env: envName(path),
      kind: kindOf(u.base),
      nullable: u.nullable,
      isPath: u.chain.some((s) => pathLeaves.has(s)),
      elementPaths: elementPathsOf(u.base),
      type,
      default: u.defaultValue,
      description,
    });
  }
}

export function envName(path: readonly string[]): string {
  return `TFTPD_${path.join("_").toUpperCase()}`;
}

function buildKeyIndex() {
  const keys: ConfigKey[] = [];
  const children = new Map<string, string[]>();
  walk(rootShape as unknown as Record<string, ZodLike>, [], keys, children);
  const byEnv = new Map<string, ConfigKey>();
  const byPath = new Map<string, ConfigKey>();
  for (const k of keys) {
    const clash = byEnv.get(k.env);
    if (clash) throw new Error(`config schema: ${k.dotted} and ${clash.dotted} share the env name ${k.env}`);
    byEnv.set(k.env, k);
    byPath.set(k.dotted, k);
  }
  return { keys, children, byEnv, byPath };
}

const index = buildKeyIndex();

/** Every leaf key of the schema, in schema order. */
export const CONFIG_KEYS: readonly ConfigKey[] = index.keys;
/** Env var name -> key. */
export const KEYS_BY_ENV: ReadonlyMap<string, ConfigKey> = index.byEnv;
/** Dotted path -> key. */
export const KEYS_BY_PATH: ReadonlyMap<string, ConfigKey> = index.byPath;
/** Dotted section path ("" for the top level) -> its key names. Used for "did you mean". */
export const SECTION_KEYS: ReadonlyMap<string, readonly string[]> = index.children;

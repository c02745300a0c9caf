/**
 * Does a transfer serve one version of a file, whole — or stop with an ERROR? Rounds of
 * downloads held mid-file (pausing-client.ts) while the file changes on disk in each way an
 * operator changes a boot file, and a verdict for every download from the bytes it received.
 * Shared by the stress test (test/e2e/engine/integrity.test.ts) and the long run
 * (build/integrity-run.ts).
 */
import { renameSync, writeFileSync } from "node:fs";
import { open, rename, truncate, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { patternBytes, sha256 } from "./files.ts";
import { PausingDownload, type DownloadEnd } from "./pausing-client.ts";

/** A version of the file: its bytes (kept to tell where each received block came from). */
export interface Version {
  label: string;
  bytes: Uint8Array;
  sha256: string;
}

export function makeVersion(label: string, bytes: Uint8Array): Version {
  return { label, bytes, sha256: sha256(bytes) };
}

/** The ways an operator changes a file a client may be reading. */
export const MUTATIONS = ["rewrite", "truncate", "rename", "delete"] as const;
export type MutationKind = (typeof MUTATIONS)[number];

/** The version a mutation leaves at the path (null: none, the file is gone). */
export function versionAfter(kind: MutationKind, old: Version, replacement: Version): Version | null {
  switch (kind) {
    case "rewrite":
    case "rename":
      return replacement;
    case "truncate": {
      // a size that is no multiple of any block size, so the short read lands mid-block
      const size = Math.floor(old.bytes.length * 0.6) + 333;
      return makeVersion(`${old.label}[:${size}]`, old.bytes.subarray(0, size));
    }
    case "delete":
      return null;
  }
}

/** Puts `version` at `path` as a new file (a new inode), as an installer does. */
export function install(path: string, version: Version): void {
  const temp = `${path}.installing`;
  writeFileSync(temp, version.bytes);
  renameSync(temp, path);
}

/**
 * Changes the file at `path` (holding `old`) into `next`, with asynchronous writes so a server
 * on this thread keeps serving while the file is half-changed, as it would during another
 * process's write:
 * - rewrite: same inode and size, the bytes replaced in place — what `cp new.img boot.img`
 *   does (open, truncate to 0, write);
 * - truncate: cut to next's (shorter) size;
 * - rename: a new file renamed over the path (the old inode lives on for its readers);
 * - delete: unlinked.
 */
export async function mutate(kind: MutationKind, path: string, next: Version | null): Promise<void> {
  switch (kind) {
    case "rewrite": {
      const file = await open(path, "r+");
      try {
        await file.truncate(0);
        const bytes = next!.bytes;
        for (let at = 0; at < bytes.length; ) {
          at += (await file.write(bytes, at, Math.min(WRITE_CHUNK, bytes.length - at), at)).bytesWritten;
        }
      } finally {
        await file.close();
      }
      return;
    }
    case "truncate":
      await truncate(path, next!.bytes.length);
      return;
    case "rename": {
      const temp = `${path}.renaming`;
      await writeFile(temp, next!.bytes);
      await rename(temp, path);
      return;
    }
    case "delete":
      await unlink(path);
      return;
  }
}

/** Writes of a rewrite, like cp's: the file is seen half-written between them. */
const WRITE_CHUNK = 1 << 20;

/**
 * Watches the bytes of one download as they arrive: their sha256, and for every chunk which of
 * the candidate versions hold exactly those bytes at that offset — so a corrupt download says
 * where it went wrong ("v1 up to 2.9 MiB, then v2").
 */
export class Witness {
  private readonly hasher = new Bun.CryptoHasher("sha256");
  private readonly buffers: Buffer[];
  /** versions every chunk so far matched (bit i: candidates[i]) */
  private consistent: number;
  /** runs of consecutive chunks matching the same set of versions */
  private readonly runs: { from: number; to: number; mask: number }[] = [];
  length = 0;

  constructor(private readonly candidates: readonly Version[]) {
    this.buffers = candidates.map((v) => Buffer.from(v.bytes.buffer, v.bytes.byteOffset, v.bytes.length));
    this.consistent = (1 << candidates.length) - 1;
  }

  readonly take = (chunk: Uint8Array, offset: number): void => {
    if (chunk.length === 0) return;
    this.hasher.update(chunk);
    const received = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length);
    const end = offset + chunk.length;
    let mask = 0;
    for (let i = 0; i < this.buffers.length; i++) {
      const b = this.buffers[i]!;
      if (end <= b.length && received.compare(b, offset, end) === 0) mask |= 1 << i;
    }
    this.consistent &= mask;
    const last = this.runs.at(-1);
    if (last && last.mask === mask && last.to === offset) last.to = end;
    else this.runs.push({ from: offset, to: end, mask });
    this.length = end;
  };

  digest(): string {
    return this.hasher.digest("hex");
  }

  /** The candidate these bytes are, whole (consistent throughout and of its exact size). */
  whole(): Version | null {
    return this.candidates.find((v, i) => (this.consistent & (1 << i)) !== 0 && v.bytes.length === this.length) ?? null;
  }

  /** Where the bytes came from, e.g. "v1[0, 2.9 MiB) v2[2.9 MiB, 40 MiB)". */
  describe(): string {
    const name = (mask: number): string =>
      this.candidates.filter((_, i) => (mask & (1 << i)) !== 0).map((v) => v.label).join("|") || "neither";
    return this.runs.map((r) => `${name(r.mask)}[${mib(r.from)}, ${mib(r.to)})`).join(" ");
  }
}

const mib = (n: number): string => `${(n / (1 << 20)).toFixed(n % (1 << 20) === 0 ? 0 : 2)} MiB`;

/**
 * old / new: that version, whole; error: the transfer ended with an ERROR; corrupt: bytes of
 * no single version, or a version the transfer did not announce (a request made before a
 * truncation that ends, short of its tsize, with the truncated file); stale: a request made
 * after the change served the version before it.
 *
 * A request made before an in-place rewrite may get the new version whole: the server had
 * opened the file but read every byte after the rewrite. That is one version, whole, of the
 * size announced, so it counts as new.
 */
export type Verdict = "old" | "new" | "error" | "corrupt" | "stale";

export function judge(end: DownloadEnd, witness: Witness, asked: "before" | "after", old: Version, next: Version | null): Verdict {
  if (end.ended.kind === "error") return "error";
  const digest = witness.digest();
  const same = (v: Version | null): boolean => v !== null && digest === v.sha256 && witness.length === v.bytes.length;
  // two independent looks at the same bytes (a hash, and a comparison block by block) must agree
  const whole = witness.whole();
  if ((whole === null) !== !(same(old) || same(next)) || (whole !== null && !same(whole))) {
    throw new Error(`sha256 and the block comparison disagree: ${digest} vs ${witness.describe()}`);
  }
  if (same(old)) return asked === "before" ? "old" : "stale";
  if (!same(next)) return "corrupt";
  const announced = end.oack?.get("tsize");
  return asked === "after" || announced === undefined || Number(announced) === next!.bytes.length ? "new" : "corrupt";
}

/** One download's story, for the verdict and for the report when it is not a whole version. */
export interface Outcome {
  verdict: Verdict;
  asked: "before" | "after";
  /** bytes at which it was to be held (Infinity: not held) */
  pauseAt: number;
  wasPaused: boolean;
  bytes: number;
  /** where its bytes came from, by version */
  provenance: string;
  error: string | null;
  localPort: number;
  /** the server's own verdict from its transfer record ("ok", "error", ...), when known */
  serverResult: string | null;
}

export interface RoundPlan {
  kind: MutationKind;
  /** warm: the version was downloaded whole once before (its cached copy exists) */
  cache: "cold" | "warm";
  /**
   * When the file changes. first-alone: the first download starts alone and is held (it is
   * the version's only reader, reading the disk), then the others start, and the file changes
   * as soon as the server answered them (while a cached copy is being made); first-pause: all
   * start together, the change comes once the first is held; all-paused: once all are held.
   */
  trigger: "first-alone" | "first-pause" | "all-paused";
  /** one per concurrent download: where it is held, as a fraction of the file */
  pauseFractions: number[];
  /** downloads requested after the change */
  after: number;
}

export interface RoundTarget {
  host: string;
  port: number;
  root: string;
  file: string;
  blksize: number;
  windowsize: number;
  /**
   * The server's result for the transfer from `client` ("127.0.0.1:PORT", as its records
   * name clients; null: none recorded). `began`: the server answered with OACK or DATA, so a
   * transfer record is to come.
   */
  serverResult?: (client: string, began: boolean) => Promise<string | null>;
  /**
   * Local address of the round's i-th download (default 127.0.0.1): an address per client,
   * as PXE clients have, keeps the server's per-client limits out of the way.
   */
  bind?: (index: number) => string;
  /** how long the whole round may take before its downloads are aborted */
  timeoutMs: number;
}

/**
 * One round: installs `old`, warms the cache if asked, starts the downloads, holds each at its
 * point, changes the file once the trigger holds (and every download was answered, so the
 * server opened `old` for all of them), lets them all finish, then judges each.
 */
export async function runRound(target: RoundTarget, plan: RoundPlan, old: Version, replacement: Version): Promise<Outcome[]> {
  const path = join(target.root, target.file);
  const next = versionAfter(plan.kind, old, replacement);
  install(path, old);
  const candidates = [old, ...(next && next !== old ? [next] : [])];
  const start = (index: number, pauseFraction: number, witness: Witness) =>
    PausingDownload.start({
      bind: target.bind?.(index),
      host: target.host,
      port: target.port,
      file: target.file,
      blksize: target.blksize,
      windowsize: target.windowsize,
      pauseAt: Number.isFinite(pauseFraction) ? Math.max(1, Math.floor(old.bytes.length * pauseFraction)) : undefined,
      onData: witness.take,
    });

  if (plan.cache === "warm") {
    const witness = new Witness([old]);
    const warm = await (await start(plan.pauseFractions.length + plan.after, Infinity, witness)).done;
    if (warm.ended.kind !== "complete" || witness.whole() !== old) {
      throw new Error(`warm-up download did not get the file whole: ${JSON.stringify(warm.ended)} ${witness.describe()}`);
    }
    // the copy of a large file is made once its first reader is done: give it time to finish
    await Bun.sleep(20 + old.bytes.length / (1 << 20));
  }

  const begin = async (index: number, fraction: number, asked: "before" | "after") => {
    const witness = new Witness(candidates);
    const bind = target.bind?.(index) ?? "127.0.0.1";
    return { fraction, witness, bind, download: await start(index, fraction, witness), asked };
  };
  const held: Awaited<ReturnType<typeof begin>>[] = [];
  const deadline = setTimeout(() => {
    for (const h of held) h.download.abort("round timed out");
  }, target.timeoutMs);
  try {
    if (plan.trigger === "first-alone") {
      // the first reader of the version, alone until it is held: it reads the disk
      const first = await begin(0, plan.pauseFractions[0]!, "before");
      held.push(first);
      await first.download.paused;
      held.push(...(await Promise.all(plan.pauseFractions.slice(1).map((f, i) => begin(i + 1, f, "before")))));
      await Promise.all(held.map((h) => h.download.answered));
    } else {
      held.push(...(await Promise.all(plan.pauseFractions.map((f, i) => begin(i, f, "before")))));
      await Promise.all(held.map((h) => h.download.answered));
      if (plan.trigger === "first-pause") await Promise.race(held.map((h) => h.download.paused));
      else await Promise.all(held.map((h) => h.download.paused));
    }
    await mutate(plan.kind, path, next);
    for (const h of held) h.download.resume();
    const n = plan.pauseFractions.length;
    held.push(...(await Promise.all(Array.from({ length: plan.after }, (_, i) => begin(n + i, Infinity, "after")))));
    const all = held;
    const ends = await Promise.all(all.map((d) => d.download.done));
    return await Promise.all(
      all.map(async (d, i): Promise<Outcome> => {
        const end = ends[i]!;
        return {
          verdict: judge(end, d.witness, d.asked, old, next),
          asked: d.asked,
          pauseAt: Number.isFinite(d.fraction) ? Math.floor(old.bytes.length * d.fraction) : Infinity,
          wasPaused: end.wasPaused,
          bytes: end.bytes,
          provenance: d.witness.describe(),
          error: end.ended.kind === "error" ? `${end.ended.from} ERROR ${end.ended.code} "${end.ended.message}"` : null,
          localPort: end.localPort,
          serverResult: (await target.serverResult?.(`${d.bind}:${end.localPort}`, end.oack !== null || end.blocks > 0)) ?? null,
        };
      }),
    );
  } finally {
    clearTimeout(deadline);
    // a round that threw leaves no download running (a no-op for those that ended)
    for (const h of held) h.download.abort("round ended");
  }
}

/** Cache state and timing, in turn for each mutation: the hard case first. */
const SETTINGS: Pick<RoundPlan, "cache" | "trigger">[] = [
  { cache: "cold", trigger: "first-alone" },
  { cache: "warm", trigger: "first-pause" },
  { cache: "cold", trigger: "all-paused" },
  { cache: "cold", trigger: "first-pause" },
  { cache: "warm", trigger: "all-paused" },
  { cache: "warm", trigger: "first-alone" },
];

/** Rounds that visit every mutation with every cache state and timing, in turn. */
export function roundPlans(rounds: number, concurrent: number, after: number): RoundPlan[] {
  return Array.from({ length: rounds }, (_, r) => {
    // held early, midway and late in the file, shifted a little every round
    const shift = ((r * 7) % 10) / 10;
    const pauseFractions = Array.from({ length: concurrent }, (_, i) => Math.min(0.98, (i + 0.1 + 0.8 * shift) / concurrent));
    const setting = SETTINGS[Math.floor(r / MUTATIONS.length) % SETTINGS.length]!;
    return { kind: MUTATIONS[r % MUTATIONS.length]!, ...setting, pauseFractions, after };
  });
}

/** Whether an outcome breaks the promise: bytes of two versions, a stale version, or an `ok` the client cannot back. */
export function violation(o: Outcome): string | null {
  if (o.verdict === "corrupt") return `CORRUPT: ${o.provenance}${o.serverResult ? ` (server: ${o.serverResult})` : ""}`;
  if (o.verdict === "stale") return `STALE: requested after the change, served the old version (${o.provenance})`;
  if (o.serverResult === "ok" && o.verdict !== "old" && o.verdict !== "new") {
    return `the server logged ok, the client holds ${o.verdict}: ${o.error ?? o.provenance}`;
  }
  return null;
}

export type Tally = Record<Verdict, number>;
export const emptyTally = (): Tally => ({ old: 0, new: 0, error: 0, corrupt: 0, stale: 0 });

export function addTo(tally: Tally, outcomes: readonly Outcome[]): Tally {
  for (const o of outcomes) tally[o.verdict]++;
  return tally;
}

/** A fixed-width table: one row per key, one column per verdict. */
export function formatTable(rows: readonly [string, Tally][], heading = "case"): string {
  const cols: Verdict[] = ["old", "new", "error", "corrupt", "stale"];
  const width = Math.max(heading.length, ...rows.map(([k]) => k.length));
  const head = `${heading.padEnd(width)}  ${cols.map((c) => c.toUpperCase().padStart(7)).join(" ")}`;
  const lines = rows.map(([k, t]) => `${k.padEnd(width)}  ${cols.map((c) => String(t[c]).padStart(7)).join(" ")}`);
  return [head, ...lines].join("\n");
}

/** Deterministic versions of `size` bytes, distinct per seed (patternBytes). */
export function versionPool(size: number, count: number, prefix = "v"): Version[] {
  return Array.from({ length: count }, (_, i) => makeVersion(`${prefix}${i + 1}`, patternBytes(size, 1000 + i)));
}

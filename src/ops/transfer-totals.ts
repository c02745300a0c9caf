/**
 * The figures of finished TFTP transfers, summed until the next scrape takes them. A transfer's
 * end is then a few additions on the main thread instead of a dozen prom-client updates, each
 * hashing its labels (about 16 µs of the main thread per transfer in a storm, against 1 µs in
 * a tight loop); the scrape applies the sums in one pass. Durations are kept as values for the
 * histograms, at most PENDING_MAX before they must be taken.
 */
import type { TransferRecord } from "../server/server.ts";

/** Observations held before the metrics must take them (a scrape that never comes). */
export const PENDING_MAX = 4096;

export interface TakenTotals {
  /** transfers by direction, then by result */
  ends: Map<TransferRecord["direction"], Map<TransferRecord["result"], number>>;
  sentBytes: number;
  receivedBytes: number;
  retransmits: number;
  probes: number;
  /** ERRORs the server sent, by code */
  errorsSent: Map<number, number>;
  /** options asked for, by name */
  options: Map<string, number>;
  /** stray datagrams, by kind */
  strays: Map<string, number>;
  /** seconds, one per transfer that got a first packet */
  firstResponse: number[];
  duration: number[];
}

const empty = (): TakenTotals => ({
  ends: new Map(),
  sentBytes: 0,
  receivedBytes: 0,
  retransmits: 0,
  probes: 0,
  errorsSent: new Map(),
  options: new Map(),
  strays: new Map(),
  firstResponse: [],
  duration: [],
});

function bump<K>(counts: Map<K, number>, key: K, by = 1): void {
  counts.set(key, (counts.get(key) ?? 0) + by);
}

export class TransferTotals {
  private totals = empty();

  /** Adds one finished transfer; true when the held observations reached PENDING_MAX. */
  add(record: TransferRecord): boolean {
    const t = this.totals;
    let byResult = t.ends.get(record.direction);
    if (!byResult) t.ends.set(record.direction, (byResult = new Map()));
    bump(byResult, record.result);
    if (record.direction === "read") t.sentBytes += record.bytes;
    else t.receivedBytes += record.bytes;
    // a request dropped over its source's budget of unanswered transfers never got a first packet
    if (record.result !== "dropped") {
      t.firstResponse.push(record.firstResponseMs / 1000);
      t.duration.push(record.durationMs / 1000);
    }
    t.retransmits += record.retransmits;
    if (record.error?.from === "server") bump(t.errorsSent, record.error.code);
    for (const option of record.options) bump(t.options, option);
    if (record.result === "probe") t.probes++;
    if (record.strays) for (const [kind, count] of Object.entries(record.strays)) bump(t.strays, kind, count);
    return t.firstResponse.length >= PENDING_MAX;
  }

  /** What was added since the last take; starts over. */
  take(): TakenTotals {
    const taken = this.totals;
    this.totals = empty();
    return taken;
  }
}

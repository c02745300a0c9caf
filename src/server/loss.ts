/**
 * Loss injection: drops chosen datagrams on purpose so tests can drive real clients through
 * retransmission, window rewind and give-up. Test-only: enabled by the TFTPD_TEST_DROP
 * environment variable, never by the config file.
 *
 * Spec: comma-separated rules `DIR:KIND[:BLOCK][*COUNT]` or `DIR:KIND[:BLOCK]%PERCENT`, and
 * optionally `seed=N`
 *   DIR     in | out        (as seen by the server)
 *   KIND    rrq wrq data ack error oack, or any
 *   BLOCK   wire block number for data/ack (omitted: any)
 *   COUNT   how many matching datagrams to drop (default 1; `*all` drops every match)
 *   PERCENT drop each matching datagram with this probability, for as long as the plan lives
 *   seed=N  seeds the draws of the PERCENT rules (default 1), so a lossy run can be repeated
 * e.g. `out:data:3` drops DATA block 3 once; `in:ack:2*2` drops the first two ACKs of block 2;
 * `in:any%20,out:any%20` loses a fifth of the datagrams each way. Each thread parses the spec
 * itself (workers too), so each draws its own sequence from the same seed.
 *
 * A plan is applied where sockets open, never on the data path: `incoming` wraps what receives
 * a listener's or a transfer's datagrams, `outgoing` wraps a transfer's channel. A datagram
 * answered with ERROR 5 (a foreign TID) never reaches either, so it is never lost.
 */
import { Opcode } from "../protocol/packet.ts";
import type { TransferChannel } from "./transport.ts";

export type Direction = "in" | "out";

interface LossRule {
  direction: Direction;
  /** null: any datagram */
  opcode: number | null;
  block: number | null;
  remaining: number;
  /** drop probability (0..1], or null for a counted rule */
  chance: number | null;
}

const KINDS: Record<string, number> = {
  rrq: Opcode.RRQ,
  wrq: Opcode.WRQ,
  data: Opcode.DATA,
  ack: Opcode.ACK,
  error: Opcode.ERROR,
  oack: Opcode.OACK,
};

export class LossPlan {
  private constructor(
    private readonly rules: LossRule[],
    /** the spec it was parsed from, to build the same plan in a worker thread */
    readonly spec: string,
    /** xorshift32 state of the PERCENT rules' draws */
    private random: number,
  ) {}

  static parse(spec: string): LossPlan {
    const rules: LossRule[] = [];
    let seed = 1;
    for (const raw of spec.split(",").map((s) => s.trim()).filter(Boolean)) {
      if (raw.startsWith("seed=")) {
        seed = Number(raw.slice(5));
        if (!Number.isInteger(seed) || seed <= 0 || seed > 0xffffffff) throw new Error(`TFTPD_TEST_DROP: bad seed in "${raw}"`);
        continue;
      }
      const [counted = "", percent] = raw.split("%");
      const [body = "", count] = counted.split("*");
      const [direction, kind = "", block] = body.split(":");
      if (direction !== "in" && direction !== "out") throw new Error(`TFTPD_TEST_DROP: bad direction in "${raw}"`);
      const opcode = kind === "any" ? null : KINDS[kind];
      if (opcode === undefined) throw new Error(`TFTPD_TEST_DROP: bad packet kind in "${raw}"`);
      let chance: number | null = null;
      let remaining: number;
      if (percent !== undefined) {
        chance = Number(percent) / 100;
        if (count !== undefined || percent === "" || !(chance > 0 && chance <= 1)) throw new Error(`TFTPD_TEST_DROP: bad percentage in "${raw}"`);
        remaining = Infinity;
      } else {
        remaining = count === undefined ? 1 : count === "all" ? Infinity : Number(count);
        if (!(remaining > 0)) throw new Error(`TFTPD_TEST_DROP: bad count in "${raw}"`);
      }
      rules.push({ direction, opcode, block: block === undefined ? null : Number(block), remaining, chance });
    }
    return new LossPlan(rules, spec, seed >>> 0);
  }

  shouldDrop(direction: Direction, packet: Uint8Array): boolean {
    if (packet.length < 2) return false;
    const opcode = (packet[0]! << 8) | packet[1]!;
    const block = packet.length >= 4 ? (packet[2]! << 8) | packet[3]! : -1;
    for (const rule of this.rules) {
      if (rule.remaining <= 0 || rule.direction !== direction) continue;
      if (rule.opcode !== null && rule.opcode !== opcode) continue;
      if (rule.block !== null && rule.block !== block) continue;
      if (rule.chance !== null) {
        if (this.draw() < rule.chance) return true;
        continue;
      }
      rule.remaining--;
      return true;
    }
    return false;
  }

  /** `deliver`, but the datagrams this plan loses on their way in never reach it. */
  incoming<Rest extends unknown[]>(
    deliver: (bytes: Uint8Array, ...rest: Rest) => void,
  ): (bytes: Uint8Array, ...rest: Rest) => void {
    return (bytes, ...rest) => {
      if (!this.shouldDrop("in", bytes)) deliver(bytes, ...rest);
    };
  }

  /** `channel`, but the datagrams this plan loses on their way out never reach it. */
  outgoing(channel: TransferChannel): TransferChannel {
    return new LossyChannel(channel, this);
  }

  /** A uniform draw in [0, 1). */
  private draw(): number {
    let x = this.random;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.random = x >>> 0;
    return this.random / 0x100000000;
  }
}

class LossyChannel implements TransferChannel {
  private readonly kept: Uint8Array[] = [];
  /** a closed channel sends nothing, so nothing sent after its close may use up a rule */
  private closed = false;

  constructor(
    private readonly inner: TransferChannel,
    private readonly plan: LossPlan,
  ) {}

  get localPort(): number {
    return this.inner.localPort;
  }

  send(packet: Uint8Array): void {
    if (!this.closed && !this.plan.shouldDrop("out", packet)) this.inner.send(packet);
  }

  sendMany(packets: readonly Uint8Array[]): void {
    if (this.closed) return;
    const kept = this.kept;
    kept.length = 0;
    for (const packet of packets) if (!this.plan.shouldDrop("out", packet)) kept.push(packet);
    if (kept.length > 0) this.inner.sendMany(kept);
  }

  settle(): void {
    this.inner.settle();
  }

  close(): void {
    this.closed = true;
    this.inner.close();
  }
}

/**
 * Loss injection: drops chosen datagrams on purpose so tests can drive real clients through
 * retransmission, window rewind and give-up. Test-only: enabled by the TFTPD_TEST_DROP
 * environment variable, never by the config file.
 *
 * Spec: comma-separated rules `DIR:KIND[:BLOCK][*COUNT]`
 *   DIR   in | out        (as seen by the server)
 *   KIND  rrq wrq data ack error oack
 *   BLOCK wire block number for data/ack (omitted: any)
 *   COUNT how many matching datagrams to drop (default 1; `*all` drops every match)
 * e.g. `out:data:3` drops DATA block 3 once; `in:ack:2*2` drops the first two ACKs of block 2.
 */
import { Opcode } from "../protocol/packet.ts";

export type Direction = "in" | "out";

interface LossRule {
  direction: Direction;
  opcode: number;
  block: number | null;
  remaining: number;
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
  ) {}

  static parse(spec: string): LossPlan {
    const rules: LossRule[] = [];
    for (const raw of spec.split(",").map((s) => s.trim()).filter(Boolean)) {
      const [body = "", count] = raw.split("*");
      const [direction, kind = "", block] = body.split(":");
      if (direction !== "in" && direction !== "out") throw new Error(`TFTPD_TEST_DROP: bad direction in "${raw}"`);
      const opcode = KINDS[kind];
      if (opcode === undefined) throw new Error(`TFTPD_TEST_DROP: bad packet kind in "${raw}"`);
      const remaining = count === undefined ? 1 : count === "all" ? Infinity : Number(count);
      if (!(remaining > 0)) throw new Error(`TFTPD_TEST_DROP: bad count in "${raw}"`);
      rules.push({ direction, opcode, block: block === undefined ? null : Number(block), remaining });
    }
    return new LossPlan(rules, spec);
  }

  shouldDrop(direction: Direction, packet: Uint8Array): boolean {
    if (packet.length < 2) return false;
    const opcode = (packet[0]! << 8) | packet[1]!;
    const block = packet.length >= 4 ? (packet[2]! << 8) | packet[3]! : -1;
    for (const rule of this.rules) {
      if (rule.remaining <= 0 || rule.direction !== direction || rule.opcode !== opcode) continue;
      if (rule.block !== null && rule.block !== block) continue;
      rule.remaining--;
      return true;
    }
    return false;
  }
}

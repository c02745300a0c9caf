/**
 * What every step of the request pipeline shares: a refusal (the ERROR to send, or a drop),
 * the request as asked, and the ledger of what the steps took, given back when a later step
 * refuses or, for what the transfer keeps, when it ends.
 */
import type { Refusal } from "../../storage/refusal.ts";
import { refusalKindOf, type RefusalKind } from "../refusal-record.ts";

/** A step's no: the ERROR code to send (null: drop unanswered), its text, and why, for the record. */
export interface Refused {
  readonly ok: false;
  readonly code: number | null;
  readonly message: string;
  readonly kind: RefusalKind;
}

export function refused(code: number | null, message: string, kind: RefusalKind = refusalKindOf(code)): Refused {
  return { ok: false, code, message, kind };
}

/** A storage refusal as a step's refusal; its kind follows its code unless named. */
export function refusedBy(refusal: Refusal, kind?: RefusalKind): Refused {
  return refused(refusal.code, refusal.message, kind);
}

export function isRefused(value: unknown): value is Refused {
  return typeof value === "object" && value !== null && (value as { ok?: unknown }).ok === false;
}

/** Which request a refusal refused: its part of the RefusalRecord. */
export interface Asked {
  op: "read" | "write";
  /** the name as asked, backslashes made slashes */
  file: string;
  /** after the remap rules, when there are rules and they ran */
  remapped: string | null;
}

/**
 * What the steps of one request took. `hold`: kept by the transfer and given back when it
 * ends (admission slots, memory, a fleet lease); `lend`: given back only if the request is
 * refused, because a transfer, once dispatched, owns it (an open file, an upload's sink).
 */
export class Taken {
  private readonly holds: (() => void)[] = [];
  private readonly lends: (() => void)[] = [];

  hold(release: () => void): void {
    this.holds.push(release);
  }

  lend(undo: () => void): void {
    this.lends.push(undo);
  }

  /** Refused after all: everything goes back, the last taken first. */
  giveBack(): void {
    for (const undo of this.lends.splice(0).reverse()) undo();
    this.releaseHolds();
  }

  /** Dispatched: the lends are the transfer's now; returns what gives the holds back at its end. */
  keep(): () => void {
    this.lends.length = 0;
    return () => this.releaseHolds();
  }

  private releaseHolds(): void {
    for (const release of this.holds.splice(0).reverse()) release();
  }
}

/**
 * Step 5, admission: this node's limits (slots and memory), then the fleet's when they are
 * shared. What it takes is held until the transfer ends.
 */
import { ErrorCode } from "../../protocol/packet.ts";
import { Admission, TRANSFER_MEMORY_BYTES, type AdmissionLimits, type SharedAdmission, type SharedVerdict } from "../admission.ts";
import { refused, type Refused, type Taken } from "./request.ts";

export interface AdmitSettings {
  limits: LimitSettings;
}

type LimitSettings = AdmissionLimits & { onLimit: "drop" | "busy" };

export interface SharedAdmissionEvents {
  /** the shared admission could not answer: admitting on this node's limits alone (once per outage) */
  down?(error: string): void;
  up?(): void;
}

export class Admit {
  readonly admission: Admission;
  private current: LimitSettings;
  /** the shared admission failed its last request: the outage was reported */
  private sharedDown = false;

  constructor(
    settings: AdmitSettings,
    private readonly shared: SharedAdmission | null,
    private readonly events: SharedAdmissionEvents = {},
  ) {
    this.admission = new Admission(settings.limits);
    this.current = settings.limits;
  }

  setLimits(limits: LimitSettings): void {
    this.current = limits;
    this.admission.setLimits(limits);
  }

  /** the limits as they are now (setLimits changes them) */
  get limits(): LimitSettings {
    return this.current;
  }

  /** The code a request over a limit gets: dropped, the ROM retries later; "busy" tells it now (some firmware gives up on an ERROR). */
  get limitCode(): number | null {
    return this.current.onLimit === "busy" ? ErrorCode.NOT_DEFINED : null;
  }

  /** Admits a transfer of `file` (below the root) for `address`, or says why not. */
  async admit(address: string, file: string, taken: Taken): Promise<Refused | null> {
    const local = this.admission.admit(address, file, TRANSFER_MEMORY_BYTES);
    if (local !== null) return refused(this.limitCode, `busy: ${local} transfer limit reached`, "limit");
    taken.hold(() => this.admission.release(address, file, TRANSFER_MEMORY_BYTES));
    if (!this.shared) return null;
    // The node's own limits came first (they protect this node); "unavailable" admits: they still hold.
    const verdict = await this.askShared(this.shared, address);
    if (verdict.ok) {
      const shared = this.shared;
      taken.hold(() => shared.release(verdict.token, address));
    } else if (verdict.refusal !== "unavailable") {
      return refused(this.limitCode, `busy: ${verdict.refusal} transfer limit reached across the cluster`, "limit");
    }
    return null;
  }

  /**
   * Reserves `bytes` more of the memory budget for an admitted transfer (a copy of its own);
   * held until it ends. Returns a function that gives part of it back early.
   */
  reserve(bytes: number, taken: Taken): Refused | ((unused: number) => void) {
    if (!this.admission.reserve(bytes)) return refused(this.limitCode, "busy: memory transfer limit reached", "limit");
    let held = bytes;
    taken.hold(() => this.admission.unreserve(held));
    return (unused) => {
      const back = Math.min(unused, held);
      held -= back;
      this.admission.unreserve(back);
    };
  }

  /** Asks the shared admission; reports an outage once, and its end. */
  private async askShared(shared: SharedAdmission, address: string): Promise<SharedVerdict> {
    const verdict: SharedVerdict = await shared
      .acquire(address, this.current)
      .catch((error: unknown) => ({ ok: false, refusal: "unavailable", error: (error as Error).message }));
    const down = !verdict.ok && verdict.refusal === "unavailable";
    if (down && !this.sharedDown) this.events.down?.(verdict.error);
    if (!down && this.sharedDown) this.events.up?.();
    this.sharedDown = down;
    return verdict;
  }
}

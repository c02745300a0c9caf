/** Messages between the main thread (control plane) and transfer workers (data plane). */
import type { FileIdentity, SourceShare } from "../storage/source.ts";
import type { EngineOptions, TransferJob } from "./engine.ts";
import type { TransferOutcome } from "./transfer.ts";

export interface WorkerInit {
  engine: EngineOptions;
  /** TFTPD_TEST_DROP, re-parsed in each worker */
  lossSpec: string | null;
}

export type ToWorker =
  | { type: "init"; init: WorkerInit }
  | { type: "read"; job: TransferJob; share: SourceShare; identity: FileIdentity }
  | { type: "cancel"; id: number; reason?: string; notify?: boolean }
  /** a cached copy is ready: map it (readers of the file move over to it) */
  | { type: "filled"; entryId: number; fd: number; size: number }
  /** the main thread closed a cached copy: drop its mapping */
  | { type: "release"; entryId: number }
  | { type: "stop" };

export type FromWorker =
  | { type: "ready" }
  | { type: "end"; id: number; outcome: TransferOutcome }
  /** the job could not start (no socket could be bound): the main thread answers the client */
  | { type: "failed"; id: number; message: string }
  | { type: "stopped" };

/**
 * Entry point of a transfer worker thread: a TransferEngine fed by the main thread. Listed as
 * an extra entry point of `bun build --compile` (build/compile.ts), or it would be missing
 * from the binary.
 *
 * File bytes are not copied between threads: a cached copy is mapped here from the main
 * thread's memfd (/proc/self/fd/N names the same descriptor in every thread of the process),
 * and an uncached file is read through the main thread's open descriptor.
 */
import { borrowedFdSource, memorySource, type FileIdentity, type FileSource, type SourceShare } from "../storage/source.ts";
import { TransferEngine } from "./engine.ts";
import { LossPlan } from "./loss.ts";
import type { FromWorker, ToWorker } from "./worker-protocol.ts";

declare const self: Worker;

const post = (message: FromWorker): void => self.postMessage(message);
const mappings = new Map<number, Uint8Array>();
let engine: TransferEngine | null = null;

function mapCopy(id: number, fd: number, size: number): Uint8Array {
  let bytes = mappings.get(id);
  if (!bytes) {
    bytes = size === 0 ? new Uint8Array(0) : Bun.mmap(`/proc/self/fd/${fd}`, { shared: false });
    mappings.set(id, bytes);
  }
  return bytes;
}

function sourceFor(share: SourceShare, identity: FileIdentity): FileSource {
  if (share.kind === "memfd") return memorySource(mapCopy(share.id, share.fd, identity.size), identity);
  const file = borrowedFdSource(share.fd, identity);
  const pending = share.pendingId;
  if (pending === undefined) return file;
  // The main thread is still copying this file: read it until the copy is mapped here.
  let copy: FileSource | null = null;
  return {
    size: file.size,
    identity,
    read(position, into, offset, length) {
      if (!copy) {
        const bytes = mappings.get(pending);
        if (bytes) copy = memorySource(bytes, identity);
      }
      return (copy ?? file).read(position, into, offset, length);
    },
    close: () => file.close(),
  };
}

self.onmessage = (event: MessageEvent<ToWorker>) => {
  const message = event.data;
  switch (message.type) {
    case "init": {
      const { engine: options, lossSpec } = message.init;
      engine = new TransferEngine(options, lossSpec ? LossPlan.parse(lossSpec) : null, (id, outcome) =>
        post({ type: "end", id, outcome }),
      );
      post({ type: "ready" });
      return;
    }
    case "read": {
      const { job } = message;
      let source: FileSource;
      try {
        source = sourceFor(message.share, message.identity);
      } catch (error) {
        post({ type: "failed", id: job.id, message: (error as Error).message });
        return;
      }
      engine?.startRead(job, source).catch((error: unknown) => post({ type: "failed", id: job.id, message: (error as Error).message }));
      return;
    }
    case "cancel":
      engine?.cancel(message.id, message.reason, message.notify);
      return;
    case "filled":
      mapCopy(message.entryId, message.fd, message.size);
      return;
    case "release":
      mappings.delete(message.entryId);
      return;
    case "stop":
      void engine?.stop().then(() => post({ type: "stopped" }));
      return;
  }
};

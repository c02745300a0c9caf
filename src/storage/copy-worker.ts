/**
 * Entry point of a thread of the file I/O pool (copy-pool.ts): copies a range of an open file
 * into a cached copy's memfd with sendfile, so the wait for the disk is this thread's and not
 * the main thread's. Listed as an entry point of `bun build --compile` (build/compile.ts).
 */
import { threadId } from "../net/affinity.ts";
import { sendfileRange } from "./memfd.ts";
import type { CopyReply, CopyRequest } from "./copy-pool.ts";

declare const self: Worker;

self.onmessage = (event: MessageEvent<CopyRequest>) => {
  const { id, out, input, start, end } = event.data;
  let reply: CopyReply;
  try {
    sendfileRange(out, input, start, end);
    reply = { type: "copied", id, error: null };
  } catch (error) {
    reply = { type: "copied", id, error: (error as Error).message };
  }
  self.postMessage(reply);
};

self.postMessage({ type: "ready", tid: threadId() } satisfies CopyReply);

/**
 * The file I/O pool (io.async_io, io.io_threads, performance.cpu.thread_pool_size): threads
 * that copy files into the file cache (sendfile from the file to the copy's memfd), so a cold
 * read from a slow disk holds one of them and never the main thread, whose listeners,
 * admission and uploads go on meanwhile. One copy step per thread at a time; more wait in
 * order.
 */
export interface CopyRequest {
  id: number;
  /** the copy's memfd (written at its own file position) */
  out: number;
  input: number;
  start: number;
  end: number;
}

export type CopyReply = { type: "ready"; tid: number | null } | { type: "copied"; id: number; error: string | null };

/** Copies bytes [start, end) of `input` to `out` (see MemfdFiller.copyFrom), somewhere. */
export interface RangeCopier {
  copy(out: number, input: number, start: number, end: number): Promise<void>;
}

const WORKER_URL = import.meta.url.includes("/$bunfs/") ? "./storage/copy-worker.ts" : new URL("./copy-worker.ts", import.meta.url).href;

interface PoolThread {
  worker: Worker;
  tid: number | null;
  /** the copy it is doing, if any */
  busy: { id: number; resolve: () => void; reject: (error: Error) => void } | null;
}

export class CopyPool implements RangeCopier {
  private readonly threads: PoolThread[] = [];
  private readonly waiting: { request: CopyRequest; resolve: () => void; reject: (error: Error) => void }[] = [];
  private lastId = 0;
  private stopped = false;

  private constructor() {}

  /** Starts `count` threads and resolves once each is ready (or rejects after 10 s). */
  static async start(count: number): Promise<CopyPool> {
    const pool = new CopyPool();
    const ready = Array.from({ length: count }, () => pool.spawn());
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("the file I/O pool's threads did not start within 10 s")), 10_000);
    });
    try {
      await Promise.race([Promise.all(ready), late]);
    } catch (error) {
      pool.stop();
      throw error;
    } finally {
      clearTimeout(timer);
    }
    return pool;
  }

  /** the kernel ids of the pool's threads (/proc/PID/task/TID) */
  get threadIds(): (number | null)[] {
    return this.threads.map((t) => t.tid);
  }

  copy(out: number, input: number, start: number, end: number): Promise<void> {
    if (this.stopped) return Promise.reject(new Error("the file I/O pool is stopped"));
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    this.waiting.push({ request: { id: ++this.lastId, out, input, start, end }, resolve, reject });
    this.next();
    return promise;
  }

  /** Ends the threads; copies not done fail (their fills fail, and a later request starts again). */
  stop(): void {
    this.stopped = true;
    const stopped = new Error("the file I/O pool is stopped");
    for (const waiting of this.waiting.splice(0)) waiting.reject(stopped);
    for (const thread of this.threads) {
      thread.busy?.reject(stopped);
      thread.busy = null;
      thread.worker.terminate();
    }
  }

  private next(): void {
    for (const thread of this.threads) {
      if (this.waiting.length === 0) return;
      if (thread.busy) continue;
      const { request, resolve, reject } = this.waiting.shift()!;
      thread.busy = { id: request.id, resolve, reject };
      thread.worker.postMessage(request);
    }
  }

  private spawn(): Promise<void> {
    const worker = new Worker(WORKER_URL);
    // an idle pool does not keep the process alive
    worker.unref();
    const thread: PoolThread = { worker, tid: null, busy: null };
    this.threads.push(thread);
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    worker.addEventListener("error", (event) => {
      // its copy fails (that fill with it), and a new thread takes its place
      const error = new Error(`a file I/O thread failed: ${(event as ErrorEvent).message}`);
      reject(error);
      thread.busy?.reject(error);
      thread.busy = null;
      this.threads.splice(this.threads.indexOf(thread), 1);
      if (!this.stopped) void this.spawn().then(() => this.next(), () => {});
    });
    worker.addEventListener("message", (event: MessageEvent<CopyReply>) => {
      const reply = event.data;
      if (reply.type === "ready") {
        thread.tid = reply.tid;
        resolve();
        return;
      }
      const done = thread.busy;
      thread.busy = null;
      if (done && done.id === reply.id) {
        if (reply.error === null) done.resolve();
        else done.reject(new Error(reply.error));
      }
      this.next();
    });
    return promise;
  }
}

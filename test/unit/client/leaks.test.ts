/**
 * Every path (success, server error, timeout, abort, option refusal, local error) must close
 * its socket and clear its timers: a load generator runs tens of thousands of these.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { download } from "../../../src/client/download.ts";
import { upload } from "../../../src/client/upload.ts";
import { encodeError, encodeOack } from "../../../src/protocol/codec.ts";
import { pattern, Responder } from "./responder.ts";

let r: Responder;
beforeAll(async () => {
  r = await Responder.start();
});
afterAll(() => r.close());

const openFds = (): number => readdirSync("/proc/self/fd").length;

async function oneOfEach(i: number): Promise<void> {
  const base = { host: "127.0.0.1", port: r.port, remote: `f${i}`, dallyMs: 0 };
  switch (i % 6) {
    case 0: {
      const served = r.serveRead(pattern(1500), {});
      expect((await download({ ...base, windowsize: 2 })).ok).toBe(true);
      await served;
      return;
    }
    case 1: {
      const served = r.serveWrite();
      expect((await upload({ ...base, source: pattern(700) })).ok).toBe(true);
      await served;
      return;
    }
    case 2: {
      // server error
      const result = download(base);
      const { peer } = await r.nextRequest();
      r.listener.send(encodeError(1, "File not found"), peer);
      expect((await result).error?.source).toBe("server");
      return;
    }
    case 3: {
      // timeout
      const result = download({ ...base, retransmitMs: 2, retries: 1 });
      await r.nextRequest();
      await r.nextRequest();
      expect((await result).error?.source).toBe("timeout");
      return;
    }
    case 4: {
      // abort mid-request, and option refusal on an upload
      const ac = new AbortController();
      const result = download({ ...base, signal: ac.signal });
      await r.nextRequest();
      ac.abort();
      expect((await result).error?.message).toBe("aborted");
      const refused = upload({ ...base, source: pattern(10) });
      const { peer } = await r.nextRequest();
      r.listener.send(encodeOack([["blksize", "512"]]), peer);
      expect((await refused).error?.code).toBe(8);
      await r.listener.next(); // our ERROR 8
      return;
    }
    default: {
      // local errors before any socket, and a download that dallies
      expect((await download({ ...base, blksize: 1 })).ok).toBe(false);
      expect((await upload({ ...base, source: "/nonexistent/file" })).ok).toBe(false);
      const served = r.serveRead(pattern(10));
      expect((await download({ ...base, dallyMs: 5 })).ok).toBe(true);
      await served;
      await Bun.sleep(10); // let the dally end
    }
  }
}

test("200 sequential transfers over every exit path leak no file descriptors", async () => {
  for (let i = 0; i < 12; i++) await oneOfEach(i); // warm up lazily opened runtime fds
  await Bun.sleep(20);
  const before = openFds();
  for (let i = 0; i < 200; i++) await oneOfEach(i);
  await Bun.sleep(20);
  expect(openFds()).toBe(before);
}, 30_000);

test("the event loop is left clean: a process doing transfers exits on its own", async () => {
  // Long retransmit and dally timers: any leaked timer or ref'd socket would keep the
  // process alive for seconds.
  const script = join(tmpdir(), `tftpd-client-exit-${process.pid}.ts`);
  const src = resolve(import.meta.dir, "../../../src");
  writeFileSync(
    script,
    `
import { download } from ${JSON.stringify(`${src}/client/download.ts`)};
import { upload } from ${JSON.stringify(`${src}/client/upload.ts`)};
import { Responder, pattern } from ${JSON.stringify(resolve(import.meta.dir, "responder.ts"))};
const r = await Responder.start();
const base = { host: "127.0.0.1", port: r.port, remote: "x", retransmitMs: 5000 };
for (let i = 0; i < 20; i++) {
  const s = r.serveRead(pattern(3000));
  if (!(await download({ ...base, dallyMs: 5000 })).ok) process.exit(2);
  await s;
  const w = r.serveWrite();
  if (!(await upload({ ...base, source: pattern(3000) })).ok) process.exit(3);
  await w;
}
const result = download({ ...base, retries: 3 });
const { peer } = await r.nextRequest();
r.listener.send(new Uint8Array([0, 5, 0, 1, 0]), peer);
if ((await result).ok) process.exit(4);
r.close();
console.log("done");
`,
  );
  try {
    const started = performance.now();
    const proc = Bun.spawn([process.execPath, script], { stdout: "pipe", stderr: "pipe" });
    const code = await proc.exited;
    const elapsed = performance.now() - started;
    expect(await new Response(proc.stdout).text()).toBe("done\n");
    expect(code).toBe(0);
    expect(elapsed).toBeLessThan(4000);
  } finally {
    rmSync(script, { force: true });
  }
}, 20_000);

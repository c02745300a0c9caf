/**
 * The start-up sweep of interrupted uploads: it removes the temporary files of uploads whose
 * process died (kill -9 of a real writer process) and never those a live upload is writing,
 * in another process (a server sharing the root) or in this one.
 */
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { sweepAbandonedUploads } from "../../../src/storage/upload-sweep.ts";
import { prepareUpload } from "../../../src/storage/upload.ts";
import { cleanupTempDirs, listing, storageModule, tempDir } from "./helpers.ts";

const writers: Bun.Subprocess[] = [];
afterEach(() => {
  for (const w of writers.splice(0)) w.kill("SIGKILL");
  cleanupTempDirs();
});

const STALE_MS = 600_000;

/**
 * A real writer in a process of its own: it starts an upload of `relative` below `root`, writes
 * some bytes and waits (as an upload waiting for its next DATA does). Resolves with the
 * temporary file's path once it exists.
 */
async function startWriter(root: string, relative: string): Promise<{ proc: Bun.Subprocess; tempPath: string }> {
  const script = path.join(root, "..", `writer-${process.pid}-${writers.length}.ts`);
  fs.writeFileSync(
    script,
    `import { prepareUpload } from ${JSON.stringify(storageModule("upload.ts"))};
const r = await prepareUpload(process.argv[2], process.argv[3], "create", Infinity);
if (!r.ok) { console.error(r.message); process.exit(1); }
r.sink.write(new Uint8Array(8192).fill(7));
console.log(r.sink.tempPath);
setInterval(() => {}, 1000);
`,
  );
  const proc = Bun.spawn([process.execPath, script, root, relative], { stdout: "pipe", stderr: "pipe" });
  writers.push(proc);
  const reader = proc.stdout.getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`writer exited: ${await new Response(proc.stderr).text()}`);
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return { proc, tempPath: text.trim() };
}

async function killHard(proc: Bun.Subprocess): Promise<void> {
  proc.kill("SIGKILL");
  await proc.exited;
}

function makeRoot(): string {
  const base = tempDir();
  const root = path.join(base, "root");
  fs.mkdirSync(root);
  return root;
}

describe("sweepAbandonedUploads", () => {
  test("removes the temporary files of a writer killed with -9, in the root and below it", async () => {
    const root = makeRoot();
    fs.mkdirSync(path.join(root, "a", "b"), { recursive: true });
    const top = await startWriter(root, "fw.bin");
    const deep = await startWriter(root, "a/b/boot.efi");
    await killHard(top.proc);
    await killHard(deep.proc);
    expect(fs.existsSync(top.tempPath)).toBe(true);
    expect(fs.existsSync(deep.tempPath)).toBe(true);

    const report = await sweepAbandonedUploads(root, { staleAfterMs: STALE_MS });
    expect(report).toMatchObject({ removed: 2, inUse: 0, failed: 0, complete: true });
    expect(listing(root)).toEqual(["a"]);
    expect(listing(path.join(root, "a", "b"))).toEqual([]);
    // nothing under the final names either
    expect(fs.existsSync(path.join(root, "fw.bin"))).toBe(false);
  });

  test("keeps the file of a live writer in another process (a server sharing the root), until it dies", async () => {
    const root = makeRoot();
    const live = await startWriter(root, "fw.bin");
    const first = await sweepAbandonedUploads(root, { staleAfterMs: 0 });
    expect(first).toMatchObject({ removed: 0, inUse: 1, failed: 0 });
    expect(fs.existsSync(live.tempPath)).toBe(true);
    expect(fs.statSync(live.tempPath).size).toBe(8192);

    await killHard(live.proc);
    const second = await sweepAbandonedUploads(root, { staleAfterMs: STALE_MS });
    expect(second).toMatchObject({ removed: 1, inUse: 0 });
    expect(listing(root)).toEqual([]);
  });

  test("keeps this process's own running upload, which then publishes normally", async () => {
    const root = makeRoot();
    const r = await prepareUpload(root, "fw.bin", "create", Number.POSITIVE_INFINITY);
    if (!r.ok) throw new Error(r.message);
    r.sink.write(new TextEncoder().encode("mine"));
    const report = await sweepAbandonedUploads(root, { staleAfterMs: 0 });
    expect(report).toMatchObject({ removed: 0, inUse: 1 });
    expect((await r.sink.publish())).toBeNull();
    expect(fs.readFileSync(path.join(root, "fw.bin"), "utf8")).toBe("mine");
    expect(listing(root)).toEqual(["fw.bin"]);
  });

  test("touches only regular files with exactly the reserved name pattern", async () => {
    const root = makeRoot();
    const keep = [
      "fw.bin",
      ".hidden",
      ".fw.bin.tftpd-part", // no random part: not a name uploads make
      ".fw.bin.0123456789AB.tftpd-part", // upper-case hex: not ours
      "fw.bin.0123456789ab.tftpd-part", // no leading dot
    ];
    for (const name of keep) fs.writeFileSync(path.join(root, name), name);
    fs.mkdirSync(path.join(root, ".dir.0123456789ab.tftpd-part")); // a directory of that name
    fs.writeFileSync(path.join(root, ".dir.0123456789ab.tftpd-part", "inside"), "x");
    fs.writeFileSync(path.join(root, ".stale.0123456789ab.tftpd-part"), "left by a crash");

    const report = await sweepAbandonedUploads(root, { staleAfterMs: STALE_MS });
    expect(report).toMatchObject({ removed: 1, inUse: 0, failed: 0 });
    expect(listing(root)).toEqual([...keep, ".dir.0123456789ab.tftpd-part"].sort());
    expect(listing(path.join(root, ".dir.0123456789ab.tftpd-part"))).toEqual(["inside"]);
  });

  test("never follows symbolic links out of the root, nor removes a link", async () => {
    const base = tempDir();
    const root = path.join(base, "root");
    const outside = path.join(base, "outside");
    fs.mkdirSync(root);
    fs.mkdirSync(outside);
    const victim = path.join(outside, ".os.0123456789ab.tftpd-part");
    fs.writeFileSync(victim, "not the server's");
    fs.symlinkSync(outside, path.join(root, "linked-dir"));
    fs.symlinkSync(victim, path.join(root, ".link.0123456789ab.tftpd-part"));

    const report = await sweepAbandonedUploads(root, { staleAfterMs: STALE_MS });
    expect(report).toMatchObject({ removed: 0, failed: 0 });
    expect(fs.readFileSync(victim, "utf8")).toBe("not the server's");
    expect(listing(root)).toEqual([".link.0123456789ab.tftpd-part", "linked-dir"]);
  });

  test("a big root is bounded: the walk stops at maxEntries and says so", async () => {
    const root = makeRoot();
    for (let d = 0; d < 5; d++) {
      fs.mkdirSync(path.join(root, `d${d}`));
      for (let f = 0; f < 40; f++) fs.writeFileSync(path.join(root, `d${d}`, `f${f}`), "");
    }
    const cut = await sweepAbandonedUploads(root, { staleAfterMs: STALE_MS, maxEntries: 50 });
    expect(cut).toMatchObject({ complete: false, entries: 50 });
    const whole = await sweepAbandonedUploads(root, { staleAfterMs: STALE_MS });
    expect(whole).toMatchObject({ complete: true, entries: 205, removed: 0 });
  });

  test("20,000 files in 400 directories with 100 leftovers are swept in well under a few seconds", async () => {
    const root = makeRoot();
    for (let d = 0; d < 400; d++) {
      const dir = path.join(root, `host-${d}`);
      fs.mkdirSync(dir);
      for (let f = 0; f < 50; f++) fs.writeFileSync(path.join(dir, `file-${f}.cfg`), "");
      if (d % 4 === 0) fs.writeFileSync(path.join(dir, `.file-0.cfg.${d.toString(16).padStart(12, "0")}.tftpd-part`), "x");
    }
    const started = performance.now();
    const report = await sweepAbandonedUploads(root, { staleAfterMs: STALE_MS });
    const ms = performance.now() - started;
    expect(report).toMatchObject({ removed: 100, inUse: 0, failed: 0, complete: true, entries: 20_500 });
    expect(ms).toBeLessThan(5000);
  });
});

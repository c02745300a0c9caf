/**
 * A worker's own road for requests (src/server/fast-path.ts), without sockets: the engine, the
 * main thread and stat are stand-ins that record what they are asked. What it takes, it takes
 * in the pipeline's order and against the node's shared admission; everything else (garbage,
 * writes, netascii, a path not published, a changed file, a request over a limit, a client
 * whose last request went to the main thread, a draining server) is forwarded untouched, with
 * nothing held; a flood over its rate is dropped and counted where the metrics read it.
 */
import { describe, expect, test } from "bun:test";
import type * as fs from "node:fs";
import { encodeRequest } from "../../../src/protocol/codec.ts";
import { Opcode } from "../../../src/protocol/packet.ts";
import { AdmissionState } from "../../../src/server/admission-state.ts";
import { Admission } from "../../../src/server/admission.ts";
import type { TransferJob } from "../../../src/server/engine.ts";
import { FastPath, type FastPathSettings, type FastStart, type PublishedCopy } from "../../../src/server/fast-path.ts";
import { bytesOfText } from "../../../src/server/worker-protocol.ts";

const ROOT = "/srv/tftp";
const IDENTITY = { dev: 2049, ino: 77, size: 300_000, mtimeMs: 1_700_000_000_000, ctimeMs: 1_700_000_000_500 };
const COPY: PublishedCopy = { relative: "boot/kernel", entryId: 5, share: { kind: "memfd", id: 5, fd: 40 }, identity: IDENTITY, memfdIno: 9 };

function statOf(identity = IDENTITY, file = true): fs.Stats {
  return { ...identity, isFile: () => file } as unknown as fs.Stats;
}

interface Harness {
  fast: FastPath;
  state: AdmissionState;
  started: FastStart[];
  jobs: TransferJob[];
  ends: (() => void)[];
  repeats: { id: number; same: boolean }[];
  statted: string[];
  rateDropped: Int32Array;
  closed: Int32Array;
  ids: Int32Array;
  /** what the next stat of the copy's path sees (null: gone) */
  disk: { stat: fs.Stats | null };
  repeatVerdict: { value: "answered" | "ignored" | "superseded" | "unknown" };
}

function harness(overrides: Partial<FastPathSettings> = {}): Harness {
  const state = AdmissionState.create(64);
  const rateDropped = new Int32Array(new SharedArrayBuffer(4));
  const closed = new Int32Array(new SharedArrayBuffer(4));
  const ids = new Int32Array(new SharedArrayBuffer(4));
  const h = {
    state,
    started: [] as FastStart[],
    jobs: [] as TransferJob[],
    ends: [] as (() => void)[],
    repeats: [] as { id: number; same: boolean }[],
    statted: [] as string[],
    rateDropped,
    closed,
    ids,
    disk: { stat: statOf() as fs.Stats | null },
    repeatVerdict: { value: "answered" as "answered" | "ignored" | "superseded" | "unknown" },
  };
  const settings: FastPathSettings = {
    rootReal: ROOT,
    negotiation: { blksizeMax: 8192, windowsizeMax: 64, windowBytesMax: 8 << 20, uploadMax: 1 << 30 },
    timeoutMs: 1000,
    retries: 5,
    limits: { maxTotal: 100, maxPerIp: 100, maxPerClient: 100 },
    admission: state.buffer,
    requestRate: { perSecond: 0, burst: 1 },
    ids: ids.buffer as SharedArrayBuffer,
    rateDropped: rateDropped.buffer as SharedArrayBuffer,
    closed: closed.buffer as SharedArrayBuffer,
    ...overrides,
  };
  const fast = new FastPath(settings, {
    start: (job, _copy, ended) => {
      h.jobs.push(job);
      h.ends.push(ended);
    },
    started: (start) => h.started.push(start),
    requestAgain: (id, same) => {
      h.repeats.push({ id, same });
      return h.repeatVerdict.value;
    },
    stat: (path) => {
      h.statted.push(path);
      return h.disk.stat;
    },
  });
  fast.publish(COPY);
  return { fast, ...h };
}

const PEER = { address: "10.0.0.7", port: 40001 };
const rrq = (file = "boot/kernel", options: [string, string][] = [["blksize", "1468"], ["tsize", "0"]], mode = "octet") =>
  encodeRequest(Opcode.RRQ, file, mode as "octet", options);
const running = (h: Harness) => h.state.locked(() => h.state.total);

describe("taken here", () => {
  test("an octet read of a published path whose version is unchanged: admitted, negotiated, started, recorded; its end gives the slot back", () => {
    const h = harness();
    h.ids[0] = 41; // the main thread has given out 41 ids
    expect(h.fast.take(rrq(), PEER, 0, "127.0.0.1", performance.now() - 0.5)).toBe("taken");
    expect(h.statted).toEqual([`${ROOT}/boot/kernel`]);
    expect(h.jobs).toHaveLength(1);
    const job = h.jobs[0]!;
    expect(job).toMatchObject({ id: 42, peer: PEER, localAddress: "127.0.0.1", blksize: 1468, windowsize: 1, oack: [["blksize", "1468"], ["tsize", "300000"]] });
    expect(job.retransmit).toEqual({ timeoutMs: 1000, fixed: false, retries: 5 });
    expect(h.started).toHaveLength(1);
    expect(h.started[0]).toMatchObject({ id: 42, listener: 0, file: "boot/kernel", blksize: 1468, tsize: 300_000, options: ["blksize", "tsize"] });
    expect(h.started[0]!.acceptedMs).toBeGreaterThanOrEqual(0.5);
    expect(running(h)).toBe(1);
    h.ends[0]!();
    expect(running(h)).toBe(0);
    expect(h.fast.taken).toBe(1);
  });

  test("a request sent again by the client of a running transfer is its engine's to judge, not a second transfer", () => {
    const h = harness();
    const request = rrq();
    expect(h.fast.take(request, PEER, 0, "127.0.0.1", performance.now())).toBe("taken");
    expect(h.fast.take(request, PEER, 0, "127.0.0.1", performance.now())).toBe("taken");
    expect(h.repeats).toEqual([{ id: 1, same: true }]);
    expect(h.jobs).toHaveLength(1);
    // superseded (the client asks anew after going silent): a new transfer
    h.repeatVerdict.value = "superseded";
    expect(h.fast.take(rrq("boot/kernel", []), PEER, 0, "127.0.0.1", performance.now())).toBe("taken");
    expect(h.repeats[1]).toEqual({ id: 1, same: false });
    expect(h.jobs.map((j) => j.id)).toEqual([1, 2]);
  });
});

describe("one stat per turn", () => {
  test("requests read in one turn share a stat of their path; the next turn stats again and sees a change", () => {
    const h = harness();
    const turn = performance.now();
    expect(h.fast.take(rrq(), PEER, 0, "127.0.0.1", turn)).toBe("taken");
    expect(h.fast.take(rrq(), { ...PEER, port: 40002 }, 0, "127.0.0.1", turn)).toBe("taken");
    expect(h.statted).toHaveLength(1);
    h.disk.stat = statOf({ ...IDENTITY, mtimeMs: IDENTITY.mtimeMs + 1000 });
    expect(h.fast.take(rrq(), { ...PEER, port: 40003 }, 0, "127.0.0.1", turn + 1)).toBe("forward");
    expect(h.statted).toHaveLength(2);
    expect(h.jobs).toHaveLength(2);
  });

  test("the request reaches the main thread byte for byte, whatever its bytes", () => {
    const h = harness();
    const request = rrq("boot/kernel", [["blksize", "1468"], ["x\u00e9\u00ff", "\u0080"]]);
    expect(h.fast.take(request, PEER, 0, "127.0.0.1", performance.now())).toBe("taken");
    expect([...bytesOfText(h.started[0]!.request)]).toEqual([...request]);
  });
});

describe("forwarded to the main thread, nothing held", () => {
  const cases: [string, (h: Harness) => Uint8Array][] = [
    ["garbage", () => new Uint8Array([0, 9, 1, 2])],
    ["a write", () => encodeRequest(Opcode.WRQ, "boot/kernel", "octet")],
    ["netascii", () => rrq("boot/kernel", [], "netascii")],
    ["a path not published", () => rrq("boot/initrd")],
    ["a name the confinement refuses", () => rrq("../etc/passwd")],
    ["a file changed since its copy", (h) => ((h.disk.stat = statOf({ ...IDENTITY, ctimeMs: IDENTITY.ctimeMs + 1 })), rrq())],
    ["a file gone", (h) => ((h.disk.stat = null), rrq())],
    ["a directory where the file was", (h) => ((h.disk.stat = statOf(IDENTITY, false)), rrq())],
  ];
  for (const [what, make] of cases) {
    test(what, () => {
      const h = harness();
      expect(h.fast.take(make(h), PEER, 0, "127.0.0.1", performance.now())).toBe("forward");
      expect(h.jobs).toHaveLength(0);
      expect(h.started).toHaveLength(0);
      expect(running(h)).toBe(0);
    });
  }

  test("over an admission limit the main thread's transfers count toward", () => {
    const h = harness({ limits: { maxTotal: 100, maxPerIp: 1, maxPerClient: 100 } });
    // a transfer of the main thread's from the same address, in the node's shared counts
    expect(new Admission({ maxTotal: 100, maxPerIp: 1, maxPerClient: 100 }, h.state).admit(PEER.address, "other")).toBeNull();
    expect(h.fast.take(rrq(), PEER, 0, "127.0.0.1", performance.now())).toBe("forward");
    expect(running(h)).toBe(1);
  });

  test("a client whose last request went to the main thread keeps going there (its transfer may run there)", () => {
    const h = harness();
    expect(h.fast.take(rrq("boot/initrd"), PEER, 0, "127.0.0.1", performance.now())).toBe("forward");
    expect(h.fast.take(rrq(), PEER, 0, "127.0.0.1", performance.now())).toBe("forward");
    expect(h.fast.take(rrq(), { ...PEER, port: PEER.port + 1 }, 0, "127.0.0.1", performance.now())).toBe("taken");
  });

  test("a draining server: everything", () => {
    const h = harness();
    Atomics.store(h.closed, 0, 1);
    expect(h.fast.take(rrq(), PEER, 0, "127.0.0.1", performance.now())).toBe("forward");
  });

  test("a copy the main thread released", () => {
    const h = harness();
    h.fast.release(COPY.entryId);
    expect(h.fast.take(rrq(), PEER, 0, "127.0.0.1", performance.now())).toBe("forward");
  });
});

describe("request rate", () => {
  test("requests over a source's rate are dropped and counted where the metrics read them; garbage takes no token", () => {
    const h = harness({ requestRate: { perSecond: 1, burst: 2 } });
    const now = performance.now();
    for (let i = 0; i < 5; i++) expect(h.fast.take(new Uint8Array([0, 9]), PEER, 0, "127.0.0.1", now)).toBe("forward");
    const verdicts = [0, 1, 2, 3].map((i) => h.fast.take(rrq(), { ...PEER, port: 50000 + i }, 0, "127.0.0.1", now));
    expect(verdicts).toEqual(["taken", "taken", "dropped", "dropped"]);
    expect(h.rateDropped[0]).toBe(2);
    expect(h.fast.summarize(now).sources).toEqual([{ address: PEER.address, dropped: 2 }]);
  });
});

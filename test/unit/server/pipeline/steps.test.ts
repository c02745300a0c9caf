/**
 * The request pipeline without sockets, step by step and whole: each step answers a value or a
 * refusal, and a refusal anywhere gives back what the steps before it took (admission slots,
 * memory, a fleet lease, an open file, an upload's temporary file).
 */
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { decodePacket } from "../../../../src/protocol/codec.ts";
import { Opcode, ErrorCode, type RequestPacket } from "../../../../src/protocol/packet.ts";
import { encodeRequest } from "../../../../src/protocol/codec.ts";
import { FileCache } from "../../../../src/storage/cache.ts";
import { rootLookup } from "../../../../src/storage/lookup.ts";
import { parseRemapRules } from "../../../../src/storage/remap.ts";
import type { SharedAdmission, SharedVerdict } from "../../../../src/server/admission.ts";
import { Admit } from "../../../../src/server/pipeline/admit.ts";
import { ClientDirectories, confine } from "../../../../src/server/pipeline/confine.ts";
import { nameOf } from "../../../../src/server/pipeline/name.ts";
import { negotiateFor } from "../../../../src/server/pipeline/negotiate.ts";
import { RequestPipeline, type PipelineParts } from "../../../../src/server/pipeline/pipeline.ts";
import { remapName } from "../../../../src/server/pipeline/remap.ts";
import { resolveRead, resolveWrite } from "../../../../src/server/pipeline/resolve.ts";
import { isRefused, Taken } from "../../../../src/server/pipeline/request.ts";
import { NetworkRules, type ClientPolicy, type RootPlace } from "../../../../src/server/pipeline/rules.ts";
import type { Neighbours } from "../../../../src/net/neighbours.ts";
import { cleanupTempDirs, tempDir } from "../../storage/helpers.ts";

afterEach(cleanupTempDirs);

const LIMITS = { maxTotal: 10, maxPerIp: 10, maxPerClient: 10, onLimit: "busy" as const };

function request(op: "read" | "write", filename: string, options: [string, string][] = [], mode = "octet"): RequestPacket {
  const decoded = decodePacket(encodeRequest(op === "read" ? Opcode.RRQ : Opcode.WRQ, filename, mode as "octet", new Map(options)));
  if (!decoded.ok || (decoded.packet.op !== Opcode.RRQ && decoded.packet.op !== Opcode.WRQ)) throw new Error("bad request");
  return decoded.packet;
}

function place(files: Record<string, string>): RootPlace {
  const real = tempDir();
  for (const [name, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(real, name)), { recursive: true });
    fs.writeFileSync(path.join(real, name), text);
  }
  return { real, lookup: rootLookup(real, new FileCache(1 << 20), null, null) };
}

function policy(root: RootPlace, over: Partial<ClientPolicy> = {}): ClientPolicy {
  return { root, blksizeMax: 65464, windowsizeMax: 64, refusedOptions: null, ...over };
}

/** A fleet admission that answers as told, and keeps count of its tokens. */
class CountingShared implements SharedAdmission {
  held = 0;
  constructor(private readonly answer: SharedVerdict | "throw") {}
  async acquire(): Promise<SharedVerdict> {
    if (this.answer === "throw") throw new Error("redis down");
    if (this.answer.ok) this.held++;
    return this.answer;
  }
  release(): void {
    this.held--;
  }
}

describe("name", () => {
  test("backslashes become slashes; the op is named", () => {
    expect(nameOf({ op: Opcode.RRQ, filename: "boot\\x86\\pxe.0" })).toEqual({ op: "read", file: "boot/x86/pxe.0", remapped: null });
    expect(nameOf({ op: Opcode.WRQ, filename: "f" }).op).toBe("write");
  });
});

describe("remap", () => {
  const rules = (text: string) => {
    const parsed = parseRemapRules(text, "test.map");
    if (!parsed.ok) throw new Error(parsed.errors.join("; "));
    return parsed.rules;
  };

  test("no rules: the name as asked, nothing recorded", () => {
    const asked = nameOf({ op: Opcode.RRQ, filename: "f" });
    expect(remapName([], asked, "10.0.0.1")).toBe("f");
    expect(asked.remapped).toBeNull();
  });

  test("a rewrite is recorded; the client's address is \\i and \\x", () => {
    const asked = nameOf({ op: Opcode.RRQ, filename: "cfg" });
    expect(remapName(rules("r ^cfg$ cfg-\\x-\\i"), asked, "192.168.1.10")).toBe("cfg-C0A8010A-192.168.1.10");
    expect(asked.remapped).toBe("cfg-C0A8010A-192.168.1.10");
  });

  test("an abort rule refuses with ERROR 2", () => {
    const refusal = remapName(rules("a ^secret"), nameOf({ op: Opcode.RRQ, filename: "secret.key" }), "10.0.0.1");
    expect(isRefused(refusal) && refusal.code).toBe(ErrorCode.ACCESS_VIOLATION);
  });
});

describe("policy (per-network rules)", () => {
  test("first match wins; a client no rule holds gets the server's settings", () => {
    const root = place({});
    const lab = place({});
    const base = policy(root, { blksizeMax: 1468 });
    const rules = new NetworkRules(
      [
        { clients: ["10.1.0.0/16"], blksizeMax: 1200, windowsizeMax: null, refuseOptions: ["windowsize"], root: null },
        { clients: ["10.0.0.0/8", "fd00::/8"], blksizeMax: 8192, windowsizeMax: 4, refuseOptions: [], root: lab.real },
      ],
      [null, lab],
      base,
    );
    const overlay = rules.policyFor("10.1.2.3") as ClientPolicy;
    expect([overlay.blksizeMax, overlay.windowsizeMax, [...(overlay.refusedOptions ?? [])], overlay.root.real]).toEqual([1200, 64, ["windowsize"], root.real]);
    const labClient = rules.policyFor("10.9.9.9") as ClientPolicy;
    expect([labClient.blksizeMax, labClient.windowsizeMax, labClient.refusedOptions, labClient.root.real]).toEqual([8192, 4, null, lab.real]);
    expect((rules.policyFor("fd00::5") as ClientPolicy).root.real).toBe(lab.real);
    expect((rules.policyFor("::ffff:10.9.9.9") as ClientPolicy).root.real).toBe(lab.real);
    expect(rules.policyFor("192.168.1.1")).toBe(base);
  });

  test("deny wins over allow; allow lists who may ask; both before any rule", () => {
    const root = place({});
    const base = policy(root);
    const rules = new NetworkRules([{ clients: ["10.6.0.0/16"], blksizeMax: 512, windowsizeMax: null, refuseOptions: [], root: null }], [null], base, {
      allow: ["10.0.0.0/8"],
      deny: ["10.6.6.0/24"],
    });
    expect(rules.policyFor("10.1.1.1")).toBe(base);
    expect((rules.policyFor("10.6.0.1") as ClientPolicy).blksizeMax).toBe(512);
    const denied = rules.policyFor("10.6.6.6");
    expect(isRefused(denied) && [denied.code, denied.kind, denied.message]).toEqual([ErrorCode.ACCESS_VIOLATION, "allow_deny", "access denied"]);
    expect(isRefused(rules.policyFor("192.168.0.1"))).toBe(true);
  });
});

describe("confine", () => {
  const neighbours = (table: Record<string, string>): Neighbours => ({ macOf: async (address) => table[address] ?? null });

  test("the name as a path below the root; `..` is refused", async () => {
    const root = place({ "a/b": "x" });
    expect(await confine("/a//b", root, null, "10.0.0.1")).toEqual({ root, relative: "a/b" });
    const refusal = await confine("a/../../etc/passwd", root, null, "10.0.0.1");
    expect(isRefused(refusal) && refusal.code).toBe(ErrorCode.ACCESS_VIOLATION);
  });

  test("unique root by IP: the client's directory when it exists, else the root", async () => {
    const root = place({ "127.1.0.5/f": "own", f: "shared" });
    const dirs = new ClientDirectories("ip", neighbours({}));
    expect(await confine("f", root, dirs, "127.1.0.5")).toEqual({ root, relative: "127.1.0.5/f" });
    expect(await confine("f", root, dirs, "::ffff:127.1.0.5")).toEqual({ root, relative: "127.1.0.5/f" });
    expect(await confine("f", root, dirs, "127.1.0.6")).toEqual({ root, relative: "f" });
  });

  test("a file named like a client is no client directory", async () => {
    const root = place({ "127.1.0.5": "a file", f: "shared" });
    expect(await confine("f", root, new ClientDirectories("ip", neighbours({})), "127.1.0.5")).toEqual({ root, relative: "f" });
  });

  test("unique root by MAC, from the neighbour table; an unknown MAC gets the root", async () => {
    const root = place({ "52-54-00-12-34-56/f": "own", f: "shared" });
    const dirs = new ClientDirectories("mac", neighbours({ "10.0.0.7": "52:54:00:12:34:56" }));
    expect(await confine("f", root, dirs, "10.0.0.7")).toEqual({ root, relative: "52-54-00-12-34-56/f" });
    expect(await confine("f", root, dirs, "10.0.0.8")).toEqual({ root, relative: "f" });
  });
});

describe("admit", () => {
  test("over a local limit: busy or dropped, as configured", async () => {
    const busy = new Admit({ limits: { ...LIMITS, maxPerClient: 1 } }, null);
    expect(await busy.admit("10.0.0.1", "f", new Taken())).toBeNull();
    const refusal = await busy.admit("10.0.0.1", "f", new Taken());
    expect(refusal && [refusal.code, refusal.kind, refusal.message]).toEqual([ErrorCode.NOT_DEFINED, "limit", "busy: per-client transfer limit reached"]);
    const drop = new Admit({ limits: { ...LIMITS, maxTotal: 0, onLimit: "drop" } }, null);
    expect((await drop.admit("10.0.0.1", "f", new Taken()))?.code).toBeNull();
  });

  test("the fleet's refusal gives the local slot back; an outage admits and is reported once", async () => {
    const full = new Admit({ limits: LIMITS }, new CountingShared({ ok: false, refusal: "total" }));
    const taken = new Taken();
    const refusal = await full.admit("10.0.0.1", "f", taken);
    expect(refusal?.message).toBe("busy: total transfer limit reached across the cluster");
    taken.giveBack();
    expect(full.admission.running).toBe(0);

    const downs: string[] = [];
    const outage = new Admit({ limits: LIMITS }, new CountingShared("throw"), { down: (e) => downs.push(e) });
    expect(await outage.admit("10.0.0.1", "f", new Taken())).toBeNull();
    expect(await outage.admit("10.0.0.2", "f", new Taken())).toBeNull();
    expect(downs).toEqual(["redis down"]);
  });

  test("a fleet lease is held until given back", async () => {
    const shared = new CountingShared({ ok: true, token: "t" });
    const admit = new Admit({ limits: LIMITS }, shared);
    const taken = new Taken();
    await admit.admit("10.0.0.1", "f", taken);
    expect(shared.held).toBe(1);
    const release = taken.keep();
    expect(shared.held).toBe(1);
    release();
    expect([shared.held, admit.admission.running]).toEqual([0, 0]);
  });
});

describe("resolve", () => {
  const admitAll = (): Admit => new Admit({ limits: { ...LIMITS, maxMemory: 1 << 20 } }, null);

  test("a read's source comes from the client's lookup chain and is lent: a refusal later closes it", async () => {
    const root = place({ k: "kernel" });
    const taken = new Taken();
    const source = await resolveRead({ root, relative: "k" }, false, admitAll(), taken);
    if (isRefused(source)) throw new Error(source.message);
    expect(source.size).toBe(6);
    taken.giveBack();
    expect(() => source.read(0, new Uint8Array(6), 0, 6)).toThrow();
  });

  test("a missing file is the lookup's refusal, as is", async () => {
    const refusal = await resolveRead({ root: place({}), relative: "nope" }, false, admitAll(), new Taken());
    expect(isRefused(refusal) && [refusal.code, refusal.kind]).toEqual([ErrorCode.FILE_NOT_FOUND, "not_found"]);
  });

  test("netascii: the converted copy, its memory held until the transfer ends", async () => {
    const admit = admitAll();
    const taken = new Taken();
    const source = await resolveRead({ root: place({ t: "a\nb" }), relative: "t" }, true, admit, taken);
    if (isRefused(source)) throw new Error(source.message);
    const bytes = new Uint8Array(source.size);
    source.read(0, bytes, 0, bytes.length);
    expect(new TextDecoder().decode(bytes)).toBe("a\r\nb");
    expect(admit.admission.reservedMemory).toBe(4);
    taken.keep()();
    expect(admit.admission.reservedMemory).toBe(0);
  });

  test("a write's sink is lent: a refusal later removes its temporary file", async () => {
    const root = place({});
    const taken = new Taken();
    const sink = await resolveWrite({ root, relative: "up" }, "3", { policy: "create", uploadMax: 100 }, taken);
    if (isRefused(sink)) throw new Error(sink.message);
    expect(fs.readdirSync(root.real)).toHaveLength(1);
    taken.giveBack();
    expect(fs.readdirSync(root.real)).toEqual([]);
  });

  test("uploads off, or a declared size over the cap, are refused before any file is made", async () => {
    const root = place({});
    const off = await resolveWrite({ root, relative: "up" }, undefined, { policy: "off", uploadMax: 100 }, new Taken());
    expect(isRefused(off) && off.code).toBe(ErrorCode.ACCESS_VIOLATION);
    const big = await resolveWrite({ root, relative: "up" }, "101", { policy: "create", uploadMax: 100 }, new Taken());
    expect(isRefused(big) && big.code).toBe(ErrorCode.DISK_FULL);
    expect(fs.readdirSync(root.real)).toEqual([]);
  });
});

describe("negotiate", () => {
  test("the client's policy caps blksize and windowsize, and its refused options are not acknowledged", () => {
    const req = request("read", "f", [["blksize", "9000"], ["windowsize", "16"], ["tsize", "0"]]);
    const capped = negotiateFor(req, policy(place({}), { blksizeMax: 1200, windowsizeMax: 8 }), { windowBytesMax: 1 << 20, uploadMax: 1 << 20 }, 5);
    expect(!isRefused(capped) && capped.oack).toEqual([["blksize", "1200"], ["windowsize", "8"], ["tsize", "5"]]);
    const noWindow = negotiateFor(req, policy(place({}), { refusedOptions: new Set(["windowsize"]) }), { windowBytesMax: 1 << 20, uploadMax: 1 << 20 }, 5);
    expect(!isRefused(noWindow) && [noWindow.windowsize, noWindow.oack, noWindow.requested]).toEqual([
      1,
      [["blksize", "9000"], ["tsize", "5"]],
      ["blksize", "windowsize", "tsize"],
    ]);
  });

  test("a WRQ declaring more than may be stored is refused as an options refusal", () => {
    const refusal = negotiateFor(request("write", "f", [["tsize", "2048"]]), policy(place({})), { windowBytesMax: 1 << 20, uploadMax: 1024 }, null);
    expect(isRefused(refusal) && [refusal.code, refusal.kind]).toEqual([ErrorCode.DISK_FULL, "options"]);
  });
});

describe("the whole pipeline", () => {
  function pipeline(root: RootPlace, over: Partial<PipelineParts> = {}, remap = ""): RequestPipeline {
    const parsed = parseRemapRules(remap, "test.map");
    if (!parsed.ok) throw new Error(parsed.errors.join("; "));
    return new RequestPipeline(
      {
        rules: new NetworkRules([], [], policy(root)),
        directories: null,
        admit: new Admit({ limits: LIMITS }, null),
        limits: { windowBytesMax: 1 << 20, uploadMax: 1 << 20 },
        write: { policy: "create", uploadMax: 1 << 20 },
        macOf: async () => null,
        ...over,
      },
      parsed.rules,
    );
  }

  test("a read comes out with its source and negotiated options; its release gives the slot back", async () => {
    const root = place({ "boot/x": "hello" });
    const admit = new Admit({ limits: LIMITS }, null);
    const accepted = await pipeline(root, { admit }).run(request("read", "boot\\x", [["tsize", "0"]]), "10.0.0.1");
    if (!accepted.ok || accepted.op !== "read") throw new Error("refused");
    expect([accepted.file, accepted.source.size, accepted.negotiated.oack]).toEqual(["boot/x", 5, [["tsize", "5"]]]);
    expect(admit.admission.running).toBe(1);
    accepted.source.close();
    accepted.release();
    expect(admit.admission.running).toBe(0);
  });

  test("a denied client is refused before remap runs", async () => {
    const root = place({});
    const refusal = await pipeline(root, { rules: new NetworkRules([], [], policy(root), { allow: [], deny: ["10.0.0.1"] }) }, "r ^a b").run(request("read", "a"), "10.0.0.1");
    expect(!refusal.ok && [refusal.kind, refusal.asked.remapped]).toEqual(["allow_deny", null]);
  });

  test("a refusal after admission gives the slot back and names the file asked and the name remapped", async () => {
    const admit = new Admit({ limits: LIMITS }, null);
    const refusal = await pipeline(place({}), { admit }, "r ^old/ new/").run(request("read", "old/kernel"), "10.0.0.1");
    expect(refusal.ok).toBe(false);
    if (!refusal.ok) expect([refusal.code, refusal.kind, refusal.asked]).toEqual([ErrorCode.FILE_NOT_FOUND, "not_found", { op: "read", file: "old/kernel", remapped: "new/kernel" }]);
    expect(admit.admission.running).toBe(0);
  });

  test("a netascii read over the memory budget gives back its slot and its file", async () => {
    const admit = new Admit({ limits: { ...LIMITS, maxMemory: 8192 + 100 } }, null);
    const root = place({ "menu.cfg": "x".repeat(1000) });
    const refusal = await pipeline(root, { admit }).run(request("read", "menu.cfg", [], "netascii"), "10.0.0.1");
    expect(!refusal.ok && [refusal.kind, refusal.message]).toEqual(["limit", "busy: memory transfer limit reached"]);
    expect([admit.admission.running, admit.admission.reservedMemory]).toEqual([0, 0]);
  });

  test("a netascii read keeps the converted copy reserved until its release", async () => {
    const admit = new Admit({ limits: { ...LIMITS, maxMemory: 1 << 20 } }, null);
    const root = place({ "menu.cfg": "a\nb\n" });
    const accepted = await pipeline(root, { admit }).run(request("read", "menu.cfg", [], "netascii"), "10.0.0.1");
    if (!accepted.ok || accepted.op !== "read") throw new Error("refused");
    expect(accepted.source.size).toBe(6);
    expect(admit.admission.reservedMemory).toBe(8192 + 6);
    accepted.source.close();
    accepted.release();
    expect(admit.admission.reservedMemory).toBe(0);
  });

  test("a write declaring more than may be stored is refused before any file is made, its slot given back", async () => {
    const root = place({});
    const admit = new Admit({ limits: LIMITS }, null);
    const refusal = await pipeline(root, { admit }).run(request("write", "up.bin", [["tsize", String(2 << 20)]]), "10.0.0.1");
    expect(!refusal.ok && refusal.code).toBe(ErrorCode.DISK_FULL);
    expect(fs.readdirSync(root.real)).toEqual([]);
    expect(admit.admission.running).toBe(0);
  });

  test("a write comes out with its sink", async () => {
    const root = place({});
    const accepted = await pipeline(root).run(request("write", "up.bin"), "10.0.0.1");
    if (!accepted.ok || accepted.op !== "write") throw new Error("refused");
    accepted.sink.write(new TextEncoder().encode("data"));
    expect((await accepted.sink.publish())).toBeNull();
    expect(fs.readFileSync(path.join(root.real, "up.bin"), "utf8")).toBe("data");
    accepted.release();
  });

  test("the client's rule root and unique directory decide where the file comes from", async () => {
    const root = place({ f: "server root" });
    const lab = place({ f: "lab root", "10.5.0.9/f": "lab, own" });
    const rules = new NetworkRules([{ clients: ["10.5.0.0/16"], blksizeMax: null, windowsizeMax: null, refuseOptions: [], root: lab.real }], [lab], policy(root));
    const p = pipeline(root, { rules, directories: new ClientDirectories("ip", { macOf: async () => null }) });
    const read = async (address: string): Promise<string> => {
      const accepted = await p.run(request("read", "f"), address);
      if (!accepted.ok || accepted.op !== "read") throw new Error("refused");
      const bytes = new Uint8Array(accepted.source.size);
      accepted.source.read(0, bytes, 0, bytes.length);
      accepted.source.close();
      accepted.release();
      return new TextDecoder().decode(bytes);
    };
    expect(await read("10.0.0.1")).toBe("server root");
    expect(await read("10.5.0.8")).toBe("lab root");
    expect(await read("10.5.0.9")).toBe("lab, own");
  });
});

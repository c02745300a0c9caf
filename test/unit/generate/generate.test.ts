import { describe, expect, test } from "bun:test";
import { Inventory, normalMac, type ClientFacts } from "../../../src/generate/inventory.ts";
import { GeneratedFiles } from "../../../src/generate/generated-files.ts";
import { Templates } from "../../../src/generate/templates.ts";
import type { Requester } from "../../../src/storage/lookup.ts";

const INVENTORY = JSON.stringify({
  profiles: {
    default: { kernel: "vmlinuz", initrds: ["initrd.img"], args: "quiet", vars: { release: "12" } },
    rescue: { kernel: "rescue/vmlinuz", args: "rescue" },
    lab: { kernel: "lab/vmlinuz" },
  },
  machines: [
    { match: { cidr: "10.0.0.0/8" }, profile: "default", vars: { role: "any" } },
    { match: { cidr: "10.1.0.0/16" }, profile: "lab", vars: { role: "lab" } },
    { match: { ip: "10.1.2.3" }, profile: "default", vars: { role: "by-ip" } },
    { name: "web-1", match: { mac: "52-54-00-12-34-56" }, profile: "rescue", vars: { role: "web" } },
    { match: { uuid: "AAAA-BBBB" }, profile: "default", vars: { role: "by-uuid" } },
    { match: { arch: "efi64", labels: { rack: "r7" } }, profile: "lab", vars: { role: "rack" } },
  ],
});

const client = (over: Partial<ClientFacts>): ClientFacts => ({ ip: null, mac: null, uuid: null, serial: null, arch: null, labels: {}, ...over });

describe("inventory: the most specific match wins", () => {
  const inv = Inventory.parse(INVENTORY, "inv.json");
  const role = (c: ClientFacts): unknown => inv.match(c)?.machine.vars.role ?? null;
  test("an identity over an address over a network, a longer prefix over a shorter", () => {
    expect(role(client({ ip: "10.9.9.9" }))).toBe("any");
    expect(role(client({ ip: "10.1.9.9" }))).toBe("lab");
    expect(role(client({ ip: "10.1.2.3" }))).toBe("by-ip");
    expect(role(client({ ip: "10.1.2.3", mac: "52:54:00:12:34:56" }))).toBe("web");
    expect(role(client({ ip: "192.168.1.1", uuid: "aaaa-bbbb" }))).toBe("by-uuid");
    expect(role(client({ ip: "192.168.1.1" }))).toBeNull();
  });
  test("every key of a match must hold; labels come from the request", () => {
    expect(role(client({ arch: "efi64" }))).toBeNull();
    expect(role(client({ arch: "efi64", labels: { rack: "r7", extra: "x" } }))).toBe("rack");
  });
  test("the profile comes with its name and defaults", () => {
    expect(inv.match(client({ mac: "52:54:00:12:34:56" }))?.profile).toEqual({ name: "rescue", kernel: "rescue/vmlinuz", initrds: [], args: "rescue", vars: {} });
  });
  test("errors name the file and the field", () => {
    expect(() => Inventory.parse('{"machines": [{"match": {}, "profile": "x"}]}', "inv.json")).toThrow(/^inv\.json: machines\.0\.match: /);
    expect(() => Inventory.parse('{"machines": [{"match": {"ip": "1.2.3.4"}, "profile": "nope"}]}', "inv.json")).toThrow(/machines\.0\.profile: no profile named "nope"/);
    expect(() => Inventory.parse('{"machines": [{"match": {"mac": "zz"}, "profile": "p"}], "profiles": {"p": {}}}', "inv.json")).toThrow(/not a MAC address/);
    expect(() => Inventory.parse("{ nope", "inv.json")).toThrow(/^inv\.json:1:/);
  });
  test("a machine found by its MAC still needs the rest of its match; the first of equals wins", () => {
    const two = Inventory.parse(
      JSON.stringify({
        profiles: { p: {} },
        machines: [
          { match: { mac: "52:54:00:00:00:01", arch: "efi64" }, profile: "p", vars: { role: "efi" } },
          { match: { mac: "52:54:00:00:00:01" }, profile: "p", vars: { role: "first" } },
          { match: { mac: "52-54-00-00-00-01" }, profile: "p", vars: { role: "second" } },
          { match: { serial: "SN-1" }, profile: "p", vars: { role: "serial" } },
          { match: { ip: "10.0.0.1", labels: { rack: "r1" } }, profile: "p", vars: { role: "ip+rack" } },
        ],
      }),
      "two.json",
    );
    const r = (c: ClientFacts): unknown => two.match(c)?.machine.vars.role ?? null;
    expect(r(client({ mac: "52:54:00:00:00:01" }))).toBe("first");
    expect(r(client({ mac: "52:54:00:00:00:01", arch: "efi64" }))).toBe("efi");
    expect(r(client({ serial: "SN-1" }))).toBe("serial");
    expect(r(client({ serial: "sn-1" }))).toBeNull();
    expect(r(client({ ip: "10.0.0.1" }))).toBeNull();
    expect(r(client({ ip: "10.0.0.1", labels: { rack: "r1" } }))).toBe("ip+rack");
  });
  test("10,000 machines: each MAC gets its own, and one named by a network still matches the rest", () => {
    const mac = (i: number): string => `52:54:00:${[i >> 16, (i >> 8) & 255, i & 255].map((b) => b.toString(16).padStart(2, "0")).join(":")}`;
    const big = Inventory.parse(
      JSON.stringify({
        profiles: { p: {} },
        machines: [
          ...Array.from({ length: 10_000 }, (_, i) => ({ name: `m${i}`, match: { mac: mac(i) }, profile: "p" })),
          { name: "lab", match: { cidr: "10.0.0.0/8" }, profile: "p" },
        ],
      }),
      "big.json",
    );
    for (const i of [0, 4_321, 9_999]) expect(big.match(client({ mac: mac(i), ip: "10.1.1.1" }))?.machine.name).toBe(`m${i}`);
    expect(big.match(client({ mac: mac(10_000), ip: "10.1.1.1" }))?.machine.name).toBe("lab");
    expect(big.match(client({ mac: mac(10_000), ip: "192.0.2.1" }))).toBeNull();
  });
  test("MACs in every spelling", () => {
    for (const m of ["52-54-00-12-34-56", "52:54:00:12:34:56", "525400123456", "52-54-00-12-34-56".toUpperCase()]) expect(normalMac(m)).toBe("52:54:00:12:34:56");
    expect(normalMac("52-54-00-12-34")).toBeNull();
  });
});

describe("templates cannot run code, read files or run for ever", () => {
  const t = Templates.fromTexts({
    "undefined.liquid": "ok\n{{ client.ip }}\n{{ nothing.here }}\n",
    "file.liquid": "{% include '/etc/passwd' %}",
    "process.liquid": "{{ process.env.PATH }}{{ client.constructor.constructor }}",
    "recursion.liquid": "x{% include 'recursion.liquid' %}",
    "memory.liquid": "{% for i in (1..100000000) %}{{ i }}{% endfor %}",
    "filter.liquid": "{{ client.ip | eval }}",
  });
  const ctx = { client: { ip: "10.0.0.1" } };
  test("an unknown variable is an error naming the template and line, not an empty string", () => {
    expect(t.render("undefined.liquid", ctx)).toEqual({ ok: false, error: "undefined.liquid:3: undefined variable: nothing" });
  });
  test("no file outside the templates, no process state, no unknown filters", () => {
    for (const name of ["file.liquid", "process.liquid", "filter.liquid"]) {
      const r = t.render(name, ctx);
      expect({ name, ok: r.ok }).toEqual({ name, ok: false });
      expect(JSON.stringify(r)).not.toContain("root:");
      expect(JSON.stringify(r)).not.toContain("/usr/bin");
    }
  });
  test("endless recursion and runaway loops hit the render limits", () => {
    for (const name of ["recursion.liquid", "memory.liquid"]) {
      const started = performance.now();
      const r = t.render(name, ctx);
      expect({ name, ok: r.ok }).toEqual({ name, ok: false });
      expect(r.ok ? "" : r.error).toMatch(/limit exceeded/);
      expect(performance.now() - started).toBeLessThan(5_000);
    }
  });
});

describe("generated files", () => {
  const files = new GeneratedFiles(
    Inventory.parse(INVENTORY, "inv.json"),
    Templates.fromTexts({
      "machine.liquid": "#!ipxe\nkernel {{ server.http_base }}/{{ profile.kernel }} {{ profile.args }} role={{ machine.role }} mac={{ client.mac }}\n",
      "broken.liquid": "#!ipxe\n{{ machine.nope }}\n",
    }),
    [
      { path: "ipxe/{mac}.ipxe", template: "machine.liquid" },
      { path: "by-ip/{ip}.ipxe", template: "machine.liquid" },
      { path: "broken/{mac}.ipxe", template: "broken.liquid" },
    ],
  );
  const requester = (ip: string, mac: string | null = null, params: Record<string, string> = {}): Requester => ({
    ip,
    mac: async () => mac,
    params,
    server: { http_base: "http://192.0.2.10", tftp_base: "tftp://192.0.2.10" },
  });
  const text = async (path: string, r: Requester): Promise<string | null> => {
    const made = await files.generate(path, r);
    if (made === null) return null;
    return "bytes" in made ? new TextDecoder().decode(made.bytes) : `ERROR ${made.error}`;
  };
  test("the path names the machine; the template sees profile, machine, client and server", async () => {
    expect(await text("ipxe/52-54-00-12-34-56.ipxe", requester("10.9.9.9"))).toBe("#!ipxe\nkernel http://192.0.2.10/rescue/vmlinuz rescue role=web mac=52:54:00:12:34:56\n");
    expect(await text("by-ip/10.1.2.3.ipxe", requester("127.0.0.1"))).toContain("role=by-ip");
  });
  test("a query string's uuid picks a machine", async () => {
    expect(await text("ipxe/aa-aa-aa-aa-aa-aa.ipxe", requester("192.168.0.1", null, { uuid: "AAAA-BBBB" }))).toContain("role=by-uuid");
  });
  test("a path that names no machine is not a generated file; a path of no pattern neither", async () => {
    expect(await text("ipxe/aa-aa-aa-aa-aa-aa.ipxe", requester("192.168.0.1"))).toBeNull();
    expect(await text("ipxe/menu.ipxe", requester("10.1.2.3"))).toBeNull();
  });
  test("a template error is an error with the template and line, never half a file", async () => {
    expect(await text("broken/52-54-00-12-34-56.ipxe", requester("10.0.0.1"))).toBe("ERROR broken.liquid:2: undefined variable: machine.nope");
  });
});

import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import {
  applyRemap,
  loadRemapFile,
  MAX_REMAP_RESTARTS,
  parseRemapRules,
  type RemapRule,
  type RequestKind,
} from "../../../src/storage/remap.ts";
import { cleanupTempDirs, tempDir } from "./helpers.ts";

afterEach(cleanupTempDirs);

/** the client's address, as the socket reports it */
const CLIENT = "192.168.1.10";

function rules(text: string): RemapRule[] {
  const r = parseRemapRules(text, "test.map");
  if (!r.ok) throw new Error(`rules did not parse:\n${r.errors.join("\n")}`);
  return r.rules;
}

function errors(text: string): string[] {
  const r = parseRemapRules(text, "test.map");
  if (r.ok) throw new Error(`expected parse errors for ${JSON.stringify(text)}`);
  return r.errors;
}

function mapped(text: string, name: string, kind: RequestKind = "read", client = CLIENT): string {
  const r = applyRemap(rules(text), name, kind, client);
  if (!r.ok) throw new Error(`expected ${JSON.stringify(name)} to map, got ${r.code} ${r.message}`);
  return r.name;
}

describe("parseRemapRules", () => {
  test("comments, blank lines and CRLF line ends are ignored", () => {
    const parsed = rules("# a comment\n\n   \t\nr ^a b   # trailing comment\r\n  # indented comment\r\ne ^x\n");
    expect(parsed.map((r) => [r.line, r.flags, r.pattern])).toEqual([
      [4, "r", "^a"],
      [6, "e", "^x"],
    ]);
  });

  test("errors are FILE:LINE: message, one per bad line, all reported", () => {
    expect(errors("r ^a b\nx ^a\nr ^(a\nr ^a\n")).toEqual([
      "test.map:2: bad flag letter 'x'",
      expect.stringMatching(/^test\.map:3: bad regex: /) as unknown as string,
      `test.map:4: missing replacement for 'r' (write "" for an empty one)`,
    ]);
  });

  test("unsupported tftpd-hpa features and nonsense are reported", () => {
    expect(errors("j ^a label")).toEqual(["test.map:1: unsupported flag 'j'"]);
    expect(errors("E ^a")).toEqual(["test.map:1: unsupported flag 'E'"]);
    expect(errors("r4 ^a b")).toEqual(["test.map:1: unsupported flag '4'"]);
    expect(errors(":label")).toEqual(["test.map:1: unsupported flag ':'"]);
    expect(errors("ra ^a b")).toEqual(["test.map:1: flags 'r' and 'a' cannot be combined"]);
    expect(errors("r~ ^a b")).toEqual(["test.map:1: flags 'r' and '~' cannot be combined"]);
    expect(errors("es ^a")).toEqual(["test.map:1: flags 'e' and 's' cannot be combined"]);
    expect(errors("GP ^a")).toEqual(["test.map:1: flags 'G' and 'P' cannot be combined"]);
    expect(errors("g ^a")).toEqual(["test.map:1: flag 'g' needs 'r'"]);
    expect(errors("r")).toEqual(["test.map:1: regex missing"]);
    expect(errors("r ^a b c")).toEqual(["test.map:1: unexpected text after the replacement: 'c'"]);
    expect(errors("e ^a b")).toEqual(["test.map:1: replacement given for a rule without 'r' or 'a'"]);
    expect(errors("r ^(a) \\2")).toEqual(["test.map:1: replacement uses \\2 but the regex has 1 group"]);
    expect(errors("r [[:bogus:]] x")).toEqual(["test.map:1: bad regex: unknown character class [:bogus:]"]);
  });

  test("a backslash keeps a space or # inside a token", () => {
    expect(mapped("r my\\ file your\\ file", "my file.txt")).toBe("your file.txt");
    expect(mapped("r \\#1 \\#2", "disk#1")).toBe("disk#2");
  });

  test("loadRemapFile reads a file and reports a missing one", () => {
    const dir = tempDir();
    const file = path.join(dir, "rules.map");
    fs.writeFileSync(file, "r ^/tftpboot/ \"\"\n");
    const loaded = loadRemapFile(file);
    expect(loaded.ok).toBe(true);
    if (loaded.ok) expect(applyRemap(loaded.rules, "/tftpboot/pxelinux.0", "read", CLIENT)).toEqual({ ok: true, name: "pxelinux.0" });
    const missing = loadRemapFile(path.join(dir, "missing.map"));
    expect(missing.ok).toBe(false);
    if (!missing.ok) expect(missing.errors[0]).toStartWith(`${path.join(dir, "missing.map")}: cannot read remap file:`);
    fs.writeFileSync(file, "ok ^a\n");
    expect(loadRemapFile(file)).toEqual({ ok: false, errors: [`${file}:1: bad flag letter 'o'`] });
  });
});

describe("applyRemap: the documented examples", () => {
  test("strip trailing garbage some Intel ROMs append (JS ranges)", () => {
    const text = String.raw`r [\x00-\x1f\x7f-\xff]+$ ""`;
    expect(mapped(text, "pxelinux.0\xff\x01\x90")).toBe("pxelinux.0");
    expect(mapped(text, "pxelinux.0")).toBe("pxelinux.0");
  });

  test("strip trailing garbage with a POSIX class, translated", () => {
    const text = 'r [^[:print:]]+$ ""';
    expect(mapped(text, "pxelinux.0\xff\x01")).toBe("pxelinux.0");
    expect(mapped(text, "pxe linux.0")).toBe("pxe linux.0");
    expect(mapped("r ^[[:digit:]]+ N", "123abc")).toBe("Nabc");
    // Outside a bracket expression "[:digit:]" is an ordinary bracket: not translated.
    expect(mapped("r ^[:digit:]$ X", "d")).toBe("X");
    expect(mapped("r ^[:digit:]$ X", "5")).toBe("5");
    // A "]" first in a bracket is literal, as in POSIX (an empty class in plain JS).
    expect(mapped("r x[]]y z", "x]y")).toBe("z");
    expect(mapped("r x[^]]y z", "xay")).toBe("z");
  });

  test("lowercase the MAC in pxelinux.cfg/01-<MAC>", () => {
    const text = String.raw`ri ^(pxelinux\.cfg/01-)([0-9a-f-]+)$ \1\L\2`;
    expect(mapped(text, "pxelinux.cfg/01-AA-BB-CC-0D-EE-FF")).toBe("pxelinux.cfg/01-aa-bb-cc-0d-ee-ff");
    expect(mapped(text, "pxelinux.cfg/C0A80001")).toBe("pxelinux.cfg/C0A80001");
  });

  test("strip the MAC: every host gets the default config", () => {
    const text = String.raw`r ^pxelinux\.cfg/01-([0-9a-f]{2}-){5}[0-9a-f]{2}$ pxelinux.cfg/default`;
    expect(mapped(text, "pxelinux.cfg/01-aa-bb-cc-dd-ee-ff")).toBe("pxelinux.cfg/default");
  });

  test("deny parent references", () => {
    const deny = String.raw`a \.\./`;
    expect(applyRemap(rules(deny), "boot/../../etc/shadow", "read", CLIENT)).toEqual({
      ok: false,
      code: 2,
      message: "access denied by remap rule",
    });
    expect(mapped(deny, "boot/vmlinuz")).toBe("boot/vmlinuz");
    const custom = String.raw`a \.\./ no\ parent\ references\ (\0)`;
    expect(applyRemap(rules(custom), "a/../b", "read", CLIENT)).toEqual({ ok: false, code: 2, message: "no parent references (../)" });
  });

  test("map ^/tftpboot/ to nothing", () => {
    expect(mapped('r ^/tftpboot/ ""', "/tftpboot/pxelinux.0")).toBe("pxelinux.0");
    expect(mapped('r ^/tftpboot/ ""', "/srv/tftpboot/x")).toBe("/srv/tftpboot/x");
  });
});

describe("applyRemap: flags and replacement syntax", () => {
  test("\\0 is the whole match, unmatched groups are empty", () => {
    expect(mapped(String.raw`r [0-9]+ <\0>`, "initrd-42.img")).toBe("initrd-<42>.img");
    expect(mapped(String.raw`r ^(a)|(b) [\1\2]`, "bx")).toBe("[b]x");
  });

  test("$ in a replacement is literal", () => {
    expect(mapped(String.raw`r ^(x) $1$&$$\1`, "xy")).toBe("$1$&$$xy");
  });

  test("\\U uppercases until \\E; \\\\ is a backslash; other escapes drop the backslash", () => {
    expect(mapped(String.raw`r ^(ab)(cd) \U\1\E\2`, "abcd")).toBe("ABcd");
    expect(mapped(String.raw`r / \\`, "a/b")).toBe("a\\b");
    expect(mapped(String.raw`r ^a \q`, "ab")).toBe("qb");
  });

  test("without g only the first match is replaced; with g every match", () => {
    expect(mapped("r - _", "a-b-c")).toBe("a_b-c");
    expect(mapped("rg - _", "a-b-c")).toBe("a_b_c");
  });

  test("i matches case-insensitively", () => {
    expect(mapped("r ^BOOT/ boot/", "Boot/x")).toBe("Boot/x");
    expect(mapped("ri ^BOOT/ boot/", "Boot/x")).toBe("boot/x");
  });

  test("rules apply in order, each to the result of the previous", () => {
    expect(mapped("r a b\nr b c", "a")).toBe("c");
  });

  test("e stops processing after a match, not otherwise", () => {
    const text = "re ^a b\nr $ -later";
    expect(mapped(text, "a")).toBe("b");
    expect(mapped(text, "x")).toBe("x-later");
  });

  test("s starts over from the first rule", () => {
    // Rule 1 only applies to what rule 2 produces; without s it would never see it.
    const text = "re ^b$ done\nrs ^a$ b";
    expect(mapped(text, "a")).toBe("done");
    expect(mapped("re ^b$ done\nr ^a$ b", "a")).toBe("b");
  });

  test(`s loops are refused after ${MAX_REMAP_RESTARTS} restarts`, () => {
    const strip = 'rs ^x ""';
    expect(mapped(strip, "x".repeat(MAX_REMAP_RESTARTS))).toBe("");
    expect(applyRemap(rules(strip), "x".repeat(MAX_REMAP_RESTARTS + 1), "read", CLIENT)).toEqual({
      ok: false,
      code: 2,
      message: "access violation: remap rules loop",
    });
    expect(applyRemap(rules("rs ^a a"), "a", "read", CLIENT)).toEqual({
      ok: false,
      code: 2,
      message: "access violation: remap rules loop",
    });
  });

  test("a refuses; G and P restrict a rule to reads or writes", () => {
    const text = "aP ^boot/\nrG ^old/ new/";
    expect(applyRemap(rules(text), "boot/vmlinuz", "write", CLIENT)).toEqual({
      ok: false,
      code: 2,
      message: "access denied by remap rule",
    });
    expect(mapped(text, "boot/vmlinuz", "read")).toBe("boot/vmlinuz");
    expect(mapped(text, "old/x", "read")).toBe("new/x");
    expect(mapped(text, "old/x", "write")).toBe("old/x");
  });

  test("~ inverts the match", () => {
    const text = String.raw`a~ ^(pxelinux|boot)/ only\ boot\ files`;
    expect(applyRemap(rules(text), "etc/passwd", "read", CLIENT)).toEqual({ ok: false, code: 2, message: "only boot files" });
    expect(mapped(text, "boot/vmlinuz")).toBe("boot/vmlinuz");
  });

  test("abort messages are reduced to printable ASCII", () => {
    const r = applyRemap(rules(String.raw`a [\x00-\x1f]+ bad:\0`), "a\x01\x02", "read", CLIENT);
    expect(r).toEqual({ ok: false, code: 2, message: "bad:??" });
  });

  test("regexes are stateless between calls (no lastIndex leaks)", () => {
    const parsed = rules("rg a b");
    for (let i = 0; i < 3; i++) expect(applyRemap(parsed, "aaa", "read", CLIENT)).toEqual({ ok: true, name: "bbb" });
  });
});

describe("applyRemap: the client's address (\\i, \\x), as in tftpd-hpa", () => {
  test("\\i is the client's IP address, \\x its IPv4 address in upper-case hex (pxelinux's config names)", () => {
    expect(mapped(String.raw`r ^cfg$ cfg-\x`, "cfg", "read", "192.168.1.10")).toBe("cfg-C0A8010A");
    expect(mapped(String.raw`r ^cfg$ cfg-\x`, "cfg", "read", "127.1.0.5")).toBe("cfg-7F010005");
    expect(mapped(String.raw`r ^cfg$ cfg-\x`, "cfg", "read", "10.0.0.255")).toBe("cfg-0A0000FF");
    expect(mapped(String.raw`r ^ \i/`, "boot.ipxe", "read", "10.1.2.3")).toBe("10.1.2.3/boot.ipxe");
    expect(mapped(String.raw`r ^pxelinux\.cfg/default$ pxelinux.cfg/\x`, "pxelinux.cfg/default", "read", "192.168.1.10")).toBe(
      "pxelinux.cfg/C0A8010A",
    );
  });

  test("an IPv4 client reported on an IPv6 socket (::ffff:a.b.c.d) is named as the IPv4 client", () => {
    expect(mapped(String.raw`r ^ \i-\x-`, "f", "read", "::ffff:192.168.1.10")).toBe("192.168.1.10-C0A8010A-f");
    expect(mapped(String.raw`r ^ \i-\x-`, "f", "read", "::FFFF:127.1.0.5")).toBe("127.1.0.5-7F010005-f");
  });

  test("an IPv6 client: \\i as the socket reports it (no zone), \\x its 16 bytes as 32 hex digits", () => {
    expect(mapped(String.raw`r ^ \i/`, "f", "read", "2001:db8::5")).toBe("2001:db8::5/f");
    expect(mapped(String.raw`r ^ \x/`, "f", "read", "2001:db8::5")).toBe("20010DB8000000000000000000000005/f");
    expect(mapped(String.raw`r ^ \x/`, "f", "read", "::1")).toBe("00000000000000000000000000000001/f");
    expect(mapped(String.raw`r ^ \i|\x`, "f", "read", "fe80::a:b%eth0")).toBe("fe80::a:b|FE8000000000000000000000000A000Bf");
    expect(mapped(String.raw`r ^ \x/`, "f", "read", "64:ff9b::10.0.0.1")).toBe("0064FF9B00000000000000000A000001/f");
  });

  test("\\L and \\U apply to the address too; the macros mix with groups and text; g expands every match", () => {
    expect(mapped(String.raw`r ^cfg$ cfg-\L\x`, "cfg", "read", "192.168.1.10")).toBe("cfg-c0a8010a");
    expect(mapped(String.raw`r ^(.*)\.cfg$ \1/\x.cfg`, "pxe.cfg", "read", "10.0.0.1")).toBe("pxe/0A000001.cfg");
    expect(mapped(String.raw`rg @ \i`, "a@b@", "read", "10.0.0.1")).toBe("a10.0.0.1b10.0.0.1");
    // an escaped backslash before i or x is a backslash and a letter, not a macro
    expect(mapped(String.raw`r ^a \\i`, "a", "read", "10.0.0.1")).toBe("\\i");
  });

  test("each request gets its own client's address (nothing is remembered between calls)", () => {
    const parsed = rules(String.raw`r ^cfg$ cfg-\x`);
    expect(applyRemap(parsed, "cfg", "read", "10.0.0.1")).toEqual({ ok: true, name: "cfg-0A000001" });
    expect(applyRemap(parsed, "cfg", "read", "10.0.0.2")).toEqual({ ok: true, name: "cfg-0A000002" });
  });

  test("an abort rule's ERROR text expands \\i and \\x too", () => {
    const text = String.raw`a ^secret no\ secrets\ for\ \i\ (\x)`;
    expect(applyRemap(rules(text), "secret", "read", "127.1.0.5")).toEqual({
      ok: false,
      code: 2,
      message: "no secrets for 127.1.0.5 (7F010005)",
    });
  });
});

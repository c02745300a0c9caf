/**
 * Config files are JSONC: comments and trailing commas, errors at the line and column of the
 * text as written, and a top-level "$schema" key for editors. Real files in a temporary folder.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { checkConfigFile } from "../../src/cli/config.ts";
import { parseJson, parseJsonc } from "../../src/config/json.ts";
import { loadConfig, readConfigLayer } from "../../src/config/load.ts";
import { removeDir, tempDir, writeFile } from "../helpers/files.ts";

let dir: string;
let count = 0;
const configFile = (text: string) => writeFile(dir, `config-${++count}.json`, text);

beforeAll(() => {
  dir = tempDir("tftpd-jsonc-");
});
afterAll(() => removeDir(dir));

describe("parseJsonc", () => {
  test("line and block comments, anywhere blank is allowed", () => {
    const text = [
      "// the lab's server",
      "{",
      "  /* where the boot files are */",
      '  "root": "/srv/tftp", // absolute',
      '  "blksize": /* inline */ 1468',
      "}",
      "/* the end */",
    ].join("\n");
    expect(parseJsonc(text)).toEqual({ ok: true, value: { root: "/srv/tftp", blksize: 1468 } });
  });

  test("trailing commas in objects and arrays", () => {
    expect(parseJsonc('{"a": [1, 2,], "b": {"c": true,},}')).toEqual({ ok: true, value: { a: [1, 2], b: { c: true } } });
    expect(parseJsonc('{"a": "x", // last\n}')).toEqual({ ok: true, value: { a: "x" } });
    expect(parseJsonc('{"a": "x",\n  // a comment between the comma and the brace\n}')).toEqual({ ok: true, value: { a: "x" } });
  });

  test("// and /* inside strings are text, escaped quotes included", () => {
    const text = '{"url": "http://example.org/boot", "glob": "/*.efi", "quote": "say \\"//hi\\" /* no */", "end": "*/"}';
    expect(parseJsonc(text)).toEqual({
      ok: true,
      value: { url: "http://example.org/boot", glob: "/*.efi", quote: 'say "//hi" /* no */', end: "*/" },
    });
  });

  test("a comma that follows no value is still an error", () => {
    expect(parseJsonc("[1,,]")).toMatchObject({ ok: false, line: 1, column: 4 });
    expect(parseJsonc("{,}")).toMatchObject({ ok: false, line: 1, column: 2 });
    expect(parseJsonc("[,]")).toMatchObject({ ok: false, line: 1, column: 2 });
    expect(parseJsonc('{"a": ,}')).toMatchObject({ ok: false, line: 1, column: 7 });
    expect(parseJsonc("1,")).toMatchObject({ ok: false, line: 1, column: 2 });
  });

  test("errors name the line and column of the text as written, past comments", () => {
    const text = '/* a\n   long\n   comment */ {\n  "a": 1, // fine\n  "b": nope\n}';
    expect(parseJsonc(text)).toEqual({ ok: false, line: 5, column: 8, message: 'unexpected "n"' });
    expect(parseJsonc('{\n  // "a": 1\n  \'b\': 2\n}')).toEqual({ ok: false, line: 3, column: 3, message: "expected a property name in double quotes, got \"'\"" });
  });

  test("a block comment that never closes is an error where it starts", () => {
    expect(parseJsonc('{\n  "a": 1, /* to be\n  "b": 2\n}\n')).toEqual({
      ok: false,
      line: 2,
      column: 11,
      message: 'unterminated comment: "/*" is never closed by "*/"',
    });
    // a syntax error before it comes first
    expect(parseJsonc('{\n  "a": x /* open')).toMatchObject({ ok: false, line: 2, column: 8, message: 'unexpected "x"' });
  });

  test("a lone slash is no comment", () => {
    expect(parseJsonc('{"a": 1 / 2}')).toMatchObject({ ok: false, line: 1, column: 9 });
  });

  test("the end of input is reported where the text ends, not on the line after", () => {
    expect(parseJsonc('{"a": 1\n\n')).toEqual({ ok: false, line: 1, column: 8, message: "unexpected end of input" });
    expect(parseJsonc('{"a": 1 // no brace\n')).toEqual({ ok: false, line: 1, column: 8, message: "unexpected end of input" });
  });

  test("strict JSON stays strict: parseJson refuses comments and trailing commas", () => {
    expect(parseJson('{"a": 1 // c\n}')).toMatchObject({ ok: false, line: 1, column: 9 });
    expect(parseJson('{"a": 1,}')).toMatchObject({ ok: false, message: 'trailing comma before "}"' });
  });
});

describe("config files are read as JSONC", () => {
  const jsonc = [
    "{",
    "  // served to the racks",
    '  "tftp": {',
    '    "root": "/srv/tftp", /* absolute: no surprises */',
    '    "listen": ["127.0.0.1:6969", "[::1]:6969",],',
    '    "max_upload_size": "64Mi",',
    "  },",
    '  "log": { "level": "debug" },',
    "}",
  ].join("\n");

  test("comments and trailing commas load", () => {
    const file = configFile(jsonc);
    const r = loadConfig({ file, env: {} });
    if (!r.ok) throw new Error(r.errors.join("\n"));
    expect(r.config.tftp.listen).toEqual(["127.0.0.1:6969", "[::1]:6969"]);
    expect(r.config.tftp.max_upload_size).toBe(64 * 1024 * 1024);
    expect(r.config.log.level).toBe("debug");
  });

  test("an error names the file, line and column", () => {
    const file = configFile('{\n  // comment\n  "tftp": { "root": "/srv/tftp" } oops\n}\n');
    const r = loadConfig({ file, env: {} });
    expect(r).toEqual({ ok: false, errors: [`${file}:3:35: invalid JSON: expected "," or "}", got "o"`] });
    const open = configFile('{\n  "tftp": {} /* never closed\n}\n');
    expect(loadConfig({ file: open, env: {} })).toEqual({
      ok: false,
      errors: [`${open}:2:14: invalid JSON: unterminated comment: "/*" is never closed by "*/"`],
    });
  });

  test("what config push stores is plain JSON of the file's settings", () => {
    const file = configFile(jsonc);
    const layer = readConfigLayer(file);
    if (!layer.ok) throw new Error(layer.error);
    const stored = JSON.stringify(layer.value);
    expect(JSON.parse(stored)).toEqual({
      tftp: { root: "/srv/tftp", listen: ["127.0.0.1:6969", "[::1]:6969"], max_upload_size: "64Mi" },
      log: { level: "debug" },
    });
  });

  test("config check prints plain JSON", () => {
    const file = configFile(`// a comment\n{"tftp": {"root": ${JSON.stringify(dir)},},}\n`);
    const r = checkConfigFile(file, {});
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBe(0);
    expect(JSON.parse(r.stdout).tftp.root).toBe(dir);
    expect(r.stdout).not.toContain("//");
  });
});

describe('"$schema"', () => {
  test("a top-level $schema string is accepted and is no setting", () => {
    const file = configFile('{\n  "$schema": "./tftpd.schema.json",\n  "log": { "level": "warn" }\n}\n');
    const r = loadConfig({ file, env: {} });
    if (!r.ok) throw new Error(r.errors.join("\n"));
    expect(r.config.log.level).toBe("warn");
    expect("$schema" in r.config).toBe(false);
    const layer = readConfigLayer(file);
    expect(layer).toEqual({ ok: true, value: { log: { level: "warn" } } });
  });

  test("$schema that is not a string is an error naming it", () => {
    const file = configFile('{"$schema": 1}');
    expect(loadConfig({ file, env: {} })).toEqual({
      ok: false,
      errors: [`${file}: $schema: expected a string (where the JSON Schema is), got 1`],
    });
  });

  test("$schema inside a section is an unknown key", () => {
    const file = configFile('{"tftp": {"$schema": "x"}}');
    const r = loadConfig({ file, env: {} });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.errors).toEqual([`${file}: tftp.$schema: unknown key`]);
  });
});

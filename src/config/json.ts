// JSON parsing with line/column on syntax errors (JavaScriptCore's JSON.parse reports none), and
// JSONC (JSON with comments and trailing commas) for config files, which people annotate.
// Not Bun.JSONC: it reports no position, and it also takes JSON5's hex numbers, ".5" and
// single-quoted strings, which an editor's JSONC mode (and the printed JSON Schema) rejects.

export type JsonResult = { ok: true; value: unknown } | { ok: false; line: number; column: number; message: string };

/** Strict JSON (RFC 8259); a leading byte order mark is skipped. */
export function parseJson(text: string): JsonResult {
  return parseStrict(withoutBom(text));
}

/**
 * JSONC, as VS Code's "JSON with Comments": `//` line comments, `/*` block comments and a
 * trailing comma before `}` or `]`. Errors carry the line and column in `text` as it is.
 */
export function parseJsonc(text: string): JsonResult {
  const src = withoutBom(text);
  const blanked = blankJsoncExtras(src);
  if (!blanked.ok) {
    // a syntax error before the unclosed comment comes first; the end of input it causes does not
    const earlier = scanJson(blanked.text);
    const first = earlier && !earlier.atEnd && earlier.offset < blanked.offset ? earlier : blanked;
    return { ok: false, ...lineColumn(src, first.offset), message: first.message };
  }
  // same length, line breaks kept: an offset in the blanked text is the same offset in `src`
  return parseStrict(blanked.text);
}

function withoutBom(text: string): string {
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

function parseStrict(src: string): JsonResult {
  try {
    return { ok: true, value: JSON.parse(src) };
  } catch (e) {
    const found = findJsonError(src);
    if (found) return { ok: false, ...lineColumn(src, found.offset), message: found.message };
    return { ok: false, line: 1, column: 1, message: e instanceof Error ? e.message : String(e) };
  }
}

/** Characters after which a comma has ended a value, so a `}` or `]` after it makes it a trailing comma. */
const OPENS_OR_SEPARATES = new Set(["{", "[", ",", ":"]);

/**
 * The text with JSONC's comments and trailing commas turned into spaces (line breaks kept), so
 * it is strict JSON at the very same offsets and the strict scanner's errors point into the
 * original. Strings are copied as they are: `//` or `/*` inside one is text. An unclosed block
 * comment is an error at its start (it would swallow the rest of the file); `text` is then
 * blanked up to it.
 */
function blankJsoncExtras(text: string): { ok: true; text: string } | { ok: false; text: string; offset: number; message: string } {
  const out = text.split("");
  const n = text.length;
  /** offsets of the last two significant (non-blank, non-comment) characters */
  let last = -1;
  let beforeLast = -1;
  const blank = (from: number, to: number) => {
    for (let k = from; k < to; k++) if (out[k] !== "\n" && out[k] !== "\r") out[k] = " ";
  };
  let i = 0;
  while (i < n) {
    const c = text[i];
    if (c === '"') {
      const start = i;
      i++;
      // to the closing quote; a line break ends it too (the strict scanner reports that string)
      while (i < n && text[i] !== '"' && text[i] !== "\n") i += text[i] === "\\" ? 2 : 1;
      if (text[i] === '"') i++;
      beforeLast = last;
      last = start;
      continue;
    }
    if (c === "/" && text[i + 1] === "/") {
      const end = text.indexOf("\n", i);
      const stop = end < 0 ? n : end;
      blank(i, stop);
      i = stop;
      continue;
    }
    if (c === "/" && text[i + 1] === "*") {
      const end = text.indexOf("*/", i + 2);
      if (end < 0) {
        blank(i, n);
        return { ok: false, text: out.join(""), offset: i, message: 'unterminated comment: "/*" is never closed by "*/"' };
      }
      blank(i, end + 2);
      i = end + 2;
      continue;
    }
    if (c === " " || c === "\t" || c === "\n" || c === "\r") {
      i++;
      continue;
    }
    if ((c === "}" || c === "]") && last >= 0 && text[last] === "," && beforeLast >= 0 && !OPENS_OR_SEPARATES.has(text[beforeLast] ?? "")) {
      out[last] = " ";
    }
    beforeLast = last;
    last = i;
    i++;
  }
  return { ok: true, text: out.join("") };
}

function lineColumn(text: string, offset: number): { line: number; column: number } {
  let line = 1;
  let lineStart = 0;
  for (let i = 0; i < offset && i < text.length; i++) {
    if (text.charCodeAt(i) === 10) {
      line++;
      lineStart = i + 1;
    }
  }
  return { line, column: offset - lineStart + 1 };
}

class JsonSyntaxError {
  constructor(
    readonly offset: number,
    readonly message: string,
    readonly atEnd: boolean,
  ) {}
}

const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;

/** Strict RFC 8259 scan; returns the offset and reason of the first error, or null if valid. */
export function findJsonError(text: string): { offset: number; message: string } | null {
  const found = scanJson(text);
  return found && { offset: found.offset, message: found.message };
}

/** findJsonError, also telling whether the input ended too early (`atEnd`). */
function scanJson(text: string): { offset: number; message: string; atEnd: boolean } | null {
  const n = text.length;
  let i = 0;
  const fail = (message: string, atEnd = "unexpected end of input"): never => {
    if (i < n) throw new JsonSyntaxError(i, message, false);
    // at the end of the input, point just past its last character that is not blank: a file's
    // trailing line break (or comment) would otherwise put the error on a line past the text
    let end = n;
    while (end > 0 && " \t\n\r".includes(text[end - 1] ?? "")) end--;
    throw new JsonSyntaxError(end, atEnd, true);
  };
  const show = () => JSON.stringify(text[i]);
  const ws = () => {
    while (i < n) {
      const c = text[i];
      if (c === " " || c === "\t" || c === "\n" || c === "\r") i++;
      else break;
    }
  };
  const string = () => {
    i++; // opening quote
    for (;;) {
      if (i >= n) fail("unterminated string", "unterminated string");
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        i++;
        return;
      }
      if (c === 0x5c) {
        i++;
        const e = text[i];
        if (e === "u") {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 1, i + 5))) fail("bad \\u escape in string");
          i += 5;
        } else if (e !== undefined && '"\\/bfnrt'.includes(e)) {
          i++;
        } else {
          fail("bad escape in string");
        }
        continue;
      }
      if (c < 0x20) fail(c === 10 ? "unterminated string (newline inside a string)" : "control character in string");
      i++;
    }
  };
  const value = (depth: number): void => {
    if (depth > 512) fail("nesting too deep");
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      ws();
      if (text[i] === "}") {
        i++;
        return;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail(`expected a property name in double quotes, got ${show()}`);
        string();
        ws();
        if (text[i] !== ":") fail(`expected ":" after the property name, got ${show()}`);
        i++;
        value(depth + 1);
        ws();
        if (text[i] === ",") {
          i++;
          ws();
          if (text[i] === "}") fail('trailing comma before "}"');
          continue;
        }
        if (text[i] === "}") {
          i++;
          return;
        }
        fail(`expected "," or "}", got ${show()}`);
      }
    }
    if (c === "[") {
      i++;
      ws();
      if (text[i] === "]") {
        i++;
        return;
      }
      for (;;) {
        value(depth + 1);
        ws();
        if (text[i] === ",") {
          i++;
          ws();
          if (text[i] === "]") fail('trailing comma before "]"');
          continue;
        }
        if (text[i] === "]") {
          i++;
          return;
        }
        fail(`expected "," or "]", got ${show()}`);
      }
    }
    if (c === '"') return string();
    for (const lit of ["true", "false", "null"]) {
      if (text.startsWith(lit, i)) {
        i += lit.length;
        return;
      }
    }
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (m && m[0] !== "-") {
      i += m[0].length;
      return;
    }
    if (c === "'") fail("strings must use double quotes");
    fail(`unexpected ${show()}`);
  };
  try {
    value(0);
    ws();
    if (i < n) fail(`unexpected ${show()} after the end of the JSON value`);
    return null;
  } catch (e) {
    if (e instanceof JsonSyntaxError) return { offset: e.offset, message: e.message, atEnd: e.atEnd };
    throw e;
  }
}

/**
 * Remap rules, in the spirit of tftpd-hpa's `--map-file` (`-m`): rewrite or refuse a requested
 * file name before it is resolved against the root.
 *
 * File format: one rule per line, `FLAGS REGEX [REPLACEMENT]`, separated by whitespace. Blank
 * lines are ignored, and an unescaped `#` starts a comment anywhere on a line (write `\#` for a
 * literal one). A backslash before a space, tab or `#` keeps it inside the token (`\ `); every
 * other backslash is passed on untouched (to the regex, or to the replacement below).
 *
 * Flags (letters, any order):
 *   r  rewrite: replace the (first) match with REPLACEMENT
 *   g  global: with r, replace every match (one pass, like sed's g)
 *   i  case-insensitive match
 *   e  end: if this rule matched, stop processing rules
 *   s  start over from the first rule after a match (at most 32 restarts, then ERROR 2)
 *   a  abort: if this rule matched, refuse the request with ERROR 2; an optional third token
 *      is the ERROR text (default "access denied by remap rule")
 *   ~  inverse: the rule matches when the regex does NOT match (not with r)
 *   G  only for read requests (RRQ)
 *   P  only for write requests (WRQ)
 * Combinations that make no sense are errors: r~, ra, as, ae, es, GP, and g without r.
 * tftpd-hpa's E, j, 4, 6 and `:label` lines are not supported and reported as errors.
 *
 * REGEX is a JavaScript regular expression (no `u` flag), which agrees with POSIX ERE for the
 * usual rules: `^ $ . [...] ( ) | * + ? {n,m}`. For convenience the POSIX bracket classes
 * `[:alpha:] [:digit:] [:alnum:] [:upper:] [:lower:] [:space:] [:blank:] [:punct:] [:print:]
 * [:graph:] [:cntrl:] [:xdigit:]` are translated (ASCII meaning) inside brackets, so
 * `[^[:print:]]` works. JS extras (\d, \x41, lookahead, …) also work.
 *
 * REPLACEMENT: `\0` is the whole match, `\1`..`\9` the groups (a group that did not take part is
 * empty); `\i` is the client's IP address and `\x` the same in upper-case hex, as pxelinux names
 * its config files (8 digits for IPv4: 192.168.1.10 is C0A8010A; 32 for IPv6), as in tftpd-hpa;
 * a client that reached an IPv6 socket over IPv4 (::ffff:a.b.c.d) counts as IPv4 client a.b.c.d.
 * `\L` lowercases and `\U` uppercases what follows (the client's address too), `\E` ends that;
 * `\\` is a backslash; any other `\c` is `c`. `$` is always literal. An empty replacement is
 * written `""` (a token of exactly two double quotes); an `r` rule without a replacement is an
 * error, so a forgotten token cannot silently delete text. The ERROR text of an `a` rule is
 * expanded the same way.
 *
 * Examples:
 *   # Some Intel PXE ROMs append garbage bytes to the file name: strip them.
 *   r   [^[:print:]]+$             ""
 *   #   the same in plain JS syntax
 *   r   [\x00-\x1f\x7f-\xff]+$     ""
 *   # Configs were requested with upper-case MACs: pxelinux.cfg/01-AA-BB-… → lower case.
 *   ri  ^(pxelinux\.cfg/01-)([0-9a-f-]+)$   \1\L\2
 *   # Deny anything with a parent reference, with a custom message.
 *   a   \.\./                      access\ denied:\ parent\ reference
 *   # Clients configured for tftpd-hpa's -s /tftpboot ask for absolute names.
 *   re  ^/tftpboot/                ""
 *   # One config per client, named after its address as pxelinux would (cfg-C0A8010A).
 *   r   ^cfg$                      cfg-\x
 */
import * as fs from "node:fs";
import { addressHex, clientAddressText } from "../net/client-address.ts";
import { ErrorCode, refuse, type Refusal } from "./refusal.ts";

export type RequestKind = "read" | "write";

/** Most restarts (`s` rules firing) for one name before it is refused as a loop. */
export const MAX_REMAP_RESTARTS = 32;

type ReplacementPart =
  | { readonly kind: "text"; readonly text: string }
  | { readonly kind: "group"; readonly index: number }
  | { readonly kind: "client"; readonly form: "ip" | "hex" }
  | { readonly kind: "case"; readonly mode: "lower" | "upper" | "none" };

export interface RemapRule {
  readonly file: string;
  /** 1-based line number in `file`. */
  readonly line: number;
  /** The flags as written. */
  readonly flags: string;
  /** The regex as written (after `\ ` unescaping, before POSIX class translation). */
  readonly pattern: string;
  /** Compiled, without the g flag (used for matching and single replacements). */
  readonly regex: RegExp;
  /** Compiled with the g flag when the rule is global. */
  readonly globalRegex: RegExp | undefined;
  readonly groupCount: number;
  readonly rewrite: boolean;
  readonly end: boolean;
  readonly restart: boolean;
  readonly abort: boolean;
  readonly inverse: boolean;
  readonly onlyRead: boolean;
  readonly onlyWrite: boolean;
  /** Replacement (r) or error text (a), parsed; undefined when none was given. */
  readonly replacement: readonly ReplacementPart[] | undefined;
}

export type RemapParseResult =
  | { readonly ok: true; readonly rules: RemapRule[] }
  | { readonly ok: false; readonly errors: string[] };

const EMPTY_TOKEN = '""';
const DEFAULT_ABORT_MESSAGE = "access denied by remap rule";
const MAX_MESSAGE_CHARS = 200;

function isSpace(c: string): boolean {
  return c === " " || c === "\t" || c === "\v" || c === "\f" || c === "\r";
}

/** Split a line into tokens: whitespace separated, `\ ` and `\#` escaped, `#` starts a comment. */
function tokenize(line: string): string[] {
  const tokens: string[] = [];
  let i = 0;
  while (i < line.length) {
    while (i < line.length && isSpace(line[i]!)) i++;
    if (i >= line.length || line[i] === "#") break;
    let token = "";
    while (i < line.length) {
      const c = line[i]!;
      if (c === "\\" && i + 1 < line.length) {
        const next = line[i + 1]!;
        token += isSpace(next) || next === "#" ? next : c + next;
        i += 2;
        continue;
      }
      if (isSpace(c) || c === "#") break;
      token += c;
      i++;
    }
    tokens.push(token);
  }
  return tokens;
}

const POSIX_CLASSES: Readonly<Record<string, string>> = {
  alpha: "A-Za-z",
  digit: "0-9",
  alnum: "0-9A-Za-z",
  upper: "A-Z",
  lower: "a-z",
  space: " \\t\\n\\r\\f\\v",
  blank: " \\t",
  punct: "\\x21-\\x2f\\x3a-\\x40\\x5b-\\x60\\x7b-\\x7e",
  print: "\\x20-\\x7e",
  graph: "\\x21-\\x7e",
  cntrl: "\\x00-\\x1f\\x7f",
  xdigit: "0-9A-Fa-f",
};

/**
 * Translate POSIX `[:name:]` classes inside bracket expressions to JS ranges, and a `]` first in
 * a bracket (literal in POSIX, an empty class in JS) to `\]`. Reports unknown class names.
 */
function translatePosixClasses(pattern: string): { ok: true; source: string } | { ok: false; error: string } {
  let out = "";
  let inBracket = false;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === "\\") {
      out += c + (pattern[i + 1] ?? "");
      i++;
      continue;
    }
    if (!inBracket) {
      out += c;
      if (c === "[") {
        inBracket = true;
        if (pattern[i + 1] === "^") out += pattern[++i];
        if (pattern[i + 1] === "]") {
          out += "\\]";
          i++;
        }
      }
      continue;
    }
    if (c === "[" && pattern[i + 1] === ":") {
      const close = pattern.indexOf(":]", i + 2);
      const name = close < 0 ? "" : pattern.slice(i + 2, close);
      if (/^[a-z]+$/.test(name)) {
        const range = POSIX_CLASSES[name];
        if (range === undefined) return { ok: false, error: `unknown character class [:${name}:]` };
        out += range;
        i = close + 1;
        continue;
      }
    }
    if (c === "]") inBracket = false;
    out += c;
  }
  return { ok: true, source: out };
}

function parseReplacement(token: string): { parts: ReplacementPart[]; maxGroup: number; error?: string } {
  if (token === EMPTY_TOKEN) return { parts: [], maxGroup: 0 };
  const parts: ReplacementPart[] = [];
  let text = "";
  let maxGroup = 0;
  const flush = (): void => {
    if (text !== "") parts.push({ kind: "text", text });
    text = "";
  };
  for (let i = 0; i < token.length; i++) {
    const c = token[i]!;
    if (c !== "\\") {
      text += c;
      continue;
    }
    const next = token[++i];
    if (next === undefined) {
      text += "\\";
    } else if (next >= "0" && next <= "9") {
      flush();
      const index = next.charCodeAt(0) - 48;
      maxGroup = Math.max(maxGroup, index);
      parts.push({ kind: "group", index });
    } else if (next === "L" || next === "U" || next === "E") {
      flush();
      parts.push({ kind: "case", mode: next === "L" ? "lower" : next === "U" ? "upper" : "none" });
    } else if (next === "i" || next === "x") {
      flush();
      parts.push({ kind: "client", form: next === "i" ? "ip" : "hex" });
    } else {
      text += next; // `\\` → `\`, any other `\c` → `c`
    }
  }
  flush();
  return { parts, maxGroup };
}

const FLAG_LETTERS = new Set(["r", "g", "i", "e", "s", "a", "~", "G", "P"]);
const UNSUPPORTED_FLAGS = new Set(["E", "j", "4", "6", ":"]);
const BAD_COMBOS: readonly (readonly [string, string])[] = [
  ["r", "~"],
  ["r", "a"],
  ["a", "s"],
  ["a", "e"],
  ["e", "s"],
  ["G", "P"],
];

function parseLine(tokens: string[], file: string, line: number): RemapRule | string {
  const [flags, pattern, third, ...rest] = tokens as [string, string | undefined, string | undefined, ...string[]];
  for (const letter of flags) {
    if (UNSUPPORTED_FLAGS.has(letter)) return `unsupported flag '${letter}'`;
    if (!FLAG_LETTERS.has(letter)) return `bad flag letter '${letter}'`;
  }
  for (const [a, b] of BAD_COMBOS) {
    if (flags.includes(a) && flags.includes(b)) return `flags '${a}' and '${b}' cannot be combined`;
  }
  const has = (letter: string): boolean => flags.includes(letter);
  if (has("g") && !has("r")) return "flag 'g' needs 'r'";
  if (pattern === undefined) return "regex missing";
  if (rest.length > 0) return `unexpected text after the replacement: '${rest[0]}'`;

  const translated = translatePosixClasses(pattern);
  if (!translated.ok) return `bad regex: ${translated.error}`;
  const jsFlags = has("i") ? "i" : "";
  let regex: RegExp;
  let groupCount: number;
  try {
    regex = new RegExp(translated.source, jsFlags);
    groupCount = new RegExp(`${translated.source}|`, jsFlags).exec("")!.length - 1;
  } catch (err) {
    return `bad regex: ${err instanceof Error ? err.message : String(err)}`;
  }

  let replacement: ReplacementPart[] | undefined;
  if (has("r") && third === undefined) return `missing replacement for 'r' (write ${EMPTY_TOKEN} for an empty one)`;
  if (third !== undefined) {
    if (!has("r") && !has("a")) return "replacement given for a rule without 'r' or 'a'";
    const parsed = parseReplacement(third);
    if (parsed.error !== undefined) return parsed.error;
    if (parsed.maxGroup > groupCount) {
      return `replacement uses \\${parsed.maxGroup} but the regex has ${groupCount} group${groupCount === 1 ? "" : "s"}`;
    }
    replacement = parsed.parts;
  }

  return {
    file,
    line,
    flags,
    pattern,
    regex,
    globalRegex: has("g") ? new RegExp(translated.source, `${jsFlags}g`) : undefined,
    groupCount,
    rewrite: has("r"),
    end: has("e"),
    restart: has("s"),
    abort: has("a"),
    inverse: has("~"),
    onlyRead: has("G"),
    onlyWrite: has("P"),
    replacement,
  };
}

/**
 * Parse a rule file's text. Errors are one line each, `FILE:LINE: message`; every bad line is
 * reported, not just the first.
 */
export function parseRemapRules(text: string, fileName: string): RemapParseResult {
  const rules: RemapRule[] = [];
  const errors: string[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const tokens = tokenize(lines[i]!.replaceAll("\0", ""));
    if (tokens.length === 0) continue;
    const parsed = parseLine(tokens, fileName, i + 1);
    if (typeof parsed === "string") errors.push(`${fileName}:${i + 1}: ${parsed}`);
    else rules.push(parsed);
  }
  return errors.length > 0 ? { ok: false, errors } : { ok: true, rules };
}

/** Read and parse a rule file; a read failure is reported like a parse error (`FILE: …`). */
export function loadRemapFile(path: string): RemapParseResult {
  let text: string;
  try {
    text = fs.readFileSync(path, "utf8");
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    return { ok: false, errors: [`${path}: cannot read remap file: ${reason}`] };
  }
  return parseRemapRules(text, path);
}

function expand(parts: readonly ReplacementPart[], match: string, groups: readonly (string | undefined)[], client: string): string {
  let out = "";
  let mode: "lower" | "upper" | "none" = "none";
  const emit = (s: string): void => {
    out += mode === "lower" ? s.toLowerCase() : mode === "upper" ? s.toUpperCase() : s;
  };
  for (const part of parts) {
    if (part.kind === "text") emit(part.text);
    else if (part.kind === "group") emit(part.index === 0 ? match : (groups[part.index - 1] ?? ""));
    else if (part.kind === "client") emit(part.form === "ip" ? clientAddressText(client) : addressHex(client));
    else mode = part.mode;
  }
  return out;
}

function rewrite(rule: RemapRule, name: string, client: string): string {
  const parts = rule.replacement ?? [];
  return name.replace(rule.globalRegex ?? rule.regex, (match: string, ...rest: unknown[]) =>
    expand(parts, match, rest.slice(0, rule.groupCount) as (string | undefined)[], client),
  );
}

function abortMessage(rule: RemapRule, match: RegExpExecArray | null, client: string): string {
  if (rule.replacement === undefined) return DEFAULT_ABORT_MESSAGE;
  const text = expand(rule.replacement, match?.[0] ?? "", match?.slice(1) ?? [], client);
  // The text goes into an ERROR packet: printable ASCII only, bounded.
  const clean = text.replace(/[^\x20-\x7e]/g, "?").slice(0, MAX_MESSAGE_CHARS);
  return clean === "" ? DEFAULT_ABORT_MESSAGE : clean;
}

/**
 * Run `rules` over a requested name. Rules apply in order; a rule whose regex matches (or, with
 * `~`, does not match) rewrites the name (r), refuses the request (a), stops (e) or starts over
 * (s). `client` is the client's address as the socket reports it ("10.0.0.5", "::ffff:10.0.0.5",
 * "2001:db8::5"), for `\i` and `\x`. The result still has to go through `resolveRequestPath`.
 */
export function applyRemap(
  rules: readonly RemapRule[],
  name: string,
  kind: RequestKind,
  client: string,
): { ok: true; name: string } | Refusal {
  let current = name;
  let restarts = 0;
  let i = 0;
  while (i < rules.length) {
    const rule = rules[i]!;
    i++;
    if ((rule.onlyRead && kind !== "read") || (rule.onlyWrite && kind !== "write")) continue;
    const match = rule.regex.exec(current);
    if ((match !== null) === rule.inverse) continue;
    if (rule.rewrite) current = rewrite(rule, current, client);
    if (rule.abort) return refuse(ErrorCode.ACCESS_VIOLATION, abortMessage(rule, match, client));
    if (rule.end) break;
    if (rule.restart) {
      restarts++;
      if (restarts > MAX_REMAP_RESTARTS) return refuse(ErrorCode.ACCESS_VIOLATION, "access violation: remap rules loop");
      i = 0;
    }
  }
  return { ok: true, name: current };
}

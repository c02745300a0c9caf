/**
 * Templates of generated files, rendered with LiquidJS: a language with no way to run code
 * (no eval, no `new Function`), here also without a way to read files or the process's state.
 * The templates are read into memory from their folder when the config is (re)loaded, so an
 * include can name only another template of that folder; a template sees only what it is
 * given; an unknown variable or filter is an error, not an empty string (a half-filled boot
 * script is worse than none); rendering is bounded in time and memory.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { Liquid, type Template } from "liquidjs";

/** Bounds of one render: milliseconds, and the memory LiquidJS accounts (bytes of strings and arrays). */
const RENDER_LIMIT_MS = 200;
const MEMORY_LIMIT = 16 * 1024 * 1024;
const PARSE_LIMIT = 1024 * 1024;
/** A folder of templates, read whole: more files than this is a wrong path. */
const MAX_TEMPLATES = 10_000;

type Rendered = { ok: true; text: string } | { ok: false; error: string };

export class Templates {
  private readonly engine: Liquid;
  /**
   * Each template parsed once per loaded set (a parse costs about four renders). Includes are
   * parsed where they are met, so a template that includes itself for ever meets the parse
   * and render limits, not the end of the stack.
   */
  private readonly parsed = new Map<string, Template[]>();

  private constructor(private readonly texts: Readonly<Record<string, string>>) {
    this.engine = new Liquid({
      templates: texts,
      strictVariables: true,
      strictFilters: true,
      ownPropertyOnly: true,
      renderLimit: RENDER_LIMIT_MS,
      memoryLimit: MEMORY_LIMIT,
      parseLimit: PARSE_LIMIT,
      // (names are the folder's own; no extension is added to an include)
      extname: "",
    });
  }

  static fromTexts(texts: Readonly<Record<string, string>>): Templates {
    return new Templates(texts);
  }

  /** Reads every file below `dir` (throws one line naming the folder or file at fault). */
  static load(dir: string): Templates {
    const texts: Record<string, string> = {};
    const walk = (at: string): void => {
      let entries;
      try {
        entries = readdirSync(at, { withFileTypes: true });
      } catch (error) {
        throw new Error(`generate.templates ${at}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
      }
      for (const e of entries) {
        const path = join(at, e.name);
        if (e.isDirectory()) walk(path);
        else if (e.isFile()) {
          if (Object.keys(texts).length >= MAX_TEMPLATES) throw new Error(`generate.templates ${dir}: more than ${MAX_TEMPLATES} files`);
          texts[relative(dir, path)] = readFileSync(path, "utf8");
        }
      }
    };
    walk(dir);
    return new Templates(texts);
  }

  has(name: string): boolean {
    return Object.hasOwn(this.texts, name);
  }

  /** Every template parses: the first that does not, as "NAME:LINE: message". */
  check(): string | null {
    for (const [name, text] of Object.entries(this.texts)) {
      try {
        this.parsed.set(name, this.engine.parse(text, name));
      } catch (error) {
        return located(name, error);
      }
    }
    return null;
  }

  render(name: string, context: Record<string, unknown>): Rendered {
    try {
      const parsed = this.parsed.get(name);
      const text = parsed ? this.engine.renderSync(parsed, context) : this.engine.renderFileSync(name, context);
      return { ok: true, text: text as string };
    } catch (error) {
      return { ok: false, error: located(name, error) };
    }
  }
}

/** "NAME:LINE: message" of a LiquidJS error (its token names the line), else "NAME: message". */
function located(name: string, error: unknown): string {
  const e = error as { message?: string; token?: { getPosition?: () => [number, number]; file?: string } };
  const text = String(e.message ?? error);
  // Includes or renders nested without end may exhaust the thread's stack before the memory or
  // time limit: that is the nesting limit, said as the other limits are.
  const message = text.includes("Maximum call stack size exceeded")
    ? "nesting limit exceeded (includes or renders nested too deep)"
    : text.split("\n")[0]!.replace(/(, line:\d+, col:\d+)?(, file:[^,]*)?$/, "");
  const at = e.token?.getPosition?.();
  const file = e.token?.file || name;
  return at ? `${file}:${at[0]}: ${message}` : `${file}: ${message}`;
}

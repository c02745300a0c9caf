// The key reference of docs/configuration.md, generated from the schema so the two cannot drift.
// `bun src/config/docs.ts` rewrites the generated block of docs/configuration.md in place;
// test/unit/config.test.ts fails when the file is stale.
import { readFileSync, writeFileSync } from "node:fs";
import { parseByteSize } from "./bytes.ts";
import { CONFIG_KEYS, type ConfigKey } from "./schema.ts";

export const BEGIN_MARK = "<!-- BEGIN GENERATED: config reference (bun src/config/docs.ts) -->";
export const END_MARK = "<!-- END GENERATED: config reference -->";

const cell = (s: string) => s.replace(/\|/g, "\\|").replace(/\n/g, " ");

function renderDefault(k: ConfigKey): string {
  const json = JSON.stringify(k.default);
  if (k.type.startsWith("byte size") && typeof k.default === "string") {
    const r = parseByteSize(k.default);
    if (r.ok) return `\`${json}\` (${r.bytes})`;
  }
  return `\`${json}\``;
}

/** Markdown tables, one per section, in schema order. */
export function renderConfigReference(): string {
  const sections = new Map<string, ConfigKey[]>();
  for (const k of CONFIG_KEYS) {
    const name = k.path.slice(0, -1).join(".");
    const list = sections.get(name) ?? [];
    list.push(k);
    sections.set(name, list);
  }
  const out: string[] = [];
  for (const [name, keys] of sections) {
    out.push(`### \`${name}\``, "");
    out.push("| key | type | default | env | meaning |", "| --- | --- | --- | --- | --- |");
    for (const k of keys) {
      out.push(
        `| \`${k.dotted}\` | ${cell(k.type)} | ${cell(renderDefault(k))} | \`${k.env}\` | ${cell(k.description)} |`,
      );
    }
    out.push("");
  }
  return out.join("\n");
}

/** Replace the generated block of a markdown text. */
function withGeneratedReference(markdown: string): string {
  const begin = markdown.indexOf(BEGIN_MARK);
  const end = markdown.indexOf(END_MARK);
  if (begin < 0 || end < begin) throw new Error("docs: generated-block markers not found");
  return `${markdown.slice(0, begin + BEGIN_MARK.length)}\n\n${renderConfigReference()}\n${markdown.slice(end)}`;
}

if (import.meta.main) {
  const file = new URL("../../docs/configuration.md", import.meta.url).pathname;
  writeFileSync(file, withGeneratedReference(readFileSync(file, "utf8")));
  console.log(`updated ${file}`);
}

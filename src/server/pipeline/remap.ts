/**
 * Step 3, remap: the operator's rules rewrite or refuse the name (tftpd-hpa's map file); `\i`
 * and `\x` in a replacement are the client's address.
 */
import { applyRemap, type RemapRule } from "../../storage/remap.ts";
import { refusedBy, type Asked, type Refused } from "./request.ts";

/** The name to look for; `asked.remapped` records it when there are rules. */
export function remapName(rules: readonly RemapRule[], asked: Asked, clientAddress: string): string | Refused {
  if (rules.length === 0) return asked.file;
  const remapped = applyRemap(rules, asked.file, asked.op, clientAddress);
  if (!remapped.ok) return refusedBy(remapped);
  asked.remapped = remapped.name;
  return remapped.name;
}

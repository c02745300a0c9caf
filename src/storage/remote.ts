/**
 * The seam behind the local root: where a file comes from when this node's root does not
 * hold it (the fleet's shared cache). The server asks only after the root said "not found",
 * so a file on local disk is always served from local disk.
 */
import type { Refusal } from "./refusal.ts";
import type { FileSource } from "./source.ts";

export interface RemoteFiles {
  /**
   * `name` is the request's path below the root, already normalised and confined. `whole`:
   * the caller reads the entire file at once (netascii conversion), so the source must hold
   * every byte before it is returned; otherwise a transfer may start while bytes arrive.
   */
  open(name: string, options?: { whole?: boolean }): Promise<{ ok: true; source: FileSource } | Refusal>;
}

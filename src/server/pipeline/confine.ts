/**
 * Step 4, confinement: the name as a path below the client's root, or a refusal (control
 * characters, `..`, over-long names, reserved names). With `tftp.unique_root`, a client whose
 * own directory exists in the root (named by its IP, or by its MAC from the kernel's neighbour
 * tables) is served from there, dnsmasq's --tftp-unique-root.
 */
import { stat } from "node:fs/promises";
import { clientAddressText } from "../../net/client-address.ts";
import { macDirectoryName, type Neighbours } from "../../net/neighbours.ts";
import { resolveRequestPath } from "../../storage/resolve.ts";
import type { RootPlace } from "./rules.ts";
import { refusedBy, type Refused } from "./request.ts";

export type UniqueRoot = "off" | "ip" | "mac";

export interface Confined {
  readonly root: RootPlace;
  /** below `root.real`: the client's directory, when it has one, is its first segment */
  readonly relative: string;
}

/** The directory of a client's own below a root, when unique roots are on. */
export class ClientDirectories {
  constructor(
    private readonly mode: Exclude<UniqueRoot, "off">,
    private readonly neighbours: Neighbours,
  ) {}

  /** The name of the client's directory, if it exists below `rootReal`. */
  async find(rootReal: string, address: string): Promise<string | null> {
    const name = this.mode === "ip" ? clientAddressText(address) : await this.macName(address);
    if (name === null) return null;
    try {
      return (await stat(`${rootReal}/${name}`)).isDirectory() ? name : null;
    } catch {
      return null;
    }
  }

  private async macName(address: string): Promise<string | null> {
    const mac = await this.neighbours.macOf(address);
    return mac === null ? null : macDirectoryName(mac);
  }
}

export async function confine(name: string, root: RootPlace, directories: ClientDirectories | null, address: string): Promise<Confined | Refused> {
  const resolved = resolveRequestPath(root.real, name);
  if (!resolved.ok) return refusedBy(resolved);
  const own = directories ? await directories.find(root.real, address) : null;
  // the client's directory is a path segment like any other: openForRead still confines the
  // whole path to the root (a directory linked to elsewhere is refused there)
  return { root, relative: own === null ? resolved.relative : `${own}/${resolved.relative}` };
}

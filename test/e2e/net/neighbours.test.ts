/**
 * The kernel's neighbour tables, for real: two network namespaces joined by a veth pair; the
 * peer sends one datagram (resolving our MAC first, as a booting client does), and a process in
 * our namespace reads the peer's MAC from its tables, IPv4 and IPv6.
 */
import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import { removeDir, tempDir, writeFile } from "../../helpers/files.ts";
import { announce, createVethPair, waitForNeighbour, type VethPair } from "../../helpers/netns.ts";
import { BUN, run } from "../../helpers/run.ts";

setDefaultTimeout(30_000);

const NEIGHBOURS = new URL("../../../src/net/neighbours.ts", import.meta.url).pathname;

let pair: VethPair | undefined;
let dir: string;

beforeAll(async () => {
  dir = tempDir("tftpd-neighbours-");
  pair = await createVethPair();
});

afterAll(async () => {
  await pair?.remove();
  removeDir(dir);
});

/** Looks the addresses up with kernelNeighbours() in a process inside namespace a. */
async function lookUpInA(addresses: string[]): Promise<{ macs: (string | null)[]; reads: { ipv4: number; ipv6: number } }> {
  const script = writeFile(
    dir,
    "lookup.ts",
    `import { kernelNeighbours } from ${JSON.stringify(NEIGHBOURS)};
const errors: string[] = [];
const n = kernelNeighbours({ onReadError: (family, error) => errors.push(family + ": " + String(error)) });
const macs = await Promise.all(${JSON.stringify(addresses)}.map((a: string) => n.macOf(a)));
if (errors.length > 0) { console.error(errors.join("\\n")); process.exit(2); }
console.log(JSON.stringify({ macs, reads: n.reads }));
`,
  );
  const r = await run(pair!.a.command([BUN, script]), { timeoutMs: 15_000 });
  if (r.exitCode !== 0) throw new Error(`lookup script exited ${r.exitCode}: ${r.stderr}${r.stdout}`);
  return JSON.parse(r.stdout.trim().split("\n").pop()!);
}

test("the peer's MAC from the IPv4 and IPv6 neighbour tables, as the peer's veth has it", async () => {
  const { a, b } = pair!;
  await announce(b, a, 4);
  await announce(b, a, 6);
  // the kernel has learnt the peer (what the lookups must find, read independently)
  expect(await waitForNeighbour(a, b.ipv4)).toBe(b.mac);
  expect(await waitForNeighbour(a, b.ipv6)).toBe(b.mac);

  const absent = "10.213.0.3"; // on the link's subnet, but nobody there
  const { macs, reads } = await lookUpInA([b.ipv4, b.ipv6, `::ffff:${b.ipv4}`, "FD00:0213::0:2", absent, "fd00:213::3"]);
  expect(macs).toEqual([b.mac, b.mac, b.mac, b.mac, null, null]);
  // concurrent lookups shared the reads: the hits' one, and one re-read for the misses
  expect(reads.ipv4).toBeLessThanOrEqual(2);
  expect(reads.ipv6).toBeLessThanOrEqual(2);
  expect(b.mac).toMatch(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
  expect(b.mac).not.toBe(a.mac);
});

test("a process outside the namespaces does not see the link's neighbours (tables are per namespace)", async () => {
  const { b } = pair!;
  const script = join(dir, "outside.ts");
  await Bun.write(
    script,
    `import { kernelNeighbours } from ${JSON.stringify(NEIGHBOURS)};
console.log(JSON.stringify(await kernelNeighbours().macOf(${JSON.stringify(b.ipv6)})));`,
  );
  // our own namespace has no fd00:213::/64 link (the pair lives only in its namespaces)
  const r = await run([BUN, script], { timeoutMs: 15_000 });
  expect(r.stderr).toBe("");
  expect(r.stdout.trim()).toBe("null");
});

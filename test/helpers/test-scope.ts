/**
 * What a test file's tests open, given back after each test: raw client sockets closed,
 * in-process servers stopped, temporary directories removed.
 */
import { afterEach } from "bun:test";
import { removeDir } from "./files.ts";
import { peerTracker } from "./raw.ts";
import type { InProcessServer } from "./server.ts";

export function testScope(): { peers: ReturnType<typeof peerTracker>; servers: InProcessServer[]; dirs: string[] } {
  const peers = peerTracker();
  const servers: InProcessServer[] = [];
  const dirs: string[] = [];
  afterEach(async () => {
    peers.closeAll();
    for (const s of servers.splice(0)) await s.stop();
    for (const d of dirs.splice(0)) removeDir(d);
  });
  return { peers, servers, dirs };
}

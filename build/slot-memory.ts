/**
 * Memory per running transfer: 10,000 clients each ask for a 32 KiB file, get DATA 1 and never
 * answer, so 10,000 lock-step transfers sit in the server (shared sockets). Prints the RSS,
 * JS heap and ArrayBuffer growth per transfer. Usage: bun build/slot-memory.ts
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startServer } from "../test/helpers/server.ts";

const root = mkdtempSync(join(tmpdir(), "tftpd-slot-memory-"));
writeFileSync(join(root, "32k.img"), new Uint8Array(32 * 1024));
const s = await startServer(root, { transferSockets: "shared", timeoutMs: 60000, retries: 1, lifetimes: { connectionTimeoutMs: 600000, idleTimeoutMs: 600000, maxLifetimeMs: 600000 } });
const N = 10000;
const rrq = new Uint8Array([0, 1, ...new TextEncoder().encode("32k.img"), 0, ...new TextEncoder().encode("octet"), 0]);
const clients: { send(data: Uint8Array, port: number, address: string): boolean }[] = [];
Bun.gc(true); await Bun.sleep(200);
let replies = 0;
for (let i = 0; i < N; i++) {
  const c = await Bun.udpSocket({ hostname: "127.0.0.1", port: 0, socket: { data() { replies++; } } });
  clients.push(c);
}
Bun.gc(true); await Bun.sleep(200);
const sockets = process.memoryUsage();
for (const c of clients) c.send(rrq, s.port, "127.0.0.1");
while (replies < N) await Bun.sleep(20);
Bun.gc(true); await Bun.sleep(300);
const after = process.memoryUsage();
console.log(`active transfers: ${s.server.activeTransfers}`);
console.log(`rss per transfer: ${((after.rss - sockets.rss) / N).toFixed(0)} bytes, heap per transfer: ${((after.heapUsed - sockets.heapUsed) / N).toFixed(0)} bytes, arrayBuffers per transfer: ${((after.arrayBuffers - sockets.arrayBuffers) / N).toFixed(0)} bytes`);
await s.stop();
rmSync(root, { recursive: true, force: true });
process.exit(0);

/**
 * The README's dnsmasq snippet ("Booting machines"), for real: read from README.md (so the
 * documented options and the tested ones cannot drift), run as the DHCP server in one network
 * namespace beside tftpd, and answered to busybox's udhcpc in another, as a BIOS PXE ROM, a
 * UEFI x86-64 firmware and iPXE would ask. Each lease must name the client's boot file and
 * tftpd's address as next-server, and the file fetched from that next-server over TFTP, inside
 * the client's namespace, must be the file in tftpd's root. The proxy-DHCP snippet is checked by
 * dnsmasq's own syntax check (a proxy offer needs a PXE client, which udhcpc is not).
 *
 * Needs root, iproute2, dnsmasq (dnsmasq-base), busybox and curl: test/setup/ensure-system.ts
 * and .ci/run install them. Nothing leaves the namespaces: dnsmasq's lease and pid files go to
 * a temporary folder, and no host interface or setting is touched.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { DNSMASQ, dnsmasqProcessOptions, readmeDnsmasqArgs } from "../../helpers/dnsmasq.ts";
import { patternBytes, removeDir, sha256, tempDir, writeFile } from "../../helpers/files.ts";
import { addIpv4, createVethPair, spawnIn, tftpdIn, type NetnsProcess, type VethPair } from "../../helpers/netns.ts";
import { run } from "../../helpers/run.ts";
import { spawnServer, type ChildServer } from "../../helpers/server.ts";

setDefaultTimeout(60_000);

/** where the README's snippets put tftpd (RFC 5737's documentation subnet, only inside the namespaces) */
const TFTPD_HOST = "192.0.2.10";
/**
 * The boot server's own address, its primary one on the link: dnsmasq answers from it, and it
 * would name it as next-server if the snippet left that out. tftpd listens on the second one
 * only, so a lease that names tftpd's address got it from the snippet.
 */
const DHCP_HOST = "192.0.2.2";

const SBIN_PATH = `${process.env.PATH ?? ""}:/usr/sbin:/sbin:/usr/bin:/bin`;
const BUSYBOX = Bun.which("busybox", { PATH: SBIN_PATH }) ?? "/bin/busybox";
const CURL = Bun.which("curl", { PATH: SBIN_PATH }) ?? "/usr/bin/curl";

/** The boot files of the README's table, with contents of their own. */
const FILES: Record<string, Uint8Array> = {
  "undionly.kpxe": patternBytes(70_001, 1),
  "snponly.efi": patternBytes(200_003, 2),
  "boot.ipxe": new TextEncoder().encode("#!ipxe\nkernel tftp://${next-server}/vmlinuz initrd=initrd.img\ninitrd tftp://${next-server}/initrd.img\nboot\n"),
};

interface Lease {
  ip: string;
  mask: string;
  boot_file?: string;
  siaddr?: string;
  serverid?: string;
}

let pair: VethPair | undefined;
let dir: string;
let root: string;
let dnsmasq: NetnsProcess | undefined;
let tftpd: ChildServer | undefined;
let fullArgs: string[];

function requireTools(): void {
  const missing = [
    [DNSMASQ, "dnsmasq-base"],
    [BUSYBOX, "busybox"],
    [CURL, "curl"],
  ].filter(([path]) => !existsSync(path!));
  if (missing.length > 0) {
    throw new Error(`this test needs ${missing.map(([, pkg]) => pkg).join(", ")}: apt-get install -y ${missing.map(([, pkg]) => pkg).join(" ")}`);
  }
}

beforeAll(async () => {
  requireTools();
  dir = tempDir("tftpd-dhcp-boot-");
  root = join(dir, "root");
  for (const [name, bytes] of Object.entries(FILES)) writeFile(root, name, bytes);
  fullArgs = await readmeDnsmasqArgs("dnsmasq-full-dhcp");

  pair = await createVethPair();
  // side a is the boot server: dnsmasq and tftpd on the README's address
  addIpv4(pair.a, `${DHCP_HOST}/24`);
  addIpv4(pair.a, `${TFTPD_HOST}/24`);
  dnsmasq = spawnIn(pair.a, [DNSMASQ, ...dnsmasqProcessOptions(dir), ...fullArgs], { lifetimeMs: 180_000 });
  await dnsmasq.waitForOutput(/DHCP, IP range 192\.0\.2\.100 -- 192\.0\.2\.199/, 10_000);
  tftpd = await spawnServer(["--root", root, "--listen", `${TFTPD_HOST}:69`, "--no-tune", "--log-level", "info"], { binary: tftpdIn(pair.a, dir) });
});

afterAll(async () => {
  try {
    await tftpd?.stop("SIGKILL");
    await dnsmasq?.stop();
  } finally {
    // kills whatever still runs in the namespaces, then deletes them
    await pair?.remove();
    if (dir) removeDir(dir);
  }
});

/**
 * Runs udhcpc once in the client namespace (`-q`: exit once bound, `-n`: exit if no lease),
 * with a script that prints what the lease says, and returns it.
 */
async function dhcp(extra: string[]): Promise<Lease> {
  const script = writeFile(
    dir,
    "udhcpc.sh",
    `#!/bin/sh\n[ "$1" = bound ] || exit 0\nfor k in ip mask subnet boot_file siaddr serverid; do eval "v=\\$$k"; printf 'lease %s=%s\\n' "$k" "$v"; done\n`,
  );
  await run(["chmod", "755", script]);
  const { b } = pair!;
  const r = await run(b.command([BUSYBOX, "udhcpc", "-f", "-q", "-n", "-i", b.device, "-s", script, "-t", "6", "-T", "1", "-A", "1", ...extra]), {
    timeoutMs: 20_000,
  });
  if (r.exitCode !== 0) throw new Error(`udhcpc got no lease (exit ${r.exitCode}${r.timedOut ? ", timed out" : ""}): ${r.stderr}${r.stdout}\ndnsmasq: ${dnsmasq!.output().slice(-2000)}`);
  const lease: Record<string, string> = {};
  for (const m of r.stdout.matchAll(/^lease (\w+)=(.*)$/gm)) if (m[2] !== "") lease[m[1]!] = m[2]!;
  if (!lease.ip || !lease.mask) throw new Error(`udhcpc printed no lease: ${r.stdout}${r.stderr}`);
  return lease as unknown as Lease;
}

/** Applies the lease to the client's link, fetches `tftp://next-server/boot-file` with curl there, and returns the bytes. */
async function fetchBootFile(lease: Lease): Promise<Uint8Array> {
  const { b } = pair!;
  addIpv4(b, `${lease.ip}/${lease.mask}`);
  const out = join(dir, `fetched-${lease.boot_file}`);
  const r = await run(b.command([CURL, "-sS", "--max-time", "20", "--interface", lease.ip, "-o", out, `tftp://${lease.siaddr}/${lease.boot_file}`]), { timeoutMs: 30_000 });
  if (r.exitCode !== 0) throw new Error(`curl tftp://${lease.siaddr}/${lease.boot_file} from ${lease.ip} failed (exit ${r.exitCode}): ${r.stderr}`);
  return new Uint8Array(readFileSync(out));
}

test("the README's full-DHCP block: DHCP only (no DNS, no TFTP of dnsmasq's own), every boot file from the tftpd host", () => {
  expect(fullArgs).toContain("--port=0");
  expect(fullArgs.some((a) => a.includes("enable-tftp"))).toBe(false);
  const boots = fullArgs.filter((a) => a.startsWith("--dhcp-boot="));
  expect(boots.length).toBe(3);
  for (const boot of boots) expect(boot.endsWith(`,,${TFTPD_HOST}`)).toBe(true);
  // what the test adds is about the process, never about DHCP or boot files
  for (const option of dnsmasqProcessOptions(dir)) expect(option).toMatch(/^--(keep-in-foreground|conf-file|dhcp-leasefile|pid-file|log-facility|log-dhcp)\b/);
});

describe("a lease from the README's dnsmasq names the boot file and tftpd as next-server, and tftpd serves that file", () => {
  const clients: { kind: string; args: string[]; file: string }[] = [
    { kind: "BIOS PXE ROM (arch 0)", args: ["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"], file: "undionly.kpxe" },
    { kind: "UEFI x86-64 (arch 7)", args: ["-V", "PXEClient:Arch:00007:UNDI:003016", "-x", "0x5d:0007"], file: "snponly.efi" },
    { kind: "UEFI x86-64 (arch 9)", args: ["-V", "PXEClient:Arch:00009:UNDI:003016", "-x", "0x5d:0009"], file: "snponly.efi" },
    // iPXE sends user class "iPXE" (option 77) beside the firmware's arch: the script, not the ROM again
    { kind: "iPXE (user class iPXE)", args: ["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000", "-x", "0x4d:69505845"], file: "boot.ipxe" },
  ];
  for (const client of clients) {
    test(client.kind, async () => {
      const lease = await dhcp(client.args);
      expect(lease.boot_file).toBe(client.file);
      expect(lease.siaddr).toBe(TFTPD_HOST);
      expect(lease.serverid).toBe(DHCP_HOST); // dnsmasq answered, and named another address as next-server
      expect(lease.ip).toMatch(/^192\.0\.2\.(1[0-9][0-9])$/);

      const before = tftpd!.logs.length;
      const bytes = await fetchBootFile(lease);
      expect(bytes.length).toBe(FILES[client.file]!.length);
      expect(sha256(bytes)).toBe(sha256(FILES[client.file]!));
      // tftpd served it (dnsmasq has no TFTP here), to the leased address
      const line = await tftpd!.waitForLog(
        (l) => tftpd!.logs.indexOf(l) >= before && l.msg === "transfer" && l.file === client.file && String(l.client).startsWith(`${lease.ip}:`),
        10_000,
      );
      expect(line.result).toBe("ok");
      expect(line.bytes).toBe(FILES[client.file]!.length);
    });
  }

  test("a client that names no architecture gets an address but no boot file", async () => {
    const lease = await dhcp([]);
    expect(lease.ip).toMatch(/^192\.0\.2\./);
    expect(lease.boot_file).toBeUndefined();
  });
});

test("the README's proxy-DHCP block passes dnsmasq's syntax check, pointing every PXE service at the tftpd host", async () => {
  const proxyArgs = await readmeDnsmasqArgs("dnsmasq-proxy-dhcp");
  expect(proxyArgs).toContain("--port=0");
  expect(proxyArgs.some((a) => a.includes("enable-tftp"))).toBe(false);
  expect(proxyArgs.some((a) => /^--dhcp-range=.*,proxy$/.test(a))).toBe(true);
  const services = proxyArgs.filter((a) => a.startsWith("--pxe-service="));
  expect(services.length).toBeGreaterThan(0);
  for (const s of services) expect(s.endsWith(`,${TFTPD_HOST}`)).toBe(true);
  const r = await run([DNSMASQ, "--test", "--conf-file=/dev/null", ...proxyArgs], { timeoutMs: 10_000 });
  expect(`${r.stdout}${r.stderr}`).toContain("syntax check OK");
  expect(r.exitCode).toBe(0);
});

/**
 * Real machines network-booting through a TFTP server, for the firmware tests
 * (test/e2e/firmware/) and build/bench-firmware.ts. Each boot gets a boot LAN of its own (a
 * network namespace with a bridge and a tap device), dnsmasq there as the DHCP server only,
 * with the README's full-DHCP options as written, the TFTP server under test on the README's
 * address, and a QEMU machine under software emulation (TCG: no KVM needed) with no disk and
 * its serial console in a file:
 *
 * - BIOS: SeaBIOS and the virtio NIC's iPXE ROM (Debian's ipxe-qemu). iPXE asks DHCP with
 *   user class iPXE and gets boot.ipxe.
 * - UEFI: OVMF's own PXE (EDK2: a tsize probe it ends with ERROR 8, then windowsize 4) loads
 *   snponly.efi (Debian's ipxe), which asks DHCP again and gets boot.ipxe.
 *
 * boot.ipxe (over TFTP, or HTTP when the DHCP answer is a URL) chains second.ipxe (or, in a
 * root made with `script: "rendered"`, the script generated for the machine's MAC), which asks
 * for a file that does not exist, then fetches a Linux kernel (Debian's, fetched once into
 * .cache/firmware), an initramfs (busybox and an /init script) and an 8 MiB initrd of random
 * bytes, and boots. The booted Linux prints the
 * SHA-256 of the initrd's bytes as it received them and powers the machine off. Every step
 * prints a marker line on the serial console; the harness notes when each appears.
 */
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { randomFillSync } from "node:crypto";
import { join } from "node:path";
import { downloadDeb } from "../../build/peers.ts";
import { DNSMASQ, dnsmasqProcessOptions, readmeDnsmasqArgs } from "./dnsmasq.ts";
import { removeDir, sha256, tempDir } from "./files.ts";
import { createBootLan, spawnIn, waitForUdpListener, type NetnsProcess } from "./netns.ts";
import { run } from "./run.ts";

/** bios: SeaBIOS and iPXE's ROM; uefi: OVMF's PXE; uefi-http: OVMF's HTTP Boot (its PXE turned off) */
export type Firmware = "bios" | "uefi" | "uefi-http";

/** The README's addresses (RFC 5737's documentation subnet), inside the boot LAN only. */
export const TFTP_HOST = "192.0.2.10";
const DHCP_HOST = "192.0.2.2";

const QEMU = "/usr/bin/qemu-system-x86_64";
const OVMF = "/usr/share/ovmf/OVMF.fd";
const SNPONLY = "/usr/lib/ipxe/snponly.efi";
const UNDIONLY = "/usr/lib/ipxe/undionly.kpxe";
const BUSYBOX = "/bin/busybox";

/** What the boots need from Debian: a file each package provides. */
export const FIRMWARE_PACKAGES: { path: string; pkg: string }[] = [
  { path: QEMU, pkg: "qemu-system-x86" },
  { path: OVMF, pkg: "ovmf" },
  // the NIC ROMs QEMU loads for its virtio NIC (iPXE, the BIOS machine's PXE)
  { path: "/usr/lib/ipxe/qemu/efi-virtio.rom", pkg: "ipxe-qemu" },
  { path: SNPONLY, pkg: "ipxe" },
  { path: DNSMASQ, pkg: "dnsmasq-base" },
  { path: BUSYBOX, pkg: "busybox" },
];

/** The Debian packages the boots need and this machine lacks (empty when it can boot). */
export function missingFirmwarePackages(): string[] {
  return FIRMWARE_PACKAGES.filter((p) => !existsSync(p.path)).map((p) => p.pkg);
}

const REPO = new URL("../../", import.meta.url).pathname;
const CACHE = join(REPO, ".cache", "firmware");

/** Every line a step prints starts with this, on the serial console. */
const MARK = "tftpd-fw:";

/** The steps of a boot, in order, as the serial console shows them. */
export const STEPS = ["boot script", "second script", "missing file refused", "files fetched", "linux checked"] as const;
export type Step = (typeof STEPS)[number];

/**
 * The scripts name their files relative to their own URL, so they come over the protocol and
 * from the server boot.ipxe came from: TFTP when the DHCP answer names a file, HTTP when it
 * names a URL (the README's HTTP blocks).
 */
const BOOT_IPXE = `#!ipxe
echo ${MARK} 1 boot script
chain second.ipxe || echo ${MARK} FAIL chain second.ipxe
`;

const SECOND_IPXE = `#!ipxe
echo ${MARK} 2 second script
imgfetch missing.bin && echo ${MARK} FAIL missing.bin was served || echo ${MARK} 3 missing file refused
kernel vmlinuz console=ttyS0 quiet panic=-1 initrd=init.cpio initrd=big.cpio || goto fail
initrd init.cpio || goto fail
initrd big.cpio || goto fail
echo ${MARK} 4 files fetched
boot || goto fail
:fail
echo ${MARK} FAIL fetch or boot
`;

/**
 * boot.ipxe of a root whose second script is made per machine: it chains the file
 * `generate.files` renders for the machine's MAC (pxelinux's spelling, 01-02-…).
 */
const BOOT_IPXE_RENDERED = `#!ipxe
echo ${MARK} 1 boot script
chain ipxe/\${mac:hexhyp}.ipxe || echo ${MARK} FAIL chain the script rendered for \${mac:hexhyp}
`;

/**
 * The template of the per-machine script: the same steps as second.ipxe, with the kernel, its
 * arguments and the initrds of the machine's profile, by absolute URL (server.http_base is
 * where the machine reached the server).
 */
export const MACHINE_TEMPLATE = `#!ipxe
echo ${MARK} 2 second script, rendered for {{ machine.name }} ({{ client.mac }})
imgfetch {{ server.http_base }}/missing.bin && echo ${MARK} FAIL missing.bin was served || echo ${MARK} 3 missing file refused
kernel {{ server.http_base }}/{{ profile.kernel }} {{ profile.args }}{% for initrd in profile.initrds %} initrd={{ initrd }}{% endfor %} || goto fail
{% for initrd in profile.initrds %}initrd {{ server.http_base }}/{{ initrd }} || goto fail
{% endfor %}echo ${MARK} 4 files fetched
boot || goto fail
:fail
echo ${MARK} FAIL fetch or boot
`;

/** The MAC of every machine's NIC (QEMU's default, said explicitly: the inventory names it). */
export const MACHINE_MAC = "52:54:00:12:34:56";

const INIT = `#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null
set -- $(/bin/busybox sha256sum /big.bin)
/bin/busybox echo "${MARK} 5 linux checked sha256 $1"
/bin/busybox poweroff -f
`;

/** The size of big.cpio, the 8 MiB file a boot fetches: its payload fills it to the byte. */
const BIG_FILE_SIZE = 8 * 1024 * 1024;

/**
 * One member of a cpio archive in the kernel's initramfs format ("newc"): header, name and
 * data, each padded to 4 bytes. The trailer is the member named TRAILER!!!.
 */
function cpioMember(name: string, mode: number, data: Uint8Array, ino: number): Uint8Array[] {
  const nameBytes = new TextEncoder().encode(`${name}\0`);
  const hex = (n: number): string => n.toString(16).padStart(8, "0");
  const fields = [ino, mode, 0, 0, 1, 0, data.length, 0, 0, 0, 0, nameBytes.length, 0];
  const header = new TextEncoder().encode(`070701${fields.map(hex).join("")}`);
  const pad = (n: number): Uint8Array => new Uint8Array((4 - (n % 4)) % 4);
  return [header, nameBytes, pad(header.length + nameBytes.length), data, pad(data.length)];
}

function cpioArchive(members: { name: string; mode: number; data: Uint8Array }[]): Uint8Array {
  const parts = members.flatMap((m, i) => cpioMember(m.name, m.mode, m.data, i + 1));
  parts.push(...cpioMember("TRAILER!!!", 0, new Uint8Array(0), 0));
  return Buffer.concat(parts);
}

const DIR = 0o040755;
const FILE = 0o100644;
const EXEC = 0o100755;

/** busybox and the shared libraries it loads (from ldd), as initramfs members. */
async function busyboxMembers(): Promise<{ name: string; mode: number; data: Uint8Array }[]> {
  const ldd = await run(["ldd", BUSYBOX], { timeoutMs: 10_000 });
  const libs = [...ldd.stdout.matchAll(/(\/\S+\.so[.\d]*)/g)].map((m) => m[1]!);
  const dirs = new Set<string>(["bin", "dev", "proc"]);
  const files: { name: string; mode: number; data: Uint8Array }[] = [{ name: "bin/busybox", mode: EXEC, data: readFileSync(BUSYBOX) }];
  for (const lib of new Set(libs)) {
    const name = lib.slice(1);
    const parts = name.split("/");
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join("/"));
    files.push({ name, mode: EXEC, data: readFileSync(lib) });
  }
  return [...[...dirs].sort().map((name) => ({ name, mode: DIR, data: new Uint8Array(0) })), ...files];
}

/** The big initrd: an archive holding big.bin, random bytes sized so the archive is `size` bytes. */
function bigArchive(size: number): { archive: Uint8Array; payloadSha256: string } {
  const empty = cpioArchive([{ name: "big.bin", mode: FILE, data: new Uint8Array(0) }]).length;
  const payload = new Uint8Array(size - empty);
  for (let at = 0; at < payload.length; at += 65_536) randomFillSync(payload, at, Math.min(65_536, payload.length - at));
  const archive = cpioArchive([{ name: "big.bin", mode: FILE, data: payload }]);
  if (archive.length !== size) throw new Error(`big.cpio is ${archive.length} bytes, not ${size}`);
  return { archive, payloadSha256: sha256(payload) };
}

let kernel: Promise<string> | null = null;

/**
 * A Linux kernel to boot: Debian's current amd64 kernel (what linux-image-amd64 depends on),
 * its vmlinuz taken out of the package once and kept in .cache/firmware. Nothing is installed.
 */
export function bootKernel(say: (line: string) => void = () => {}): Promise<string> {
  kernel ??= (async () => {
    mkdirSync(CACHE, { recursive: true });
    const cached = readdirSync(CACHE).filter((n) => n.startsWith("vmlinuz-")).sort().pop();
    if (cached) return join(CACHE, cached);
    const depends = await run(["apt-cache", "depends", "linux-image-amd64"], { timeoutMs: 30_000 });
    const pkg = /Depends: (linux-image-[\w.+-]+)/.exec(depends.stdout)?.[1];
    if (!pkg) throw new Error(`cannot name Debian's kernel package (apt-cache depends linux-image-amd64): ${depends.stdout}${depends.stderr}`);
    const deb = downloadDeb(pkg, join(CACHE, "debs"), say);
    const out = join(CACHE, `vmlinuz-${pkg.replace(/^linux-image-/, "")}`);
    const r = await run(["bash", "-c", 'set -o pipefail; dpkg-deb --fsys-tarfile "$1" | tar -x -O --wildcards "./boot/vmlinuz-*" > "$2.part" && mv "$2.part" "$2"', "_", deb, out], {
      timeoutMs: 120_000,
    });
    if (r.exitCode !== 0 || !existsSync(out)) throw new Error(`cannot take vmlinuz out of ${deb}: ${r.stderr}`);
    return out;
  })();
  kernel.catch(() => (kernel = null));
  return kernel;
}

/** A TFTP root with everything a boot fetches, and what the booted machine must report. */
export interface BootRoot {
  readonly dir: string;
  readonly root: string;
  /** name → size of each file a boot fetches (for the server's transfer records) */
  readonly sizes: Readonly<Record<string, number>>;
  /** SHA-256 of big.bin's bytes, which the booted Linux prints */
  readonly payloadSha256: string;
  remove(): void;
}

export interface BootRootOptions {
  say?: (line: string) => void;
  /** bytes of big.cpio (default 8 MiB) */
  bigFileSize?: number;
  /** "static": boot.ipxe chains second.ipxe; "rendered": the script generate.files renders for the machine's MAC */
  script?: "static" | "rendered";
}

export async function prepareBootRoot(opts: BootRootOptions = {}): Promise<BootRoot> {
  const vmlinuz = await bootKernel(opts.say);
  const dir = tempDir("tftpd-firmware-");
  // the servers drop to an unprivileged user; the root they serve must be readable to it
  chmodSync(dir, 0o755);
  const root = join(dir, "root");
  mkdirSync(root, { mode: 0o755 });
  const big = bigArchive(opts.bigFileSize ?? BIG_FILE_SIZE);
  const init = cpioArchive([...(await busyboxMembers()), { name: "init", mode: EXEC, data: new TextEncoder().encode(INIT) }]);
  if (opts.script === "rendered") {
    writeFileSync(join(root, "boot.ipxe"), BOOT_IPXE_RENDERED);
  } else {
    writeFileSync(join(root, "boot.ipxe"), BOOT_IPXE);
    writeFileSync(join(root, "second.ipxe"), SECOND_IPXE);
  }
  writeFileSync(join(root, "init.cpio"), init);
  writeFileSync(join(root, "big.cpio"), big.archive);
  copyFileSync(vmlinuz, join(root, "vmlinuz"));
  copyFileSync(SNPONLY, join(root, "snponly.efi"));
  copyFileSync(UNDIONLY, join(root, "undionly.kpxe"));
  const sizes: Record<string, number> = {};
  for (const name of readdirSync(root)) sizes[name] = Bun.file(join(root, name)).size;
  return { dir, root, sizes, payloadSha256: big.payloadSha256, remove: () => removeDir(dir) };
}

/** The TFTP server a machine boots through, started on TFTP_HOST:69 inside the boot LAN. */
export interface BootServer {
  readonly name: string;
  argv(root: string, runDir: string): string[];
  readonly env?: Record<string, string>;
}

/** tftpd (a compiled binary), with an optional config file for what flags cannot say. */
export function tftpdServer(binary: string, config?: object): BootServer {
  return {
    name: "tftpd",
    argv: (root, runDir) => {
      const args = [binary, "serve", "--root", root, "--listen", `${TFTP_HOST}:69`, "--no-tune", "--log-level", "info"];
      if (config) {
        const file = join(runDir, "tftpd.json");
        writeFileSync(file, JSON.stringify(config));
        args.push("--config", file);
      }
      return args;
    },
    // the boot LAN's namespace has a loopback of its own, so the default metrics port is free
    env: { TFTPD_TUNE_ENABLED: "false" },
  };
}

/** tftpd-hpa's in.tftpd, as Debian runs it (--secure), in the foreground. */
export function tftpdHpaServer(binary: string): BootServer {
  return { name: "tftpd-hpa", argv: (root) => [binary, "--foreground", "--address", `${TFTP_HOST}:69`, "--user", "root", "--secure", root] };
}

/** dnsmasq's TFTP server alone (no DNS, no DHCP: the LAN's DHCP is another dnsmasq). */
export function dnsmasqTftpServer(binary: string): BootServer {
  return {
    name: "dnsmasq",
    argv: (root, runDir) => [
      binary, "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--enable-tftp", `--tftp-root=${root}`,
      `--listen-address=${TFTP_HOST}`, "--bind-interfaces", "--user=root", `--pid-file=${join(runDir, "dnsmasq-tftp.pid")}`, "--log-facility=-",
    ],
  };
}

export interface BootRun {
  readonly firmware: Firmware;
  readonly server: string;
  /** seconds from power-on to each step's marker, in the order they appeared */
  readonly steps: { step: Step; seconds: number; line: string }[];
  /** the SHA-256 the booted Linux printed, or null */
  readonly linuxSha256: string | null;
  /** marker lines that say a step failed */
  readonly failures: string[];
  /** the whole serial console, without carriage returns */
  readonly serial: string;
  /** what the TFTP server printed (tftpd: its JSON log lines) */
  readonly serverOutput: string;
  /** how the machine ended: "powered off", or why it was stopped */
  readonly ending: string;
}

/** The JSON lines of a tftpd log (other lines skipped). */
export function logRecords(output: string): Record<string, unknown>[] {
  const records: Record<string, unknown>[] = [];
  for (const line of output.split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      records.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // a line cut short by the end of the process
    }
  }
  return records;
}

function qemuArgv(firmware: Firmware, tap: string, serial: string, memoryMiB: number): string[] {
  const common = ["-accel", "tcg", "-m", String(memoryMiB), "-display", "none", "-no-reboot", "-serial", `file:${serial}`];
  const netdev = ["-netdev", `tap,id=n0,ifname=${tap},script=no,downscript=no`];
  if (firmware === "bios") {
    // the NIC's option ROM is QEMU's default for virtio-net: iPXE
    return [QEMU, "-machine", "pc,graphics=off", ...common, "-boot", "order=n", ...netdev, "-device", `virtio-net-pci,netdev=n0,mac=${MACHINE_MAC},bootindex=1`];
  }
  // no option ROM: OVMF's own virtio driver and PXE stack do the network boot
  const uefi = [QEMU, "-machine", "q35,graphics=off", "-bios", OVMF, ...common, ...netdev, "-device", `virtio-net-pci,netdev=n0,mac=${MACHINE_MAC},bootindex=1,romfile=`];
  if (firmware === "uefi") return uefi;
  // HTTP Boot comes after PXE in OVMF's boot order: PXE off, so the first network boot is HTTP
  return [...uefi, "-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n", "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n"];
}

/**
 * Boots one machine through `server` and returns what its console showed and when. Bounded by
 * `timeoutMs`; the LAN, its processes and files are gone when it returns or throws.
 */
export async function bootMachine(opts: {
  firmware: Firmware;
  server: BootServer;
  root: BootRoot;
  /** the README's dnsmasq block to run as the LAN's DHCP server, by its marker */
  dhcp?: string;
  timeoutMs?: number;
  /** the machine's memory (default 512 MiB; a 100 MiB initrd is held twice while Linux unpacks it) */
  memoryMiB?: number;
}): Promise<BootRun> {
  const missing = missingFirmwarePackages();
  if (missing.length > 0) throw new Error(`booting a machine needs ${missing.join(", ")}: apt-get install -y ${missing.join(" ")}`);
  const timeoutMs = opts.timeoutMs ?? 240_000;
  const runDir = tempDir("tftpd-boot-");
  const serialPath = join(runDir, "serial.log");
  writeFileSync(serialPath, "");
  const lan = await createBootLan([`${DHCP_HOST}/24`, `${TFTP_HOST}/24`]);
  let dhcp: NetnsProcess | undefined;
  let tftp: NetnsProcess | undefined;
  let machine: NetnsProcess | undefined;
  try {
    dhcp = spawnIn(lan.host, [DNSMASQ, ...dnsmasqProcessOptions(runDir), ...(await readmeDnsmasqArgs(opts.dhcp ?? "dnsmasq-full-dhcp"))], { lifetimeMs: timeoutMs + 30_000 });
    await dhcp.waitForOutput(/DHCP, IP range/, 10_000);
    tftp = spawnIn(lan.host, opts.server.argv(opts.root.root, runDir), { lifetimeMs: timeoutMs + 30_000, env: { ...process.env, ...opts.server.env } });
    await waitForUdpListener(lan.host, TFTP_HOST, 69, 15_000);

    const started = performance.now();
    machine = spawnIn(lan.host, qemuArgv(opts.firmware, lan.tap, serialPath, opts.memoryMiB ?? 512), { lifetimeMs: timeoutMs + 5_000 });
    let exited = false;
    void machine.exited.then(() => (exited = true));
    const steps: BootRun["steps"] = [];
    const failures: string[] = [];
    let serial = "";
    let ending = "";
    let linuxSha256: string | null = null;
    let checkedAt = 0;
    for (;;) {
      await Bun.sleep(50);
      serial = readFileSync(serialPath, "latin1").replaceAll("\r", "");
      const seconds = (performance.now() - started) / 1000;
      // whole lines only: the console file is read while the machine writes it
      for (const m of serial.matchAll(new RegExp(`${MARK} (\\d|FAIL) ([^\\n]*)\\n`, "g"))) {
        if (m[1] === "FAIL") {
          if (!failures.includes(m[0])) failures.push(m[0]);
          continue;
        }
        const step = STEPS[Number(m[1]) - 1];
        if (step && !steps.some((s) => s.step === step)) steps.push({ step, seconds: Number(seconds.toFixed(2)), line: m[0] });
        if (step === "linux checked") linuxSha256 = /sha256 ([0-9a-f]{64})/.exec(m[2]!)?.[1] ?? null;
      }
      if (exited) {
        ending = "powered off";
        break;
      }
      if (failures.length > 0) {
        ending = `stopped: ${failures[0]}`;
        break;
      }
      if (linuxSha256 !== null) {
        checkedAt ||= performance.now();
        // the machine powers itself off right after; give it a moment to do so
        if (performance.now() - checkedAt > 15_000) {
          ending = "stopped: did not power off after the check";
          break;
        }
      }
      if (performance.now() - started > timeoutMs) {
        ending = `stopped: no power-off within ${timeoutMs / 1000} s`;
        break;
      }
    }
    await machine.stop(1_000);
    return { firmware: opts.firmware, server: opts.server.name, steps, linuxSha256, failures, serial, serverOutput: tftp.output(), ending };
  } finally {
    await machine?.stop(1_000);
    await tftp?.stop();
    await dhcp?.stop();
    await lan.remove();
    removeDir(runDir);
  }
}

#!/usr/bin/env bun
/**
 * Real firmware, timed: a BIOS machine (SeaBIOS and its NIC's iPXE ROM) and a UEFI machine
 * (OVMF's PXE, then iPXE's snponly.efi) network-boot through tftpd, tftpd-hpa and dnsmasq's
 * TFTP, one after another in each round, with the firmware tests' harness
 * (test/helpers/firmware.ts): the same boot LAN, DHCP, scripts, files (a Linux kernel, an
 * initramfs, an 8 MiB initrd) and QEMU machine for every server. Prints, per boot, the seconds
 * from power-on to each step, and the TFTP part alone: from the missing-file refusal to the
 * last file fetched (kernel, initramfs and initrd: about 19 MiB, lock-step, as iPXE asks).
 *
 * QEMU runs under software emulation (TCG): most of a boot is the emulated firmware itself,
 * the same for every server. Peers are fetched with `apt-get download` into .bench/ (see
 * build/peers.ts); needs root (network namespaces) and the firmware packages
 * (`npm run test:firmware` installs them).
 *
 *   bun build/bench-firmware.ts [--binary dist/tftpd] [--rounds N] [--firmware bios,uefi]
 *                               [--servers tftpd,tftpd-hpa,dnsmasq]
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ensurePeer } from "./peers.ts";
import {
  bootMachine, dnsmasqTftpServer, prepareBootRoot, STEPS, tftpdHpaServer, tftpdServer,
  type BootRun, type BootServer, type Firmware,
} from "../test/helpers/firmware.ts";

const REPO = new URL("../", import.meta.url).pathname;
const { values: opts } = parseArgs({
  options: {
    binary: { type: "string", default: join(REPO, "dist/tftpd") },
    rounds: { type: "string", default: "1" },
    firmware: { type: "string", default: "bios,uefi" },
    servers: { type: "string", default: "tftpd,tftpd-hpa,dnsmasq" },
  },
});
const say = (line: string): void => console.error(`bench-firmware: ${line}`);
const rounds = Number(opts.rounds);
const firmwares = opts.firmware.split(",") as Firmware[];
if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds must be a whole number ≥ 1, not ${opts.rounds}`);
for (const f of firmwares) if (f !== "bios" && f !== "uefi") throw new Error(`--firmware takes bios and uefi, not ${f}`);

const CACHE = join(REPO, ".bench");
function server(name: string): BootServer {
  switch (name) {
    case "tftpd":
      if (!existsSync(opts.binary)) throw new Error(`no tftpd binary at ${opts.binary}: run npm run build, or give --binary PATH`);
      return tftpdServer(opts.binary);
    case "tftpd-hpa":
      return tftpdHpaServer(ensurePeer("tftpd-hpa", CACHE, say).path);
    case "dnsmasq":
      return dnsmasqTftpServer(ensurePeer("dnsmasq", CACHE, say).path);
    default:
      throw new Error(`unknown server ${name}: tftpd, tftpd-hpa or dnsmasq`);
  }
}
const servers = opts.servers.split(",").map(server);

const root = await prepareBootRoot({ say });
const runs: BootRun[] = [];
try {
  for (let round = 1; round <= rounds; round++) {
    for (const firmware of firmwares) {
      for (const s of servers) {
        say(`round ${round}: ${firmware} through ${s.name}`);
        const run = await bootMachine({ firmware, server: s, root });
        const ok = run.failures.length === 0 && run.steps.length === STEPS.length && run.linuxSha256 === root.payloadSha256;
        if (!ok) say(`${firmware} through ${s.name} did not boot (${run.ending}): ${run.serial.slice(-1500)}`);
        runs.push(run);
      }
    }
  }
} finally {
  root.remove();
}

const at = (run: BootRun, step: (typeof STEPS)[number]): number | null => run.steps.find((s) => s.step === step)?.seconds ?? null;
const fmt = (n: number | null): string => (n === null ? "–" : n.toFixed(1));
const fetchedMiB = (["vmlinuz", "init.cpio", "big.cpio"].reduce((sum, f) => sum + root.sizes[f]!, 0) / 2 ** 20).toFixed(1);
console.log(`\nFirmware boots (QEMU under TCG, seconds from power-on; ${rounds} round${rounds > 1 ? "s" : ""})\n`);
console.log(`| firmware | server | first script | 8 MiB fetched | Linux checked | TFTP part (${fetchedMiB} MiB) | result |`);
console.log("| --- | --- | --- | --- | --- | --- | --- |");
for (const run of runs) {
  const fetched = at(run, "files fetched");
  const refused = at(run, "missing file refused");
  const tftpPart = fetched !== null && refused !== null ? fetched - refused : null;
  const ok = run.linuxSha256 === root.payloadSha256 ? "booted, checksum ok" : run.ending;
  console.log(`| ${run.firmware} | ${run.server} | ${fmt(at(run, "boot script"))} | ${fmt(fetched)} | ${fmt(at(run, "linux checked"))} | ${fmt(tftpPart)} | ${ok} |`);
}

/**
 * Real firmware boots through the compiled tftpd: a BIOS machine (SeaBIOS and its NIC's iPXE
 * ROM) and a UEFI machine (OVMF's own PXE, then iPXE's snponly.efi), each in QEMU on a boot
 * LAN of its own with the README's dnsmasq as its DHCP server (test/helpers/firmware.ts).
 * Each chains a second script, is refused a missing file, fetches a kernel, an initramfs and an
 * 8 MiB initrd, and boots Linux, which prints the initrd's SHA-256: the bytes as the machine
 * received them. The server's log must show every file whole.
 *
 * Needs root, iproute2 and QEMU, OVMF and iPXE from Debian; `npm run test:firmware` and
 * .ci/run install them. Without them these tests are skipped, and say so.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { compiledBinary } from "../../helpers/binary.ts";
import {
  bootMachine, logRecords, MACHINE_MAC, MACHINE_TEMPLATE, missingFirmwarePackages, prepareBootRoot, STEPS, TFTP_HOST, tftpdServer,
  type BootRoot, type BootRun, type Firmware,
} from "../../helpers/firmware.ts";

setDefaultTimeout(360_000);

const missing = missingFirmwarePackages();
if (missing.length > 0) {
  console.warn(`firmware boot tests SKIPPED: this machine lacks ${missing.join(", ")} (run npm run test:firmware as root, or apt-get install -y ${missing.join(" ")})`);
}

/** Files every boot fetches, in the order it fetches them. */
const SCRIPTED_FILES = ["boot.ipxe", "second.ipxe", "vmlinuz", "init.cpio", "big.cpio"];

describe.skipIf(missing.length > 0)("real firmware boots through tftpd", () => {
  let root: BootRoot;
  let binary: string;

  beforeAll(async () => {
    binary = await compiledBinary();
    root = await prepareBootRoot();
  });
  afterAll(() => root?.remove());

  function report(run: BootRun): void {
    const steps = run.steps.map((s) => `${s.step} ${s.seconds.toFixed(1)} s`).join(", ");
    console.log(`${run.firmware} through ${run.server}: ${steps}; ${run.ending}`);
  }

  /** What every good boot shows: the steps in order, the checksum, each file whole in the log. */
  function expectBooted(run: BootRun, firmware: Firmware): Record<string, unknown>[] {
    const context = `serial console:\n${run.serial.slice(-4000)}\nserver:\n${run.serverOutput.slice(-4000)}`;
    if (run.failures.length > 0 || run.steps.length !== STEPS.length) console.error(context);
    expect(run.failures).toEqual([]);
    expect(run.steps.map((s) => s.step)).toEqual([...STEPS]);
    expect(run.linuxSha256).toBe(root.payloadSha256);
    expect(run.ending).toBe("powered off");

    const records = logRecords(run.serverOutput);
    const transfers = records.filter((r) => r.msg === "transfer");
    const files = firmware === "uefi" ? ["snponly.efi", ...SCRIPTED_FILES] : SCRIPTED_FILES;
    for (const file of files) {
      const whole = transfers.filter((r) => r.file === file && r.result === "ok");
      expect({ file, served: whole.length }).toEqual({ file, served: 1 });
      expect({ file, bytes: whole[0]!.bytes }).toEqual({ file, bytes: root.sizes[file]! });
    }
    // the first file a BIOS machine's ROM asks for is the script: it never loads an NBP
    expect(transfers.some((r) => r.file === (firmware === "uefi" ? "undionly.kpxe" : "snponly.efi"))).toBe(false);
    const refused = records.filter((r) => r.msg === "request refused" && r.file === "missing.bin");
    expect(refused.length).toBe(1);
    expect(refused[0]).toMatchObject({ kind: "not_found", code: 1 });
    return transfers;
  }

  test("BIOS: the NIC's iPXE ROM runs boot.ipxe, chains a script, handles a missing file, fetches 8 MiB and boots Linux", async () => {
    const run = await bootMachine({ firmware: "bios", server: tftpdServer(binary), root });
    report(run);
    const transfers = expectBooted(run, "bios");
    // iPXE asks blksize and tsize, lock-step
    const big = transfers.find((r) => r.file === "big.cpio" && r.result === "ok")!;
    expect(big).toMatchObject({ windowsize: 1, tsize: root.sizes["big.cpio"] });
    expect(big.blksize as number).toBeGreaterThan(512);
  });

  test("UEFI: OVMF's PXE probes the size (ERROR 8), loads snponly.efi with windowsize 4, and iPXE boots Linux from it", async () => {
    const run = await bootMachine({ firmware: "uefi", server: tftpdServer(binary), root });
    report(run);
    const transfers = expectBooted(run, "uefi");
    const nbp = transfers.filter((r) => r.file === "snponly.efi");
    // EDK2 first asks only for the size, and ends that transfer itself with ERROR 8 ...
    const probe = nbp.find((r) => r.result !== "ok");
    expect(probe).toMatchObject({ tsize: root.sizes["snponly.efi"], error: { code: 8, from: "client" } });
    // ... then loads the file windowed
    expect(nbp.find((r) => r.result === "ok")).toMatchObject({ windowsize: 4, bytes: root.sizes["snponly.efi"] });
  });

  test("BIOS through a per-network rule that refuses blksize (a ROM that breaks on it): the boot works on 512-byte blocks", async () => {
    const config = { tftp: { rules: [{ clients: "192.0.2.0/24", refuse_options: ["blksize"] }] } };
    const run = await bootMachine({ firmware: "bios", server: tftpdServer(binary, config), root });
    report(run);
    const transfers = expectBooted(run, "bios");
    const ok = transfers.filter((r) => r.result === "ok");
    expect(ok.length).toBe(SCRIPTED_FILES.length);
    for (const r of ok) {
      expect({ file: r.file, blksize: r.blksize }).toEqual({ file: r.file, blksize: 512 });
      // the ROM asked for it; the rule left it out of the answer
      expect(r.options as string[]).toContain("blksize");
    }
  });
});

describe.skipIf(missing.length > 0)("real firmware boots over HTTP from the same server", () => {
  let root: BootRoot;
  let binary: string;
  const config = { http: { enabled: true, listen: [`${TFTP_HOST}:80`] } };

  beforeAll(async () => {
    binary = await compiledBinary();
    root = await prepareBootRoot();
  });
  afterAll(() => root?.remove());

  /** A good boot whose every file came over HTTP (GET, 200, whole), the missing one a 404, none over TFTP. */
  function expectBootedOverHttp(run: BootRun, files: string[]): Record<string, unknown>[] {
    console.log(`${run.firmware} through tftpd over HTTP: ${run.steps.map((s) => `${s.step} ${s.seconds.toFixed(1)} s`).join(", ")}; ${run.ending}`);
    if (run.failures.length > 0 || run.steps.length !== STEPS.length) console.error(`serial:\n${run.serial.slice(-4000)}\nserver:\n${run.serverOutput.slice(-4000)}`);
    expect(run.failures).toEqual([]);
    expect(run.steps.map((s) => s.step)).toEqual([...STEPS]);
    expect(run.linuxSha256).toBe(root.payloadSha256);
    const records = logRecords(run.serverOutput);
    expect(records.filter((r) => r.msg === "transfer" && r.protocol === undefined)).toEqual([]);
    for (const file of files) {
      const got = records.filter((r) => r.msg === "transfer" && r.protocol === "http" && r.file === file && r.method === "GET" && r.status === 200);
      expect({ file, bytes: got[0]?.bytes, result: got[0]?.result }).toEqual({ file, bytes: root.sizes[file]!, result: "ok" });
    }
    expect(records.find((r) => r.msg === "request refused" && r.file === "missing.bin")).toMatchObject({ protocol: "http", status: 404, kind: "not_found" });
    return records;
  }

  test("BIOS with the README's iPXE-over-HTTP block: the NIC's iPXE gets boot.ipxe by URL, chains the second script, is answered 404 for a missing file, and fetches kernel and initrds over HTTP", async () => {
    const run = await bootMachine({ firmware: "bios", server: tftpdServer(binary, config), root, dhcp: "dnsmasq-ipxe-http" });
    expectBootedOverHttp(run, SCRIPTED_FILES);
  });

  test("UEFI HTTP Boot with the README's block: OVMF loads snponly.efi over HTTP, and iPXE boots Linux over HTTP", async () => {
    const run = await bootMachine({ firmware: "uefi-http", server: tftpdServer(binary, config), root, dhcp: "dnsmasq-uefi-http" });
    expectBootedOverHttp(run, ["snponly.efi", ...SCRIPTED_FILES]);
  });
});

describe.skipIf(missing.length > 0)("a real machine boots from the script generated for it", () => {
  let root: BootRoot;
  let binary: string;
  const HUNDRED_MIB = 100 * 1024 * 1024;

  beforeAll(async () => {
    binary = await compiledBinary();
    root = await prepareBootRoot({ script: "rendered", bigFileSize: HUNDRED_MIB });
  });
  afterAll(() => root?.remove());

  test("BIOS over HTTP: boot.ipxe chains ipxe/<its MAC>.ipxe, rendered from the inventory, which fetches a 100 MiB initrd whose bytes Linux checks", async () => {
    // other machines of the inventory name files that do not exist: a wrong match cannot boot
    const machines = Array.from({ length: 200 }, (_, i) => ({
      name: `rack-${i}`,
      match: { mac: `52:54:00:aa:${(i >> 8).toString(16).padStart(2, "0")}:${(i & 255).toString(16).padStart(2, "0")}` },
      profile: "other",
    }));
    machines.splice(137, 0, { name: "lab-7", match: { mac: MACHINE_MAC }, profile: "linux" });
    const inventory = {
      profiles: {
        linux: { kernel: "vmlinuz", initrds: ["init.cpio", "big.cpio"], args: "console=ttyS0 quiet panic=-1" },
        other: { kernel: "no-such-kernel", initrds: [], args: "" },
      },
      machines,
    };
    writeFileSync(join(root.dir, "inventory.json"), JSON.stringify(inventory));
    mkdirSync(join(root.dir, "templates"));
    writeFileSync(join(root.dir, "templates", "machine.ipxe.liquid"), MACHINE_TEMPLATE);
    const config = {
      http: { enabled: true, listen: [`${TFTP_HOST}:80`] },
      generate: {
        inventory: join(root.dir, "inventory.json"),
        templates: join(root.dir, "templates"),
        files: [{ path: "ipxe/{mac}.ipxe", template: "machine.ipxe.liquid" }],
      },
    };
    const run = await bootMachine({ firmware: "bios", server: tftpdServer(binary, config), root, dhcp: "dnsmasq-ipxe-http", memoryMiB: 1024 });
    console.log(`bios through a rendered script over HTTP: ${run.steps.map((s) => `${s.step} ${s.seconds.toFixed(1)} s`).join(", ")}; ${run.ending}`);
    if (run.failures.length > 0 || run.steps.length !== STEPS.length) console.error(`serial:\n${run.serial.slice(-4000)}\nserver:\n${run.serverOutput.slice(-4000)}`);
    expect(run.failures).toEqual([]);
    expect(run.steps.map((s) => s.step)).toEqual([...STEPS]);
    // the rendered script named the machine the inventory gives this MAC
    expect(run.steps[1]!.line).toContain(`rendered for lab-7 (${MACHINE_MAC})`);
    expect(run.linuxSha256).toBe(root.payloadSha256);
    expect(root.sizes["big.cpio"]).toBe(HUNDRED_MIB);

    const records = logRecords(run.serverOutput);
    const got = (file: string) => records.filter((r) => r.msg === "transfer" && r.protocol === "http" && r.file === file && r.method === "GET" && r.status === 200);
    const script = got(`ipxe/${MACHINE_MAC.replaceAll(":", "-")}.ipxe`);
    expect(script.length).toBe(1);
    expect(script[0]!.result).toBe("ok");
    for (const file of ["boot.ipxe", "vmlinuz", "init.cpio", "big.cpio"]) {
      expect({ file, bytes: got(file)[0]?.bytes, result: got(file)[0]?.result }).toEqual({ file, bytes: root.sizes[file]!, result: "ok" });
    }
    expect(records.some((r) => r.file === "second.ipxe" || r.file === "no-such-kernel")).toBe(false);
  });
});

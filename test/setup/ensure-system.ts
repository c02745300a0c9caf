/**
 * Runs before `bun test` (see package.json): the end-to-end tests drive real TFTP clients
 * from Debian. Installs what is missing when we are root and apt-get exists; otherwise says
 * the one command to run, and fails. The firmware boots (QEMU, OVMF, iPXE) are the exception:
 * without root their tests are skipped and say so, unless `--firmware` asks for them.
 */
import { existsSync } from "node:fs";
import { FIRMWARE_PACKAGES } from "../helpers/firmware.ts";

interface Requirement {
  /** a file the package provides */
  path: string;
  /** the Debian package */
  pkg: string;
  /** optional check that the right program is installed under that name */
  check?: () => boolean;
  /** what the firmware boots alone need (test/e2e/firmware/) */
  firmware?: boolean;
}

const isTftpHpa = (): boolean => {
  const out = Bun.spawnSync(["tftp", "-V"], { stdout: "pipe", stderr: "pipe" });
  return `${out.stdout}${out.stderr}`.includes("tftp-hpa");
};

const requirements: Requirement[] = [
  { path: "/usr/bin/curl", pkg: "curl" },
  { path: "/usr/bin/tftp", pkg: "tftp-hpa", check: isTftpHpa },
  { path: "/usr/bin/atftp", pkg: "atftp" },
  // systemd-analyze verify/security for the unit; shellcheck for install.sh
  { path: "/usr/bin/systemd-analyze", pkg: "systemd" },
  { path: "/usr/bin/shellcheck", pkg: "shellcheck" },
  // the Redis Cluster the cluster-mode tests start (test/helpers/redis-cluster.ts)
  { path: "/usr/bin/redis-server", pkg: "redis-server" },
  { path: "/usr/bin/redis-cli", pkg: "redis-tools" },
  // network namespaces and veth pairs for the neighbour-table tests (test/helpers/netns.ts)
  { path: "/sbin/ip", pkg: "iproute2" },
  // a slow fdatasync, injected into the server's system calls (io.write_behind tests)
  { path: "/usr/bin/strace", pkg: "strace" },
  // promtool checks and unit-tests the alert rules (dashboards/alerts.yml)
  { path: "/usr/bin/promtool", pkg: "prometheus" },
  // the README's dnsmasq DHCP snippet and a DHCP client, run in network namespaces (test/e2e/net/dhcp-boot.test.ts)
  { path: "/usr/sbin/dnsmasq", pkg: "dnsmasq-base" },
  { path: "/bin/busybox", pkg: "busybox" },
  // a self-signed certificate for the HTTPS test (test/e2e/http/http.test.ts)
  { path: "/usr/bin/openssl", pkg: "openssl" },
  // real BIOS and UEFI machines that network-boot through tftpd (test/helpers/firmware.ts)
  ...FIRMWARE_PACKAGES.map((p) => ({ ...p, firmware: true })),
];

const firmwareRequired = process.argv.includes("--firmware");
const missingOf = (list: Requirement[]): string[] => [
  ...new Set(list.filter((r) => !existsSync(r.path) || (r.check && !r.check())).map((r) => r.pkg)),
];
const missing = missingOf(requirements);
if (missing.length === 0) process.exit(0);

const isRoot = process.getuid?.() === 0;
if (!isRoot || !existsSync("/usr/bin/apt-get")) {
  const command = `apt-get install -y ${missing.join(" ")}`;
  const needed = missingOf(requirements.filter((r) => firmwareRequired || !r.firmware));
  if (needed.length > 0) {
    console.error(`tests need ${needed.join(", ")}: run  sudo ${command}`);
    process.exit(1);
  }
  console.error(`the firmware boot tests will be skipped (no ${missing.join(", ")}): run  sudo ${command}`);
  process.exit(0);
}
const command = `apt-get install -y ${missing.join(" ")}`;
console.error(`installing ${missing.join(" ")} for the end-to-end tests`);
const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
for (const cmd of [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", ...missing]]) {
  const result = Bun.spawnSync(cmd, { env, stdout: "inherit", stderr: "inherit" });
  if (result.exitCode !== 0) {
    console.error(`'${cmd.join(" ")}' failed (exit ${result.exitCode}); run  sudo ${command}`);
    process.exit(1);
  }
}

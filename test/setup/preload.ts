/**
 * Loaded before every test file (bunfig.toml): servers started by tests, and their children,
 * leave this machine's kernel settings alone, and keep the user the tests run as. Tuning itself
 * is tested against a temporary sysctl tree (tftpd tune --sysctl-root). The Redis clusters
 * tests started are stopped after the last test.
 */
import { afterAll } from "bun:test";
import { stopAllRedisClusters } from "../helpers/redis-cluster.ts";

process.env.TFTPD_TUNE_ENABLED ??= "false";
// Run as root (as CI does), servers started by tests would drop to an unprivileged user and lose
// the root-owned temporary roots the tests serve and upload into: they keep root unless a test
// unsets this (the privilege drop's own tests do). Not root, there is nothing to keep.
if (process.geteuid?.() === 0) process.env.TFTPD_TFTP_USER ??= "root";

afterAll(async () => {
  await stopAllRedisClusters();
});

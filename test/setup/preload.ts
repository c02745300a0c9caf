/**
 * Loaded before every test file (bunfig.toml): servers started by tests, and their children,
 * leave this machine's kernel settings alone. Tuning itself is tested against a temporary
 * sysctl tree (tftpd tune --sysctl-root). The Redis clusters tests started are stopped after
 * the last test.
 */
import { afterAll } from "bun:test";
import { stopAllRedisClusters } from "../helpers/redis-cluster.ts";

process.env.TFTPD_TUNE_ENABLED ??= "false";

afterAll(async () => {
  await stopAllRedisClusters();
});

/**
 * Loaded before every test file (bunfig.toml): servers started by tests, and their children,
 * leave this machine's kernel settings alone. Tuning itself is tested against a temporary
 * sysctl tree (tftpd tune --sysctl-root).
 */
process.env.TFTPD_TUNE_ENABLED ??= "false";

/**
 * The test-only switches are read once into one object; a switch set to a bad value is an error
 * naming the variable, not a silent NaN.
 */
import { expect, test } from "bun:test";
import { readTestSwitches } from "../../src/config/test-switches.ts";

test("none set: every switch is off", () => {
  expect(readTestSwitches({})).toEqual({ drop: null, workerThrowAfterJobs: null, sysctlRoot: null, heartbeatMs: null, configPollMs: null });
});

test("each switch is read from its variable", () => {
  const env = {
    TFTPD_TEST_DROP: "out:data:3",
    TFTPD_TEST_WORKER_THROW: "2",
    TFTPD_TEST_SYSCTL_ROOT: "/tmp/sysctl",
    TFTPD_TEST_HEARTBEAT_MS: "200",
    TFTPD_TEST_CONFIG_POLL_MS: "150",
  };
  expect(readTestSwitches(env)).toEqual({ drop: "out:data:3", workerThrowAfterJobs: 2, sysctlRoot: "/tmp/sysctl", heartbeatMs: 200, configPollMs: 150 });
});

test("a bad number names the variable and the value", () => {
  for (const [name, value] of [["TFTPD_TEST_WORKER_THROW", "abc"], ["TFTPD_TEST_HEARTBEAT_MS", "0"], ["TFTPD_TEST_CONFIG_POLL_MS", "-5"], ["TFTPD_TEST_WORKER_THROW", "1.5"]] as const) {
    expect(() => readTestSwitches({ [name]: value })).toThrow(`${name}: expected a positive integer, got "${value}"`);
  }
});

/**
 * Deciding who the server runs as (pure: a table of accounts stands in for the system's), and
 * reading who a thread runs as from /proc.
 */
import { describe, expect, test } from "bun:test";
import { accountsFrom, parseGroupLine, parsePasswdLine, systemAccounts } from "../../../src/ops/accounts.ts";
import { parseUserSpec, planPrivileges, statusRunsAs, threadsNotRunningAs } from "../../../src/ops/privilege.ts";

const PASSWD = [
  "root:x:0:0:root:/root:/bin/bash",
  "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin",
  "tftpd:x:998:997::/srv/tftp:/usr/sbin/nologin",
  "alice:x:1000:1000:Alice:/home/alice:/bin/bash",
  "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin",
].join("\n");
const GROUP = ["root:x:0:", "daemon:x:1:", "tftpd:x:997:", "alice:x:1000:", "netboot:x:1500:alice", "nogroup:x:65534:"].join("\n");
const withTftpd = accountsFrom(PASSWD, GROUP);
const withoutTftpd = accountsFrom(PASSWD.replace(/^tftpd.*$/m, ""), GROUP);
const ROOT = { uid: 0, gid: 0 };
const ALICE = { uid: 1000, gid: 1000 };

describe("USER[:GROUP]", () => {
  test("names and numeric ids, with or without a group", () => {
    expect(parseUserSpec("tftpd")).toEqual({ user: "tftpd", group: null });
    expect(parseUserSpec("nobody:nogroup")).toEqual({ user: "nobody", group: "nogroup" });
    expect(parseUserSpec("65534:65534")).toEqual({ user: "65534", group: "65534" });
  });

  test("anything else is malformed", () => {
    for (const bad of ["", ":", "a:", ":b", "a:b:c", "a b", "../x", "a:b/c"]) expect(parseUserSpec(bad)).toBeNull();
  });
});

describe("started as root", () => {
  test("no setting: tftpd when it exists, with its primary group", () => {
    expect(planPrivileges(null, ROOT, withTftpd)).toEqual({ action: "drop", user: "tftpd", uid: 998, group: "tftpd", gid: 997 });
  });

  test("no setting and no tftpd: nobody", () => {
    expect(planPrivileges(null, ROOT, withoutTftpd)).toEqual({ action: "drop", user: "nobody", uid: 65534, group: "nogroup", gid: 65534 });
  });

  test("no setting and neither account: refused, saying how to choose", () => {
    const plan = planPrivileges(null, ROOT, accountsFrom("root:x:0:0::/root:/bin/sh", "root:x:0:"));
    expect(plan).toEqual({
      action: "refuse",
      reason: 'started as root with no user to run as, and neither "tftpd" nor "nobody" exists: name one (--user USER[:GROUP]), or --user root to keep root',
    });
  });

  test("root (by name or id) keeps root", () => {
    expect(planPrivileges("root", ROOT, withTftpd)).toEqual({ action: "keep-root" });
    expect(planPrivileges("0", ROOT, withTftpd)).toEqual({ action: "keep-root" });
  });

  test("a named user and group", () => {
    expect(planPrivileges("alice:netboot", ROOT, withTftpd)).toEqual({ action: "drop", user: "alice", uid: 1000, group: "netboot", gid: 1500 });
    expect(planPrivileges("1000", ROOT, withTftpd)).toEqual({ action: "drop", user: "alice", uid: 1000, group: "alice", gid: 1000 });
  });

  test("numeric ids need no entry, but then a group must be named", () => {
    expect(planPrivileges("4242:4343", ROOT, withTftpd)).toEqual({ action: "drop", user: "4242", uid: 4242, group: "4343", gid: 4343 });
    expect(planPrivileges("4242", ROOT, withTftpd)).toEqual({
      action: "refuse",
      reason: "user 4242 has no entry to take a group from: name one (--user 4242:GROUP)",
    });
  });

  test("unknown users and groups are refused by name", () => {
    expect(planPrivileges("mallory", ROOT, withTftpd)).toEqual({ action: "refuse", reason: 'no user "mallory" on this system' });
    expect(planPrivileges("alice:wheel", ROOT, withTftpd)).toEqual({ action: "refuse", reason: 'no group "wheel" on this system' });
  });
});

describe("started as another user", () => {
  test("no setting, or the user it already is: nothing changes", () => {
    expect(planPrivileges(null, ALICE, withTftpd)).toEqual({ action: "stay" });
    expect(planPrivileges("alice", ALICE, withTftpd)).toEqual({ action: "stay" });
    expect(planPrivileges("1000:alice", ALICE, withTftpd)).toEqual({ action: "stay" });
  });

  test("another user or group (root too) is refused: only root can change who it is", () => {
    for (const setting of ["tftpd", "root", "alice:netboot"]) {
      const plan = planPrivileges(setting, ALICE, withTftpd);
      expect(plan).toEqual({
        action: "refuse",
        reason: `running as ${JSON.stringify(setting)} needs the server started as root (it runs as uid 1000, gid 1000); leave tftp.user unset to run as the current user`,
      });
    }
  });
});

describe("the account databases", () => {
  test("passwd and group lines; malformed lines are no entry", () => {
    expect(parsePasswdLine("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin")).toEqual({ name: "nobody", uid: 65534, gid: 65534 });
    expect(parsePasswdLine("broken:x:abc:1:::")).toBeNull();
    expect(parsePasswdLine("")).toBeNull();
    expect(parseGroupLine("nogroup:x:65534:")).toEqual({ name: "nogroup", gid: 65534 });
    expect(parseGroupLine("nogroup:x")).toBeNull();
  });

  test("this system's root is found by name and by id, through getent", () => {
    expect(systemAccounts.user("root")).toEqual({ name: "root", uid: 0, gid: 0 });
    expect(systemAccounts.user("0")).toEqual({ name: "root", uid: 0, gid: 0 });
    expect(systemAccounts.group("0")?.gid).toBe(0);
    expect(systemAccounts.user("no-such-user-tftpd")).toBeNull();
    expect(systemAccounts.user("a:b")).toBeNull();
  });
});

describe("who a thread runs as (/proc status)", () => {
  const status = (uid: string, gid: string, groups: string) => `Name:\tbun\nUid:\t${uid}\nGid:\t${gid}\nFDSize:\t64\nGroups:\t${groups}\n`;

  test("all four uids and gids, and no other group", () => {
    expect(statusRunsAs(status("65534\t65534\t65534\t65534", "65534\t65534\t65534\t65534", ""), 65534, 65534)).toBe(true);
    expect(statusRunsAs(status("65534\t65534\t65534\t65534", "65534\t65534\t65534\t65534", "65534 "), 65534, 65534)).toBe(true);
  });

  test("a saved uid of 0, a root group or a missing line is not dropped", () => {
    expect(statusRunsAs(status("65534\t65534\t0\t65534", "65534\t65534\t65534\t65534", ""), 65534, 65534)).toBe(false);
    expect(statusRunsAs(status("65534\t65534\t65534\t65534", "65534\t65534\t65534\t65534", "0 65534"), 65534, 65534)).toBe(false);
    expect(statusRunsAs("Name:\tbun\n", 65534, 65534)).toBe(false);
  });

  test("this process's own threads, read from /proc/self/task", () => {
    const uid = process.getuid!();
    const gid = process.getgid!();
    const groups = process.getgroups!().filter((g) => g !== gid);
    // every thread of this test process runs with its ids; with other ids, every thread is listed
    if (groups.length === 0) expect(threadsNotRunningAs(uid, gid)).toEqual([]);
    expect(threadsNotRunningAs(uid + 1, gid).length).toBeGreaterThan(0);
  });
});

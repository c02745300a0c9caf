/**
 * The MTU of a local address's interface (net/interfaces.ts interfaceMtu), which decides DF on
 * transfer sockets: read from the interface that holds the address, null when none does or the
 * value cannot be read. The real loopback interface answers too.
 */
import { describe, expect, test } from "bun:test";
import type { NetworkInterfaceInfo } from "node:os";
import { interfaceMtu } from "../../../src/net/interfaces.ts";

const info = (address: string, family: "IPv4" | "IPv6" = "IPv4"): NetworkInterfaceInfo =>
  ({ address, family, netmask: "255.255.255.0", mac: "00:00:00:00:00:00", internal: false, cidr: null }) as NetworkInterfaceInfo;

describe("interfaceMtu", () => {
  const interfaces = { lo: [info("127.0.0.1")], eth0: [info("10.0.0.5"), info("fd00::5", "IPv6")], wg0: [info("10.9.0.1")] };
  const mtus: Record<string, string> = { lo: "65536\n", eth0: "1500\n", wg0: "garbage" };
  const read = (name: string): string => {
    const value = mtus[name];
    if (value === undefined) throw new Error("ENOENT");
    return value;
  };

  test("the MTU of the interface holding the address", () => {
    expect(interfaceMtu("10.0.0.5", interfaces, read)).toBe(1500);
    expect(interfaceMtu("fd00::5", interfaces, read)).toBe(1500);
    expect(interfaceMtu("127.0.0.1", interfaces, read)).toBe(65536);
  });

  test("no interface holds it, or its MTU is unreadable: null", () => {
    expect(interfaceMtu("192.0.2.1", interfaces, read)).toBeNull();
    expect(interfaceMtu("10.9.0.1", interfaces, read)).toBeNull();
    expect(interfaceMtu("10.0.0.5", interfaces, () => {
      throw new Error("EACCES");
    })).toBeNull();
  });

  test("this machine's loopback: a real MTU", () => {
    expect(interfaceMtu("127.0.0.1")).toBeGreaterThanOrEqual(1280);
  });
});

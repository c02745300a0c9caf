/** A client's address as files are named after it: tftpd-hpa's \i and \x, pxelinux's hex names. */
import { describe, expect, test } from "bun:test";
import { addressBytes, addressHex, clientAddressText } from "../../../src/net/client-address.ts";

describe("addressHex: upper-case hex of the address's bytes", () => {
  test("IPv4: 8 digits, as pxelinux names its config files", () => {
    expect(addressHex("192.168.1.10")).toBe("C0A8010A");
    expect(addressHex("127.1.0.5")).toBe("7F010005");
    expect(addressHex("0.0.0.0")).toBe("00000000");
    expect(addressHex("255.255.255.255")).toBe("FFFFFFFF");
  });

  test("IPv4-mapped IPv6 is the IPv4 client", () => {
    expect(addressHex("::ffff:192.168.1.10")).toBe("C0A8010A");
    expect(addressHex("::FFFF:10.0.0.1")).toBe("0A000001");
  });

  test("IPv6: 32 digits, every spelling of an address alike", () => {
    const expected = "20010DB8000000000000000000000005";
    for (const spelling of ["2001:db8::5", "2001:DB8:0:0:0:0:0:5", "2001:0db8::0:5", "2001:db8:0::0005"]) {
      expect(addressHex(spelling)).toBe(expected);
    }
    expect(addressHex("::")).toBe("0".repeat(32));
    expect(addressHex("::1")).toBe(`${"0".repeat(31)}1`);
    expect(addressHex("1:2:3:4:5:6:7:8")).toBe("00010002000300040005000600070008");
    expect(addressHex("fd00:213::")).toBe(`FD000213${"0".repeat(24)}`);
  });

  test("IPv6 with a dotted IPv4 tail (NAT64, IPv4-compatible) keeps all 16 bytes", () => {
    expect(addressHex("64:ff9b::10.0.0.1")).toBe("0064FF9B00000000000000000A000001");
    expect(addressHex("::ffff:0:1.2.3.4")).toBe("0000000000000000FFFF000001020304");
  });

  test("a zone is not part of the address", () => {
    expect(addressHex("fe80::1%eth0")).toBe(`FE80${"0".repeat(27)}1`);
  });

  test("what is not an address gives no digits and no bytes", () => {
    for (const bad of ["", "bogus", "10.0.0", "1.2.3.256", "1::2::3", "::ffff:300.1.1.1", "12345::"]) {
      expect(addressHex(bad)).toBe("");
      expect(addressBytes(bad)).toBeNull();
    }
  });
});

describe("clientAddressText: \\i", () => {
  test("IPv4 as it is; IPv4-mapped as IPv4; IPv6 as the socket reports it, without a zone", () => {
    expect(clientAddressText("10.0.0.1")).toBe("10.0.0.1");
    expect(clientAddressText("::ffff:10.0.0.1")).toBe("10.0.0.1");
    expect(clientAddressText("2001:db8::5")).toBe("2001:db8::5");
    expect(clientAddressText("fe80::1%eth0")).toBe("fe80::1");
  });
});

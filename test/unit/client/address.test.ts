import { describe, expect, test } from "bun:test";
import { DEFAULT_TFTP_PORT, formatHostPort, parseHostPort } from "../../../src/net/address.ts";

describe("parseHostPort", () => {
  test("accepted forms", () => {
    const cases: [string, string, number][] = [
      ["10.0.0.1", "10.0.0.1", 69],
      ["10.0.0.1:6969", "10.0.0.1", 6969],
      ["localhost", "localhost", 69],
      ["tftp.example.com:1069", "tftp.example.com", 1069],
      ["boot-server_1.lan.", "boot-server_1.lan.", 69],
      ["[::1]:6969", "::1", 6969],
      ["[::1]", "::1", 69],
      ["::1", "::1", 69],
      ["fe80::1:2", "fe80::1:2", 69],
      ["[2001:db8::42]:65535", "2001:db8::42", 65535],
      ["::ffff:127.0.0.1", "::ffff:127.0.0.1", 69],
      [" 10.0.0.1:1 ", "10.0.0.1", 1],
    ];
    for (const [spec, host, port] of cases) expect(parseHostPort(spec)).toEqual({ host, port });
    expect(DEFAULT_TFTP_PORT).toBe(69);
    expect(parseHostPort("h", 1069)).toEqual({ host: "h", port: 1069 });
  });

  test("rejected forms name the problem", () => {
    const cases: [string, RegExp][] = [
      ["", /empty host/],
      [":69", /missing host/],
      ["h:", /bad port/],
      ["h:0", /out of range/],
      ["h:65536", /out of range/],
      ["h:123456", /bad port/],
      ["h:x", /bad port/],
      ["h:-1", /bad port/],
      ["[::1", /missing "\]"/],
      ["[10.0.0.1]:69", /bad IPv6/],
      ["[::1]69", /unexpected/],
      ["[::1]:", /bad port/],
      ["1::2::3", /bad IPv6/],
      ["bad host", /bad host name/],
      ["-leading", /bad host name/],
      ["a..b", /bad host name/],
    ];
    for (const [spec, message] of cases) expect(() => parseHostPort(spec)).toThrow(message);
  });
});

describe("formatHostPort", () => {
  test("brackets IPv6 only", () => {
    expect(formatHostPort("10.0.0.1", 69)).toBe("10.0.0.1:69");
    expect(formatHostPort("::1", 6969)).toBe("[::1]:6969");
    expect(formatHostPort("tftp.lan", 69)).toBe("tftp.lan:69");
  });

  test("round trip", () => {
    for (const spec of ["10.0.0.1:69", "[::1]:6969", "tftp.lan:1069"]) {
      const { host, port } = parseHostPort(spec);
      expect(formatHostPort(host, port)).toBe(spec);
    }
  });
});

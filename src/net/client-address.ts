/**
 * A client's address in the forms files are named after: its text as tftpd-hpa's `\i` gives it
 * (inet_ntop: no zone) and its bytes in upper-case hex as `\x` gives them (pxelinux asks for
 * `pxelinux.cfg/C0A8010A` for 192.168.1.10). A client that reached a dual-stack socket over
 * IPv4 is reported as `::ffff:a.b.c.d`; it is an IPv4 client, named as one.
 *
 * The parsing is written out rather than built on node:net's checks: a neighbour table read
 * turns every entry of the kernel's table into a key, thousands at a time.
 */
import { isIPv4 } from "node:net";
import { unmappedAddress } from "./address.ts";

/** The address without a zone ("fe80::1%eth0" → "fe80::1"), IPv4-mapped as IPv4. */
export function clientAddressText(address: string): string {
  const zone = address.indexOf("%");
  return unmappedAddress(zone < 0 ? address : address.slice(0, zone));
}

const HEX_DIGITS = /^[0-9a-fA-F]{1,4}$/;

function parseGroups(parts: readonly string[], into: number[]): boolean {
  for (const part of parts) {
    if (!HEX_DIGITS.test(part)) return false;
    into.push(parseInt(part, 16));
  }
  return true;
}

/** The eight 16-bit groups of an IPv6 address (no zone), or null when the text is not one. */
function ipv6Groups(text: string): number[] | null {
  let head = text;
  let tail: number[] = [];
  if (text.includes(".")) {
    // a dotted IPv4 tail ("64:ff9b::10.0.0.1") stands for the last two groups
    const colon = text.lastIndexOf(":");
    const v4 = text.slice(colon + 1);
    if (colon < 0 || !isIPv4(v4)) return null;
    const [a, b, c, d] = v4.split(".").map(Number) as [number, number, number, number];
    tail = [(a << 8) | b, (c << 8) | d];
    head = text.slice(0, colon + 1);
    // "::1.2.3.4" leaves "::", "1:2:3:4:5:6:1.2.3.4" leaves "1:2:3:4:5:6:" (its last colon is the separator)
    if (!head.endsWith("::")) head = head.slice(0, -1);
  }
  const groups: number[] = [];
  const gap = head.indexOf("::");
  if (gap < 0) {
    if (head !== "" && !parseGroups(head.split(":"), groups)) return null;
    groups.push(...tail);
    return groups.length === 8 ? groups : null;
  }
  if (head.indexOf("::", gap + 1) >= 0) return null;
  const left: number[] = [];
  const right: number[] = [];
  const leftText = head.slice(0, gap);
  const rightText = head.slice(gap + 2);
  if (leftText !== "" && !parseGroups(leftText.split(":"), left)) return null;
  if (rightText !== "" && !parseGroups(rightText.split(":"), right)) return null;
  right.push(...tail);
  const zeros = 8 - left.length - right.length;
  if (zeros < 1) return null;
  return [...left, ...new Array<number>(zeros).fill(0), ...right];
}

/** 4 bytes for IPv4 (and IPv4-mapped), 16 for IPv6, null for anything else. */
export function addressBytes(address: string): Uint8Array | null {
  const text = clientAddressText(address);
  if (isIPv4(text)) return Uint8Array.from(text.split("."), Number);
  const groups = ipv6Groups(text);
  if (groups === null) return null;
  const bytes = new Uint8Array(16);
  groups.forEach((group, i) => {
    bytes[2 * i] = group >> 8;
    bytes[2 * i + 1] = group & 0xff;
  });
  return bytes;
}

const HEX_BYTE = Array.from({ length: 256 }, (_, i) => i.toString(16).toUpperCase().padStart(2, "0"));

/** The address's bytes in upper-case hex: 8 digits for IPv4, 32 for IPv6; "" for anything else. */
export function addressHex(address: string): string {
  const bytes = addressBytes(address);
  if (bytes === null) return "";
  let hex = "";
  for (const byte of bytes) hex += HEX_BYTE[byte];
  return hex;
}

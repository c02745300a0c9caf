/**
 * What an upload reads from: bytes in memory or a local file (read block by block with
 * positional reads, so resending a window needs no buffer of the whole window).
 */
import { closeSync, fstatSync, openSync, readFileSync, readSync } from "node:fs";
import { toNetascii } from "../protocol/netascii.ts";
import { describeFsError } from "./sink.ts";
import type { TransferMode } from "../protocol/packet.ts";

export interface Source {
  /** Bytes that go on the wire (netascii already applied). */
  readonly size: number;
  /** Copies `length` bytes from `position` into `into` at `at`; throws when it cannot. */
  read(into: Uint8Array, at: number, length: number, position: number): void;
  close(): void;
}

export class BytesSource implements Source {
  readonly size: number;
  constructor(private readonly bytes: Uint8Array) {
    this.size = bytes.length;
  }
  read(into: Uint8Array, at: number, length: number, position: number): void {
    into.set(this.bytes.subarray(position, position + length), at);
  }
  close(): void {}
}

export class FileSource implements Source {
  readonly size: number;
  private fd: number | null;

  constructor(private readonly path: string) {
    const fd = openLocal(path);
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new Error(`${path}: not a regular file`);
      this.size = st.size;
    } catch (e) {
      closeSync(fd);
      throw e;
    }
    this.fd = fd;
  }

  read(into: Uint8Array, at: number, length: number, position: number): void {
    if (this.fd === null) throw new Error(`${this.path}: closed`);
    let done = 0;
    while (done < length) {
      const n = readSync(this.fd, into, at + done, length - done, position + done);
      if (n === 0) throw new Error(`${this.path}: file shrank during upload`);
      done += n;
    }
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }
}

function openLocal(path: string): number {
  try {
    return openSync(path, "r");
  } catch (e) {
    throw new Error(`cannot open ${path}: ${describeFsError(e)}`);
  }
}

export function openSource(source: Uint8Array | string, mode: TransferMode): Source {
  if (mode === "netascii") {
    // The converted length is only known after converting, and tsize must state it.
    let raw: Uint8Array;
    if (typeof source === "string") {
      const fd = openLocal(source);
      try {
        raw = readFileSync(fd);
      } catch (e) {
        throw new Error(`cannot read ${source}: ${describeFsError(e)}`);
      } finally {
        closeSync(fd);
      }
    } else {
      raw = source;
    }
    return new BytesSource(toNetascii(raw));
  }
  return typeof source === "string" ? new FileSource(source) : new BytesSource(source);
}

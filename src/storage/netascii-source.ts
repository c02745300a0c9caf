/**
 * netascii reads: the file is converted once, in memory, because the converted length is
 * only known after a full pass and windowed transfers must be able to re-read any block.
 */
import { toNetascii } from "../protocol/netascii.ts";
import { memorySource, type FileSource } from "./source.ts";

/** netascii is for text (configs, menus); larger files are refused rather than buffered. */
export const NETASCII_MAX_BYTES = 64 * 1024 * 1024;

export function netasciiSource(file: FileSource): FileSource {
  const raw = new Uint8Array(file.size);
  let got = 0;
  try {
    got = file.read(0, raw, 0, file.size);
  } finally {
    file.close();
  }
  return memorySource(toNetascii(raw.subarray(0, got)), file.identity);
}

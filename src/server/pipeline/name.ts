/**
 * Step 1, the name: what the request asks for, as the steps after it and the refusal record
 * see it.
 */
import { Opcode, type RequestPacket } from "../../protocol/packet.ts";
import type { Asked } from "./request.ts";

export function nameOf(request: Pick<RequestPacket, "op" | "filename">): Asked {
  // Windows PXE clients send backslashes; remap rules are written against forward slashes.
  return { op: request.op === Opcode.RRQ ? "read" : "write", file: request.filename.replaceAll("\\", "/"), remapped: null };
}

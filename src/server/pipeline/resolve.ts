/**
 * Step 6, resolution: what a read sends (from the client's lookup chain, converted when it
 * asks for netascii) or where a write goes (an upload's sink). Both are lent to the transfer:
 * given back here only if a later step refuses.
 */
import { ErrorCode } from "../../protocol/packet.ts";
import { NETASCII_MAX_BYTES, netasciiSource } from "../../storage/netascii-source.ts";
import type { Requester } from "../../storage/lookup.ts";
import type { FileSource } from "../../storage/source.ts";
import { prepareUpload, type UploadPolicy, type UploadSink } from "../../storage/upload.ts";
import type { Admit } from "./admit.ts";
import type { Confined } from "./confine.ts";
import { isRefused, refused, refusedBy, type Refused, type Taken } from "./request.ts";

export async function resolveRead(confined: Confined, netascii: boolean, admit: Admit, taken: Taken, requester?: Requester): Promise<FileSource | Refused> {
  const opened = await confined.root.lookup.open(confined.relative, netascii, requester);
  if (!opened.ok) return refusedBy(opened);
  const source = opened.source;
  if (!netascii) {
    taken.lend(() => source.close());
    return source;
  }
  if (source.size > NETASCII_MAX_BYTES) {
    source.close();
    return refused(ErrorCode.NOT_DEFINED, "file too large for netascii mode");
  }
  // The converted copy is this transfer's own: it counts against the memory budget, at its
  // peak (the file read whole plus a copy up to twice as long) until it is made.
  const peak = 3 * source.size;
  const giveBackUnused = admit.reserve(peak, taken);
  if (isRefused(giveBackUnused)) {
    source.close();
    return giveBackUnused;
  }
  const converted = netasciiSource(source);
  giveBackUnused(peak - converted.size);
  taken.lend(() => converted.close());
  return converted;
}

export interface WriteSettings {
  policy: UploadPolicy;
  uploadMax: number;
}

export async function resolveWrite(confined: Confined, declaredSize: string | undefined, settings: WriteSettings, taken: Taken): Promise<UploadSink | Refused> {
  // RFC 2349: a declared size the server cannot store (too large, more than the free space)
  // is refused now, not half-way; any run of digits counts, however long.
  const declaredBytes = declaredSize !== undefined && /^[0-9]+$/.test(declaredSize) ? Number(declaredSize) : null;
  const prepared = await prepareUpload(confined.root.real, confined.relative, settings.policy, settings.uploadMax, declaredBytes);
  if (!prepared.ok) return refusedBy(prepared);
  const sink = prepared.sink;
  taken.lend(() => sink.abort());
  return sink;
}

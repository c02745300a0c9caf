/**
 * Step 7, negotiation (RFC 2347): the options granted within the client's policy, or the
 * refusal the protocol layer gives.
 */
import { negotiate, type Negotiated, type NegotiationLimits } from "../../protocol/options.ts";
import type { RequestPacket } from "../../protocol/packet.ts";
import type { ClientPolicy } from "./rules.ts";
import { refused, type Refused } from "./request.ts";

export interface ServerLimits {
  windowBytesMax: number;
  uploadMax: number;
}

export function negotiateFor(
  request: Pick<RequestPacket, "op" | "mode" | "options">,
  policy: ClientPolicy,
  server: ServerLimits,
  size: number | null,
): Negotiated | Refused {
  const limits: NegotiationLimits = {
    blksizeMax: policy.blksizeMax,
    windowsizeMax: policy.windowsizeMax,
    windowBytesMax: server.windowBytesMax,
    uploadMax: server.uploadMax,
  };
  if (policy.refusedOptions) limits.refused = policy.refusedOptions;
  const negotiated = negotiate(request, limits, size);
  if (!negotiated.ok) return refused(negotiated.code, negotiated.message, "options");
  return negotiated;
}

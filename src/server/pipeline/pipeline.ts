/**
 * The road every request takes before its first packet, one step after another:
 * name → network (allow/deny, per-network rules) → remap → confine → admit → resolve →
 * negotiate. Each step answers with a
 * value or a refusal; on a refusal everything the earlier steps took goes back. What comes out
 * is ready to dispatch: the server starts the transfer on an engine.
 */
import type { Negotiated } from "../../protocol/options.ts";
import type { RequestPacket } from "../../protocol/packet.ts";
import type { RemapRule } from "../../storage/remap.ts";
import type { Requester } from "../../storage/lookup.ts";
import type { FileSource } from "../../storage/source.ts";
import type { UploadSink } from "../../storage/upload.ts";
import type { Admit } from "./admit.ts";
import { confine, type ClientDirectories } from "./confine.ts";
import { nameOf } from "./name.ts";
import { negotiateFor, type ServerLimits } from "./negotiate.ts";
import { remapName } from "./remap.ts";
import { resolveRead, resolveWrite, type WriteSettings } from "./resolve.ts";
import type { NetworkRules } from "./rules.ts";
import { isRefused, Taken, type Asked, type Refused } from "./request.ts";

interface AcceptedBase {
  readonly ok: true;
  readonly asked: Asked;
  /** below the root the client is served from: the transfer's name in its record */
  readonly file: string;
  readonly negotiated: Negotiated;
  /** gives back what the transfer holds (admission, memory, lease): call when it ends */
  readonly release: () => void;
}

export type ReadAccepted = AcceptedBase & { readonly op: "read"; readonly source: FileSource };
export type Accepted = ReadAccepted | (AcceptedBase & { readonly op: "write"; readonly sink: UploadSink });

export type RefusedRequest = Refused & { readonly asked: Asked };

/** What a request carries beside its name and address, for generated files. */
export interface RequestContext {
  readonly params: Readonly<Record<string, string>>;
  readonly server: Requester["server"];
}

const NO_CONTEXT: RequestContext = { params: {}, server: { http_base: null, tftp_base: null } };

export interface PipelineParts {
  rules: NetworkRules;
  /** unique roots: null when off */
  directories: ClientDirectories | null;
  admit: Admit;
  limits: ServerLimits;
  write: WriteSettings;
  /** a client's MAC, from the kernel's neighbour tables */
  macOf(address: string): Promise<string | null>;
}

export class RequestPipeline {
  /** the remap rules: replaced by a config pushed to the fleet */
  remap: readonly RemapRule[];

  constructor(
    private readonly parts: PipelineParts,
    remap: readonly RemapRule[],
  ) {
    this.remap = remap;
  }

  async run(request: RequestPacket, clientAddress: string, context: RequestContext = NO_CONTEXT): Promise<Accepted | RefusedRequest> {
    const asked = nameOf(request);
    const taken = new Taken();
    try {
      const accepted = await this.steps(request, clientAddress, asked, taken, context);
      if (isRefused(accepted)) {
        taken.giveBack();
        return { ...accepted, asked };
      }
      return accepted;
    } catch (error) {
      taken.giveBack();
      throw error;
    }
  }

  private async steps(request: RequestPacket, address: string, asked: Asked, taken: Taken, context: RequestContext): Promise<Accepted | Refused> {
    const { rules, directories, admit, limits, write } = this.parts;
    const policy = rules.policyFor(address);
    if (isRefused(policy)) return policy;
    const name = remapName(this.remap, asked, address);
    if (isRefused(name)) return name;
    const confined = await confine(name, policy.root, directories, address);
    if (isRefused(confined)) return confined;
    const notAdmitted = await admit.admit(address, confined.relative, taken);
    if (notAdmitted) return notAdmitted;
    if (asked.op === "read") {
      const requester: Requester = { ip: address, mac: () => this.parts.macOf(address), params: context.params, server: context.server };
      const source = await resolveRead(confined, request.mode === "netascii", admit, taken, requester);
      if (isRefused(source)) return source;
      const negotiated = negotiateFor(request, policy, limits, request.mode === "octet" ? source.size : null);
      if (isRefused(negotiated)) return negotiated;
      return { ok: true, op: "read", asked, file: confined.relative, negotiated, source, release: taken.keep() };
    }
    const negotiated = negotiateFor(request, policy, limits, null);
    if (isRefused(negotiated)) return negotiated;
    const sink = await resolveWrite(confined, request.options.get("tsize"), write, taken);
    if (isRefused(sink)) return sink;
    return { ok: true, op: "write", asked, file: confined.relative, negotiated, sink, release: taken.keep() };
  }
}

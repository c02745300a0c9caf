/**
 * One record per refused request, as TransferRecord is one per transfer: it feeds the log line
 * ("request refused", at info: a missing file is the most common boot failure) and the metrics
 * (counted by kind). Whatever step refuses a request produces it as is.
 */
import { ErrorCode } from "../protocol/packet.ts";

/**
 * Why, as a metrics label: a small fixed set, never free text. "malformed" is a datagram at a
 * listen port that is no valid request (those are counted, not logged: they name no file).
 */
export type RefusalKind = "not_found" | "access" | "limit" | "allow_deny" | "options" | "malformed" | "other";

export const REFUSAL_KINDS: readonly RefusalKind[] = ["not_found", "access", "limit", "allow_deny", "options", "malformed", "other"];

export interface RefusalRecord {
  /** host:port */
  client: string;
  op: "read" | "write";
  /** the name as asked (backslashes made slashes) */
  file: string;
  /** the name after the remap rules, when there are rules and they ran */
  remapped: string | null;
  kind: RefusalKind;
  /** the text of the ERROR sent, or why the request was dropped */
  reason: string;
  /** the ERROR code sent; null when the request was dropped unanswered */
  code: number | null;
  /** absent for TFTP */
  protocol?: "http";
  /** the HTTP status answered */
  status?: number;
}

/** The kind a refusal's ERROR code stands for, when the refusing step names none of its own. */
export function refusalKindOf(code: number | null): RefusalKind {
  switch (code) {
    case ErrorCode.FILE_NOT_FOUND:
      return "not_found";
    case ErrorCode.ACCESS_VIOLATION:
      return "access";
    case ErrorCode.OPTION_REFUSED:
      return "options";
    case ErrorCode.ILLEGAL_OPERATION:
      return "malformed";
    default:
      return "other";
  }
}

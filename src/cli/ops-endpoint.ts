/** Talking to a running server's metrics/control endpoint, for `tftpd metrics` and `tftpd profile`. */
import { fail } from "./args.ts";

const DEFAULT_OPS_URL = "http://127.0.0.1:9469";

/** The endpoint's base URL from --url (default the local metrics listener), without a trailing slash. */
export function opsBase(url: string | undefined): string {
  return (url ?? DEFAULT_OPS_URL).replace(/\/+$/, "");
}

/** GET `url`; any failure is one line naming the URL, and the command exits 1. */
export async function opsGet(command: string, url: string, timeoutMs: number, hint: string): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  } catch (error) {
    fail(command, `${url}: ${(error as Error).message} (${hint})`);
  }
  if (!response.ok) fail(command, `${url}: HTTP ${response.status}: ${(await response.text()).trim()}`);
  return response;
}

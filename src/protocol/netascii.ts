/**
 * netascii (RFC 1350 §1, RFC 764): on the wire a newline is CR LF and a lone CR is CR NUL.
 * The host convention here is Unix: newline = LF.
 */
const CR = 0x0d;
const LF = 0x0a;
const NUL = 0x00;

/** Host bytes → netascii: LF → CR LF, bare CR → CR NUL. */
export function toNetascii(bytes: Uint8Array): Uint8Array {
  let extra = 0;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    if (b === LF || b === CR) extra++;
  }
  if (extra === 0) return bytes;
  const out = new Uint8Array(bytes.length + extra);
  let at = 0;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    if (b === LF) {
      out[at++] = CR;
      out[at++] = LF;
    } else if (b === CR) {
      out[at++] = CR;
      out[at++] = NUL;
    } else {
      out[at++] = b;
    }
  }
  return out;
}

/**
 * netascii → host bytes, fed block by block: a CR at the end of one block pairs with the
 * first byte of the next, so the decoder carries it over.
 */
export class NetasciiDecoder {
  private pendingCR = false;

  /** Returns the host bytes decoded from this chunk (may be empty). */
  push(chunk: Uint8Array): Uint8Array {
    const out = new Uint8Array(chunk.length + 1);
    let at = 0;
    let i = 0;
    if (this.pendingCR && chunk.length > 0) {
      this.pendingCR = false;
      if (chunk[0] === CR) {
        // A bare CR followed by another CR: keep the first, the second starts a new pair.
        out[at++] = CR;
      } else {
        at = this.afterCR(chunk[0]!, out, at);
        i = 1;
      }
    }
    for (; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (b !== CR) {
        out[at++] = b;
      } else if (i + 1 >= chunk.length) {
        this.pendingCR = true;
      } else if (chunk[i + 1] === CR) {
        out[at++] = CR;
      } else {
        at = this.afterCR(chunk[++i]!, out, at);
      }
    }
    return out.subarray(0, at);
  }

  /** Flushes a CR left dangling at the very end of the transfer. */
  end(): Uint8Array {
    if (!this.pendingCR) return new Uint8Array(0);
    this.pendingCR = false;
    return Uint8Array.of(CR);
  }

  private afterCR(next: number, out: Uint8Array, at: number): number {
    if (next === LF) {
      out[at++] = LF;
    } else if (next === NUL) {
      out[at++] = CR;
    } else {
      // Not valid netascii; keep both bytes rather than lose data.
      out[at++] = CR;
      out[at++] = next;
    }
    return at;
  }
}

export function fromNetascii(bytes: Uint8Array): Uint8Array {
  const decoder = new NetasciiDecoder();
  const body = decoder.push(bytes);
  const tail = decoder.end();
  if (tail.length === 0) return body;
  const out = new Uint8Array(body.length + tail.length);
  out.set(body);
  out.set(tail, body.length);
  return out;
}

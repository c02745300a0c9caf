/**
 * The time as transfers read it: performance.now(), but read once per turn of this thread's
 * epoll loop (io-loop.ts) while the turn hands out its datagrams. A turn answers up to
 * hundreds of ACKs, and each answer looks at the clock several times (the round-trip sample,
 * the retransmit deadline, when the window left); the turn takes well under a millisecond, so
 * one reading serves them all. Outside a turn (timers, messages, Bun's sockets) it reads the
 * clock itself.
 */
let turnStartedAt = -1;

export function now(): number {
  return turnStartedAt >= 0 ? turnStartedAt : performance.now();
}

/** Marks the start of a turn's callbacks: now() returns this reading until endTurn(). */
export function beginTurn(): void {
  turnStartedAt = performance.now();
}

export function endTurn(): void {
  turnStartedAt = -1;
}

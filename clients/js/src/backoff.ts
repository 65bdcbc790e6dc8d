// When to reconnect (docs/protocol.md section 7).

export const BASE_MS = 250;
export const CAP_MS = 30_000;

/**
 * Full jitter: a random delay in [0, min(cap, base × 2^attempt)). Spreading reconnects over the
 * whole window keeps thousands of tabs from reconnecting in step after a server restart.
 */
export function backoffDelay(attempt: number, baseMs = BASE_MS, capMs = CAP_MS, random = Math.random): number {
  // 2^attempt overflows to Infinity for large attempts; min() then returns the cap, as wanted.
  return Math.floor(random() * Math.min(capMs, baseMs * 2 ** attempt));
}

/**
 * Whether a close code means "do not reconnect": the server ended the session on purpose (1000)
 * or refused this client, and trying again with the same credentials would be refused again.
 */
export const shouldStop = (code: number): boolean => code == 1000 || (code >= 4400 && code < 4500);

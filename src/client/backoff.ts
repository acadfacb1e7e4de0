/**
 * The wait before retry number `retry` (0 for the first): a random time, uniform
 * between `minDelayMs` and `min(maxDelayMs, minDelayMs × factor^(retry + 1))`. The
 * jitter spans the whole window ("full jitter") so that clients dropped together do not
 * come back together; the floor keeps a crowd of them from hammering a server that is
 * still starting.
 */
export function backoffDelay(retry: number, minDelayMs: number, maxDelayMs: number, factor: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxDelayMs, minDelayMs * factor ** (retry + 1));
  return minDelayMs + random() * Math.max(0, ceiling - minDelayMs);
}

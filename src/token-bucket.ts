/**
 * A token bucket refilled lazily from the clock: no timer per connection. `take()`
 * spends one token when there is one.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    private readonly burst: number,
    private readonly perSecond: number,
    private readonly now: () => number = Date.now,
  ) {
    this.tokens = burst;
    this.last = now();
  }

  /** Spends a token; false when the bucket is empty. */
  take(): boolean {
    const now = this.now();
    if (now > this.last) {
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.perSecond);
      this.last = now;
    }
    // Refills add rounded fractions: 0.92 + 0.08 may come to 0.9999999999999999. A token
    // that exact arithmetic would have is not refused for a rounding error.
    if (this.tokens < 1 - 1e-9) return false;
    this.tokens = Math.max(0, this.tokens - 1);
    return true;
  }
}

/**
 * Remembers a value per key for a fixed window, so a repeated `publish` with the same
 * `cid` gets the first answer again. Entries expire in insertion order, which is also
 * expiry order, so pruning looks only at the oldest entries: no timer, no scan.
 */
export class DedupeWindow<V> {
  private readonly entries = new Map<string, { value: V; expiresAt: number }>();

  constructor(
    private readonly windowMs: number,
    private readonly now: () => number = Date.now,
    private readonly maxEntries = Number.POSITIVE_INFINITY,
  ) {}

  /** The live value for `key`, if any. */
  get(key: string): V | undefined {
    this.prune();
    const entry = this.entries.get(key);
    // Checked itself too: after the wall clock stepped back, insertion order is no longer
    // expiry order, and pruning can stop before an expired entry.
    return entry && entry.expiresAt > this.now() ? entry.value : undefined;
  }

  /** Remembers `value` for `key` for the window from now. */
  set(key: string, value: V): void {
    this.prune();
    this.entries.delete(key);
    if (this.entries.size >= this.maxEntries) {
      const oldest = this.entries.keys().next();
      if (!oldest.done) this.entries.delete(oldest.value);
    }
    this.entries.set(key, { value, expiresAt: this.now() + this.windowMs });
  }

  /** Forgets `key` (a publish that failed may be retried with the same `cid`). */
  delete(key: string): void {
    this.entries.delete(key);
  }

  /** Number of live entries. */
  get size(): number {
    this.prune();
    return this.entries.size;
  }

  private prune(): void {
    const now = this.now();
    for (const [key, entry] of this.entries) {
      if (entry.expiresAt > now) return;
      this.entries.delete(key);
    }
  }
}

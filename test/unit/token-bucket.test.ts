import { expect, it } from 'vitest';
import { TokenBucket } from '../../src/token-bucket.js';

it('lets a burst through, then refills at the rate, never above the burst', () => {
  let now = 0;
  const bucket = new TokenBucket(3, 2, () => now);
  expect([bucket.take(), bucket.take(), bucket.take(), bucket.take()]).toEqual([true, true, true, false]);
  now += 500; // one token at 2 per second
  expect([bucket.take(), bucket.take()]).toEqual([true, false]);
  now += 60_000;
  expect([bucket.take(), bucket.take(), bucket.take(), bucket.take()]).toEqual([true, true, true, false]);
});

it('does not refuse a token that exact arithmetic has, for a rounding error', () => {
  let now = 0;
  // The default publishRate: 100 at once, 20 a second.
  const bucket = new TokenBucket(100, 20, () => now);
  for (let i = 0; i < 99; i++) expect(bucket.take()).toBe(true);
  now = 46;
  expect(bucket.take()).toBe(true); // 1.92 tokens, 0.92 left
  now = 50;
  expect(bucket.take()).toBe(true); // 0.92 + 0.08 = 1 (0.9999999999999999 in floating point)
  const slow = new TokenBucket(1, 1, () => now);
  expect(slow.take()).toBe(true);
  for (let i = 0; i < 9; i++) {
    now += 100;
    expect(slow.take()).toBe(false);
  }
  now += 100;
  expect(slow.take()).toBe(true);
});

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

import { describe, expect, it } from 'vitest';
import { RedisBackplane, RedisHistoryStore, type RedisLike } from '../../src/backplanes/redis.js';

/** A Redis whose GET answers after `ms` (a busy but healthy server, or a remote one). */
function slowRedis(ms: number): RedisLike {
  const fake = {
    status: 'ready',
    get: (_key: string) => new Promise<string | null>((resolve) => setTimeout(() => resolve('7'), ms)),
    xrange: () => Promise.resolve([]),
    evalsha: () => Promise.resolve(null),
    eval: () => Promise.resolve(null),
    ssubscribe: () => Promise.resolve(),
    sunsubscribe: () => Promise.resolve(),
    duplicate: () => fake,
    quit: () => Promise.resolve(),
    disconnect: () => {},
    on: () => fake,
    removeListener: () => fake,
  };
  return fake as unknown as RedisLike;
}

describe('history reads with no timeout (review)', () => {
  it('commandTimeoutMs: Infinity does not make every read fail after 1 ms', async () => {
    const backplane = new RedisBackplane({ redis: slowRedis(30), commandTimeoutMs: Number.POSITIVE_INFINITY, prefix: 'review-timeout' });
    await expect(backplane.history.latestSeq('r')).resolves.toBe(7);
  });

  it('RedisHistoryStore without a timeout (its default) does not time out after 1 ms', async () => {
    const Store = RedisHistoryStore as unknown as new (...args: unknown[]) => RedisHistoryStore;
    const store = new Store(slowRedis(30), { seq: (room: string) => `s:${room}`, history: (room: string) => `h:${room}` }, 500, () => Promise.resolve(null));
    await expect(store.latestSeq('r')).resolves.toBe(7);
  });
});

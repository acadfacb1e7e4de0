import type { Redis } from 'ioredis';

/**
 * Deletes the keys under `prefix`, and only them: the Redis is shared with other suites
 * and other runs. Bounded: one walk of the keyspace with SCAN.
 */
export async function deleteKeys(redis: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  for (let round = 0; round < 100_000; round++) {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 500);
    if (keys.length > 0) await redis.del(...keys);
    cursor = next;
    if (cursor === '0') break;
  }
}

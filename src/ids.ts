import { randomBytes } from 'node:crypto';

/**
 * Makes ids unique across processes and restarts without a syscall per id: a random
 * prefix per generator and a counter.
 */
export function createIdGenerator(): () => string {
  const prefix = randomBytes(9).toString('base64url');
  let counter = 0;
  return () => `${prefix}${(++counter).toString(36)}`;
}

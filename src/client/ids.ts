/**
 * Makes client message ids (`cid`): unique per client without a central counter, so
 * two tabs of the same user never collide in the server's dedupe window.
 */
export function createCidGenerator(): () => string {
  let prefix = '';
  const crypto = (globalThis as { crypto?: { getRandomValues?<A extends Uint32Array>(array: A): A } }).crypto;
  if (crypto?.getRandomValues) {
    for (const word of crypto.getRandomValues(new Uint32Array(3))) prefix += word.toString(36);
  } else {
    // React Native has no Web Crypto by default; collisions only need to be unlikely.
    prefix = Date.now().toString(36) + Math.random().toString(36).slice(2);
  }
  let counter = 0;
  return () => `${prefix}.${(++counter).toString(36)}`;
}

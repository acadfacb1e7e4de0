/**
 * Raised when a call takes longer than it may: a membership loader call past
 * `loaderTimeoutMs`, an authenticator past `authTimeoutMs`, a `RedisBackplane` command
 * past `commandTimeoutMs`. Seen in the `error` event.
 */
export class TimeoutError extends Error {
  /** Always `'TimeoutError'`, to check by name where `instanceof` fails across copies. */
  override readonly name = 'TimeoutError';
}

/** Longest delay `setTimeout` honours; Node turns a longer one into 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Resolves like `promise`, or rejects with a {@link TimeoutError} after `ms`. A timeout
 * longer than a timer can run (about 24.8 days), or infinite, means none.
 */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  if (!(ms <= MAX_TIMER_MS)) return promise;
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new TimeoutError(`${what} timed out after ${ms} ms`)), ms);
    timer.unref?.();
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

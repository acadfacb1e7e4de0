/** Raised when a membership loader call takes longer than `loaderTimeoutMs`. */
export class TimeoutError extends Error {
  /** Always `'TimeoutError'`, to check by name where `instanceof` fails across copies. */
  override readonly name = 'TimeoutError';
}

/** Resolves like `promise`, or rejects with a {@link TimeoutError} after `ms`. */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  if (!Number.isFinite(ms)) return promise;
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

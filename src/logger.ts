/** One log method: pino's `(object, message)` form and the bare `(message)` form. */
export interface LogFn {
  (object: Record<string, unknown>, message?: string): void;
  (message: string): void;
}

/**
 * The logger shape roomwire writes to: a subset of pino's, so a pino logger (or a child
 * of one) can be passed as it is. The default is silent.
 */
export interface Logger {
  /** Routine detail: connections closing, broadcasts and their clean delivery reports. */
  debug: LogFn;
  /** Lifecycle: a connection's auto-join, the manager closing. */
  info: LogFn;
  /**
   * What went wrong and was recovered from: a failed loader call, send or hook, a delivery
   * report with failures or fallback, a slow or abusive connection closed.
   */
  warn: LogFn;
  /** Failures roomwire cannot recover from; part of the shape so any pino logger fits. */
  error: LogFn;
}

const noop = (): void => {};

/** A logger that writes nothing; the default. */
export const silentLogger: Logger = { debug: noop, info: noop, warn: noop, error: noop };

/**
 * `logger` with every method guarded: a logger that throws must not stop roomwire half
 * way through a change (a connection opened but never welcomed, a close half done). What
 * it throws is dropped, as there is nowhere left to report it.
 */
export function guardedLogger(logger: Logger): Logger {
  const guard =
    (method: LogFn): LogFn =>
    (...args: [Record<string, unknown> | string, string?]) => {
      try {
        (method as (...values: unknown[]) => void).apply(logger, args);
      } catch {
        // Nowhere to report it: the logger is what failed.
      }
    };
  return { debug: guard(logger.debug), info: guard(logger.info), warn: guard(logger.warn), error: guard(logger.error) };
}

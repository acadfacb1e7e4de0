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
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
}

const noop = (): void => {};

/** A logger that writes nothing; the default. */
export const silentLogger: Logger = { debug: noop, info: noop, warn: noop, error: noop };

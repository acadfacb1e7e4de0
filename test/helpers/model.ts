import fc from 'fast-check';
import { expect } from 'vitest';

/** How a model-based test runs, read from `<PREFIX>_SEED`, `_PATH` (a replay), `_RUNS` and `_LEN` (steps per run). */
export interface ModelSettings {
  readonly seed: number;
  readonly path: string | undefined;
  readonly runs: number;
  readonly len: number;
}

/** The settings of the model test named `prefix` (`MODEL`, `CLUSTER`), from the environment or the defaults. */
export function modelSettings(prefix: string, defaults: { seed: number; runs: number; len: number }): ModelSettings {
  const env = process.env;
  const seed = Number(env[`${prefix}_SEED`]);
  return {
    seed: Number.isInteger(seed) ? seed : defaults.seed,
    path: env[`${prefix}_PATH`],
    runs: Number(env[`${prefix}_RUNS`] ?? defaults.runs),
    len: Number(env[`${prefix}_LEN`] ?? defaults.len),
  };
}

/**
 * Runs `run` on configurations and step lists fast-check draws (up to `settings.len`
 * steps, not its small default size), and fails on any violation `run` returns or any
 * promise rejection nobody handled meanwhile, with the seed and path to replay it.
 */
export async function assertModel<Config, Step>(
  settings: ModelSettings,
  config: fc.Arbitrary<Config>,
  step: fc.Arbitrary<Step>,
  run: (config: Config, steps: Step[]) => Promise<string[]>,
): Promise<void> {
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  try {
    await fc.assert(
      fc.asyncProperty(config, fc.array(step, { minLength: 1, maxLength: settings.len, size: 'max' }), async (cfg, steps) => {
        const violations = await run(cfg, steps);
        await new Promise((resolve) => setTimeout(resolve, 0));
        if (unhandled.length > 0) violations.push(`unhandled rejection: ${String(unhandled.splice(0)[0])}`);
        expect(violations).toEqual([]);
      }),
      { seed: settings.seed, numRuns: settings.runs, ...(settings.path === undefined ? {} : { path: settings.path }) },
    );
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
}

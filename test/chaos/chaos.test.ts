import { describe, expect, it } from 'vitest';
import { runChaos } from './harness.js';

const seeds = (process.env.CHAOS_SEEDS ?? '1').split(',').map(Number);
const durationMs = Number(process.env.CHAOS_MS ?? 20_000);
const servers = Number(process.env.CHAOS_SERVERS ?? 1) as 1 | 2;
const heartbeatMs = Number(process.env.CHAOS_HB ?? 500);
const clients = Number(process.env.CHAOS_CLIENTS ?? 10);
const churn = Number(process.env.CHAOS_CHURN ?? 0.15);
const faultMin = Number(process.env.CHAOS_FAULT_MIN ?? 100);
const faultMax = Number(process.env.CHAOS_FAULT_MAX ?? 600);

const unhandled: unknown[] = [];
process.on('unhandledRejection', (e) => unhandled.push(e));
process.on('uncaughtException', (e) => unhandled.push(e));

describe('chaos', () => {
  for (const seed of seeds) {
    it(`seed ${seed} servers ${servers}`, async () => {
      console.log(`CHAOS seed=${seed} servers=${servers} ms=${durationMs} hb=${heartbeatMs} clients=${clients}`);
      const { violations } = await runChaos({ seed, durationMs, servers, heartbeatMs, clients, churn, faultEveryMs: [faultMin, faultMax] });
      for (const v of violations) console.log(`VIOLATION ${v}`);
      expect(unhandled.map(String)).toEqual([]);
      expect(violations).toEqual([]);
    }, durationMs + 120_000);
  }
});

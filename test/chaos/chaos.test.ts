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
const racy = process.env.CHAOS_RACY === '1';
const publishTimeoutMs = process.env.CHAOS_TIMEOUT ? Number(process.env.CHAOS_TIMEOUT) : undefined;
const history = process.env.CHAOS_HISTORY ? Number(process.env.CHAOS_HISTORY) : undefined;
const big = process.env.CHAOS_BIG ? Number(process.env.CHAOS_BIG) : undefined;
const clientHeartbeatMs = process.env.CHAOS_CLIENT_HB ? Number(process.env.CHAOS_CLIENT_HB) : undefined;

const unhandled: unknown[] = [];
process.on('unhandledRejection', (e) => unhandled.push(e));
process.on('uncaughtException', (e) => unhandled.push(e));

describe('chaos', () => {
  for (const seed of seeds) {
    it(`seed ${seed} servers ${servers}`, async () => {
      console.log(`CHAOS seed=${seed} servers=${servers} ms=${durationMs} hb=${heartbeatMs} clients=${clients} racy=${racy} timeout=${publishTimeoutMs} history=${history} big=${big} clientHb=${clientHeartbeatMs}`);
      const { violations } = await runChaos({ seed, durationMs, servers, heartbeatMs, clients, churn, faultEveryMs: [faultMin, faultMax], racy, publishTimeoutMs, history, big, clientHeartbeatMs, members: process.env.CHAOS_MEMBERS === '1' });
      for (const v of violations) console.log(`VIOLATION ${v}`);
      expect(unhandled.map(String)).toEqual([]);
      expect(violations).toEqual([]);
    }, durationMs + 120_000);
  }
});

import { afterEach, describe, expect, it, vi } from 'vitest';
import { backoffDelay } from '../../src/client/backoff.js';
import { client, rawServer, teardown, trackedWebSocket } from './helpers.js';

afterEach(async () => {
  vi.useRealTimers();
  vi.restoreAllMocks();
  await teardown();
});

describe('backoffDelay', () => {
  it('is uniform between the floor and an exponential ceiling capped at maxDelayMs', () => {
    const at = (retry: number, random: number) => backoffDelay(retry, 100, 1_000, 2, () => random);
    expect([0, 1, 2, 3, 4, 10].map((retry) => at(retry, 0))).toEqual([100, 100, 100, 100, 100, 100]);
    expect([0, 1, 2, 3, 4, 10].map((retry) => at(retry, 1))).toEqual([200, 400, 800, 1_000, 1_000, 1_000]);
    expect(at(1, 0.5)).toBe(250);
    expect(backoffDelay(0, 500, 100, 2, () => 1)).toBe(500); // a floor above the cap wins
    // The first retry waits between minDelayMs and factor times it (ReconnectOptions.minDelayMs).
    expect([0, 1].map((random) => backoffDelay(0, 100, 10_000, 3, () => random))).toEqual([100, 300]);
    for (let i = 0; i < 200; i++) {
      const delay = backoffDelay(i % 12, 100, 1_000, 2);
      expect(delay).toBeGreaterThanOrEqual(100);
      expect(delay).toBeLessThanOrEqual(1_000);
    }
  });
});

describe('roomwire/client reconnect timing per close code', () => {
  /**
   * Against a server that closes every connection with `code` at once, returns the waits
   * between each close and the next attempt, measured on the fake clock.
   */
  async function measure(code: number, rounds = 3): Promise<{ waits: number[]; states: string[] }> {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
    vi.spyOn(Math, 'random').mockReturnValue(0.5);
    const server = await rawServer((socket) => (code === 1006 ? socket.terminate() : socket.close(code, 'scripted')));
    const tracked = trackedWebSocket();
    const c = client({ url: server.url, WebSocket: tracked.WebSocket, reconnect: { minDelayMs: 100, maxDelayMs: 10_000, factor: 2 } });
    const result: number[] = [];
    for (let round = 1; round <= rounds; round++) {
      // Real I/O runs between setImmediate rounds while the fake clock stands still; at most 3 s of wall time.
      const deadline = performance.now() + 3_000;
      while (tracked.closedAt.length < round && performance.now() < deadline) await new Promise((resolve) => setImmediate(resolve));
      expect(tracked.closedAt).toHaveLength(round);
      const next = vi.getTimerCount() > 0 ? nextAttempt(tracked.sockets.length) : undefined;
      result.push(next === undefined ? -1 : next - tracked.closedAt[round - 1]!);
    }
    return { waits: result, states: c.states };

    function nextAttempt(count: number): number | undefined {
      for (let i = 0; i < 100 && tracked.sockets.length === count; i++) vi.advanceTimersToNextTimer();
      return tracked.createdAt[count];
    }
  }

  it('backs off exponentially after an abnormal close', async () => {
    // ceilings 200, 400, 800 with random 0.5: halfway between 100 and each
    expect((await measure(1011)).waits).toEqual([150, 250, 450]);
  });

  it('backs off after a dropped TCP connection (1006) the same way', async () => {
    expect((await measure(1006)).waits).toEqual([150, 250, 450]);
  });

  it('reconnects promptly after 1001 (server going away), every time', async () => {
    expect((await measure(1001)).waits).toEqual([50, 50, 50]);
  });

  it('waits longer after 4008 (too slow): between half and all of maxDelayMs', async () => {
    const { waits, states } = await measure(4008);
    expect(waits).toEqual([7_500, 7_500, 7_500]);
    expect(states).toEqual([]); // never welcomed: still connecting
  });
});

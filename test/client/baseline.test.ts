import { afterEach, describe, expect, it, vi } from 'vitest';
import WebSocket from 'ws';
import type { RoomManagerOptions } from '../../src/index.js';
import { MembershipTable, tokenFor } from '../helpers/server.js';
import { client, opened, serve, teardown, until } from './helpers.js';

afterEach(async () => {
  vi.useRealTimers();
  await teardown();
});

const ROOMS = Array.from({ length: 60 }, (_, i) => `room:${i}`);

/** Lets real socket I/O run (the fake clock stands still) until `done`, for at most `ms` of wall time. */
async function ioUntil(done: () => boolean, ms = 3_000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!done() && performance.now() < deadline) await new Promise((resolve) => setImmediate(resolve));
}

/**
 * A server from before `welcome.seqs`: the same server with that field taken out of
 * `welcome` on the client's side of the socket.
 */
const WebSocketWithoutWelcomeSeqs = function (url: string, protocols?: string | string[]) {
  const ws = new WebSocket(url, protocols);
  let listener: ((event: { data: string }) => void) | null = null;
  ws.on('message', (data) => {
    const frame = JSON.parse(String(data)) as { type: string; seqs?: unknown };
    if (frame.type === 'welcome') delete frame.seqs;
    listener?.({ data: JSON.stringify(frame) });
  });
  Object.defineProperty(ws, 'onmessage', { get: () => listener, set: (fn: typeof listener) => (listener = fn), configurable: true });
  return ws;
} as unknown as typeof WebSocket;

describe('roomwire/client learning where auto-joined rooms stand', () => {
  it('takes each auto-joined room’s seq from welcome, sends no join, and a resume replays nothing old', async () => {
    const table = new MembershipTable(Object.fromEntries(ROOMS.map((room) => [room, ['alice']])));
    const s = await serve({ membership: table });
    for (const room of ROOMS) await s.manager.broadcast(room, `history of ${room}`); // seq 1 everywhere
    const joins: string[] = [];
    s.manager.on('join', (event) => {
      if (event.reason === 'join') joins.push(event.room);
    });
    const alice = client({ url: s.url, token: await tokenFor('alice') });
    await opened(alice, 1);
    expect(ROOMS.filter((room) => alice.client.lastSeq(room) === 1)).toHaveLength(ROOMS.length);
    for (const socket of s.adapter.clients) socket.terminate();
    await opened(alice, 2);
    await s.manager.broadcast('room:7', 'fresh');
    await until(() => alice.messages.length === 1, 'the fresh message');
    expect(alice.messages).toMatchObject([{ room: 'room:7', seq: 2, data: 'fresh' }]);
    expect(alice.gaps).toEqual([]);
    expect(joins).toEqual([]);
  });
});

/**
 * Against a server whose `welcome` has no seqs, the client learns each auto-joined room's
 * position with a `join` (answered with the room's latest seq), paced to stay inside the
 * server's join rate limit. Knowing it, a resume replays only what was really missed.
 */
describe('roomwire/client learning where auto-joined rooms stand, from a server without welcome.seqs', () => {
  async function learnAll(joinRate?: RoomManagerOptions['joinRate']) {
    const table = new MembershipTable(Object.fromEntries(ROOMS.map((room) => [room, ['alice']])));
    const s = await serve({ membership: table, ...(joinRate ? { joinRate } : {}) });
    for (const room of ROOMS) await s.manager.broadcast(room, `history of ${room}`); // seq 1 everywhere
    let limited = 0;
    s.manager.on('rateLimited', () => limited++);
    const token = await tokenFor('alice');

    // Fake clock for both sides (the server's rate limiter reads Date.now too); real sockets.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
    const start = Date.now();
    const alice = client({ url: s.url, token, WebSocket: WebSocketWithoutWelcomeSeqs });
    await ioUntil(() => alice.client.state === 'open');
    expect(alice.client.state).toBe('open');
    const known = () => ROOMS.filter((room) => alice.client.lastSeq(room) === 1).length;
    await ioUntil(() => known() >= 20);
    const afterBurst = known();
    for (let step = 0; step < 300 && known() < ROOMS.length; step++) {
      const before = known();
      vi.advanceTimersByTime(200);
      await ioUntil(() => known() > before, 50);
    }
    const elapsed = Date.now() - start;
    vi.useRealTimers();
    return { s, alice, afterBurst, known: known(), elapsed, limited };
  }

  it('paces its joins inside the default join rate, and a resume then replays nothing old', async () => {
    const { s, alice, afterBurst, known, elapsed, limited } = await learnAll();
    expect(afterBurst).toBe(20); // the first burst
    expect(known).toBe(ROOMS.length);
    expect(elapsed).toBeLessThanOrEqual(40 * 200); // then one every 200 ms
    expect(limited).toBe(0);
    expect(alice.errors).toEqual([]);
    expect(alice.joined).toEqual([]); // learning a position is not entering a room

    for (const socket of s.adapter.clients) socket.terminate();
    await opened(alice, 2);
    await s.manager.broadcast('room:7', 'fresh');
    await until(() => alice.messages.length === 1, 'the fresh message');
    expect(alice.messages).toMatchObject([{ room: 'room:7', seq: 2, data: 'fresh' }]);
    expect(alice.gaps).toEqual([]);
  });

  it('backs off when a stricter server answers rate_limited, without being closed for it', async () => {
    const { alice, known, limited } = await learnAll({ burst: 5, perSecond: 5 });
    expect(limited).toBeGreaterThan(0);
    expect(known).toBe(ROOMS.length);
    expect(alice.states).toEqual(['open']);
    expect(alice.errors).toEqual([]);
  });
});

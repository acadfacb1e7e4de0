import { createServer as createTcpServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import WebSocket from 'ws';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { client, once, rawServer, teardown, trackedWebSocket } from './helpers.js';

// Timers and Date are fake so the heartbeat window is exact; sockets stay real (setImmediate is not faked).
beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
});
afterEach(async () => {
  vi.useRealTimers();
  await teardown();
});

/** Lets real socket I/O run while the fake clock stands still. */
async function flushIo(rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise((resolve) => setImmediate(resolve));
}

describe('roomwire/client heartbeat', () => {
  it('detects a frozen server (accepts, never answers) within 2 × heartbeatMs, then reconnects', async () => {
    const frozen = await rawServer();
    const tracked = trackedWebSocket();
    const c = client({ url: frozen.url, WebSocket: tracked.WebSocket, heartbeatMs: 1_000, reconnect: { minDelayMs: 100, maxDelayMs: 100 } });
    await flushIo(1); // the first attempt starts right after connect() returns
    expect(tracked.sockets).toHaveLength(1);
    await once(tracked.sockets[0]!, 'open');

    const pinged = new Promise((resolve) => frozen.sockets[0]!.once('message', resolve));
    vi.advanceTimersByTime(1_000);
    expect(String(await pinged)).toBe('{"type":"ping"}');
    vi.advanceTimersByTime(999);
    await flushIo();
    expect(tracked.sockets[0]!.readyState).toBe(WebSocket.OPEN); // 1999 ms without a frame: still trusted

    const serverSaw = new Promise((resolve) => frozen.sockets[0]!.once('close', resolve));
    vi.advanceTimersByTime(1);
    expect(tracked.sockets[0]!.readyState).toBe(WebSocket.CLOSING); // dropped at exactly 2 × heartbeatMs
    await serverSaw;
    expect(c.client.state).toBe('connecting'); // never welcomed, so not "reconnecting"

    vi.advanceTimersByTime(100);
    expect(tracked.sockets).toHaveLength(2);
    await once(tracked.sockets[1]!, 'open');
    expect(frozen.sockets).toHaveLength(2);
  });

  it('drops an attempt whose WebSocket handshake never completes within 2 × heartbeatMs', async () => {
    // Accepts TCP, never answers the HTTP upgrade: no ping can be answered before welcome.
    const held: Socket[] = [];
    const tcp = createTcpServer((socket) => void held.push(socket));
    try {
      await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
      const tracked = trackedWebSocket();
      client({ url: `ws://127.0.0.1:${(tcp.address() as AddressInfo).port}/ws`, WebSocket: tracked.WebSocket, heartbeatMs: 1_000, reconnect: { minDelayMs: 100, maxDelayMs: 100 } });
      await flushIo(1);
      expect(tracked.sockets).toHaveLength(1);
      await flushIo(20);
      vi.advanceTimersByTime(1_999);
      expect(tracked.sockets[0]!.readyState).toBe(WebSocket.CONNECTING);
      vi.advanceTimersByTime(1);
      expect(tracked.sockets[0]!.readyState).not.toBe(WebSocket.CONNECTING);
    } finally {
      for (const socket of held) socket.destroy();
      await new Promise<void>((resolve) => tcp.close(() => resolve()));
    }
  });

  it("uses the welcome's heartbeatMs and drops a connection that goes silent after welcome", async () => {
    const welcome = { type: 'welcome', protocol: 1, connectionId: 'c1', user: { id: 'alice' }, rooms: [], heartbeatMs: 500 };
    const server = await rawServer((socket, index) => {
      if (index === 0) socket.send(JSON.stringify(welcome));
    });
    const tracked = trackedWebSocket();
    const c = client({ url: server.url, WebSocket: tracked.WebSocket, reconnect: { minDelayMs: 100, maxDelayMs: 100 } });
    const opened = new Promise<void>((resolve) => c.client.on('welcome', () => resolve()));
    await flushIo(1); // the first attempt starts right after connect() returns
    expect(tracked.sockets).toHaveLength(1);
    await opened;
    expect(c.client.state).toBe('open');

    vi.advanceTimersByTime(999);
    await flushIo();
    expect(server.received).toEqual(['{"type":"ping"}']); // one ping at 500 ms
    expect(c.client.state).toBe('open');
    vi.advanceTimersByTime(1);
    expect(c.states).toEqual(['open', 'reconnecting']);
    expect(c.client.connectionId).toBeUndefined();
  });
});

import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { RoomManager, type Handshake } from 'roomwire';
import { attachWebSocket } from 'roomwire/ws';
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { transportContract } from './transport-contract.js';

// The reference adapter: `ws` on a plain node:http server.
transportContract('roomwire/ws', async (manager) => {
  const server = createServer((_request, response) => response.writeHead(404).end());
  const adapter = attachWebSocket(manager, { server, path: '/ws' });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `ws://127.0.0.1:${port}/ws`,
    async close() {
      await adapter.close();
      server.closeAllConnections();
      await new Promise<void>((resolve, reject) => server.close((error) => (error ? reject(error) : resolve())));
    },
  };
});

describe('roomwire/ws handshake', () => {
  it("gives the authenticator the upgrade's url, headers and remoteAddress, as a plain object would", async () => {
    const seen: Handshake[] = [];
    const manager = new RoomManager({
      authenticate: (handshake) => {
        seen.push(handshake);
        return { id: 'alice' };
      },
      membership: { roomsOf: () => [], membersOf: () => [] },
    });
    const server = createServer((_request, response) => response.writeHead(404).end());
    const adapter = attachWebSocket(manager, { server, path: '/ws' });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?token=t`, ['roomwire.v1'], { headers: { 'x-app': 'test' } });
      await new Promise<void>((resolve, reject) => {
        ws.once('message', () => resolve());
        ws.once('error', reject);
      });
      ws.terminate();
      const [handshake] = seen;
      expect(handshake?.url).toBe('/ws?token=t');
      expect(handshake?.headers['x-app']).toBe('test');
      expect(handshake?.remoteAddress).toBe('127.0.0.1');
      // Read when asked, yet an own property: spreading and logging it keep the address.
      expect({ ...handshake }.remoteAddress).toBe('127.0.0.1');
      expect(JSON.parse(JSON.stringify(handshake))).toMatchObject({ url: '/ws?token=t', remoteAddress: '127.0.0.1' });
    } finally {
      await manager.close();
      await adapter.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});

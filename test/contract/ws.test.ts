import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { attachWebSocket } from 'roomwire/ws';
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

/**
 * roomwire as an application would run it: RoomManager with the ws adapter, every
 * default left alone (history, membership cache, heartbeat), a bench authenticator
 * that reads `?user=` and an in-memory loader with the scenario's rooms.
 */
import { createServer } from 'node:http';
import { HandshakeError, RoomManager } from 'roomwire';
import { attachWebSocket } from 'roomwire/ws';
import { membersOf, roomOf, topologyFromArgv, userFromUrl } from '../lib/topology.js';
import { runBenchServer } from './harness.js';

const topology = topologyFromArgv(process.argv);

const manager = new RoomManager({
  authenticate: (handshake) => {
    const user = userFromUrl(handshake.url);
    if (user === undefined || roomOf(user, topology) === undefined) throw HandshakeError.unauthorized('unknown user');
    return { id: user };
  },
  membership: {
    roomsOf: (principal) => {
      const room = roomOf(principal.id, topology);
      return room === undefined ? [] : [room];
    },
    membersOf: (room) => membersOf(room, topology),
  },
  // One connection per user in every scenario; the limit only has to stay out of the way.
  maxConnectionsPerUser: 1_000,
});
// Failures the manager recovers from must not pass unnoticed in a benchmark.
let reported = 0;
manager.on('error', (error, context) => {
  if (reported++ < 5) console.error(`roomwire bench server: ${context.phase}: ${error.message}`);
});

const server = createServer((_request, response) => response.writeHead(404).end());
attachWebSocket(manager, { server, path: '/' });
await runBenchServer(server, () => manager.stats().connections);

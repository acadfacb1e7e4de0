/**
 * What the roomwire bench servers share: the options an application would pass (a bench
 * authenticator that reads `?user=`, an in-memory loader with the scenario's rooms,
 * every other default left alone) and the reporting of the errors the manager recovers
 * from. roomwire.ts runs them alone; roomwire-redis.ts adds the Redis backplane.
 */
import { HandshakeError, type RoomManager, type RoomManagerOptions } from 'roomwire';
import { membersOf, roomOf, userFromUrl, type Topology } from '../lib/topology.js';

/** The manager's options for `topology`, without a backplane. */
export function benchManagerOptions(topology: Topology): RoomManagerOptions {
  return {
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
  };
}

/** Failures the manager recovers from must not pass unnoticed in a benchmark: the first few are printed. */
export function reportManagerErrors(manager: RoomManager, name: string): void {
  let reported = 0;
  manager.on('error', (error, context) => {
    if (reported++ < 5) console.error(`${name}: ${context.phase}: ${error.message}`);
  });
}


/**
 * The broadcast path (`deliver` → `fanOut`) with in-memory connections, against the
 * bare loop it has to match: one JSON.stringify, then one send per socket.
 *   npx vitest bench --run bench/micro
 */
import { RoomManager, type Connection } from 'roomwire';
import { bench, describe } from 'vitest';
import { CountingConnection, openMany, publishAndWaitForAck } from './sinks.js';

/** Connections 0..n-1, user u<i> in room r<floor(i / size)>. */
async function managerWith(connections: number, roomSize: number): Promise<{ manager: RoomManager; conns: CountingConnection[] }> {
  const manager = new RoomManager({
    authenticate: () => ({ id: 'unused' }),
    membership: {
      roomsOf: (user) => [`r${Math.floor(Number(user.id.slice(1)) / roomSize)}`],
      membersOf: (room) => {
        const first = Number(room.slice(1)) * roomSize;
        return Array.from({ length: Math.min(roomSize, connections - first) }, (_, i) => `u${first + i}`);
      },
    },
    maxConnectionsPerUser: 1_000,
    // One publisher publishes as fast as the benchmark loops; the per-connection limit would refuse it.
    publishRate: false,
  });
  const conns = await openMany(manager, connections);
  // Fill the membership cache, as the first broadcast of a live room would.
  for (let r = 0; r * roomSize < connections; r++) await manager.broadcast(`r${r}`, null);
  return { manager, conns };
}

/** The practical limit, in process: encode once, send the same string to each socket. */
function bareLoop(sockets: readonly Connection[], except: Connection | undefined, frame: object): void {
  const text = JSON.stringify(frame);
  for (const socket of sockets) if (socket !== except) socket.send(text);
}

const data = { k: 1, n: 1234, t: 98765432, x: 'the quick brown fox jumps over the lazy dog 0123' };
const publishFrame = (room: string): string => JSON.stringify({ type: 'publish', room, data });

const small = await managerWith(100, 10);
const big = await managerWith(2_000, 2_000);
const bareSmall = Array.from({ length: 10 }, () => new CountingConnection());
const bareBig = Array.from({ length: 2_000 }, () => new CountingConnection());
let seq = 0;
const message = (room: string): object => ({ type: 'message', room, id: `m${++seq}`, seq, from: 'u0', data, ts: Date.now() });

describe('room of 10', () => {
  bench('bare loop: stringify once, 9 sends', () => {
    bareLoop(bareSmall, bareSmall[0], message('r0'));
  });
  bench('RoomManager.broadcast (server message, 10 sends)', async () => {
    await small.manager.broadcast('r0', data, { from: 'u0' });
  });
  bench('client publish: decode, publish, 9 deliveries, ack', async () => {
    await publishAndWaitForAck(small.conns[0] as CountingConnection, publishFrame('r0'));
  });
});

describe('room of 2,000', () => {
  bench('bare loop: stringify once, 1,999 sends', () => {
    bareLoop(bareBig, bareBig[0], message('r0'));
  });
  bench('RoomManager.broadcast (server message, 2,000 sends)', async () => {
    await big.manager.broadcast('r0', data, { from: 'u0' });
  });
  bench('client publish: decode, publish, 1,999 deliveries, ack', async () => {
    await publishAndWaitForAck(big.conns[0] as CountingConnection, publishFrame('r0'));
  });
});

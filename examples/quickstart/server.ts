import { createServer } from 'node:http';
import { HandshakeError, RoomManager } from 'roomwire';
import { attachWebSocket } from 'roomwire/ws';

// Your data: who participates in which room (a database in a real app).
const participants = new Map([['room:general', new Set(['alice', 'bob'])]]);

const rooms = new RoomManager({
  // Use jwtAuthenticator from 'roomwire/auth/jwt' for real credentials.
  authenticate: ({ url }) => {
    const user = new URL(url, 'http://localhost').searchParams.get('user');
    if (!user) throw HandshakeError.unauthorized('add ?user=<name>');
    return { id: user };
  },
  membership: {
    roomsOf: (user) => [...participants].filter(([, users]) => users.has(user.id)).map(([room]) => room),
    membersOf: (room) => participants.get(room) ?? [],
  },
});

const server = createServer((_req, res) => res.end('roomwire quick start: connect to /ws?user=alice\n'));
attachWebSocket(rooms, { server, path: '/ws' });
server.listen(Number(process.env.PORT ?? 8080), '127.0.0.1', () => {
  const { port } = server.address() as { port: number };
  process.stdout.write(`listening on ws://127.0.0.1:${port}/ws?user=alice\n`);
});

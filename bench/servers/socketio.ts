/**
 * Socket.IO 4.8 rooms, websocket transport only, as its docs show them: join the user's
 * room on connection, `socket.to(room).emit(...)` on publish. The emitted object has
 * the same fields as roomwire's `message` frame.
 */
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { Server } from 'socket.io';
import { roomOf, topologyFromArgv } from '../lib/topology.js';
import { runBenchServer } from './harness.js';

const topology = topologyFromArgv(process.argv);
const seqs = new Map<string, number>();
const prefix = randomBytes(6).toString('base64url');
let nextId = 0;

const server = createServer();
const io = new Server(server, { transports: ['websocket'], serveClient: false, perMessageDeflate: false });

io.on('connection', (socket) => {
  const query = socket.handshake.query.user;
  const user = typeof query === 'string' ? query : undefined;
  const room = user === undefined ? undefined : roomOf(user, topology);
  if (user === undefined || room === undefined) {
    socket.disconnect(true);
    return;
  }
  void socket.join(room);
  socket.on('publish', (frame: { room?: unknown; data?: unknown }) => {
    if (typeof frame !== 'object' || frame === null || frame.room !== room) return;
    const seq = (seqs.get(room) ?? 0) + 1;
    seqs.set(room, seq);
    socket.to(room).emit('message', { room, id: `${prefix}${(++nextId).toString(36)}`, seq, from: user, data: frame.data, ts: Date.now() });
  });
});

await runBenchServer(server, () => io.engine.clientsCount);

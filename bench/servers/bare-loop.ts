import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { WebSocketServer, type WebSocket } from 'ws';
import { roomOf, topologyFromArgv, userFromUrl } from '../lib/topology.js';
import { runBenchServer } from './harness.js';

/** Sends one encoded `message` frame to every socket of the room but the publisher. */
export type FanOut = (sockets: ReadonlySet<WebSocket>, publisher: WebSocket, out: Buffer) => void;

const TEXT = { binary: false } as const;

interface Room {
  readonly sockets: Set<WebSocket>;
  seq: number;
}

/**
 * The hand-written Map<room, Set<socket>> loop that the bare server and its pre-framed
 * variant share; they differ only in how a message reaches the sockets (`fanOut`). It
 * speaks roomwire's JSON frames (`publish` in, `message` out, the same fields) and does
 * nothing else: no auth beyond `?user=`, no seq store, no reports, and no ack unless
 * `ack` is set (the bare-ack variant: the same socket writes per publish as roomwire).
 */
export async function runBareLoop(fanOut: FanOut, options: { ack?: boolean } = {}): Promise<void> {
  const ack = options.ack ?? false;
  const topology = topologyFromArgv(process.argv);
  const rooms = new Map<string, Room>();
  const prefix = randomBytes(6).toString('base64url');
  let nextId = 0;

  const server = createServer((_request, response) => response.writeHead(404).end());
  const wss = new WebSocketServer({ server, perMessageDeflate: false });

  wss.on('connection', (socket, request) => {
    const user = userFromUrl(request.url ?? '/');
    const roomName = user === undefined ? undefined : roomOf(user, topology);
    if (user === undefined || roomName === undefined) {
      socket.close(1008, 'unknown user');
      return;
    }
    let room = rooms.get(roomName);
    if (!room) {
      room = { sockets: new Set(), seq: 0 };
      rooms.set(roomName, room);
    }
    const joined = room;
    joined.sockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => {
      joined.sockets.delete(socket);
    });
    socket.on('message', (data, isBinary) => {
      if (isBinary) return;
      let frame: { type?: unknown; room?: unknown; data?: unknown };
      try {
        frame = JSON.parse(String(data)) as typeof frame;
      } catch {
        return;
      }
      if (frame.type !== 'publish' || frame.room !== roomName) return;
      const seq = ++joined.seq;
      const id = `${prefix}${(++nextId).toString(36)}`;
      const out = Buffer.from(JSON.stringify({ type: 'message', room: roomName, id, seq, from: user, data: frame.data, ts: Date.now() }));
      fanOut(joined.sockets, socket, out);
      if (ack) socket.send(Buffer.from(JSON.stringify({ type: 'ack', room: roomName, id, seq })), TEXT);
    });
  });

  await runBenchServer(server, () => wss.clients.size);
}

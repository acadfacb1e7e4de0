/**
 * Not one of the three compared servers: the bare loop with the WebSocket frame built once
 * per message (`WebSocket.Sender.frame`) and the same header and payload written to
 * every socket, as Socket.IO's adapter does with `wsPreEncodedFrame`. It shows how far
 * below the bare loop a broadcast can go by not calling `ws.send` per recipient.
 * Run it with `--servers=bare,preframed,roomwire`.
 */
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import * as wsModule from 'ws';
import { WebSocket, WebSocketServer } from 'ws';
import { roomOf, topologyFromArgv, userFromUrl } from '../lib/topology.js';
import { runBenchServer } from './harness.js';

/** The parts of ws's (untyped, internal) Sender this uses; engine.io relies on the same ones. */
interface FrameBuilder {
  frame(data: Buffer, options: { fin: boolean; opcode: number; mask: boolean; readOnly: boolean; rsv1: boolean }): Buffer[];
}
interface FrameSink {
  _sender: { sendFrame(list: Buffer[], cb?: () => void): void };
}

interface Room {
  readonly sockets: Set<WebSocket>;
  seq: number;
}

// ws's ESM entry exports its Sender class; @types/ws does not declare it.
const Sender = (wsModule as unknown as { Sender: FrameBuilder }).Sender;
const TEXT = { fin: true, opcode: 1, mask: false, readOnly: false, rsv1: false };
const topology = topologyFromArgv(process.argv);
const rooms = new Map<string, Room>();
const prefix = randomBytes(6).toString('base64url');
let nextId = 0;

const server = createServer((_request, response) => response.writeHead(404).end());
// Without permessage-deflate ws's sender never queues, so writing a prebuilt frame is safe.
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
    const out = Buffer.from(
      JSON.stringify({ type: 'message', room: roomName, id: `${prefix}${(++nextId).toString(36)}`, seq, from: user, data: frame.data, ts: Date.now() }),
    );
    const list = Sender.frame(out, TEXT);
    for (const other of joined.sockets) {
      if (other !== socket && other.readyState === WebSocket.OPEN) (other as unknown as FrameSink)._sender.sendFrame(list);
    }
  });
});

await runBenchServer(server, () => wss.clients.size);

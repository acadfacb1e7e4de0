import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import { connect, type ClientError, type ClientOptions, type ClientState, type RoomMessage, type RoomwireClient, type WebSocketConstructor } from 'roomwire/client';
import { RoomManager, type MembershipLoader, type RoomManagerOptions } from '../../src/index.js';
import { jwtAuthenticator } from '../../src/auth/jwt.js';
import { attachWebSocket, type WebSocketAdapter } from '../../src/transports/ws.js';
import { TEST_SECRET } from '../helpers/server.js';

const clients = new Set<RoomwireClient>();
const servers = new Set<{ close(): Promise<void> }>();

/** What a client reported through its events, in order. */
export interface Recorded {
  client: RoomwireClient;
  messages: RoomMessage[];
  states: ClientState[];
  gaps: string[];
  errors: ClientError[];
  joined: { room: string; seq: number }[];
  left: string[];
  welcomes: number;
}

/** `connect` with `ws` and fast reconnects, recording every event; closed by {@link teardown}. */
export function client(options: Partial<ClientOptions> & { url: string }): Recorded {
  const c = connect({ WebSocket, reconnect: { minDelayMs: 10, maxDelayMs: 40 }, ...options });
  clients.add(c);
  const r: Recorded = { client: c, messages: [], states: [], gaps: [], errors: [], joined: [], left: [], welcomes: 0 };
  c.on('message', (m) => r.messages.push(m));
  c.on('state', (s) => r.states.push(s));
  c.on('gap', ({ room }) => r.gaps.push(room));
  c.on('error', (e) => r.errors.push(e));
  c.on('joined', (e) => r.joined.push(e));
  c.on('left', ({ room }) => r.left.push(room));
  c.on('welcome', () => r.welcomes++);
  return r;
}

/** Waits (real time, polling) until `predicate` holds. */
export async function until(predicate: () => boolean, what = 'condition', timeoutMs = 3_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Waits until the client has had `count` welcomes and is open. */
export function opened(r: Recorded, count = 1): Promise<void> {
  return until(() => r.welcomes >= count && r.client.state === 'open', `welcome #${count}`);
}

/** The roomwire test server (as test/helpers/server.ts makes it), on a chosen port, so a test can restart it. */
export interface PortServer {
  manager: RoomManager;
  server: Server;
  adapter: WebSocketAdapter;
  port: number;
  url: string;
  close(): Promise<void>;
}

export async function serve(options: Partial<RoomManagerOptions> & { membership: MembershipLoader }, port = 0): Promise<PortServer> {
  const manager = new RoomManager({ authenticate: jwtAuthenticator({ secret: TEST_SECRET }), ...options });
  const server = createServer((_req, res) => res.writeHead(404).end());
  const adapter = attachWebSocket(manager, { server, path: '/ws' });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  const bound = (server.address() as AddressInfo).port;
  let closing: Promise<void> | undefined;
  const s: PortServer = {
    manager,
    server,
    adapter,
    port: bound,
    url: `ws://127.0.0.1:${bound}/ws`,
    close() {
      closing ??= (async () => {
        await manager.close();
        await adapter.close();
        server.closeAllConnections();
        await new Promise<void>((resolve) => server.close(() => resolve()));
        servers.delete(s);
      })();
      return closing;
    },
  };
  servers.add(s);
  return s;
}

/** A plain `ws` server on port 0 that runs `script` for each connection and records what clients send. */
export async function rawServer(script: (socket: WebSocket, index: number) => void = () => {}): Promise<{
  url: string;
  sockets: WebSocket[];
  received: string[];
  close(): Promise<void>;
}> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: (protocols) => (protocols.has('roomwire.v1') ? 'roomwire.v1' : false) });
  await new Promise<void>((resolve) => wss.once('listening', () => resolve()));
  const sockets: WebSocket[] = [];
  const received: string[] = [];
  wss.on('connection', (socket) => {
    sockets.push(socket);
    socket.on('message', (data) => received.push(String(data)));
    script(socket, sockets.length - 1);
  });
  const s = {
    url: `ws://127.0.0.1:${(wss.address() as AddressInfo).port}/`,
    sockets,
    received,
    async close() {
      for (const socket of wss.clients) socket.terminate();
      await new Promise<void>((resolve) => wss.close(() => resolve()));
      servers.delete(s);
    },
  };
  servers.add(s);
  return s;
}

/**
 * `ws` with a record of every socket made and when (by the possibly fake clock), so
 * fake-timer tests can wait for real I/O events of the client's sockets.
 */
export function trackedWebSocket(onSocket?: (socket: WebSocket, index: number) => void): {
  WebSocket: WebSocketConstructor;
  sockets: WebSocket[];
  createdAt: number[];
  closedAt: number[];
} {
  const sockets: WebSocket[] = [];
  const createdAt: number[] = [];
  const closedAt: number[] = [];
  class Tracked extends WebSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols);
      sockets.push(this);
      createdAt.push(Date.now());
      this.once('close', () => closedAt.push(Date.now()));
      // Before any I/O: a listener added here sees every frame, the first included.
      onSocket?.(this, sockets.length - 1);
    }
  }
  return { WebSocket: Tracked, sockets, createdAt, closedAt };
}

/** Resolves on the next `event` of a `ws` socket (real I/O; works under fake timers). */
export function once(socket: WebSocket, event: 'open' | 'close' | 'message'): Promise<unknown> {
  return new Promise((resolve) => socket.once(event, resolve));
}

/** Closes every client and server the test made. */
export async function teardown(): Promise<void> {
  for (const c of clients) c.close();
  clients.clear();
  await Promise.all([...servers].map((s) => s.close()));
}

/**
 * A WebSocket with no network: `script` runs when one is made and `answer` on each frame
 * the client sends. Returns the class for the client's `WebSocket` option, and the sockets made.
 */
export function scriptedWebSocket(script: (socket: ScriptedSocket) => void, answer: (socket: ScriptedSocket, text: string) => void = () => {}) {
  const made: ScriptedSocket[] = [];
  class Scripted implements ScriptedSocket {
    readyState = 0;
    onopen: (() => void) | null = null;
    onmessage: ((event: { data: string }) => void) | null = null;
    onclose: ((event: { code: number; reason: string }) => void) | null = null;
    onerror: ((event: unknown) => void) | null = null;
    constructor() {
      made.push(this);
      script(this);
    }
    send(text: string): void {
      answer(this, text);
    }
    close(): void {
      this.readyState = 3;
    }
  }
  return { WebSocket: Scripted as unknown as WebSocketConstructor, made };
}

/** One socket of {@link scriptedWebSocket}. */
export interface ScriptedSocket {
  readyState: number;
  onopen: (() => void) | null;
  onmessage: ((event: { data: string }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

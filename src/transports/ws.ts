/**
 * The `ws` transport: serves a `RoomManager` over the [ws](https://github.com/websockets/ws)
 * library on a Node HTTP server, authenticating each upgrade before it becomes a WebSocket.
 * Needs the optional peer dependency `ws`.
 *
 * @module roomwire/ws
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import type { Connection, ConnectionHandlers } from '../connection.js';
import type { Handshake } from '../authenticator.js';
import type { RoomManager } from '../room-manager.js';
import { CloseCode, SUBPROTOCOL } from '../protocol/limits.js';
import { MAX_TIMER_MS } from '../timeout.js';
import { textFrame } from './frame.js';

/** The part of an `http.Server` (or `https.Server`) the adapter uses. */
export interface UpgradeSource {
  /** Adds the adapter's `upgrade` listener. */
  on(event: 'upgrade', listener: (request: IncomingMessage, socket: Duplex, head: Buffer) => void): unknown;
  /** Removes it again when the adapter closes. */
  off(event: 'upgrade', listener: (request: IncomingMessage, socket: Duplex, head: Buffer) => void): unknown;
  /** Tells whether a listener other than roomwire's adapters may serve a path none of them serves (else it gets 404). */
  listenerCount(event: 'upgrade'): number;
}

/** Options of {@link attachWebSocket}. */
export interface WebSocketAdapterOptions {
  /** The HTTP server whose `upgrade` requests are served. */
  server: UpgradeSource;
  /** The path WebSocket upgrades are served on; other paths are left to other listeners. @default '/' */
  path?: string | undefined;
  /**
   * Origins allowed to connect (browsers send `Origin`); others get 403 before any
   * WebSocket exists. Requests without an `Origin` header (non-browser clients) pass.
   * Either a list of exact origins or a function. @default every origin
   */
  allowedOrigins?: readonly string[] | ((origin: string) => boolean) | undefined;
  /**
   * Check every connection once each `heartbeatMs` (from the manager): one that sent a
   * frame since its last check is alive and is not pinged; any other is pinged, and one
   * that left a ping unanswered for two rounds is terminated: 2 heartbeats after its first
   * unanswered ping, which is 2 to 3 after its last pong, or 3 to 4 after its last frame
   * when it was sending (later only when the process stalled).
   * A roomwire client pings every heartbeat, so its connections are rarely pinged back
   * (only when timer drift leaves a round without its ping).
   * One timer serves every connection: it runs every 100 ms and checks the slice of
   * connections due then (one slice per run, as many slices as runs per heartbeat), so a
   * server with many connections never writes all its pings, nor reads all the pongs, in
   * one burst that would hold up its messages. A run that comes late, because this
   * process stalled, counts nobody as silent. @default true
   */
  heartbeat?: boolean | undefined;
  /** permessage-deflate compression; costs CPU per message. @default false */
  perMessageDeflate?: boolean | undefined;
  /** How long `close()` waits for sockets to close before terminating them. @default 5000 */
  closeTimeoutMs?: number | undefined;
}

/** What {@link attachWebSocket} returns: a handle to detach and close its connections. */
export interface WebSocketAdapter {
  /** Open WebSocket connections served by this adapter. */
  readonly clients: ReadonlySet<WebSocket>;
  /**
   * Stops serving upgrades and closes this adapter's connections with 1001, waiting for
   * them up to `closeTimeoutMs`. The manager itself stays open.
   */
  close(): Promise<void>;
  /** Same as `close()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Sweeps a ping may stay unanswered before its connection is terminated: two, so one
 * slow round trip is not a dead peer. A silent connection is gone 2 to 3 heartbeats
 * after it stopped answering.
 */
const MISSED_PINGS_BEFORE_TERMINATE = 2;

/**
 * How often the heartbeat timer runs. Each run pings one slice of the connections, and
 * there are as many slices as runs per heartbeat (250 at the default 25 s), so a server's
 * pings go out a few at a time instead of in one burst: pinging all 2,000 benchmark
 * connections at once held up the messages behind them (docs/benchmarks.md, "The
 * heartbeat burst"), and a tenth of them at a time (200 pings every 2.5 s) still added
 * about 1 ms to its p99 latency.
 */
const HEARTBEAT_TICK_MS = 100;
/** Slices at most: a heartbeat of hours would otherwise make a set per 100 ms of it. */
const MAX_SLICES = 3_000;

/** Sends a Buffer as a text frame. */
const TEXT_FRAME = { binary: false } as const;

/** The parts of a ws socket's underlying stream that the direct write uses. */
interface RawStream {
  write(chunk: Buffer): boolean;
  readonly writableLength: number;
}

/**
 * The stream under a ws socket, when frames may be written to it directly: no extension
 * was negotiated (so ws's sender never compresses or queues, and a frame written here
 * keeps its place among ws's own pings and closes). `_socket` is ws's internal field, the
 * one Socket.IO's pre-encoded frames also rely on; without it, sends go through `ws.send`.
 */
function rawStreamOf(ws: WebSocket): RawStream | undefined {
  if (ws.extensions !== '') return undefined;
  const raw = (ws as unknown as { _socket?: Partial<RawStream> })._socket;
  return raw && typeof raw.write === 'function' && typeof raw.writableLength === 'number' ? (raw as RawStream) : undefined;
}

/** Where a ws socket keeps its manager callbacks, so one set of listener functions serves every socket. */
const kHandlers = Symbol('roomwire.handlers');
/** The heartbeat slice a ws socket is pinged in. */
const kSlice = Symbol('roomwire.heartbeatSlice');
/** Set by every frame a ws socket receives, cleared by its heartbeat check: a socket heard from needs no ping. */
const kHeard = Symbol('roomwire.heard');
type TaggedSocket = WebSocket & { [kHandlers]: ConnectionHandlers; [kSlice]: number; [kHeard]: boolean };

function handlersOf(ws: WebSocket): ConnectionHandlers {
  return (ws as TaggedSocket)[kHandlers];
}

function onMessage(this: WebSocket, data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void {
  (this as TaggedSocket)[kHeard] = true;
  const bytes = Array.isArray(data) ? Buffer.concat(data) : data instanceof ArrayBuffer ? Buffer.from(data) : data;
  // ws has already checked that a text frame is valid UTF-8 (RFC 6455 closes it with 1007
  // otherwise): hand the core the string, which skips a second, strict decode.
  handlersOf(this).message(isBinary ? bytes : bytes.toString(), isBinary);
}

function ignoreError(): void {
  // ws reports protocol errors (a frame over maxPayload: 1009) and then closes; the close handler cleans up.
}

const STATUS_TEXT: Record<number, string> = { 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found' };

/** The paths each server's roomwire adapters serve, so they can tell which upgrades nobody serves. */
const adaptersByServer = new WeakMap<UpgradeSource, Map<string, object>>();

/**
 * Destroys a raw upgrade socket on error. A shared function, not a closure: a closure
 * here would keep each connection's upgrade request alive for the life of its socket.
 */
function destroyOnError(this: Duplex): void {
  this.destroy();
}

/**
 * The core's view of one ws socket. A class rather than an object literal with a getter,
 * which V8 keeps in slow dictionary mode: the broadcast reads `bufferedAmount` and calls
 * `send` once per recipient.
 */
class WsConnection implements Connection {
  private readonly raw: RawStream | undefined;

  constructor(
    private readonly ws: WebSocket,
    private readonly frames: FrameCache,
  ) {
    this.raw = rawStreamOf(ws);
  }

  send(text: string): boolean {
    // A socket that is closing would drop the frame silently; say so, so the core's fallback and report see it.
    if (this.ws.readyState !== 1) return false;
    const raw = this.raw;
    if (raw) raw.write(this.frames.frame(text));
    else this.ws.send(this.frames.bytes(text), TEXT_FRAME);
    return true;
  }

  close(code: number, reason: string): void {
    this.ws.close(code, reason);
  }

  get bufferedAmount(): number {
    // ws adds bytes its sender queued, which it never does without an extension.
    return this.raw ? this.raw.writableLength : this.ws.bufferedAmount;
  }
}

/**
 * A broadcast hands every connection the same string in a row: encode it once, not once
 * per recipient. Server frames are unmasked, so the shared buffers are never written to.
 */
class FrameCache {
  private lastText = '';
  private lastFrame: Buffer | undefined;
  private lastBytes: Buffer | undefined;

  /** The whole WebSocket frame of `text`. */
  frame(text: string): Buffer {
    if (text !== this.lastText || !this.lastFrame) this.reset(text).lastFrame = textFrame(text);
    return this.lastFrame as Buffer;
  }

  /** The UTF-8 bytes of `text`, for ws to frame. */
  bytes(text: string): Buffer {
    if (text !== this.lastText || !this.lastBytes) this.reset(text).lastBytes = Buffer.from(text);
    return this.lastBytes as Buffer;
  }

  private reset(text: string): this {
    if (text !== this.lastText) {
      this.lastText = text;
      this.lastFrame = undefined;
      this.lastBytes = undefined;
    }
    return this;
  }
}

/** Answers an upgrade on the raw socket, before any WebSocket exists. */
function refuse(socket: Duplex, status: number, code: string, message: string): void {
  if (socket.destroyed) return;
  // The HTTP server stopped listening for this socket's errors at the upgrade: a peer that
  // resets it after the answer must not raise an unhandled 'error'. And once the answer is
  // written the socket is released, as ws does, whatever the peer does with its side.
  if (!socket.listeners('error').includes(destroyOnError)) socket.on('error', destroyOnError);
  socket.once('finish', () => socket.destroy());
  const body = JSON.stringify({ error: { code, message } });
  const headers = [
    `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? 'Error'}`,
    'Connection: close',
    'Content-Type: application/json; charset=utf-8',
    `Content-Length: ${Buffer.byteLength(body)}`,
  ];
  if (status === 401) headers.push('WWW-Authenticate: Bearer');
  socket.end(`${headers.join('\r\n')}\r\n\r\n${body}`);
}

/** An HTTP token (RFC 9110): what a subprotocol name may be made of. */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * What makes `request` no WebSocket handshake, checked as ws would check it, but before
 * the authenticator runs and answered with the adapter's JSON body rather than ws's text.
 */
function handshakeProblem(request: IncomingMessage): string | undefined {
  if (request.method !== 'GET') return 'a WebSocket upgrade is a GET request';
  if (request.headers.upgrade?.toLowerCase() !== 'websocket') return 'the Upgrade header must be websocket';
  const key = request.headers['sec-websocket-key'];
  if (typeof key !== 'string' || !/^[+/0-9A-Za-z]{22}==$/.test(key)) return 'missing or invalid Sec-WebSocket-Key header';
  const version = request.headers['sec-websocket-version'];
  if (version !== '13' && version !== '8') return 'missing or invalid Sec-WebSocket-Version header (13)';
  const protocols = request.headers['sec-websocket-protocol'];
  if (protocols !== undefined) {
    const seen = new Set<string>();
    for (const entry of protocols.split(',')) {
      const protocol = entry.trim();
      if (!TOKEN.test(protocol) || seen.has(protocol)) return 'invalid Sec-WebSocket-Protocol header';
      seen.add(protocol);
    }
  }
  return undefined;
}

/** The HTTP status an authentication failure maps to: 403 when the error says so, else 401. */
function statusOf(error: unknown): 401 | 403 {
  return typeof error === 'object' && error !== null && (error as { status?: unknown }).status === 403 ? 403 : 401;
}

function originAllowed(allowed: WebSocketAdapterOptions['allowedOrigins'], origin: string | undefined): boolean {
  if (allowed === undefined || origin === undefined) return true;
  if (typeof allowed !== 'function') return allowed.includes(origin);
  try {
    return allowed(origin);
  } catch {
    // A check that throws (`new URL('null')`) allows nothing, and must not crash the server.
    return false;
  }
}

/**
 * Serves a {@link RoomManager} over `ws` on an HTTP server's upgrades. Each upgrade is
 * checked and authenticated first: a request that is no valid WebSocket handshake gets
 * HTTP 400, missing or invalid credentials 401 and refused ones 403, each with a JSON
 * body on the raw socket, before any WebSocket exists. The `roomwire.v1` subprotocol is
 * selected when offered (never a `bearer.<token>` entry).
 *
 * @example
 * ```ts
 * import { createServer } from 'node:http';
 * import { RoomManager } from 'roomwire';
 * import { attachWebSocket } from 'roomwire/ws';
 *
 * declare const rooms: RoomManager;
 * const server = createServer();
 * const adapter = attachWebSocket(rooms, { server, path: '/ws' });
 * server.listen(8080);
 * // on shutdown:
 * await rooms.close();
 * await adapter.close();
 * ```
 */
export function attachWebSocket(manager: RoomManager, options: WebSocketAdapterOptions): WebSocketAdapter {
  const { server, path = '/', allowedOrigins, heartbeat = true, perMessageDeflate = false, closeTimeoutMs = 5_000 } = options;
  const { maxFrameBytes, heartbeatMs } = manager.limits;
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: maxFrameBytes,
    perMessageDeflate,
    handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
  });
  const clients = new Set<WebSocket>();
  const frames = new FrameCache();
  /** Connections with a ping outstanding, and how many rounds since have found it unanswered. */
  const unanswered = new Map<WebSocket, number>();
  /** The connections each heartbeat tick pings, assigned in turn as they open. */
  const sliceCount = heartbeat ? Math.min(MAX_SLICES, Math.max(1, Math.floor(heartbeatMs / HEARTBEAT_TICK_MS))) : 1;
  const slices = Array.from({ length: sliceCount }, () => new Set<WebSocket>());
  let nextSlice = 0;
  let closing: Promise<void> | undefined;

  // One listener of each kind for every socket of this adapter: no closures per connection.
  function onPong(this: WebSocket): void {
    unanswered.delete(this);
  }
  /**
   * Pings `ws`, listening for its pong from the first ping on: a socket that is never
   * pinged (one heard from every heartbeat) holds one listener fewer, which is a smaller
   * listener table per connection.
   */
  function ping(ws: WebSocket): void {
    if (!ws.listeners('pong').includes(onPong)) ws.on('pong', onPong);
    ws.ping();
  }
  function onClose(this: WebSocket, code: number, reason: Buffer): void {
    clients.delete(this);
    unanswered.delete(this);
    slices[(this as TaggedSocket)[kSlice]]?.delete(this);
    handlersOf(this).closed(code, reason.toString());
  }

  const accept = (ws: WebSocket, principal: Awaited<ReturnType<RoomManager['authenticate']>>): void => {
    clients.add(ws);
    const slice = nextSlice;
    nextSlice = (nextSlice + 1) % sliceCount;
    (ws as TaggedSocket)[kSlice] = slice;
    (ws as TaggedSocket)[kHeard] = false;
    slices[slice]?.add(ws);
    (ws as TaggedSocket)[kHandlers] = manager.open(new WsConnection(ws, frames), principal);
    ws.on('message', onMessage);
    ws.on('error', ignoreError);
    ws.on('close', onClose);
  };

  const onUpgrade = (request: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const url = request.url ?? '/';
    const query = url.indexOf('?');
    const pathname = query === -1 ? url : url.slice(0, query);
    if (pathname !== path) {
      // Another listener may serve this path. When every listener is a roomwire adapter and
      // none serves it, the first adapter answers 404 so the socket is not left hanging.
      const adapters = adaptersByServer.get(server);
      if (!adapters || adapters.has(pathname)) return;
      const first = adapters.values().next().value;
      if (first === self && server.listenerCount('upgrade') <= adapters.size) {
        refuse(socket, 404, 'not_found', 'no WebSocket endpoint on this path');
      }
      return;
    }
    socket.on('error', destroyOnError);
    const problem = handshakeProblem(request);
    if (problem !== undefined) {
      refuse(socket, 400, 'bad_request', problem);
      return;
    }
    if (closing || manager.isClosing) {
      refuse(socket, 403, 'shutting_down', 'server shutting down');
      return;
    }
    if (!originAllowed(allowedOrigins, request.headers.origin)) {
      refuse(socket, 403, 'forbidden', 'origin not allowed');
      return;
    }
    // `remoteAddress` is read only if the authenticator asks: Node keeps the answer on the
    // socket (an object and a string) for the socket's life.
    const handshake: Handshake = {
      url,
      headers: request.headers,
      get remoteAddress() {
        return request.socket.remoteAddress;
      },
    };
    // A shutdown that began while the authenticator ran refuses with its own code.
    const forbiddenCode = (): 'forbidden' | 'shutting_down' => (closing || manager.isClosing ? 'shutting_down' : 'forbidden');
    manager.authenticate(handshake).then(
      (principal) => {
        if (socket.destroyed) return;
        if (closing) {
          refuse(socket, 403, 'shutting_down', 'server shutting down');
          return;
        }
        // Authentication was asynchronous: other upgrades of this user may have opened
        // since. ws completes the upgrade and calls back synchronously, so checking here
        // leaves no gap before open() counts the connection.
        try {
          manager.assertCanOpen(principal);
        } catch (error) {
          refuse(socket, 403, forbiddenCode(), error instanceof Error ? error.message : 'forbidden');
          return;
        }
        wss.handleUpgrade(request, socket, head, (ws) => accept(ws, principal));
      },
      (error: unknown) => {
        const status = statusOf(error);
        const message = error instanceof Error ? error.message : 'unauthorized';
        refuse(socket, status, status === 401 ? 'unauthorized' : forbiddenCode(), message);
      },
    );
  };
  const self = {};
  let adapters = adaptersByServer.get(server);
  if (!adapters) adaptersByServer.set(server, (adapters = new Map()));
  if (adapters.has(path)) throw new Error(`roomwire: a WebSocket adapter already serves ${path} on this server`);
  adapters.set(path, self);
  server.on('upgrade', onUpgrade);

  let sweep: ReturnType<typeof setInterval> | undefined;
  if (heartbeat) {
    const tickMs = heartbeatMs / sliceCount;
    let lastTick = Date.now();
    let tick = 0;
    sweep = setInterval(() => {
      // A tick that runs more than half a heartbeat late means this process stalled: pongs
      // may be waiting unread in the socket buffers, so that round counts nobody as silent.
      const now = Date.now();
      const late = now - lastTick > tickMs + heartbeatMs / 2;
      lastTick = now;
      const slice = slices[tick] ?? clients;
      tick = (tick + 1) % sliceCount;
      for (const ws of slice) {
        // A frame since the last check proves the peer alive, as a pong would: no ping.
        // Busy connections, and roomwire clients (they ping each heartbeat), are seldom
        // pinged at all.
        if ((ws as TaggedSocket)[kHeard]) {
          (ws as TaggedSocket)[kHeard] = false;
          unanswered.delete(ws);
          continue;
        }
        const missed = unanswered.get(ws);
        if (missed === undefined) {
          unanswered.set(ws, 0);
          ping(ws);
        } else if (late) {
          continue;
        } else if (missed + 1 >= MISSED_PINGS_BEFORE_TERMINATE) {
          ws.terminate();
        } else {
          unanswered.set(ws, missed + 1);
          ping(ws);
        }
      }
    }, tickMs);
    sweep.unref?.();
  }

  const shutdown = async (): Promise<void> => {
    // The upgrade listener stays while connections close, so an upgrade meanwhile is
    // answered 403 shutting_down rather than left to the HTTP server.
    if (sweep) clearInterval(sweep);
    const open = [...clients];
    await Promise.race([
      Promise.all(
        open.map(
          (ws) =>
            new Promise<void>((resolve) => {
              if (ws.readyState === ws.CLOSED) return resolve();
              ws.once('close', () => resolve());
              ws.close(CloseCode.GoingAway, 'server shutting down');
            }),
        ),
      ),
      new Promise<void>((resolve) => setTimeout(resolve, Math.min(closeTimeoutMs, MAX_TIMER_MS)).unref()),
    ]);
    for (const ws of clients) ws.terminate();
    server.off('upgrade', onUpgrade);
    if (adaptersByServer.get(server)?.get(path) === self) adaptersByServer.get(server)?.delete(path);
    await new Promise<void>((resolve) => wss.close(() => resolve()));
  };

  return {
    clients,
    close() {
      closing ??= shutdown();
      return closing;
    },
    [Symbol.asyncDispose]() {
      return this.close();
    },
  };
}

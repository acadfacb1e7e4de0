/**
 * The transport contract suite: what every transport adapter must do for a `RoomManager`,
 * checked over real sockets. Defined once; each adapter runs it with a factory:
 *
 * ```ts
 * transportContract('ws', async (manager) => {
 *   // serve `manager` on 127.0.0.1, port 0, and say where
 *   return { url: 'ws://127.0.0.1:PORT/ws', close: async () => { … } };
 * });
 * ```
 *
 * The suite builds the manager (its authenticator reads `?user=`), so the factory only
 * wires the transport. `close()` must close every client with 1001 and free the port.
 * The file depends on `roomwire`, `ws` (as the client), `vitest` and Node only, so it can
 * be copied into an adapter's own repository.
 */
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import {
  HandshakeError,
  RoomManager,
  type Connection,
  type ConnectionHandlers,
  type Principal,
  type RoomManagerOptions,
} from 'roomwire';

/** A transport serving one manager, as the factory returns it. */
export interface RunningTransport {
  /** The WebSocket URL clients connect to, e.g. `ws://127.0.0.1:40123/ws`. */
  readonly url: string;
  /** Stops serving: closes every client with 1001 and frees the port. */
  close(): Promise<void>;
}

/** Starts the transport under test for `manager`, on 127.0.0.1 and a free port. */
export type StartTransport = (manager: RoomManager) => Promise<RunningTransport>;

type Frame = { type: string; [key: string]: unknown };

/** Participants of the suite's rooms. */
const PARTICIPANTS: Record<string, readonly string[]> = {
  'room:a': ['alice', 'bob'],
  'room:b': ['alice'],
};

/** The frame limit the suite configures: small, so a test frame can pass it. */
const MAX_FRAME_BYTES = 4096;

/** What the transport handed the core for one connection. */
interface Opened {
  readonly socket: Connection;
  readonly handlers: ConnectionHandlers;
  /** The `closed` calls the transport made, in order. */
  readonly closes: { code: number; reason: string }[];
}

/**
 * A `RoomManager` that records what the transport passes to `open` and can hold back a
 * connection's `closed` callback, so a test can see how the transport's `send` behaves
 * on a socket that closed before the core heard of it.
 */
class ObservedManager extends RoomManager {
  readonly opened = new Map<string, Opened>();
  /** Connection ids whose `closed` call is recorded but not passed on yet. */
  readonly holding = new Set<string>();

  override open(socket: Connection, principal: Principal): ConnectionHandlers {
    const handlers = super.open(socket, principal);
    const record: Opened = { socket, handlers, closes: [] };
    this.opened.set(handlers.id, record);
    return {
      id: handlers.id,
      ready: handlers.ready,
      message: (data, isBinary) => handlers.message(data, isBinary),
      closed: (code, reason) => {
        record.closes.push({ code, reason });
        if (!this.holding.has(handlers.id)) handlers.closed(code, reason);
      },
    };
  }

  /** Passes on the held `closed` call of a connection. */
  passClosed(id: string): void {
    this.holding.delete(id);
    const record = this.opened.get(id);
    const first = record?.closes[0];
    if (record && first) record.handlers.closed(first.code, first.reason);
  }
}

/** A raw client that records every frame and how it closed. */
class Client {
  readonly frames: Frame[] = [];
  close: { code: number; reason: string } | undefined;
  private readonly wakers = new Set<() => void>();
  readonly closed: Promise<void>;

  constructor(readonly ws: WebSocket) {
    ws.on('message', (data, isBinary) => {
      this.frames.push(isBinary ? { type: '<binary>' } : (JSON.parse(data.toString()) as Frame));
      this.wake();
    });
    ws.on('error', () => {});
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.close = { code, reason: reason.toString() };
        this.wake();
        resolve();
      });
    });
  }

  send(frame: unknown): void {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
  }

  /** Waits until a frame matching `match` arrived, and returns it. */
  async frame(match: (frame: Frame) => boolean, what: string, timeoutMs = 5_000): Promise<Frame> {
    await this.until(() => this.frames.some(match), what, timeoutMs);
    return this.frames.find(match) as Frame;
  }

  /** Waits until the connection closed, and returns its close code and reason. */
  async closing(timeoutMs = 5_000): Promise<{ code: number; reason: string }> {
    await this.until(() => this.close !== undefined, 'the connection to close', timeoutMs);
    return this.close as { code: number; reason: string };
  }

  private async until(condition: () => boolean, what: string, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!condition()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; frames: ${JSON.stringify(this.frames).slice(0, 1000)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, left);
        function done(): void {
          clearTimeout(timer);
          resolve();
        }
        this.wakers.add(done);
      });
    }
  }

  private wake(): void {
    for (const wake of [...this.wakers]) wake();
    this.wakers.clear();
  }
}

/** Waits, in bounded steps, until `condition` holds: the server may see a close after the client does. */
async function eventually(condition: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** An upgrade the server refused: its HTTP status, headers and body. */
interface Refusal {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/**
 * Defines the transport contract suite for one adapter. Call it at the top level of a
 * vitest test file.
 *
 * @param name - the adapter's name, shown in the test names.
 * @param start - serves the given manager and says where (see {@link StartTransport}).
 */
export function transportContract(name: string, start: StartTransport): void {
  describe(`transport contract: ${name}`, () => {
    const leftovers = new Set<() => Promise<void>>();
    const clients = new Set<Client>();

    afterEach(async () => {
      for (const client of clients) client.ws.terminate();
      clients.clear();
      await Promise.all([...leftovers].map((stop) => stop()));
      leftovers.clear();
    });

    /** A manager with the suite's authenticator and rooms, served by the transport under test. */
    async function serve(options: Partial<RoomManagerOptions> = {}) {
      const manager = new ObservedManager({
        authenticate: ({ url }) => {
          const user = new URL(url, 'http://localhost').searchParams.get('user');
          if (!user) throw HandshakeError.unauthorized('add ?user=<name>');
          if (user === 'banned') throw HandshakeError.forbidden('this user is banned');
          return { id: user };
        },
        membership: {
          roomsOf: (user) => Object.keys(PARTICIPANTS).filter((room) => PARTICIPANTS[room]?.includes(user.id)),
          membersOf: (room) => PARTICIPANTS[room] ?? [],
        },
        maxFrameBytes: MAX_FRAME_BYTES,
        ...options,
      });
      const transport = await start(manager);
      let closing: Promise<void> | undefined;
      const close = (): Promise<void> => (closing ??= transport.close());
      const stop = async (): Promise<void> => {
        // A failed test may leave a close held back; the manager would wait for it.
        for (const id of [...manager.holding]) manager.passClosed(id);
        await manager.close();
        await close();
      };
      leftovers.add(stop);
      const urlFor = (user: string | undefined): string => {
        const url = new URL(transport.url);
        if (user !== undefined) url.searchParams.set('user', user);
        return url.href;
      };
      return { manager, url: transport.url, urlFor, close };
    }

    /** Opens a WebSocket as `user` and waits for `welcome`. */
    async function connect(url: string, wsOptions: WebSocket.ClientOptions = {}): Promise<Client> {
      const client = new Client(new WebSocket(url, ['roomwire.v1'], wsOptions));
      clients.add(client);
      await new Promise<void>((resolve, reject) => {
        client.ws.once('open', () => resolve());
        client.ws.once('unexpected-response', (_request, response) => reject(new Error(`upgrade refused: HTTP ${response.statusCode}`)));
        client.ws.once('error', reject);
      });
      await client.frame((f) => f.type === 'welcome', 'welcome');
      return client;
    }

    /** Attempts an upgrade that should be refused, and returns the refusal. */
    function refusal(url: string): Promise<Refusal> {
      return new Promise((resolve, reject) => {
        const ws = new WebSocket(url, ['roomwire.v1']);
        ws.once('unexpected-response', (_request, response) => {
          let body = '';
          response.setEncoding('utf8');
          response.on('data', (chunk: string) => (body += chunk));
          response.once('end', () => {
            resolve({ status: response.statusCode ?? 0, headers: response.headers, body });
            ws.terminate();
          });
        });
        ws.once('open', () => {
          ws.terminate();
          reject(new Error('the upgrade was accepted'));
        });
        ws.once('error', (error) => reject(error));
      });
    }

    it('refuses missing credentials with HTTP 401 before any connection exists', async () => {
      const s = await serve();
      let connects = 0;
      s.manager.on('connect', () => connects++);
      const refused = await refusal(s.urlFor(undefined));
      expect(refused.status).toBe(401);
      expect(JSON.parse(refused.body)).toMatchObject({ error: { code: 'unauthorized' } });
      expect(s.manager.opened.size, 'open() was called for a refused upgrade').toBe(0);
      expect(s.manager.stats().connections).toBe(0);
      expect(connects).toBe(0);
      // A principal the authenticator forbids gets 403, also before any connection.
      const forbidden = await refusal(s.urlFor('banned'));
      expect(forbidden.status).toBe(403);
      expect(JSON.parse(forbidden.body)).toMatchObject({ error: { code: 'forbidden' } });
      expect(s.manager.opened.size).toBe(0);
      // And the transport goes on serving valid credentials.
      const alice = await connect(s.urlFor('alice'));
      expect(alice.frames[0]).toMatchObject({ type: 'welcome', user: { id: 'alice' } });
    });

    it('refuses one connection more than maxConnectionsPerUser with 403', async () => {
      const s = await serve({ maxConnectionsPerUser: 2 });
      await connect(s.urlFor('bob'));
      await connect(s.urlFor('bob'));
      const refused = await refusal(s.urlFor('bob'));
      expect(refused.status).toBe(403);
      expect(s.manager.connectionsOf('bob')).toHaveLength(2);
    });

    it('sends welcome first, with the auto-joined rooms and the heartbeat', async () => {
      const s = await serve({ heartbeatMs: 30_000 });
      const alice = await connect(s.urlFor('alice'));
      const welcome = alice.frames[0];
      expect(welcome).toMatchObject({ type: 'welcome', protocol: 1, user: { id: 'alice' }, heartbeatMs: 30_000 });
      expect([...(welcome?.rooms as string[])].sort()).toEqual(['room:a', 'room:b']);
      expect(s.manager.roomsOf(welcome?.connectionId as string).sort()).toEqual(['room:a', 'room:b']);
      expect(alice.ws.protocol).toBe('roomwire.v1');
      const bob = await connect(s.urlFor('bob'));
      expect(bob.frames[0]).toMatchObject({ type: 'welcome', rooms: ['room:a'] });
    });

    it('hands the core frames sent right after the upgrade, and answers them after welcome', async () => {
      const s = await serve();
      const client = new Client(new WebSocket(s.urlFor('alice'), ['roomwire.v1']));
      clients.add(client);
      client.ws.once('open', () => client.send({ type: 'ping', ref: 'early' }));
      await client.frame((f) => f.type === 'pong', 'pong');
      expect(client.frames.map((f) => f.type)).toEqual(['welcome', 'pong']);
      expect(client.frames[1]).toEqual({ type: 'pong', ref: 'early' });
    });

    it('answers publish with ack and delivers the message to the other connection', async () => {
      const s = await serve();
      const alice = await connect(s.urlFor('alice'));
      const bob = await connect(s.urlFor('bob'));
      alice.send({ type: 'publish', room: 'room:a', data: { text: 'hi bob' }, ref: 'p1' });
      const ack = await alice.frame((f) => f.ref === 'p1', 'the ack');
      expect(ack).toMatchObject({ type: 'ack', room: 'room:a', seq: 1 });
      const message = await bob.frame((f) => f.type === 'message', 'the message');
      expect(message).toMatchObject({ type: 'message', room: 'room:a', id: ack.id, seq: 1, from: 'alice', data: { text: 'hi bob' } });
      // The publisher has its ack, not its own message.
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(alice.frames.filter((f) => f.type === 'message')).toEqual([]);
    });

    it('passes binary frames as binary: they get bad_request and the connection stays open', async () => {
      const s = await serve();
      const alice = await connect(s.urlFor('alice'));
      alice.ws.send(Buffer.from(JSON.stringify({ type: 'ping' })), { binary: true });
      const error = await alice.frame((f) => f.type === 'error', 'the error');
      expect(error).toMatchObject({ code: 'bad_request' });
      alice.send({ type: 'ping', ref: 'still-open' });
      await alice.frame((f) => f.ref === 'still-open', 'the pong');
      expect(alice.close).toBeUndefined();
    });

    it('serves a frame within limits.maxFrameBytes and closes with 1009 on a larger one', async () => {
      const s = await serve();
      expect(s.manager.limits.maxFrameBytes).toBe(MAX_FRAME_BYTES);
      const alice = await connect(s.urlFor('alice'));
      const fits = JSON.stringify({ type: 'publish', room: 'room:b', data: 'x'.repeat(MAX_FRAME_BYTES - 100), ref: 'fits' });
      expect(Buffer.byteLength(fits)).toBeLessThanOrEqual(MAX_FRAME_BYTES);
      alice.send(fits);
      expect(await alice.frame((f) => f.ref === 'fits', 'the ack')).toMatchObject({ type: 'ack' });
      alice.send({ type: 'publish', room: 'room:b', data: 'x'.repeat(MAX_FRAME_BYTES) });
      expect((await alice.closing()).code).toBe(1009);
    });

    it('refuses a send on a closed socket (false, or a throw), so the delivery report counts it as failed', async () => {
      const s = await serve();
      const gone = await connect(s.urlFor('bob'));
      const other = await connect(s.urlFor('bob'));
      const goneId = gone.frames[0]?.connectionId as string;
      const opened = s.manager.opened.get(goneId);
      expect(opened, 'open() was not called with the welcome connection id').toBeDefined();
      expect(typeof opened?.socket.bufferedAmount).toBe('number');
      // The socket closes; the core is not told yet, so it still counts it as open.
      s.manager.holding.add(goneId);
      gone.ws.close(1000);
      await gone.closed;
      await eventually(() => opened?.closes.length === 1, 'the transport calls closed()');
      let sent: unknown;
      try {
        sent = opened?.socket.send('{"type":"pong"}');
      } catch {
        sent = false;
      }
      expect(sent).toBe(false);

      const report = await s.manager.broadcast('room:a', { text: 'after the close' });
      expect(report).toMatchObject({ online: 1, reached: 1, delivered: 1, failed: 1 });
      await other.frame((f) => f.type === 'message' && f.seq === report.seq, 'the message on the open connection');

      s.manager.passClosed(goneId);
      expect(s.manager.connectionsOf('bob')).toHaveLength(1);
      // A transport calls closed() once per connection.
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(opened?.closes).toHaveLength(1);
    });

    it('pings every limits.heartbeatMs and drops a connection that stops answering', async () => {
      const s = await serve({ heartbeatMs: 200 });
      expect(s.manager.limits.heartbeatMs).toBe(200);
      const live = await connect(s.urlFor('alice'));
      const dead = await connect(s.urlFor('bob'), { autoPong: false });
      const pings = { live: 0, dead: 0 };
      live.ws.on('ping', () => pings.live++);
      dead.ws.on('ping', () => pings.dead++);
      await dead.closing(3_000);
      expect(pings.dead).toBeGreaterThan(0);
      expect(live.close).toBeUndefined();
      expect(pings.live).toBeGreaterThan(0);
      await eventually(() => s.manager.connectionsOf('bob').length === 0, "the core forgets bob's dropped connection");
    });

    it('closes every client with 1001 on close()', async () => {
      const s = await serve();
      const alice = await connect(s.urlFor('alice'));
      const bob = await connect(s.urlFor('bob'));
      await s.close();
      expect((await alice.closing()).code).toBe(1001);
      expect((await bob.closing()).code).toBe(1001);
      await eventually(() => s.manager.stats().connections === 0, 'the core forgets the closed connections');
    });
  });
}

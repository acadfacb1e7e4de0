import { request, type IncomingHttpHeaders } from 'node:http';
import { randomBytes } from 'node:crypto';
import { connect as netConnect, type Socket } from 'node:net';
import { SignJWT } from 'jose';
import type { Duplex } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { HandshakeError, type Authenticator } from '../../src/index.js';
import { jwtAuthenticator } from '../../src/auth/jwt.js';
import { TestClient, closeClients, upgradeStatus } from '../helpers/client.js';
import { MembershipTable, TEST_SECRET, closeAll, startServer, tokenFor, type TestServer } from '../helpers/server.js';

interface RawAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** Sockets of upgrades that rawUpgrade was told to keep open; destroyed after each test. */
const keptSockets = new Set<Duplex>();

afterEach(async () => {
  // Raw sockets first: they never answer a close handshake, so the servers would wait for them.
  for (const socket of keptSockets) socket.destroy();
  keptSockets.clear();
  await closeClients();
  await closeAll();
});

/**
 * Sends a WebSocket upgrade request by hand and returns the HTTP answer as the server
 * wrote it: the status, the headers and, for a refusal, the body. A 101 is answered by
 * destroying the socket at once, unless `keepOpen` (then it is destroyed after the test).
 */
function rawUpgrade(s: TestServer, path: string, headers: Record<string, string> = {}, keepOpen = false): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const req = request({
      host: '127.0.0.1',
      port: s.port,
      path,
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': randomBytes(16).toString('base64'),
        ...headers,
      },
    });
    req.once('upgrade', (res, socket) => {
      if (keepOpen) keptSockets.add(socket);
      else socket.destroy();
      resolve({ status: res.statusCode ?? 0, headers: res.headers, body: '' });
    });
    req.once('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.once('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.once('error', reject);
    req.end();
  });
}

/** Waits, in bounded steps, until `condition` holds. */
async function eventually(condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`timed out waiting until ${what}`);
}

function expectRefusal(answer: RawAnswer, status: 400 | 401 | 403 | 404): { error: { code: string; message: string } } {
  expect(answer.status).toBe(status);
  expect(answer.headers['content-type']).toMatch(/^application\/json/);
  expect(answer.headers['sec-websocket-accept']).toBeUndefined();
  if (status === 401) expect(answer.headers['www-authenticate']).toMatch(/^Bearer/);
  const body = JSON.parse(answer.body) as { error: { code: string; message: string } };
  expect(typeof body.error.code).toBe('string');
  expect(typeof body.error.message).toBe('string');
  return body;
}

const table = () => new MembershipTable({ general: ['alice', 'bob'] });
const expiredToken = (sub: string) => tokenFor(sub, { expiresIn: Math.floor(Date.now() / 1000) - 60 });

describe('upgrade: credentials', () => {
  it.each([
    ['a missing token', async () => undefined],
    ['a malformed token', async () => 'not.a.jwt'],
    ['a token signed with another secret', async () => tokenFor('alice', { secret: 'some-other-secret' })],
    ['an expired token', async () => expiredToken('alice')],
  ])('answers %s with a raw 401 and JSON body, and creates no WebSocket', async (_name, makeToken) => {
    const s = await startServer({ membership: table() });
    let connects = 0;
    s.manager.on('connect', () => connects++);
    const token = await makeToken();
    const path = token === undefined ? '/ws' : `/ws?token=${encodeURIComponent(token)}`;
    const body = expectRefusal(await rawUpgrade(s, path, { 'sec-websocket-protocol': 'roomwire.v1' }), 401);
    expect(body.error.code).toBe('unauthorized');
    expect(await upgradeStatus(token === undefined ? s.url : `${s.url}?token=${encodeURIComponent(token)}`)).toBe(401);
    expect(s.manager.stats().connections).toBe(0);
    expect(s.adapter.clients.size).toBe(0);
    expect(connects).toBe(0);
    // The server goes on serving valid credentials.
    const alice = await TestClient.connect(s.url, await tokenFor('alice'));
    expect(alice.welcome).toMatchObject({ user: { id: 'alice' }, rooms: ['general'] });
  });

  it('answers a wrongly signed token in the Authorization header or the subprotocol with 401 too', async () => {
    const s = await startServer({ membership: table() });
    const bad = await tokenFor('alice', { secret: 'some-other-secret' });
    expectRefusal(await rawUpgrade(s, '/ws', { authorization: `Bearer ${bad}` }), 401);
    expectRefusal(await rawUpgrade(s, '/ws', { 'sec-websocket-protocol': `roomwire.v1, bearer.${bad}` }), 401);
    expect(s.manager.stats().connections).toBe(0);
  });

  it('does not let a valid query token through when the Authorization header, read first, is invalid', async () => {
    const s = await startServer({ membership: table() });
    const good = await tokenFor('alice');
    const status = await upgradeStatus(`${s.url}?token=${good}`, { headers: { authorization: 'Bearer not.a.jwt' } });
    expect(status).toBe(401);
  });
});

describe('upgrade: where the token comes from, and the subprotocol', () => {
  it('connects with the token in the Authorization header', async () => {
    const s = await startServer({ membership: table() });
    const token = await tokenFor('alice');
    const alice = await TestClient.connect(s.url, undefined, { headers: { authorization: `Bearer ${token}` } });
    expect(alice.welcome).toMatchObject({ type: 'welcome', protocol: 1, user: { id: 'alice' }, rooms: ['general'] });
    expect(alice.ws.protocol).toBe('');
    const offered = await TestClient.connect(s.url, undefined, {
      headers: { authorization: `Bearer ${token}` },
      protocols: ['roomwire.v1'],
    });
    expect(offered.ws.protocol).toBe('roomwire.v1');
  });

  it('connects with the token in ?token=, with or without roomwire.v1 offered', async () => {
    const s = await startServer({ membership: table() });
    const plain = await TestClient.connect(s.url, await tokenFor('bob'));
    expect(plain.welcome).toMatchObject({ user: { id: 'bob' } });
    expect(plain.ws.protocol).toBe('');
    const offered = await TestClient.connect(s.url, await tokenFor('bob'), { protocols: ['roomwire.v1'] });
    expect(offered.ws.protocol).toBe('roomwire.v1');
  });

  it('connects with a bearer.<token> subprotocol next to roomwire.v1, selects roomwire.v1 and never echoes the token', async () => {
    const s = await startServer({ membership: table() });
    const token = await tokenFor('alice');
    const first = await TestClient.connect(s.url, undefined, { protocols: ['roomwire.v1', `bearer.${token}`] });
    expect(first.welcome).toMatchObject({ user: { id: 'alice' }, rooms: ['general'] });
    expect(first.ws.protocol).toBe('roomwire.v1');
    const reversed = await TestClient.connect(s.url, undefined, { protocols: [`bearer.${token}`, 'roomwire.v1'] });
    expect(reversed.ws.protocol).toBe('roomwire.v1');
    // And on the wire: the 101 answer names roomwire.v1 only.
    const answer = await rawUpgrade(s, '/ws', { 'sec-websocket-protocol': `bearer.${token}, roomwire.v1` });
    expect(answer.status).toBe(101);
    expect(answer.headers['sec-websocket-protocol']).toBe('roomwire.v1');
  });

  it('never selects a bearer.<token> entry, even when roomwire.v1 is not offered', async () => {
    const s = await startServer({ membership: table() });
    const token = await tokenFor('alice');
    const answer = await rawUpgrade(s, '/ws', { 'sec-websocket-protocol': `bearer.${token}` });
    expect(String(answer.headers['sec-websocket-protocol'] ?? '')).not.toContain(token);
    expect(answer.body).not.toContain(token);
  });

  it('serves a client that offers no subprotocol, and one that offers others besides roomwire.v1', async () => {
    const s = await startServer({ membership: table() });
    const none = await TestClient.connect(s.url, await tokenFor('alice'));
    expect(none.ws.protocol).toBe('');
    const pong = await none.request({ type: 'ping' });
    expect(pong.type).toBe('pong');
    const mixed = await TestClient.connect(s.url, await tokenFor('alice'), { protocols: ['graphql-ws', 'roomwire.v1'] });
    expect(mixed.ws.protocol).toBe('roomwire.v1');
  });
});

describe('upgrade: refusals of valid credentials', () => {
  it('answers 403 to an origin not in allowedOrigins, and serves allowed and absent origins', async () => {
    const s = await startServer({ membership: table() }, { allowedOrigins: ['https://app.example'] });
    const token = await tokenFor('alice');
    const refused = await rawUpgrade(s, `/ws?token=${token}`, { origin: 'https://evil.example' });
    const body = expectRefusal(refused, 403);
    expect(body.error.code).toBe('forbidden');
    expect(await upgradeStatus(`${s.url}?token=${token}`, { headers: { origin: 'https://app.example.evil' } })).toBe(403);
    expect(s.manager.stats().connections).toBe(0);
    const browser = await TestClient.connect(s.url, token, { headers: { origin: 'https://app.example' } });
    expect(browser.welcome).toMatchObject({ user: { id: 'alice' } });
    const cli = await TestClient.connect(s.url, token);
    expect(cli.welcome).toMatchObject({ user: { id: 'alice' } });
  });

  it('answers 403 shutting_down once the manager is closing, also when it began during authentication', async () => {
    let entered: () => void = () => undefined;
    const authenticating = new Promise<void>((resolve) => (entered = resolve));
    const slow: Authenticator = async () => {
      entered();
      await new Promise((resolve) => setTimeout(resolve, 200));
      return { id: 'alice' };
    };
    const s = await startServer({ membership: table(), authenticate: slow });
    const during = rawUpgrade(s, '/ws');
    await authenticating;
    const closed = s.manager.close();
    const body = expectRefusal(await during, 403);
    expect(body.error).toEqual({ code: 'shutting_down', message: 'server shutting down' });
    expect(expectRefusal(await rawUpgrade(s, '/ws'), 403).error.code).toBe('shutting_down');
    await closed;
  });

  it('answers a bad origin with 403 even without credentials', async () => {
    const s = await startServer({ membership: table() }, { allowedOrigins: ['https://app.example'] });
    expectRefusal(await rawUpgrade(s, '/ws', { origin: 'https://evil.example' }), 403);
  });

  it('answers 403 once a user has maxConnectionsPerUser connections, and lets them in again after one closes', async () => {
    const s = await startServer({ membership: table(), maxConnectionsPerUser: 2 });
    const token = await tokenFor('alice');
    const first = await TestClient.connect(s.url, token);
    await TestClient.connect(s.url, token);
    const refused = await rawUpgrade(s, `/ws?token=${token}`);
    const body = expectRefusal(refused, 403);
    expect(body.error.code).toBe('forbidden');
    expect(s.manager.connectionsOf('alice')).toHaveLength(2);
    // Other users are not affected.
    const bob = await TestClient.connect(s.url, await tokenFor('bob'));
    expect(bob.welcome).toMatchObject({ user: { id: 'bob' } });
    await first.close();
    await eventually(() => s.manager.connectionsOf('alice').length === 1, 'the server saw the close');
    const again = await TestClient.connect(s.url, token);
    expect(again.welcome).toMatchObject({ user: { id: 'alice' } });
  });
});

describe('upgrade: maxConnectionsPerUser under concurrent upgrades', () => {
  it('lets in at most maxConnectionsPerUser of many simultaneous upgrades of one user', async () => {
    // A reconnect storm: every tab of a user reconnects at the same moment.
    const s = await startServer({ membership: table(), maxConnectionsPerUser: 2 });
    const token = await tokenFor('alice');
    // The upgraded sockets stay open, so every 101 holds one of alice's slots.
    const answers = await Promise.all(Array.from({ length: 6 }, () => rawUpgrade(s, `/ws?token=${token}`, {}, true)));
    const statuses = answers.map((answer) => answer.status).sort();
    expect(statuses).toEqual([101, 101, 403, 403, 403, 403]);
    expect(s.manager.connectionsOf('alice')).toHaveLength(2);
  });

  it('holds the limit when every authentication finishes at the same moment', async () => {
    // An authenticator that answers all six upgrades at once (a shared lookup that
    // resolves together): every one has passed authentication before any is opened.
    const upgrades = 6;
    let arrived = 0;
    let releaseAll!: () => void;
    const gate = new Promise<void>((resolve) => (releaseAll = resolve));
    const s = await startServer({
      membership: table(),
      maxConnectionsPerUser: 2,
      authenticate: async () => {
        if (++arrived === upgrades) releaseAll();
        await gate;
        return { id: 'alice' };
      },
    });
    const answers = await Promise.all(Array.from({ length: upgrades }, () => rawUpgrade(s, '/ws', {}, true)));
    const statuses = answers.map((answer) => answer.status).sort();
    expect(statuses).toEqual([101, 101, 403, 403, 403, 403]);
    expect(s.manager.connectionsOf('alice')).toHaveLength(2);
  });
});

describe('upgrade: paths', () => {
  it('answers 404 on another path when no other upgrade listener exists', async () => {
    const s = await startServer({ membership: table() });
    const token = await tokenFor('alice');
    const answer = await rawUpgrade(s, `/other?token=${token}`);
    expect(answer.status).toBe(404);
    expect(await upgradeStatus(`ws://127.0.0.1:${s.port}/?token=${token}`)).toBe(404);
    expect(await upgradeStatus(`ws://127.0.0.1:${s.port}/ws/extra?token=${token}`)).toBe(404);
    expect(s.manager.stats().connections).toBe(0);
  });

  it('leaves another path to another upgrade listener', async () => {
    const s = await startServer({ membership: table() });
    s.server.on('upgrade', (req, socket) => {
      if (req.url?.startsWith('/other')) socket.end('HTTP/1.1 418 I\'m a teapot\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    });
    expect(await upgradeStatus(`ws://127.0.0.1:${s.port}/other`)).toBe(418);
    const alice = await TestClient.connect(s.url, await tokenFor('alice'));
    expect(alice.welcome).toMatchObject({ user: { id: 'alice' } });
  });
});

describe('upgrade: a faulty authenticator', () => {
  /** Users by the `user` query parameter; `boom` makes the authenticator throw. */
  function authenticator(behaviour: (user: string) => unknown): Authenticator {
    return (handshake) => {
      const user = new URL(handshake.url, 'http://x').searchParams.get('user') ?? '';
      return behaviour(user) as ReturnType<Authenticator>;
    };
  }

  it('answers a plain Error with 401, does not leak its message, and keeps serving', async () => {
    const errors: string[] = [];
    const s = await startServer({
      membership: table(),
      authenticate: authenticator((user) => {
        if (user === 'boom') throw new Error('db password is hunter2');
        return { id: user };
      }),
    });
    s.manager.on('error', (_error, context) => errors.push(context.phase));
    const body = expectRefusal(await rawUpgrade(s, '/ws?user=boom'), 401);
    expect(body.error.message).not.toContain('hunter2');
    expect(errors).toEqual(['authenticate']);
    expect(s.manager.stats().connections).toBe(0);
    const alice = await TestClient.connect(`${s.url}?user=alice`, undefined);
    expect(alice.welcome).toMatchObject({ user: { id: 'alice' }, rooms: ['general'] });
  });

  it('answers a rejected promise, a thrown non-Error and a principal without id with 401', async () => {
    const s = await startServer({
      membership: table(),
      authenticate: authenticator((user) => {
        if (user === 'reject') return Promise.reject(new Error('nope'));
        if (user === 'string') throw 'just a string';
        if (user === 'noid') return { name: 'alice' };
        if (user === 'emptyid') return { id: '' };
        if (user === 'nothing') return undefined;
        return { id: user };
      }),
    });
    for (const user of ['reject', 'string', 'noid', 'emptyid', 'nothing']) {
      expectRefusal(await rawUpgrade(s, `/ws?user=${user}`), 401);
    }
    expect(s.manager.stats().connections).toBe(0);
    const bob = await TestClient.connect(`${s.url}?user=bob`, undefined);
    expect(bob.welcome).toMatchObject({ user: { id: 'bob' } });
  });

  it('answers HandshakeError.forbidden with 403 and HandshakeError.unauthorized with 401', async () => {
    const s = await startServer({
      membership: table(),
      authenticate: authenticator((user) => {
        if (user === 'banned') throw HandshakeError.forbidden('user is banned');
        if (user === 'anon') throw HandshakeError.unauthorized('who are you');
        return { id: user };
      }),
    });
    const banned = expectRefusal(await rawUpgrade(s, '/ws?user=banned'), 403);
    expect(banned.error.message).toBe('user is banned');
    expectRefusal(await rawUpgrade(s, '/ws?user=anon'), 401);
  });

  it('answers a principal whose expiresAt has passed with 401', async () => {
    const s = await startServer({
      membership: table(),
      authenticate: authenticator((user) => ({ id: user, expiresAt: Date.now() - 1_000 })),
    });
    expectRefusal(await rawUpgrade(s, '/ws?user=alice'), 401);
  });

  it('answers a principal whose expiresAt is no time (NaN, a string) with 401 instead of a connection that never expires', async () => {
    const errors: string[] = [];
    const s = await startServer({
      membership: table(),
      // `new Date(undefined).getTime()`: an expiry the application failed to read.
      authenticate: authenticator((user) => ({ id: user, expiresAt: user === 'nan' ? Number.NaN : String(Date.now() + 60_000) })),
    });
    s.manager.on('error', (_error, context) => errors.push(context.phase));
    for (const user of ['nan', 'string']) {
      expect(expectRefusal(await rawUpgrade(s, `/ws?user=${user}`), 401).error.message).toBe('authentication failed');
    }
    expect(errors).toEqual(['authenticate', 'authenticate']);
    expect(s.manager.stats().connections).toBe(0);
  });
});

describe('frame size limit', () => {
  it('closes a connection that sends a frame over maxFrameBytes with 1009; the server serves others', async () => {
    const s = await startServer({ membership: table(), maxFrameBytes: 1024 });
    const alice = await TestClient.connect(s.url, await tokenFor('alice'));
    const bob = await TestClient.connect(s.url, await tokenFor('bob'));
    alice.send({ type: 'publish', room: 'general', data: 'x'.repeat(2_000) });
    await alice.closed();
    expect(alice.closeCode).toBe(1009);
    // Bob is still connected and served, and got nothing of the oversized frame.
    const ack = await bob.request({ type: 'publish', room: 'general', data: 'still here' });
    expect(ack).toMatchObject({ type: 'ack', room: 'general', seq: 1 });
    expect(bob.of('message')).toEqual([]);
    await eventually(() => s.manager.stats().connections === 1, 'the server released alice');
    // New connections are served too.
    const carol = await TestClient.connect(s.url, await tokenFor('alice'));
    expect((await carol.request({ type: 'ping' })).type).toBe('pong');
  });

  it('counts bytes, not characters', async () => {
    const s = await startServer({ membership: table(), maxFrameBytes: 1024 });
    const alice = await TestClient.connect(s.url, await tokenFor('alice'));
    // 400 characters of 3 bytes each: 1200 bytes.
    alice.send({ type: 'publish', room: 'general', data: '€'.repeat(400) });
    await alice.closed();
    expect(alice.closeCode).toBe(1009);
  });

  it('serves a frame of exactly maxFrameBytes', async () => {
    const s = await startServer({ membership: table(), maxFrameBytes: 1024 });
    const alice = await TestClient.connect(s.url, await tokenFor('alice'));
    const head = '{"type":"ping","ref":"exact","pad":"';
    const tail = '"}';
    const frame = `${head}${'p'.repeat(1024 - head.length - tail.length)}${tail}`;
    expect(Buffer.byteLength(frame)).toBe(1024);
    alice.send(frame);
    expect(await alice.replyTo('exact')).toMatchObject({ type: 'pong', ref: 'exact' });
    expect(alice.ws.readyState).toBe(WebSocket.OPEN);
  });

  it('answers a binary frame with bad_request and keeps the connection', async () => {
    const s = await startServer({ membership: table() });
    const alice = await TestClient.connect(s.url, await tokenFor('alice'));
    alice.ws.send(Buffer.from('{"type":"ping","ref":"bin"}'), { binary: true });
    const error = await alice.next('error');
    expect(error).toMatchObject({ code: 'bad_request' });
    expect(error).not.toHaveProperty('ref');
    expect((await alice.request({ type: 'ping' })).type).toBe('pong');
  });
});

describe('upgrade: two adapters on one server', () => {
  it('serves both paths and answers 404 for a path neither serves', async () => {
    const s = await startServer({ membership: table() });
    const { RoomManager } = await import('../../src/index.js');
    const { attachWebSocket } = await import('../../src/transports/ws.js');
    const other = new RoomManager({ authenticate: () => ({ id: 'bot' }), membership: table() });
    const adapter = attachWebSocket(other, { server: s.server, path: '/bots' });
    try {
      expect(() => attachWebSocket(other, { server: s.server, path: '/bots' })).toThrow(/already serves/);
      expect(await upgradeStatus(`ws://127.0.0.1:${s.port}/bots`)).toBe(101);
      expect(await upgradeStatus(`ws://127.0.0.1:${s.port}/ws?token=${await tokenFor('alice')}`)).toBe(101);
      expect(await upgradeStatus(`ws://127.0.0.1:${s.port}/nowhere`)).toBe(404);
    } finally {
      await other.close();
      await adapter.close();
    }
  });
});

describe('upgrade: a hung authenticator', () => {
  it('is refused with 401 after authTimeoutMs instead of holding the socket', async () => {
    const s = await startServer({ membership: table(), authTimeoutMs: 50, authenticate: () => new Promise<never>(() => {}) });
    const errors: { name: string; phase: string }[] = [];
    s.manager.on('error', (error, { phase }) => errors.push({ name: error.name, phase }));
    const answer = await rawUpgrade(s, '/ws');
    expect(answer.status).toBe(401);
    expect(JSON.parse(answer.body)).toEqual({ error: { code: 'unauthorized', message: 'authentication timed out' } });
    // A TimeoutError, as for a loader call past loaderTimeoutMs (docs/errors.md, "Thrown errors").
    expect(errors).toEqual([{ name: 'TimeoutError', phase: 'authenticate' }]);
  });
});

describe('upgrade: what a client cannot do to the server', () => {
  /** Sends an upgrade by hand on a socket whose side stays open, and resolves with its first bytes. */
  async function rawSocket(s: TestServer, path: string, headers: Record<string, string> = {}): Promise<{ socket: Socket; answer: string }> {
    const socket = netConnect({ port: s.port, host: '127.0.0.1', allowHalfOpen: true });
    keptSockets.add(socket);
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    const lines = [`GET ${path} HTTP/1.1`, 'Host: 127.0.0.1', 'Connection: Upgrade', 'Upgrade: websocket', 'Sec-WebSocket-Version: 13', `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`];
    for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`);
    socket.write(`${lines.join('\r\n')}\r\n\r\n`);
    const answer = await new Promise<string>((resolve) => socket.once('data', (chunk: Buffer) => resolve(chunk.toString())));
    socket.on('error', () => undefined);
    return { socket, answer };
  }

  it('survives a peer that resets the connection after a refusal, and releases refused sockets', async () => {
    const s = await startServer({ membership: table() });
    const uncaught: unknown[] = [];
    const record = (error: unknown) => uncaught.push(error);
    process.prependListener('uncaughtException', record);
    try {
      const { socket, answer } = await rawSocket(s, '/nowhere');
      expect(answer).toMatch(/^HTTP\/1\.1 404/);
      socket.resetAndDestroy();
      // A refused peer that keeps its side open is let go all the same.
      const { answer: refused } = await rawSocket(s, '/ws');
      expect(refused).toMatch(/^HTTP\/1\.1 401/);
      const connections = () => new Promise<number>((resolve) => s.server.getConnections((_error, count) => resolve(count)));
      for (let waited = 0; (await connections()) > 0 && waited < 2_000; waited += 50) await new Promise((resolve) => setTimeout(resolve, 50));
      expect(await connections()).toBe(0);
    } finally {
      process.off('uncaughtException', record);
    }
    expect(uncaught).toEqual([]);
  });

  it('answers 403 when an allowedOrigins function throws', async () => {
    const s = await startServer({ membership: table() }, { allowedOrigins: (origin: string) => new URL(origin).hostname.endsWith('.example.com') });
    expectRefusal(await rawUpgrade(s, `/ws?token=${await tokenFor('alice')}`, { origin: 'null' }), 403);
  });

  /** A masked client text frame (RFC 6455, 5.3), written by hand on a raw socket. */
  function maskedTextFrame(text: string): Buffer {
    const payload = Buffer.from(text);
    const mask = randomBytes(4);
    const header = payload.length < 126 ? Buffer.from([0x81, 0x80 | payload.length]) : Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 0xff]);
    return Buffer.concat([header, mask, payload.map((byte, i) => byte ^ mask[i % 4]!)]);
  }

  it('takes no publish from a peer that ignores the 1008 close of its expired credentials', async () => {
    // A peer that never answers the close handshake keeps its socket until ws gives up
    // (30 s): what it sends meanwhile must not be taken with the credentials that expired.
    const s = await startServer({
      membership: table(),
      authenticate: (handshake) => {
        const user = new URL(handshake.url, 'http://x').searchParams.get('user') ?? '';
        return { id: user, expiresAt: user === 'bob' ? Date.now() + 300 : undefined };
      },
    });
    const alice = await TestClient.connect(`${s.url}?user=alice`, undefined);
    const { socket, answer } = await rawSocket(s, '/ws?user=bob');
    expect(answer).toMatch(/^HTTP\/1\.1 101/);
    let received = '';
    socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
    await eventually(() => received.includes('credentials expired'), 'bob was closed with 1008');
    socket.write(maskedTextFrame(JSON.stringify({ type: 'publish', room: 'general', data: { text: 'after expiry' } })));
    expect((await alice.quiet(300)).filter((frame) => frame.type === 'message')).toEqual([]);
    expect(s.manager.connectionsOf('bob')).toEqual([]);
  });

  it('lets in a token expired within clockToleranceSec, and keeps it open until then', async () => {
    const s = await startServer({ membership: table(), authenticate: jwtAuthenticator({ secret: TEST_SECRET, clockToleranceSec: 120 }) });
    const token = await new SignJWT({})
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject('alice')
      .setExpirationTime(Math.floor(Date.now() / 1000) - 30)
      .sign(new TextEncoder().encode(TEST_SECRET));
    const alice = await TestClient.connect(s.url, token);
    expect(alice.welcome).toMatchObject({ user: { id: 'alice' } });
  });
});

describe('upgrade: while the adapter closes', () => {
  it('answers 403 shutting_down, to a new upgrade and to one whose authenticator was running', async () => {
    let entered: () => void = () => undefined;
    const authenticating = new Promise<void>((resolve) => (entered = resolve));
    const authenticate: Authenticator = async ({ url }) => {
      if (url.includes('slow')) {
        entered();
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      return { id: 'alice' };
    };
    const s = await startServer({ membership: table(), authenticate });
    // A connection that never answers the close handshake keeps close() waiting.
    expect((await rawUpgrade(s, '/ws', {}, true)).status).toBe(101);
    const slow = rawUpgrade(s, '/ws?slow');
    await authenticating;
    const closing = s.adapter.close();
    expect(expectRefusal(await rawUpgrade(s, '/ws'), 403).error.code).toBe('shutting_down');
    expect(expectRefusal(await slow, 403).error.code).toBe('shutting_down');
    for (const socket of keptSockets) socket.destroy();
    await closing;
  });
});

describe('upgrade: a request that is no WebSocket handshake', () => {
  it('answers 400 bad_request with the JSON body, before the authenticator runs', async () => {
    let calls = 0;
    const authenticate: Authenticator = () => {
      calls++;
      return { id: 'alice' };
    };
    const s = await startServer({ membership: table(), authenticate });
    const bad = [
      { 'sec-websocket-key': 'not a key' },
      { 'sec-websocket-version': '12' },
      { 'sec-websocket-protocol': 'roomwire.v1,, bearer.x' },
      { 'sec-websocket-protocol': 'roomwire.v1, bearer.a/b=' },
      { 'sec-websocket-protocol': 'roomwire.v1, roomwire.v1' },
    ];
    for (const headers of bad) {
      const body = expectRefusal(await rawUpgrade(s, '/ws', headers), 400);
      expect(body.error.code).toBe('bad_request');
    }
    expect(calls).toBe(0);
    // Spacing and repeated header lines are fine.
    expect((await rawUpgrade(s, '/ws', { 'sec-websocket-protocol': ' roomwire.v1 ,\tbearer.abc ' })).status).toBe(101);
  });
});

import { afterEach, describe, expect, it } from 'vitest';
import type { Authenticator } from '../../src/index.js';
import { jwtAuthenticator } from '../../src/auth/jwt.js';
import { MembershipTable, TEST_SECRET, tokenFor } from '../helpers/server.js';
import { client, opened, scriptedWebSocket, serve, teardown, until } from './helpers.js';

afterEach(teardown);

describe('roomwire/client credentials', () => {
  it('calls the token function before every attempt: an expired token is refused, the fresh one connects', async () => {
    const s = await serve({ membership: new MembershipTable({ chat: ['alice'] }) });
    const upgrades: string[] = [];
    s.server.prependListener('upgrade', (request) => upgrades.push(String(request.headers['sec-websocket-protocol']).replace(/,\s*/g, ', ')));
    const expired = await tokenFor('alice', { expiresIn: Math.floor(Date.now() / 1000) - 60 });
    const fresh = await tokenFor('alice', { expiresIn: '1h' });
    const tokens = [expired, fresh];
    let calls = 0;
    const alice = client({ url: s.url, token: () => tokens[Math.min(calls++, 1)]! });

    await opened(alice);
    expect(calls).toBe(2);
    // The token travels as a subprotocol by default, next to roomwire.v1.
    expect(upgrades).toEqual([`roomwire.v1, bearer.${expired}`, `roomwire.v1, bearer.${fresh}`]);
    expect(alice.states).toEqual(['open']); // a refused first attempt is still "connecting"
    expect(alice.client.rooms).toEqual(new Set(['chat']));
    // The refused attempt was said: a browser cannot tell a 401 from a server that is down.
    expect(alice.errors.map((e) => e.code)).toEqual(['unreachable']);
  });

  it('says every refused attempt of a fixed token, and keeps retrying', async () => {
    const s = await serve({ membership: new MembershipTable({ chat: ['alice'] }) });
    const expired = await tokenFor('alice', { expiresIn: Math.floor(Date.now() / 1000) - 60 });
    const alice = client({ url: s.url, token: expired });
    await until(() => alice.errors.length >= 3, 'three refused attempts');
    expect(new Set(alice.errors.map((e) => e.code))).toEqual(new Set(['unreachable']));
    expect(alice.errors[0]!.message).toMatch(/401 or 403/);
    expect(alice.client.state).toBe('connecting');
  });

  it('retries when a WebSocket reports an error and never a close (Node 20’s built-in one, refused)', async () => {
    // A WebSocket whose connection fails with an error event only.
    const { WebSocket, made } = scriptedWebSocket((socket) => setTimeout(() => socket.onerror?.({}), 5));
    const alice = client({ url: 'ws://127.0.0.1:9/ws', WebSocket });
    await until(() => made.length >= 3, 'three attempts');
    expect(alice.errors.length).toBeGreaterThanOrEqual(2);
  });

  it('after close 1008 does not offer the refused token again; reconnects once the function returns a new one', async () => {
    const jwt = jwtAuthenticator({ secret: TEST_SECRET });
    // Every connection's credentials run out 150 ms after it opens: the server closes it with 1008.
    const shortLived: Authenticator = async (handshake) => ({ ...(await jwt(handshake)), expiresAt: Date.now() + 150 });
    const s = await serve({ membership: new MembershipTable({ chat: ['alice'] }), authenticate: shortLived });
    let upgrades = 0;
    s.server.prependListener('upgrade', () => upgrades++);
    const first = await tokenFor('alice', { expiresIn: '1h' });
    const second = await tokenFor('alice', { expiresIn: '2h' });
    const answers = [first, first, first, first, second]; // the app refreshes only on its fourth call after the 1008
    let calls = 0;
    const alice = client({ url: s.url, token: async () => answers[Math.min(calls++, answers.length - 1)]! });
    await opened(alice);
    expect(upgrades).toBe(1);

    await until(() => alice.client.state === 'reconnecting', 'the 1008 close');
    await opened(alice, 2);
    expect(calls).toBe(5);
    expect(upgrades).toBe(2); // the three calls that returned the refused token made no attempt
    alice.client.close();
    expect(alice.errors).toEqual([]);
  });

  it('with a fixed token, a 1008 close is final: state closed and an unauthorized error', async () => {
    const jwt = jwtAuthenticator({ secret: TEST_SECRET });
    const shortLived: Authenticator = async (handshake) => ({ ...(await jwt(handshake)), expiresAt: Date.now() + 100 });
    const s = await serve({ membership: new MembershipTable({ chat: ['alice'] }), authenticate: shortLived });
    const alice = client({ url: s.url, token: await tokenFor('alice', { expiresIn: '1h' }) });
    await opened(alice);
    await until(() => alice.client.state === 'closed', 'closed');
    expect(alice.states).toEqual(['open', 'closed']);
    expect(alice.errors.map((e) => e.code)).toEqual(['unauthorized']);
    await expect(alice.client.publish('chat', 1)).rejects.toMatchObject({ name: 'ClientError', code: 'closed' });
  });

  it("sends the token as a query parameter with tokenTransport 'query'", async () => {
    const s = await serve({ membership: new MembershipTable({ chat: ['alice'] }) });
    const urls: string[] = [];
    s.server.prependListener('upgrade', (request) => urls.push(request.url ?? ''));
    const token = await tokenFor('alice');
    const alice = client({ url: `${s.url}?v=1`, token, tokenTransport: 'query' });
    await opened(alice);
    expect(urls).toEqual([`/ws?v=1&token=${token}`]);
  });
});

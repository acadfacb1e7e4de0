import { gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { RoomwireError } from '../../src/index.js';
import { TestClient, closeClients, upgradeStatus } from '../helpers/client.js';
import type { RunningChatServer } from '../../examples/chat/server.js';
import { FRAMEWORKS, SECRET, call, cleanUp, foreignToken, login, startChat, tempDatabase, wsUrl, type Answer } from './harness.js';

afterEach(async () => {
  await closeClients();
  await cleanUp();
});

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

/** The seeded conversations: 1 is "alice & bob", 2 is "team" (alice, bob, carol). */
const DM = 1;
const TEAM = 2;
const room = (id: number) => `conversation:${id}`;

function expectError(answer: Answer, status: number, code: string): void {
  expect({ status: answer.status, body: answer.body }).toMatchObject({ status, body: { error: { code, message: expect.any(String) } } });
  expect(Object.keys(answer.body.error).sort()).toEqual(['code', 'message']);
  expect(answer.type).toMatch(/^application\/json/);
}

/** Every route that needs a Bearer token, with a body that would otherwise be valid. */
const AUTHENTICATED: [method: string, path: string, body?: unknown][] = [
  ['GET', '/api/v1/conversations'],
  ['POST', '/api/v1/conversations', { title: 'x' }],
  ['POST', `/api/v1/conversations/${DM}/participants`, { user: 'carol' }],
  ['DELETE', `/api/v1/conversations/${DM}/participants/bob`],
  ['GET', `/api/v1/conversations/${DM}/messages`],
  ['POST', `/api/v1/conversations/${DM}/messages`, { content: 'x' }],
  ['GET', '/api/v1/debug/realtime'],
];

describe.each(FRAMEWORKS)('chat example on %s', (_name, start) => {
  let server: RunningChatServer;
  let alice: string;
  let bob: string;
  let carol: string;
  let dave: string;

  beforeEach(async () => {
    server = await startChat(start);
    alice = await login(server, 'alice');
    bob = await login(server, 'bob');
    carol = await login(server, 'carol');
    dave = await login(server, 'dave');
  });

  const connect = (token: string) => TestClient.connect(wsUrl(server), token);

  describe('HTTP API', () => {
    it('GET /healthz answers 200 without a token', async () => {
      const answer = await call(server, 'GET', '/healthz');
      expect(answer.status).toBe(200);
    });

    it('POST /api/v1/auth/login gives a token and the user; unknown user 401; no username 400', async () => {
      const ok = await call(server, 'POST', '/api/v1/auth/login', { body: { username: 'alice' } });
      expect(ok.status).toBe(200);
      expect(ok.body).toEqual({ token: expect.any(String), user: { id: 'alice', name: expect.any(String) } });
      expectError(await call(server, 'POST', '/api/v1/auth/login', { body: { username: 'mallory' } }), 401, 'unauthorized');
      expectError(await call(server, 'POST', '/api/v1/auth/login', { body: {} }), 400, 'bad_request');
      expectError(await call(server, 'POST', '/api/v1/auth/login', { body: { username: 42 } }), 400, 'bad_request');
      expectError(await call(server, 'POST', '/api/v1/auth/login'), 400, 'bad_request');
      expectError(await call(server, 'POST', '/api/v1/auth/login', { body: ['alice'] }), 400, 'bad_request');
    });

    it('answers malformed JSON with the JSON error body, whatever the content type', async () => {
      expectError(await call(server, 'POST', '/api/v1/auth/login', { raw: '{"username":' }), 400, 'bad_request');
      expectError(await call(server, 'POST', '/api/v1/auth/login', { raw: '{"username":', headers: { 'content-type': 'text/plain' } }), 400, 'bad_request');
      expectError(await call(server, 'POST', `/api/v1/conversations/${DM}/messages`, { token: alice, raw: "{'content': 'hi'}" }), 400, 'bad_request');
    });

    it.each(AUTHENTICATED)('%s %s answers 401 without a valid Bearer token', async (method, path, body) => {
      const withBody = body === undefined ? {} : { body };
      expectError(await call(server, method, path, withBody), 401, 'unauthorized');
      expectError(await call(server, method, path, { ...withBody, token: 'not-a-jwt' }), 401, 'unauthorized');
      expectError(await call(server, method, path, { ...withBody, token: await foreignToken('alice', 'another-secret') }), 401, 'unauthorized');
      // Signed with the right secret, but for nobody the database knows.
      expectError(await call(server, method, path, { ...withBody, token: await foreignToken('mallory') }), 401, 'unauthorized');
      // The HTTP API takes the token in the header only.
      expectError(await call(server, method, `${path}?token=${alice}`, withBody), 401, 'unauthorized');
      expectError(await call(server, method, path, { ...withBody, headers: { authorization: `Basic ${alice}` } }), 401, 'unauthorized');
    });

    it('GET /api/v1/conversations lists the caller\'s conversations only', async () => {
      const answer = await call(server, 'GET', '/api/v1/conversations', { token: alice });
      expect(answer.status).toBe(200);
      expect(answer.body).toEqual([
        { id: DM, title: 'alice & bob', room: room(DM), participants: ['alice', 'bob'] },
        { id: TEAM, title: 'team', room: room(TEAM), participants: ['alice', 'bob', 'carol'] },
      ]);
      expect((await call(server, 'GET', '/api/v1/conversations', { token: carol })).body.map((c: { id: number }) => c.id)).toEqual([TEAM]);
      expect((await call(server, 'GET', '/api/v1/conversations', { token: dave })).body).toEqual([]);
    });

    it('POST /api/v1/conversations creates one with the caller included: 201; bad bodies and unknown users 400', async () => {
      const created = await call(server, 'POST', '/api/v1/conversations', { token: dave, body: { title: ' dave & carol ', participants: ['carol', 'carol'] } });
      expect(created.status).toBe(201);
      expect(created.body).toEqual({ id: expect.any(Number), title: 'dave & carol', room: `conversation:${created.body.id}`, participants: ['dave', 'carol'] });
      const alone = await call(server, 'POST', '/api/v1/conversations', { token: dave, body: { title: 'notes' } });
      expect(alone.status).toBe(201);
      expect(alone.body.participants).toEqual(['dave']);
      expect((await call(server, 'GET', '/api/v1/conversations', { token: carol })).body.map((c: { title: string }) => c.title)).toEqual(['team', 'dave & carol']);

      expectError(await call(server, 'POST', '/api/v1/conversations', { token: dave, body: { participants: ['carol'] } }), 400, 'bad_request');
      expectError(await call(server, 'POST', '/api/v1/conversations', { token: dave, body: { title: '   ' } }), 400, 'bad_request');
      expectError(await call(server, 'POST', '/api/v1/conversations', { token: dave, body: { title: 'x', participants: 'carol' } }), 400, 'bad_request');
      const unknown = await call(server, 'POST', '/api/v1/conversations', { token: dave, body: { title: 'x', participants: ['carol', 'mallory'] } });
      expectError(unknown, 400, 'bad_request');
      expect(unknown.body.error.message).toContain('mallory');
    });

    it('POST /api/v1/conversations/:id/participants adds a user: 200, also when already in; 404 unknown user or conversation; 403 outsider; 400 bad body', async () => {
      const added = await call(server, 'POST', `/api/v1/conversations/${DM}/participants`, { token: bob, body: { user: 'carol' } });
      expect(added.status).toBe(200);
      expect(added.body).toEqual({ id: DM, title: 'alice & bob', room: room(DM), participants: ['alice', 'bob', 'carol'] });
      const again = await call(server, 'POST', `/api/v1/conversations/${DM}/participants`, { token: bob, body: { user: 'carol' } });
      expect(again.status).toBe(200);
      expect(again.body.participants).toEqual(['alice', 'bob', 'carol']);

      expectError(await call(server, 'POST', `/api/v1/conversations/${DM}/participants`, { token: bob, body: { user: 'mallory' } }), 404, 'not_found');
      expectError(await call(server, 'POST', '/api/v1/conversations/999/participants', { token: bob, body: { user: 'dave' } }), 404, 'not_found');
      expectError(await call(server, 'POST', '/api/v1/conversations/abc/participants', { token: bob, body: { user: 'dave' } }), 404, 'not_found');
      expectError(await call(server, 'POST', `/api/v1/conversations/${DM}/participants`, { token: dave, body: { user: 'dave' } }), 403, 'forbidden');
      expectError(await call(server, 'POST', `/api/v1/conversations/${DM}/participants`, { token: bob, body: {} }), 400, 'bad_request');
      expectError(await call(server, 'POST', `/api/v1/conversations/${DM}/participants`, { token: bob, raw: '{"user"' }), 400, 'bad_request');
    });

    it('answers a stored change 201 or 200 when addMember fails (Redis out of reach), so a retry creates nothing twice', async () => {
      const refused = vi.spyOn(server.chat.manager, 'addMember').mockRejectedValue(new RoomwireError('internal', 'could not tell the other processes about this membership change: Redis down'));
      const created = await call(server, 'POST', '/api/v1/conversations', { token: dave, body: { title: 'offline redis', participants: ['carol'] } });
      expect(created.status).toBe(201);
      const added = await call(server, 'POST', `/api/v1/conversations/${created.body.id}/participants`, { token: dave, body: { user: 'bob' } });
      expect(added.status).toBe(200);
      expect(added.body.participants).toEqual(['dave', 'carol', 'bob']);
      expect(refused).toHaveBeenCalledTimes(3);
      expect((await call(server, 'GET', '/api/v1/conversations', { token: dave })).body.map((c: { title: string }) => c.title)).toEqual(['offline redis']);
    });

    it('DELETE /api/v1/conversations/:id/participants/:user removes one: 204; 404 not a participant or unknown conversation; 403 outsider', async () => {
      expectError(await call(server, 'DELETE', `/api/v1/conversations/${TEAM}/participants/carol`, { token: dave }), 403, 'forbidden');
      const removed = await call(server, 'DELETE', `/api/v1/conversations/${TEAM}/participants/carol`, { token: alice });
      expect(removed.status).toBe(204);
      expect(removed.text).toBe('');
      expectError(await call(server, 'DELETE', `/api/v1/conversations/${TEAM}/participants/carol`, { token: alice }), 404, 'not_found');
      expectError(await call(server, 'DELETE', `/api/v1/conversations/${TEAM}/participants/mallory`, { token: alice }), 404, 'not_found');
      expectError(await call(server, 'DELETE', '/api/v1/conversations/999/participants/bob', { token: alice }), 404, 'not_found');
      // Removing oneself is allowed; afterwards the conversation is someone else's.
      expect((await call(server, 'DELETE', `/api/v1/conversations/${TEAM}/participants/bob`, { token: bob })).status).toBe(204);
      expectError(await call(server, 'GET', `/api/v1/conversations/${TEAM}/messages`, { token: bob }), 403, 'forbidden');
      expect((await call(server, 'GET', '/api/v1/conversations', { token: alice })).body[1].participants).toEqual(['alice']);
    });

    it('POST then GET /api/v1/conversations/:id/messages: 201 with the stored message; oldest first; ?after=ID', async () => {
      const first = await call(server, 'POST', `/api/v1/conversations/${TEAM}/messages`, { token: alice, body: { content: ' hello team ' } });
      expect(first.status).toBe(201);
      expect(first.body).toEqual({ id: expect.any(Number), conversationId: TEAM, from: 'alice', content: 'hello team', createdAt: expect.stringMatching(ISO) });
      const second = await call(server, 'POST', `/api/v1/conversations/${TEAM}/messages`, { token: carol, body: { content: 'hi alice' } });
      const all = await call(server, 'GET', `/api/v1/conversations/${TEAM}/messages`, { token: bob });
      expect(all.status).toBe(200);
      expect(all.body).toEqual([first.body, second.body]);
      expect((await call(server, 'GET', `/api/v1/conversations/${TEAM}/messages?after=${first.body.id}`, { token: bob })).body).toEqual([second.body]);
      expect((await call(server, 'GET', `/api/v1/conversations/${TEAM}/messages?after=${second.body.id}`, { token: bob })).body).toEqual([]);
      expect((await call(server, 'GET', `/api/v1/conversations/${DM}/messages`, { token: bob })).body).toEqual([]);
    });

    it('messages routes: 400 bad body or after; 403 outsider; 404 unknown conversation', async () => {
      const path = `/api/v1/conversations/${DM}/messages`;
      expectError(await call(server, 'POST', path, { token: alice, body: {} }), 400, 'bad_request');
      expectError(await call(server, 'POST', path, { token: alice, body: { content: '  ' } }), 400, 'bad_request');
      expectError(await call(server, 'POST', path, { token: alice, body: { content: 7 } }), 400, 'bad_request');
      expectError(await call(server, 'POST', path, { token: alice, body: { content: 'x'.repeat(4001) } }), 400, 'bad_request');
      expectError(await call(server, 'GET', `${path}?after=abc`, { token: alice }), 400, 'bad_request');
      expectError(await call(server, 'GET', `${path}?after=1&after=2`, { token: alice }), 400, 'bad_request');
      expectError(await call(server, 'POST', path, { token: carol, body: { content: 'let me in' } }), 403, 'forbidden');
      expectError(await call(server, 'GET', path, { token: carol }), 403, 'forbidden');
      expectError(await call(server, 'POST', '/api/v1/conversations/999/messages', { token: alice, body: { content: 'x' } }), 404, 'not_found');
      expectError(await call(server, 'GET', '/api/v1/conversations/999/messages', { token: alice }), 404, 'not_found');
      expect((await call(server, 'GET', path, { token: alice })).body).toEqual([]);
    });

    it('GET /api/v1/debug/realtime shows the caller\'s own connections and the counts, nobody else\'s ids', async () => {
      const a1 = await connect(alice);
      const a2 = await connect(alice);
      const b = await connect(bob);
      const answer = await call(server, 'GET', '/api/v1/debug/realtime', { token: alice });
      expect(answer.status).toBe(200);
      expect(answer.body.user).toBe('alice');
      expect(answer.body.counts).toEqual({ onlineUsers: 2, rooms: 2, connections: 3 });
      const connections = answer.body.connections as { id: string; rooms: string[]; openedAt: string }[];
      expect(connections.map((c) => c.id).sort()).toEqual([a1.welcome.connectionId, a2.welcome.connectionId].sort());
      for (const c of connections) {
        expect(c.rooms.sort()).toEqual([room(DM), room(TEAM)]);
        expect(c.openedAt).toMatch(ISO);
      }
      expect(answer.text).not.toContain(b.welcome.connectionId as string);
      const none = await call(server, 'GET', '/api/v1/debug/realtime', { token: dave });
      expect(none.body).toMatchObject({ user: 'dave', connections: [] });
    });

    it('answers an unknown route 404 and an oversized body 413, both with the JSON error body', async () => {
      expectError(await call(server, 'GET', '/api/v1/nope', { token: alice }), 404, 'not_found');
      expectError(await call(server, 'PUT', '/api/v1/conversations', { token: alice, body: {} }), 404, 'not_found');
      // Both frameworks route strictly: no trailing slash, case-sensitive.
      expectError(await call(server, 'GET', '/api/v1/conversations/', { token: alice }), 404, 'not_found');
      expectError(await call(server, 'GET', '/API/v1/conversations', { token: alice }), 404, 'not_found');
      const huge = JSON.stringify({ content: 'x'.repeat(1024 * 1024 + 10) });
      expectError(await call(server, 'POST', `/api/v1/conversations/${DM}/messages`, { token: alice, raw: huge }), 413, 'too_large');
      // The body's size is checked first, as the HTTP API section says: before the token.
      expectError(await call(server, 'POST', `/api/v1/conversations/${DM}/messages`, { raw: huge }), 413, 'too_large');
      const gzipped = gzipSync(JSON.stringify({ username: 'alice' })).toString('latin1');
      // Framework corners answered alike: a malformed URL, a long path segment, an encoding
      // in capitals, a byte order mark, a conditional GET.
      // A malformed percent-escape (`%zz`) names no route, conversation or user: the API
      // table has no 400 for a URL, so it is a 404 as any unknown one, after the token check.
      expectError(await call(server, 'GET', '/api/v1/conversations/%zz/messages', { token: alice }), 404, 'not_found');
      expectError(await call(server, 'GET', '/api/v1/conversations/%zz/messages'), 401, 'unauthorized');
      expectError(await call(server, 'DELETE', `/api/v1/conversations/${DM}/participants/%zz`, { token: alice }), 404, 'not_found');
      expectError(await call(server, 'GET', '/api/v1/%zz', { token: alice }), 404, 'not_found');
      expectError(await call(server, 'GET', '/%E0%A4%A', { token: alice }), 404, 'not_found');
      expectError(await call(server, 'DELETE', `/api/v1/conversations/${DM}/participants/${'u'.repeat(101)}`), 401, 'unauthorized');
      expect((await call(server, 'POST', '/api/v1/auth/login', { body: { username: 'alice' }, headers: { 'content-encoding': 'IDENTITY' } })).status).toBe(200);
      expect((await call(server, 'POST', '/api/v1/auth/login', { raw: `\uFEFF${JSON.stringify({ username: 'alice' })}` })).status).toBe(200);
      expect((await call(server, 'GET', '/api/v1/conversations', { token: alice, headers: { 'if-none-match': '*' } })).status).toBe(200);
      const compressed = await call(server, 'POST', '/api/v1/auth/login', { raw: gzipped, headers: { 'content-encoding': 'gzip' } });
      expectError(compressed, 400, 'bad_request');
      // Word for word the same in both frameworks.
      expect(compressed.body).toEqual({ error: { code: 'bad_request', message: 'the request could not be read' } });
    });
  });

  describe('WebSocket', () => {
    it('refuses the upgrade with 401 without a token, with a bad one, or for an unknown user', async () => {
      expect(await upgradeStatus(wsUrl(server))).toBe(401);
      expect(await upgradeStatus(`${wsUrl(server)}?token=garbage`)).toBe(401);
      expect(await upgradeStatus(`${wsUrl(server)}?token=${await foreignToken('alice', 'wrong-secret')}`)).toBe(401);
      expect(await upgradeStatus(`${wsUrl(server)}?token=${await foreignToken('mallory')}`)).toBe(401);
      expect(await upgradeStatus(wsUrl(server), { headers: { authorization: 'Bearer garbage' } })).toBe(401);
    });

    it('accepts the token in the query, the header or the subprotocol, auto-joined to the user\'s conversations', async () => {
      const byQuery = await connect(bob);
      expect(byQuery.welcome).toMatchObject({ protocol: 1, user: { id: 'bob' }, heartbeatMs: 25_000 });
      expect((byQuery.welcome.rooms as string[]).sort()).toEqual([room(DM), room(TEAM)]);
      const byHeader = await TestClient.connect(wsUrl(server), undefined, { headers: { authorization: `Bearer ${carol}` } });
      expect(byHeader.welcome.rooms).toEqual([room(TEAM)]);
      const byProtocol = await TestClient.connect(wsUrl(server), undefined, { protocols: ['roomwire.v1', `bearer.${dave}`] });
      expect(byProtocol.ws.protocol).toBe('roomwire.v1');
      expect(byProtocol.welcome.rooms).toEqual([]);
    });

    it('delivers a message POSTed over HTTP live, as the stored message from the sender', async () => {
      const b = await connect(bob);
      const c = await connect(carol);
      const posted = await call(server, 'POST', `/api/v1/conversations/${TEAM}/messages`, { token: alice, body: { content: 'over http' } });
      for (const client of [b, c]) {
        const frame = await client.next('message');
        expect(frame).toMatchObject({ room: room(TEAM), seq: 1, from: 'alice', data: posted.body, id: expect.any(String), ts: expect.any(Number) });
      }
      // Not a participant of "alice & bob": carol gets nothing from it.
      await call(server, 'POST', `/api/v1/conversations/${DM}/messages`, { token: alice, body: { content: 'private' } });
      expect((await b.next('message')).data).toMatchObject({ content: 'private' });
      expect((await c.quiet()).filter((f) => f.type === 'message')).toEqual([]);
    });

    it('stores a WS publish through the hook and broadcasts the stored message, the same frame as the POST path', async () => {
      const a = await connect(alice);
      const b = await connect(bob);
      const ack = await a.request({ type: 'publish', room: room(DM), data: { content: ' over ws ', extra: 'dropped' }, cid: 'c-1' });
      expect(ack).toMatchObject({ type: 'ack', room: room(DM), seq: 1, id: expect.any(String) });
      const frame = await b.next('message');
      const stored = (await call(server, 'GET', `/api/v1/conversations/${DM}/messages`, { token: bob })).body;
      expect(stored).toEqual([{ id: expect.any(Number), conversationId: DM, from: 'alice', content: 'over ws', createdAt: expect.stringMatching(ISO) }]);
      expect(frame).toMatchObject({ room: room(DM), id: ack.id, seq: 1, from: 'alice', data: stored[0] });

      await call(server, 'POST', `/api/v1/conversations/${DM}/messages`, { token: bob, body: { content: 'over http' } });
      const viaHttp = await a.next('message');
      expect(Object.keys(viaHttp).sort()).toEqual(Object.keys(frame).sort());
      expect(Object.keys(viaHttp.data as object).sort()).toEqual(Object.keys(frame.data as object).sort());
      expect(viaHttp).toMatchObject({ seq: 2, from: 'bob' });
    });

    it('refuses an invalid publish with bad_request and stores nothing', async () => {
      const a = await connect(alice);
      for (const data of [{}, { content: '' }, { content: 5 }, 'hi', { content: 'x'.repeat(4001) }]) {
        expect(await a.request({ type: 'publish', room: room(DM), data })).toMatchObject({ type: 'error', code: 'bad_request' });
      }
      expect(await a.request({ type: 'publish', room: 'lobby', data: { content: 'x' } })).toMatchObject({ type: 'error', code: 'forbidden' });
      expect((await call(server, 'GET', `/api/v1/conversations/${DM}/messages`, { token: alice })).body).toEqual([]);
    });

    it('stores a publish repeated with the same cid once and acks it with the first id', async () => {
      const a = await connect(alice);
      const b = await connect(bob);
      const first = await a.request({ type: 'publish', room: room(DM), data: { content: 'once' }, cid: 'same' });
      const second = await a.request({ type: 'publish', room: room(DM), data: { content: 'once' }, cid: 'same' });
      expect(second).toMatchObject({ type: 'ack', id: first.id, seq: first.seq });
      await b.next('message');
      expect((await b.quiet()).filter((f) => f.type === 'message')).toEqual([]);
      expect((await call(server, 'GET', `/api/v1/conversations/${DM}/messages`, { token: bob })).body).toHaveLength(1);
    });

    it('adds a participant live: carol, already connected, gets the next message without reconnecting', async () => {
      const c = await connect(carol);
      expect(c.welcome.rooms).toEqual([room(TEAM)]);
      expect((await call(server, 'POST', `/api/v1/conversations/${DM}/participants`, { token: alice, body: { user: 'carol' } })).status).toBe(200);
      expect(await c.next('joined')).toMatchObject({ room: room(DM) });
      const posted = await call(server, 'POST', `/api/v1/conversations/${DM}/messages`, { token: bob, body: { content: 'welcome carol' } });
      expect(await c.next('message')).toMatchObject({ room: room(DM), from: 'bob', data: posted.body });
      // And over the WebSocket path.
      const a = await connect(alice);
      await a.request({ type: 'publish', room: room(DM), data: { content: 'and again' } });
      expect(await c.next('message')).toMatchObject({ room: room(DM), from: 'alice', data: { content: 'and again' } });
    });

    it('a new conversation reaches its online participants at once', async () => {
      const b = await connect(bob);
      const created = await call(server, 'POST', '/api/v1/conversations', { token: dave, body: { title: 'new', participants: ['bob'] } });
      expect(await b.next('joined')).toMatchObject({ room: created.body.room });
      await call(server, 'POST', `/api/v1/conversations/${created.body.id}/messages`, { token: dave, body: { content: 'hi bob' } });
      expect(await b.next('message')).toMatchObject({ room: created.body.room, from: 'dave', data: { content: 'hi bob' } });
    });

    it('removes a participant live: bob is told `left` and gets nothing more, by either path', async () => {
      const a = await connect(alice);
      const b = await connect(bob);
      expect((await call(server, 'DELETE', `/api/v1/conversations/${TEAM}/participants/bob`, { token: alice })).status).toBe(204);
      expect(await b.next('left')).toMatchObject({ room: room(TEAM) });
      await call(server, 'POST', `/api/v1/conversations/${TEAM}/messages`, { token: carol, body: { content: 'after bob left' } });
      expect(await a.request({ type: 'publish', room: room(TEAM), data: { content: 'still without bob' } })).toMatchObject({ type: 'ack' });
      expect((await b.quiet(300)).filter((f) => f.type === 'message')).toEqual([]);
      expect(await b.request({ type: 'publish', room: room(TEAM), data: { content: 'can I?' } })).toMatchObject({ type: 'error', code: 'forbidden' });
      // Bob's other conversation still works.
      await call(server, 'POST', `/api/v1/conversations/${DM}/messages`, { token: alice, body: { content: 'dm' } });
      expect(await b.next('message')).toMatchObject({ room: room(DM) });
    });

    it('a message posted while bob is offline is in GET .../messages after he reconnects', async () => {
      const b = await connect(bob);
      await call(server, 'POST', `/api/v1/conversations/${DM}/messages`, { token: alice, body: { content: 'seen live' } });
      const seen = (await b.next('message')).data as { id: number };
      await b.close();
      const missed = await call(server, 'POST', `/api/v1/conversations/${DM}/messages`, { token: alice, body: { content: 'while you were away' } });
      const again = await connect(bob);
      expect(again.welcome.rooms).toContain(room(DM));
      const caughtUp = await call(server, 'GET', `/api/v1/conversations/${DM}/messages?after=${seen.id}`, { token: bob });
      expect(caughtUp.body).toEqual([missed.body]);
    });

    it('lets a burst of 100 publishes through, then answers rate_limited and stores only what it acked', async () => {
      const a = await connect(alice);
      const replies = [];
      for (let i = 0; i < 110; i++) a.send({ type: 'publish', room: room(DM), data: { content: `burst ${i}` }, ref: `b${i}` });
      for (let i = 0; i < 110; i++) replies.push(await a.replyTo(`b${i}`));
      expect(replies.slice(0, 100).every((f) => f.type === 'ack')).toBe(true);
      const limited = replies.filter((f) => f.type === 'error');
      expect(limited.length).toBeGreaterThan(0);
      expect(limited.every((f) => f.code === 'rate_limited')).toBe(true);
      const stored = (await call(server, 'GET', `/api/v1/conversations/${DM}/messages`, { token: alice })).body;
      expect(stored).toHaveLength(replies.filter((f) => f.type === 'ack').length);
    });

    it('tells participants who comes online (presence is on)', async () => {
      const a = await connect(alice);
      await connect(carol);
      expect(await a.next('presence')).toMatchObject({ room: room(TEAM), user: 'carol', event: 'online' });
    });
  });

  it('keeps a cid stored once across a restart on the same database file', async () => {
    const databasePath = tempDatabase();
    const before = await startChat(start, { databasePath });
    const token = await login(before, 'alice');
    const a = await TestClient.connect(wsUrl(before), token);
    await a.request({ type: 'publish', room: room(DM), data: { content: 'retried' }, cid: 'retry-1' });
    await before.close();
    await a.closed();
    expect(a.closeCode).toBe(1001);

    const after = await startChat(start, { databasePath });
    const again = await TestClient.connect(wsUrl(after), token);
    expect(await again.request({ type: 'publish', room: room(DM), data: { content: 'retried' }, cid: 'retry-1' })).toMatchObject({ type: 'ack' });
    const stored = (await call(after, 'GET', `/api/v1/conversations/${DM}/messages`, { token })).body;
    expect(stored.map((m: { content: string }) => m.content)).toEqual(['retried']);
    // The seed ran once: the restart did not duplicate the conversations.
    expect((await call(after, 'GET', '/api/v1/conversations', { token })).body).toHaveLength(2);
  });
});

it('uses its secret: a token of one server is refused by a server with another secret', async () => {
  const [express] = FRAMEWORKS;
  const one = await startChat(express[1]);
  const other = await startChat(express[1], { jwtSecret: `${SECRET}-other` });
  const token = await login(one, 'alice');
  expectError(await call(other, 'GET', '/api/v1/conversations', { token }), 401, 'unauthorized');
  expect(await upgradeStatus(`${wsUrl(other)}?token=${token}`)).toBe(401);
});

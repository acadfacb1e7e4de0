import { request } from 'node:http';
import { Writable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { RunningChatServer } from '../../examples/chat/server.js';
import { FRAMEWORKS, call, cleanUp, login, startChat, type Answer } from './harness.js';

// Corners of the HTTP API where Express and Fastify used to answer differently. The
// README's contract: one error table, one order of checks (body size and an unreadable
// body, token, body JSON, conversation, participant, fields, named user), strict routing.

afterEach(cleanUp);

const DM = 1;
const MESSAGES = `/api/v1/conversations/${DM}/messages`;
const OVER_LIMIT = 1024 * 1024 + 10;

function expectError(answer: Answer, status: number, code: string): void {
  expect({ status: answer.status, body: answer.body }).toMatchObject({ status, body: { error: { code, message: expect.any(String) } } });
  expect(answer.type).toBe('application/json; charset=utf-8');
}

/**
 * A request through node:http, for what fetch will not send: a body on a GET, raw bytes.
 * The body is written whole; the answer is read whole.
 */
function raw(server: RunningChatServer, method: string, path: string, headers: Record<string, string>, body?: Buffer | string): Promise<Answer> {
  const { hostname, port } = new URL(server.url);
  return new Promise((resolve, reject) => {
    const length = body === undefined ? {} : { 'content-length': String(Buffer.byteLength(body)) };
    const req = request({ host: hostname, port, method, path, headers: { ...headers, ...length } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown;
        try {
          parsed = text === '' ? undefined : JSON.parse(text);
        } catch {
          parsed = undefined;
        }
        resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'] ?? null, body: parsed, text });
      });
    });
    req.setTimeout(5_000, () => req.destroy(new Error(`${method} ${path}: no answer within 5 s`)));
    req.on('error', reject);
    req.end(body);
  });
}

describe.each(FRAMEWORKS)('chat example on %s: HTTP corners', (_name, start) => {
  let server: RunningChatServer;
  let alice: string;

  beforeEach(async () => {
    server = await startChat(start);
    alice = await login(server, 'alice');
  });

  it('ignores the body of a GET: not parsed, not size-checked, not decoded', async () => {
    const auth = { authorization: `Bearer ${alice}`, 'content-type': 'application/json' };
    expect((await raw(server, 'GET', MESSAGES, auth, '{"broken')).status).toBe(200);
    expect((await raw(server, 'GET', MESSAGES, auth, 'x'.repeat(OVER_LIMIT))).status).toBe(200);
    expect((await raw(server, 'GET', MESSAGES, { ...auth, 'content-encoding': 'gzip' }, gzipSync('{}'))).status).toBe(200);
    expect((await raw(server, 'GET', '/healthz', { 'content-type': 'application/json' }, '{"broken')).status).toBe(200);
  });

  it('reads a body as UTF-8 whatever charset its Content-Type names', async () => {
    const body = Buffer.from(JSON.stringify({ content: 'café ☕' }), 'utf8');
    for (const charset of ['utf-8', 'latin1', 'utf-16', 'no-such-charset']) {
      const headers = { 'content-type': `application/json; charset=${charset}` };
      const posted = await raw(server, 'POST', MESSAGES, { ...headers, authorization: `Bearer ${alice}` }, body);
      expect({ charset, status: posted.status, content: posted.body?.content }).toEqual({ charset, status: 201, content: 'café ☕' });
      // Readable, so the token is checked next.
      expectError(await raw(server, 'POST', MESSAGES, headers, body), 401, 'unauthorized');
    }
  });

  it('ignores a Content-Type it cannot parse, as it ignores any other: the body is JSON', async () => {
    for (const type of ['garbage', 'application/json, text/plain', '/json', 'application/']) {
      const posted = await call(server, 'POST', MESSAGES, { token: alice, body: { content: type }, headers: { 'content-type': type } });
      expect({ type, status: posted.status }).toEqual({ type, status: 201 });
      expectError(await call(server, 'POST', MESSAGES, { body: { content: type }, headers: { 'content-type': type } }), 401, 'unauthorized');
      expectError(await call(server, 'POST', MESSAGES, { token: alice, raw: '{"content":', headers: { 'content-type': type } }), 400, 'bad_request');
    }
  });

  it('answers a compressed body over 1 MiB 413: the size is checked first', async () => {
    const huge = JSON.stringify({ content: 'x'.repeat(OVER_LIMIT) });
    for (const path of [MESSAGES, '/api/v1/auth/login']) {
      expectError(await call(server, 'POST', path, { token: alice, raw: huge, headers: { 'content-encoding': 'gzip' } }), 413, 'too_large');
    }
    // An empty body is no body, whatever its encoding or type.
    for (const type of [{}, { 'content-type': 'application/json' }]) {
      const empty = await raw(server, 'POST', '/api/v1/auth/login', { ...type, 'content-encoding': 'gzip' }, '');
      expect(empty.body).toEqual({ error: { code: 'bad_request', message: 'the body must be a JSON object' } });
    }
  });

  it('answers a malformed URL as the text it holds: 404 after the token check, 413 before it', async () => {
    for (const path of ['/api/v1/%zz', '/healthz%zz', '/nope/%E2%82', '/api/v1/conversations/%zz/messages']) {
      expectError(await call(server, 'GET', path, { token: alice }), 404, 'not_found');
      expectError(await call(server, 'POST', path, { raw: 'x'.repeat(OVER_LIMIT) }), 413, 'too_large');
    }
    // A malformed query is no malformed URL: `after` is just not an id.
    expect((await call(server, 'GET', '/healthz?x=%zz')).status).toBe(200);
    expectError(await call(server, 'GET', `${MESSAGES}?after=%zz`, { token: alice }), 400, 'bad_request');
  });

  it('routes a percent-encoded letter or dot like the character itself', async () => {
    expect((await call(server, 'GET', '/he%61lthz')).body).toEqual({ status: 'ok' });
    expect((await call(server, 'GET', '/%61pi/v1/conversations', { token: alice })).status).toBe(200);
    expect((await call(server, 'GET', `/api/v1/conversations/${DM}/%6Dessages`, { token: alice })).status).toBe(200);
    // Only what is equivalent: an encoded slash is no separator, and case still counts.
    expectError(await call(server, 'GET', '/api%2Fv1/conversations', { token: alice }), 404, 'not_found');
    expectError(await call(server, 'GET', '/%41pi/v1/conversations', { token: alice }), 404, 'not_found');
  });

  it('takes a path parameter of any length: the token is checked, then the id', async () => {
    const longUser = `/api/v1/conversations/${DM}/participants/${'u'.repeat(2_000)}`;
    expectError(await call(server, 'DELETE', longUser), 401, 'unauthorized');
    expectError(await call(server, 'DELETE', longUser, { token: alice }), 404, 'not_found');
    const longId = `/api/v1/conversations/${'1'.repeat(2_000)}/messages`;
    expectError(await call(server, 'GET', longId), 401, 'unauthorized');
    expectError(await call(server, 'GET', longId, { token: alice }), 404, 'not_found');
  });

  it('answers an empty path segment as no route: 404 before the token check', async () => {
    for (const [method, path] of [
      ['DELETE', `/api/v1/conversations/${DM}/participants/`],
      ['GET', '/api/v1/conversations//messages'],
      ['POST', '/api/v1/conversations//messages'],
      ['POST', '/api/v1/conversations//participants'],
    ] as const) {
      const answer = await call(server, method, path, method === 'POST' ? { body: { content: 'x', user: 'dave' } } : {});
      expectError(answer, 404, 'not_found');
      expect(answer.body.error.message).toBe('no such route');
    }
  });

  it('names the Bearer scheme on every 401, as the WebSocket upgrade does', async () => {
    for (const [method, path, body] of [
      ['GET', '/api/v1/conversations', undefined],
      ['POST', MESSAGES, '{"content":"x"}'],
      ['POST', '/api/v1/auth/login', '{"username":"mallory"}'],
    ] as const) {
      const response = await fetch(`${server.url}${path}`, { method, ...(body === undefined ? {} : { body }) });
      expect({ path, status: response.status, challenge: response.headers.get('www-authenticate') }).toEqual({ path, status: 401, challenge: 'Bearer' });
    }
    const ok = await fetch(`${server.url}/api/v1/conversations`, { headers: { authorization: `Bearer ${alice}` } });
    expect(ok.headers.get('www-authenticate')).toBeNull();
  });

  it('checks `after` however many query parameters come before it', async () => {
    const padding = Array.from({ length: 1_500 }, (_, i) => `p${i}=1`).join('&');
    expectError(await call(server, 'GET', `${MESSAGES}?${padding}&after=not-an-id`, { token: alice }), 400, 'bad_request');
  });
});

describe.each(FRAMEWORKS)('chat example on %s: tokens stay out of the log', (_name, start) => {
  it('never writes a ?token= query to the log, as a request that reached HTTP instead of the upgrade sends it', async () => {
    // A proxy that drops the Upgrade header turns each WebSocket connect with ?token= into
    // a plain GET; the request log line must not keep the token (nor a %-encoded name for it).
    const lines: string[] = [];
    const stream = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(chunk.toString());
        done();
      },
    });
    const server = await startChat(start, { logger: pino({ level: 'info' }, stream) });
    const token = await login(server, 'alice');
    const signature = token.split('.')[2]!;
    for (const path of [`/api/v1/ws/chat?token=${token}`, `/api/v1/conversations?a=1&%74oken=${token}&b=2`]) {
      expect((await fetch(`${server.url}${path}`)).status).toBeGreaterThanOrEqual(400);
    }
    expect(lines.filter((line) => line.includes(signature))).toEqual([]);
    // Fastify logs each request: the line is kept, its URL without the token.
    if (lines.some((line) => line.includes('/api/v1/conversations?'))) {
      expect(lines.join('')).toContain('/api/v1/ws/chat?token=%5Bredacted%5D');
    }
  });
});

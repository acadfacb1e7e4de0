import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { SignJWT, exportJWK, generateKeyPair, type CryptoKey, type JWTPayload } from 'jose';
import { afterEach, describe, expect, it } from 'vitest';
import { extractToken, jwtAuthenticator } from '../../src/auth/jwt.js';
import type { Authenticator, Handshake, Principal } from '../../src/authenticator.js';
import { HandshakeError } from '../../src/errors.js';

const SECRET = 'jwt-unit-test-secret';
const secretBytes = new TextEncoder().encode(SECRET);
const nowSec = () => Math.floor(Date.now() / 1000);

function handshake(url = '/ws', headers: Handshake['headers'] = {}): Handshake {
  return { url, headers };
}

interface SignOptions {
  sub?: string | undefined;
  alg?: string;
  kid?: string;
  exp?: number;
  nbf?: number;
  iss?: string;
  aud?: string | string[];
  claims?: JWTPayload;
}

async function sign(key: CryptoKey | Uint8Array, options: SignOptions = {}): Promise<string> {
  const jwt = new SignJWT({ ...options.claims })
    .setProtectedHeader({ alg: options.alg ?? 'HS256', ...(options.kid ? { kid: options.kid } : {}) })
    .setIssuedAt();
  if (!('sub' in options)) jwt.setSubject('alice');
  else if (options.sub !== undefined) jwt.setSubject(options.sub);
  if (options.exp !== undefined) jwt.setExpirationTime(options.exp);
  if (options.nbf !== undefined) jwt.setNotBefore(options.nbf);
  if (options.iss !== undefined) jwt.setIssuer(options.iss);
  if (options.aud !== undefined) jwt.setAudience(options.aud);
  return jwt.sign(key);
}

/**
 * Key pairs by algorithm and name, made once per file: RSA generation is slow, and
 * sharing a pair between tests changes nothing they assert.
 */
const pairs = new Map<string, Promise<{ publicKey: CryptoKey; privateKey: CryptoKey }>>();
function keyPairOf(alg: 'RS256' | 'ES256', name = 'main'): Promise<{ publicKey: CryptoKey; privateKey: CryptoKey }> {
  const id = `${alg}:${name}`;
  let pair = pairs.get(id);
  if (!pair) pairs.set(id, (pair = generateKeyPair(alg)));
  return pair;
}

const withQuery = (token: string) => handshake(`/ws?token=${encodeURIComponent(token)}`);

/** Runs the authenticator and returns the HandshakeError it refuses with. */
async function refusal(authenticate: Authenticator, shake: Handshake): Promise<HandshakeError> {
  let error: unknown;
  try {
    const principal = await authenticate(shake);
    error = new Error(`expected a refusal, got principal ${JSON.stringify(principal)}`);
  } catch (caught) {
    error = caught;
  }
  if (!(error instanceof HandshakeError)) throw error instanceof Error ? error : new Error(String(error));
  return error;
}

async function expect401(authenticate: Authenticator, shake: Handshake): Promise<HandshakeError> {
  const error = await refusal(authenticate, shake);
  expect(error.status).toBe(401);
  expect(error.name).toBe('HandshakeError');
  return error;
}

describe('extractToken', () => {
  it('finds nothing in a bare handshake', () => {
    expect(extractToken(handshake())).toBeUndefined();
    expect(extractToken(handshake('/ws?other=1', { 'sec-websocket-protocol': 'roomwire.v1' }))).toBeUndefined();
  });

  it('reads an Authorization Bearer header, case-insensitively', () => {
    expect(extractToken(handshake('/ws', { authorization: 'Bearer abc.def.ghi' }))).toBe('abc.def.ghi');
    expect(extractToken(handshake('/ws', { authorization: 'bearer  abc' }))).toBe('abc');
  });

  it('reads the token query parameter, decoded', () => {
    expect(extractToken(handshake('/ws?token=abc.def'))).toBe('abc.def');
    expect(extractToken(handshake('/ws?room=x&token=a%2Eb'))).toBe('a.b');
  });

  it('reads a bearer.<token> entry of Sec-WebSocket-Protocol wherever it is in the list', () => {
    expect(extractToken(handshake('/ws', { 'sec-websocket-protocol': 'roomwire.v1, bearer.abc.def' }))).toBe('abc.def');
    expect(extractToken(handshake('/ws', { 'sec-websocket-protocol': 'bearer.xyz,roomwire.v1' }))).toBe('xyz');
    expect(extractToken(handshake('/ws', { 'sec-websocket-protocol': 'roomwire.v1, bearer.' }))).toBeUndefined();
  });

  it('prefers the Authorization header over the query and the subprotocol', () => {
    const shake = handshake('/ws?token=from-query', {
      authorization: 'Bearer from-header',
      'sec-websocket-protocol': 'roomwire.v1, bearer.from-protocol',
    });
    expect(extractToken(shake)).toBe('from-header');
  });

  it('prefers the query over the subprotocol', () => {
    const shake = handshake('/ws?token=from-query', { 'sec-websocket-protocol': 'roomwire.v1, bearer.from-protocol' });
    expect(extractToken(shake)).toBe('from-query');
  });

  it('falls through an Authorization header that is not Bearer, or an empty query token', () => {
    expect(extractToken(handshake('/ws?token=q', { authorization: 'Basic YWxpY2U6cHc=' }))).toBe('q');
    expect(extractToken(handshake('/ws?token=', { 'sec-websocket-protocol': 'bearer.p' }))).toBe('p');
    expect(extractToken(handshake('/ws', { authorization: 'Bearer', 'sec-websocket-protocol': 'bearer.p' }))).toBe('p');
  });

  it('reads another query parameter when told', () => {
    expect(extractToken(handshake('/ws?access_token=abc&token=no'), 'access_token')).toBe('abc');
    expect(extractToken(handshake('/ws?token=abc'), 'access_token')).toBeUndefined();
  });
});

describe('jwtAuthenticator: construction', () => {
  it('refuses zero key sources', () => {
    expect(() => jwtAuthenticator({})).toThrow(TypeError);
  });

  it('refuses two or three key sources', async () => {
    const { publicKey } = await keyPairOf('ES256');
    expect(() => jwtAuthenticator({ secret: SECRET, key: publicKey })).toThrow(TypeError);
    expect(() => jwtAuthenticator({ secret: SECRET, jwksUrl: 'http://127.0.0.1:1/jwks' })).toThrow(TypeError);
    expect(() => jwtAuthenticator({ key: publicKey, jwksUrl: 'http://127.0.0.1:1/jwks' })).toThrow(TypeError);
    expect(() => jwtAuthenticator({ secret: SECRET, key: publicKey, jwksUrl: 'http://127.0.0.1:1/jwks' })).toThrow(TypeError);
  });

  it('refuses an empty secret', () => {
    expect(() => jwtAuthenticator({ secret: '' })).toThrow(TypeError);
    expect(() => jwtAuthenticator({ secret: new Uint8Array(0) })).toThrow(TypeError);
  });

  it('refuses an empty issuer or audience, which jose takes as no check at all', async () => {
    // `issuer: process.env.JWT_ISSUER ?? ''` must not turn "iss is required" into "any iss".
    for (const option of [{ issuer: '' }, { audience: '' }, { issuer: [''] }, { audience: ['roomwire', ''] }]) {
      expect(() => jwtAuthenticator({ secret: SECRET, ...option }), JSON.stringify(option)).toThrow(TypeError);
    }
  });
});

describe('jwtAuthenticator: HS256 secret', () => {
  const authenticate = jwtAuthenticator({ secret: SECRET });

  it('turns a valid token into a principal: id = sub, expiresAt = exp × 1000, claims kept', async () => {
    const exp = nowSec() + 600;
    const token = await sign(secretBytes, { sub: 'alice', exp, claims: { tenant: 't1' } });
    const principal = await authenticate(withQuery(token));
    expect(principal.id).toBe('alice');
    expect(principal.expiresAt).toBe(exp * 1000);
    expect(principal.claims).toMatchObject({ sub: 'alice', exp, tenant: 't1' });
  });

  it('accepts a token without exp, with no expiry', async () => {
    const principal = await authenticate(withQuery(await sign(secretBytes, { sub: 'bob' })));
    expect(principal).toMatchObject({ id: 'bob' });
    expect(principal.expiresAt).toBeUndefined();
  });

  it('reads the token from every place extractToken looks', async () => {
    const token = await sign(secretBytes, { sub: 'carol' });
    const fromHeader = await authenticate(handshake('/ws', { authorization: `Bearer ${token}` }));
    const fromProtocol = await authenticate(handshake('/ws', { 'sec-websocket-protocol': `roomwire.v1, bearer.${token}` }));
    expect([fromHeader.id, fromProtocol.id]).toEqual(['carol', 'carol']);
  });

  it('accepts a Uint8Array secret', async () => {
    const bytes = jwtAuthenticator({ secret: secretBytes });
    expect((await bytes(withQuery(await sign(secretBytes)))).id).toBe('alice');
  });

  it('refuses a missing token with 401', async () => {
    await expect401(authenticate, handshake());
  });

  it.each(['not-a-jwt', 'a.b.c', 'eyJhbGciOiJIUzI1NiJ9..', '...', 'x'.repeat(5000)])('refuses the malformed token %j with 401', async (token) => {
    await expect401(authenticate, withQuery(token));
  });

  it('refuses a token signed with another secret with 401', async () => {
    const token = await sign(new TextEncoder().encode('another-secret'));
    await expect401(authenticate, withQuery(token));
  });

  it('refuses a token whose signature was tampered with, or whose payload was swapped, with 401', async () => {
    const token = await sign(secretBytes, { sub: 'alice' });
    const [header, payload, signature] = token.split('.') as [string, string, string];
    const flipped = `${signature.slice(0, -2)}${signature.endsWith('AA') ? 'BB' : 'AA'}`;
    await expect401(authenticate, withQuery(`${header}.${payload}.${flipped}`));
    const other = await sign(secretBytes, { sub: 'mallory' });
    await expect401(authenticate, withQuery(`${header}.${other.split('.')[1]!}.${signature}`));
  });

  it('refuses an unsigned (alg none) token with 401', async () => {
    const encode = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
    const token = `${encode({ alg: 'none', typ: 'JWT' })}.${encode({ sub: 'alice' })}.`;
    await expect401(authenticate, withQuery(token));
  });

  it('refuses a token signed with another HMAC algorithm than HS256 by default', async () => {
    await expect401(authenticate, withQuery(await sign(secretBytes, { alg: 'HS512' })));
    const hs512 = jwtAuthenticator({ secret: SECRET, algorithms: ['HS512'] });
    expect((await hs512(withQuery(await sign(secretBytes, { alg: 'HS512' })))).id).toBe('alice');
  });

  it('refuses an expired token with 401, and accepts it within the clock tolerance', async () => {
    const token = await sign(secretBytes, { exp: nowSec() - 30 });
    const error = await expect401(authenticate, withQuery(token));
    expect(error.message).toMatch(/expired/);
    const tolerant = jwtAuthenticator({ secret: SECRET, clockToleranceSec: 120 });
    expect((await tolerant(withQuery(token))).id).toBe('alice');
  });

  it('refuses a token that is not valid yet with 401', async () => {
    await expect401(authenticate, withQuery(await sign(secretBytes, { nbf: nowSec() + 600 })));
  });

  it('refuses a token without sub, or with an empty sub, with 401', async () => {
    await expect401(authenticate, withQuery(await sign(secretBytes, { sub: undefined })));
    await expect401(authenticate, withQuery(await sign(secretBytes, { sub: '' })));
  });

  it('maps the payload with a principal function of the application', async () => {
    const custom = jwtAuthenticator({
      secret: SECRET,
      principal: (payload) => ({ id: String(payload.uid), role: payload.role }),
    });
    const principal: Principal = await custom(withQuery(await sign(secretBytes, { sub: undefined, claims: { uid: 'u-7', role: 'admin' } })));
    expect(principal).toEqual({ id: 'u-7', role: 'admin' });
  });

  it('reads another query parameter when told', async () => {
    const custom = jwtAuthenticator({ secret: SECRET, queryParam: 'access_token' });
    const token = await sign(secretBytes);
    expect((await custom(handshake(`/ws?access_token=${token}`))).id).toBe('alice');
    await expect401(custom, withQuery(token));
  });
});

describe('jwtAuthenticator: issuer and audience', () => {
  const authenticate = jwtAuthenticator({ secret: SECRET, issuer: 'https://auth.example', audience: 'roomwire' });

  it('accepts the right issuer and audience', async () => {
    const token = await sign(secretBytes, { iss: 'https://auth.example', aud: 'roomwire' });
    expect((await authenticate(withQuery(token))).id).toBe('alice');
    const many = await sign(secretBytes, { iss: 'https://auth.example', aud: ['other', 'roomwire'] });
    expect((await authenticate(withQuery(many))).id).toBe('alice');
  });

  it('refuses another issuer, a missing issuer, another audience and a missing audience with 401', async () => {
    await expect401(authenticate, withQuery(await sign(secretBytes, { iss: 'https://evil.example', aud: 'roomwire' })));
    await expect401(authenticate, withQuery(await sign(secretBytes, { aud: 'roomwire' })));
    await expect401(authenticate, withQuery(await sign(secretBytes, { iss: 'https://auth.example', aud: 'billing' })));
    await expect401(authenticate, withQuery(await sign(secretBytes, { iss: 'https://auth.example' })));
  });

  it('accepts any of several issuers', async () => {
    const either = jwtAuthenticator({ secret: SECRET, issuer: ['https://a.example', 'https://b.example'] });
    expect((await either(withQuery(await sign(secretBytes, { iss: 'https://b.example' })))).id).toBe('alice');
    await expect401(either, withQuery(await sign(secretBytes, { iss: 'https://c.example' })));
  });
});

describe.each(['RS256', 'ES256'] as const)('jwtAuthenticator: %s public key', (alg) => {
  it('accepts a token signed with the matching private key', async () => {
    const { publicKey, privateKey } = await keyPairOf(alg);
    const authenticate = jwtAuthenticator({ key: publicKey });
    const exp = nowSec() + 300;
    const principal = await authenticate(withQuery(await sign(privateKey, { alg, sub: 'dave', exp })));
    expect(principal).toMatchObject({ id: 'dave', expiresAt: exp * 1000 });
  });

  it('refuses a token signed with another key pair, an HS256 token, and an expired one with 401', async () => {
    const { publicKey, privateKey } = await keyPairOf(alg);
    const other = await keyPairOf(alg, 'other');
    const authenticate = jwtAuthenticator({ key: publicKey });
    await expect401(authenticate, withQuery(await sign(other.privateKey, { alg })));
    await expect401(authenticate, withQuery(await sign(secretBytes)));
    await expect401(authenticate, withQuery(await sign(privateKey, { alg, exp: nowSec() - 60 })));
    await expect401(authenticate, handshake());
    await expect401(authenticate, withQuery(await sign(privateKey, { alg, sub: undefined })));
  });
});

describe('jwtAuthenticator: JWKS endpoint', () => {
  const servers = new Set<Server>();

  afterEach(async () => {
    await Promise.all(
      [...servers].map(
        (server) =>
          new Promise<void>((resolve) => {
            server.closeAllConnections();
            server.close(() => resolve());
          }),
      ),
    );
    servers.clear();
  });

  /** Serves `keys` as a JWKS on 127.0.0.1 and counts the fetches. */
  async function serveJwks(keys: object[]): Promise<{ url: string; fetches: () => number }> {
    let fetches = 0;
    const server = createServer((req, res) => {
      if (req.url !== '/.well-known/jwks.json') {
        res.writeHead(404).end();
        return;
      }
      fetches++;
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys }));
    });
    servers.add(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    return { url: `http://127.0.0.1:${port}/.well-known/jwks.json`, fetches: () => fetches };
  }

  async function keyPair(alg: 'RS256' | 'ES256', kid: string, name = 'main') {
    const { publicKey, privateKey } = await keyPairOf(alg, name);
    return { privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
  }

  it('accepts tokens signed with any key of the set, found by kid', async () => {
    const rsa = await keyPair('RS256', 'rsa-1');
    const ec = await keyPair('ES256', 'ec-1');
    const jwks = await serveJwks([rsa.jwk, ec.jwk]);
    const authenticate = jwtAuthenticator({ jwksUrl: jwks.url, issuer: 'https://auth.example' });
    const exp = nowSec() + 300;
    const first = await authenticate(withQuery(await sign(rsa.privateKey, { alg: 'RS256', kid: 'rsa-1', sub: 'erin', exp, iss: 'https://auth.example' })));
    expect(first).toMatchObject({ id: 'erin', expiresAt: exp * 1000 });
    const second = await authenticate(withQuery(await sign(ec.privateKey, { alg: 'ES256', kid: 'ec-1', sub: 'frank', iss: 'https://auth.example' })));
    expect(second.id).toBe('frank');
    expect(jwks.fetches()).toBeGreaterThanOrEqual(1);
  });

  it('accepts a URL object', async () => {
    const rsa = await keyPair('RS256', 'k1');
    const jwks = await serveJwks([rsa.jwk]);
    const authenticate = jwtAuthenticator({ jwksUrl: new URL(jwks.url) });
    expect((await authenticate(withQuery(await sign(rsa.privateKey, { alg: 'RS256', kid: 'k1' })))).id).toBe('alice');
  });

  it('refuses a token of a key not in the set, a wrong signature, an expired token and a missing sub with 401', async () => {
    const known = await keyPair('ES256', 'known');
    const stranger = await keyPair('ES256', 'stranger', 'other');
    const jwks = await serveJwks([known.jwk]);
    const authenticate = jwtAuthenticator({ jwksUrl: jwks.url });
    await expect401(authenticate, withQuery(await sign(stranger.privateKey, { alg: 'ES256', kid: 'stranger' })));
    // Signed by a stranger but claiming the known kid.
    await expect401(authenticate, withQuery(await sign(stranger.privateKey, { alg: 'ES256', kid: 'known' })));
    await expect401(authenticate, withQuery(await sign(known.privateKey, { alg: 'ES256', kid: 'known', exp: nowSec() - 60 })));
    await expect401(authenticate, withQuery(await sign(known.privateKey, { alg: 'ES256', kid: 'known', sub: undefined })));
    await expect401(authenticate, withQuery(await sign(secretBytes, { kid: 'known' })));
    await expect401(authenticate, withQuery('garbage'));
    await expect401(authenticate, handshake());
  });

  it('refuses with 401 when the JWKS endpoint cannot be reached', async () => {
    const jwks = await serveJwks([]);
    const port = new URL(jwks.url).port;
    const [server] = servers;
    await new Promise<void>((resolve) => server!.close(() => resolve()));
    servers.clear();
    const known = await keyPair('ES256', 'known');
    const authenticate = jwtAuthenticator({ jwksUrl: `http://127.0.0.1:${port}/.well-known/jwks.json` });
    await expect401(authenticate, withQuery(await sign(known.privateKey, { alg: 'ES256', kid: 'known' })));
  });
});

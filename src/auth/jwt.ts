/**
 * A JWT {@link Authenticator} built on [jose](https://github.com/panva/jose): HS256
 * secrets, public keys or a JWKS endpoint. Needs the optional peer dependency `jose`.
 *
 * @module roomwire/auth/jwt
 */
import { createRemoteJWKSet, errors as joseErrors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import type { KeyObject, webcrypto } from 'node:crypto';
import type { Authenticator, Handshake, Principal } from '../authenticator.js';
import { HandshakeError } from '../errors.js';

/** A key jose verifies with: a `CryptoKey`, a Node `KeyObject`, or raw secret bytes. */
export type VerifyKey = webcrypto.CryptoKey | KeyObject | Uint8Array;

/** Options of {@link jwtAuthenticator}: exactly one of `secret`, `key` or `jwksUrl`. */
export interface JwtAuthenticatorOptions {
  /** An HS256 shared secret. */
  secret?: string | Uint8Array | undefined;
  /** A public key (`CryptoKey` or `KeyObject`, e.g. from jose's `importSPKI`), or a key getter. */
  key?: VerifyKey | JWTVerifyGetKey | undefined;
  /** A JWKS endpoint to fetch verification keys from. */
  jwksUrl?: string | URL | undefined;
  /** Accepted algorithms. @default ['HS256'] with `secret`, else jose's choice per key */
  algorithms?: string[] | undefined;
  /** Required `iss`: one of these non-empty strings. */
  issuer?: string | string[] | undefined;
  /** Required `aud`: one of these non-empty strings. */
  audience?: string | string[] | undefined;
  /**
   * Leeway for `exp` and `nbf`, in seconds: also added to the default principal's
   * `expiresAt`, so the connection is closed (1008) that much after `exp`. @default 0
   */
  clockToleranceSec?: number | undefined;
  /** The query parameter a token may come in. @default 'token' */
  queryParam?: string | undefined;
  /**
   * Maps a verified payload to the principal. The default takes `sub` as the user id and
   * `exp` as the expiry, and keeps the payload as `claims`.
   */
  principal?: ((payload: JWTPayload) => Principal) | undefined;
}

const BEARER_PROTOCOL = 'bearer.';

/**
 * Finds the token of a handshake, in the order docs/protocol.md gives: the `Authorization:
 * Bearer` header, the `token` query parameter, a `bearer.<token>` entry of
 * `Sec-WebSocket-Protocol`.
 */
export function extractToken(handshake: Handshake, queryParam = 'token'): string | undefined {
  const authorization = handshake.headers.authorization;
  if (typeof authorization === 'string') {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
    if (match?.[1]) return match[1];
  }
  const query = handshake.url.indexOf('?');
  if (query !== -1) {
    const value = new URLSearchParams(handshake.url.slice(query + 1)).get(queryParam);
    if (value) return value;
  }
  const protocols = handshake.headers['sec-websocket-protocol'];
  if (typeof protocols === 'string') {
    for (const entry of protocols.split(',')) {
      const protocol = entry.trim();
      if (protocol.startsWith(BEARER_PROTOCOL) && protocol.length > BEARER_PROTOCOL.length) {
        return protocol.slice(BEARER_PROTOCOL.length);
      }
    }
  }
  return undefined;
}

/** `sub` as the id; `exp`, with the leeway jose allowed, as the expiry. */
function defaultPrincipal(payload: JWTPayload, toleranceSec: number): Principal {
  if (typeof payload.sub !== 'string' || payload.sub === '') throw HandshakeError.unauthorized('token has no subject');
  return { id: payload.sub, expiresAt: typeof payload.exp === 'number' ? (payload.exp + toleranceSec) * 1000 : undefined, claims: payload };
}

/**
 * An {@link Authenticator} for JWTs, verified with jose: an HS256 secret, a public key,
 * or a JWKS endpoint. Missing, malformed, wrongly signed and expired tokens are refused
 * with 401; the principal's `expiresAt` is the token's `exp`, so the connection is
 * closed with 1008 when the token expires.
 *
 * @example
 * ```ts
 * import { RoomManager } from 'roomwire';
 * import { jwtAuthenticator } from 'roomwire/auth/jwt';
 *
 * const rooms = new RoomManager({
 *   authenticate: jwtAuthenticator({ secret: process.env.JWT_SECRET ?? 'dev-secret' }),
 *   membership: { roomsOf: () => [], membersOf: () => [] },
 * });
 * ```
 */
export function jwtAuthenticator(options: JwtAuthenticatorOptions): Authenticator {
  const sources = [options.secret, options.key, options.jwksUrl].filter((value) => value !== undefined);
  if (sources.length !== 1) throw new TypeError('jwtAuthenticator needs exactly one of secret, key or jwksUrl');
  // jose checks `iss` and `aud` only when the option is truthy: an empty one would
  // silently accept every issuer or audience instead of requiring one.
  for (const name of ['issuer', 'audience'] as const) {
    const value = options[name];
    if (value !== undefined && (Array.isArray(value) ? value : [value]).some((entry) => typeof entry !== 'string' || entry === '')) {
      throw new TypeError(`jwtAuthenticator: ${name} must be a non-empty string or a list of them`);
    }
  }
  let key: VerifyKey | JWTVerifyGetKey;
  let algorithms = options.algorithms;
  if (options.secret !== undefined) {
    const secret = typeof options.secret === 'string' ? new TextEncoder().encode(options.secret) : options.secret;
    if (secret.byteLength === 0) throw new TypeError('jwtAuthenticator: secret must not be empty');
    key = secret;
    algorithms ??= ['HS256'];
  } else if (options.jwksUrl !== undefined) {
    key = createRemoteJWKSet(new URL(options.jwksUrl));
  } else {
    key = options.key as VerifyKey | JWTVerifyGetKey;
  }
  const verifyOptions = {
    ...(algorithms ? { algorithms } : {}),
    ...(options.issuer !== undefined ? { issuer: options.issuer } : {}),
    ...(options.audience !== undefined ? { audience: options.audience } : {}),
    ...(options.clockToleranceSec !== undefined ? { clockTolerance: options.clockToleranceSec } : {}),
  };
  const toleranceSec = options.clockToleranceSec ?? 0;
  const toPrincipal = options.principal ?? ((payload: JWTPayload) => defaultPrincipal(payload, toleranceSec));
  const queryParam = options.queryParam ?? 'token';

  return async (handshake) => {
    const token = extractToken(handshake, queryParam);
    if (!token) throw HandshakeError.unauthorized('missing token');
    let payload: JWTPayload;
    try {
      const verified =
        typeof key === 'function'
          ? await jwtVerify(token, key as JWTVerifyGetKey, verifyOptions)
          : await jwtVerify(token, key, verifyOptions);
      payload = verified.payload;
    } catch (error) {
      if (error instanceof joseErrors.JWTExpired) throw HandshakeError.unauthorized('token expired', { cause: error });
      throw HandshakeError.unauthorized('invalid token', { cause: error });
    }
    return toPrincipal(payload);
  };
}

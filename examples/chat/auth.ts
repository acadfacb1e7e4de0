import type { IncomingHttpHeaders } from 'node:http';
import { SignJWT } from 'jose';
import { HandshakeError, type Authenticator, type Logger } from 'roomwire';
import { jwtAuthenticator } from 'roomwire/auth/jwt';
import type { ChatDatabase } from './database.js';

/**
 * The secret used when `JWT_SECRET` is unset. Public on purpose: anyone can mint tokens
 * with it, which is what a local demo wants and nothing else should.
 */
export const DEMO_JWT_SECRET = 'roomwire-demo-secret-do-not-use-in-production';

/** How long a demo login token lasts; roomwire closes a socket with 1008 when it expires. */
const TOKEN_LIFETIME = '12h';

/**
 * The JWT secret from `JWT_SECRET`, or the demo secret with a warning, so nobody ships the
 * demo secret without being told.
 */
export function resolveJwtSecret(env: NodeJS.ProcessEnv, logger: Logger): string {
  const secret = env.JWT_SECRET;
  if (secret) return secret;
  logger.warn({}, 'JWT_SECRET is not set: using the public demo secret; anyone can sign tokens for this server');
  return DEMO_JWT_SECRET;
}

/** Signs a login token for `userId` (the `sub` claim), as a real identity provider would. */
export function signToken(userId: string, secret: string): Promise<string> {
  return new SignJWT({})
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(userId)
    .setIssuedAt()
    .setExpirationTime(TOKEN_LIFETIME)
    .sign(new TextEncoder().encode(secret));
}

/**
 * The stock JWT authenticator of `roomwire/auth/jwt`, plus one check of our own: the
 * token's user must exist in the database. A token that verifies but names nobody (a
 * deleted user, another deployment's token) is refused with 401 like any bad token.
 */
export function chatAuthenticator(db: ChatDatabase, secret: string): Authenticator {
  const verify = jwtAuthenticator({ secret });
  return async (handshake) => {
    const principal = await verify(handshake);
    if (!db.user(principal.id)) throw HandshakeError.unauthorized('unknown user');
    return principal;
  };
}

/**
 * The user id of an HTTP request's `Authorization: Bearer` header, or undefined. The same
 * authenticator as the WebSocket checks it, so HTTP and realtime cannot disagree on who a
 * token is; only the header is passed, because the HTTP API takes no token in the query.
 */
export async function userOfRequest(authenticate: Authenticator, headers: IncomingHttpHeaders): Promise<string | undefined> {
  const authorization = headers.authorization;
  if (typeof authorization !== 'string' || !/^Bearer\s+\S+\s*$/i.test(authorization)) return undefined;
  try {
    return (await authenticate({ url: '/', headers: { authorization } })).id;
  } catch {
    return undefined;
  }
}

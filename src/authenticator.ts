import type { IncomingHttpHeaders } from 'node:http';

/**
 * What an {@link Authenticator} sees of an HTTP upgrade request. Transport adapters build it
 * from their own request objects; nothing of a socket library leaks into the core.
 */
export interface Handshake {
  /** The request target: path and query string, e.g. `/ws?token=abc`. */
  readonly url: string;
  /** The request headers, lower-cased as Node gives them. */
  readonly headers: IncomingHttpHeaders;
  /**
   * The peer's address, where the transport knows it. The ws adapter reads it from the
   * socket when it is first read: read it while authenticating, not after the socket closed.
   */
  readonly remoteAddress?: string | undefined;
}

/**
 * The authenticated user behind a connection. `id` is the user id the membership loader
 * speaks of; anything else the application wants to keep (claims, tenant) may ride along.
 */
export interface Principal {
  /** The user id, as the membership loader knows it. */
  readonly id: string;
  /**
   * When the credentials expire, in ms since the epoch. roomwire closes the connection
   * with 1008 at that time.
   */
  readonly expiresAt?: number | undefined;
  readonly [claim: string]: unknown;
}

/**
 * Turns a handshake into a principal, or refuses it by throwing a
 * {@link HandshakeError} (401 or 403). Any other thrown error is answered with 401 and
 * logged, so a buggy authenticator never lets a connection through.
 *
 * @example
 * ```ts
 * import { HandshakeError, type Authenticator } from 'roomwire';
 * const authenticate: Authenticator = async (handshake) => {
 *   const key = new URL(handshake.url, 'http://x').searchParams.get('key');
 *   if (key !== 'let-me-in') throw HandshakeError.unauthorized('bad key');
 *   return { id: 'alice' };
 * };
 * ```
 */
export type Authenticator = (handshake: Handshake) => Principal | Promise<Principal>;

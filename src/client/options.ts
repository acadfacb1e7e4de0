import type { WebSocketConstructor } from './websocket.js';

/** Reconnect timing: exponential backoff with full jitter. */
export interface ReconnectOptions {
  /** The shortest wait before a retry, in ms; the first retry waits between this and `factor` times this (twice, by default). @default 500 */
  minDelayMs?: number | undefined;
  /** The longest wait before a retry, in ms; after close code 4008 the wait is between half this and this. @default 20000 */
  maxDelayMs?: number | undefined;
  /** How much the longest possible wait grows per failed retry. @default 2 */
  factor?: number | undefined;
}

/** Options of {@link connect}. */
export interface ClientOptions {
  /** The server's WebSocket URL, e.g. `wss://example.com/ws`. */
  url: string;
  /**
   * The credentials. A function is called before every connection attempt, so an expired
   * token is replaced by a fresh one; after close code 1008 the client reconnects only
   * once it returns a different token. Without a token the client relies on cookies.
   */
  token?: string | (() => string | Promise<string>) | undefined;
  /**
   * How the token travels: `protocol` offers the subprotocols `roomwire.v1` and
   * `bearer.<token>` (the token stays out of URLs and access logs); `query` appends
   * `?token=<token>` to the URL (for tokens that are not valid subprotocol names).
   * @default 'protocol'
   */
  tokenTransport?: 'protocol' | 'query' | undefined;
  /** The WebSocket constructor, e.g. `WebSocket` from the `ws` package on Node 20. @default globalThis.WebSocket */
  WebSocket?: WebSocketConstructor | undefined;
  /** Reconnect timing. @default { minDelayMs: 500, maxDelayMs: 20000, factor: 2 } */
  reconnect?: ReconnectOptions | undefined;
  /** How long `publish`, `join` and `leave` wait for the server's answer, in ms, queue time included. @default 10000 */
  publishTimeoutMs?: number | undefined;
  /** How many requests (publishes, joins, leaves) may wait for a connection; one more rejects with `queue_full`. @default 100 */
  queueLimit?: number | undefined;
  /**
   * The heartbeat interval in ms: a `ping` goes out this often, and a connection that
   * delivers no frame for twice this long is dropped and replaced.
   * @default the server's `welcome.heartbeatMs` (25000 before the first welcome)
   */
  heartbeatMs?: number | undefined;
}

import type { IncomingHttpHeaders } from 'node:http';
import { parse as parseQueryString } from 'node:querystring';
import { pino, type Logger as PinoLogger } from 'pino';
import type { Authenticator, RoomManager } from 'roomwire';
import { API_ERRORS, API_ROUTES, ApiError, type ApiContext, type ApiErrorCode, type ApiReply, type ApiRoute } from './api.js';
import { chatAuthenticator, resolveJwtSecret, userOfRequest } from './auth.js';
import { ChatDatabase, DEFAULT_DATABASE_PATH } from './database.js';
import { PAGE_ASSETS, bundleClient, type PageAsset } from './page.js';
import { createRoomManager } from './realtime.js';

/** Where the chat's WebSocket is served. */
export const WS_PATH = '/api/v1/ws/chat';

/** Largest request body either framework accepts; a larger one is answered 413 `too_large`. */
export const BODY_LIMIT_BYTES = 1024 * 1024;

/**
 * A request as the shared app needs it, whatever framework received it. `body` is the raw
 * text (undefined when there is none): the app parses JSON itself so that malformed JSON
 * gets the same 400 from Express and Fastify.
 */
export interface ChatRequest {
  headers: IncomingHttpHeaders;
  params: unknown;
  query: unknown;
  body: unknown;
}

/** A response ready to write: status, headers and the payload text (none for 204). */
export interface ChatResponse {
  status: number;
  headers: Record<string, string>;
  payload: string | undefined;
}

/** One route for a framework to register; `handle` never throws. */
export interface ChatRoute {
  method: 'GET' | 'POST' | 'DELETE';
  path: string;
  handle(request: ChatRequest): Promise<ChatResponse>;
}

/** Options of {@link createChatApp}. Each falls back to its environment variable. */
export interface ChatAppOptions {
  /** A SQLite file or `:memory:`. @default `DATABASE_PATH`, else `data/chat.db` under the repository root */
  databasePath?: string | undefined;
  /** The HS256 secret tokens are signed and checked with. @default `JWT_SECRET`, else a demo secret (with a warning) */
  jwtSecret?: string | undefined;
  /** @default a pino logger at `LOG_LEVEL` (info) */
  logger?: PinoLogger | undefined;
}

/** The chat, minus the framework: what `examples/express` and `examples/fastify` wire up. */
export interface ChatApp {
  readonly db: ChatDatabase;
  readonly manager: RoomManager;
  readonly logger: PinoLogger;
  /** The page, its assets and every API route, in registration order. */
  readonly routes: readonly ChatRoute[];
  /** The answer for a path no route serves. */
  notFound(): ChatResponse;
  /** The answer for an error the framework raised before a route ran (a body too large, say). */
  errorResponse(error: unknown): ChatResponse;
  /** Closes the database. Close the manager and the HTTP server first. */
  close(): void;
}

const JSON_TYPE = 'application/json; charset=utf-8';

function json(status: number, body: unknown): ChatResponse {
  if (body === undefined) return { status, headers: {}, payload: undefined };
  return { status, headers: { 'content-type': JSON_TYPE, 'cache-control': 'no-store' }, payload: JSON.stringify(body) };
}

function errorBody(code: ApiErrorCode, message: string, status: number = API_ERRORS[code]): ChatResponse {
  const response = json(status, { error: { code, message } });
  // A 401 names its scheme (RFC 9110 §11.6.1), as the WebSocket upgrade's 401 does.
  if (status === 401) response.headers['www-authenticate'] = 'Bearer';
  return response;
}

/** The status a framework put on its own errors (body-parser's `status`, Fastify's `statusCode`). */
function frameworkStatus(error: unknown): number | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const { status, statusCode } = error as { status?: unknown; statusCode?: unknown };
  const value = typeof statusCode === 'number' ? statusCode : status;
  return typeof value === 'number' && value >= 400 && value < 600 ? value : undefined;
}

/**
 * The query string parser both frameworks are given, so that they read a query alike:
 * node's, without its cap of 1000 parameters (past which Express dropped the rest,
 * `after` included, while Fastify read them all).
 */
export function parseQuery(query: string): Record<string, unknown> {
  return parseQueryString(query, '&', '=', { maxKeys: 0 });
}

function parseJsonBody(body: unknown): unknown {
  if (body === undefined || body === null) return undefined;
  if (typeof body !== 'string') return body;
  if (body.trim() === '') return undefined;
  try {
    return JSON.parse(body) as unknown;
  } catch {
    throw new ApiError('bad_request', 'the body is not valid JSON');
  }
}

function stringRecord(value: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (typeof value === 'object' && value !== null) {
    for (const [key, item] of Object.entries(value)) if (typeof item === 'string') out[key] = item;
  }
  return out;
}

/** A percent-encoded unreserved character (RFC 3986 §2.3): `%61` is `a` and routes like it. */
const ENCODED_UNRESERVED = /%(?:[46][1-9A-F]|[57][0-9A]|3[0-9]|2[DE]|5F|7E)/gi;

/**
 * The request URL as both servers route it, so they answer alike. A path segment holding
 * a malformed percent-escape (`%zz`) gets its `%` escaped, so the routes see the literal
 * text: without this both frameworks refuse the URL with a 400 of their own before the
 * token check, which the API table does not have (a segment that names no route,
 * conversation or user is a 404, after the 401). And an encoded unreserved character is
 * decoded (`/he%61lthz` is `/healthz`), as Fastify's router does and Express's does not
 * (it matches the raw path); encoded reserved characters (`%2F`) stay encoded.
 */
export function routablePath(url: string): string {
  const query = url.indexOf('?');
  const path = query === -1 ? url : url.slice(0, query);
  if (!path.includes('%')) return url;
  const segments = path.split('/').map((segment) => {
    try {
      decodeURIComponent(segment);
      // Valid, so every `%` starts an escape: decoding one cannot make another.
      return segment.replace(ENCODED_UNRESERVED, (escape) => String.fromCharCode(Number.parseInt(escape.slice(1), 16)));
    } catch {
      return segment.replaceAll('%', '%25');
    }
  });
  return segments.join('/') + (query === -1 ? '' : url.slice(query));
}

/** The query parameter the WebSocket takes a token in (`jwtAuthenticator`'s default). */
const TOKEN_PARAM = 'token';

/**
 * `url` as a log line may show it: the value of a `token` query parameter (however its
 * name is percent-encoded, as the authenticator decodes it) replaced by `[redacted]`.
 * The WebSocket takes `?token=`; a connect that reaches HTTP instead of the upgrade (a
 * proxy that drops `Upgrade`) would otherwise leave the token in the request log.
 */
export function urlForLog(url: string): string {
  const query = url.indexOf('?');
  if (query === -1) return url;
  const params = new URLSearchParams(url.slice(query + 1));
  if (!params.has(TOKEN_PARAM)) return url;
  const kept = new URLSearchParams();
  for (const [name, value] of params) kept.append(name, name === TOKEN_PARAM ? '[redacted]' : value);
  return `${url.slice(0, query)}?${kept.toString()}`;
}

/** A pino logger at `LOG_LEVEL` (default info). */
export function createLogger(): PinoLogger {
  return pino({ level: process.env.LOG_LEVEL ?? 'info' });
}

/**
 * Builds the chat: opens (and on first start seeds) the database, makes the JWT
 * authenticator and the {@link RoomManager}, and returns the routes a framework registers.
 * Starts bundling the roomwire client for the page in the background.
 *
 * @example
 * ```ts
 * const chat = createChatApp({ databasePath: ':memory:' });
 * for (const route of chat.routes) register(route.method, route.path, route.handle);
 * attachWebSocket(chat.manager, { server, path: WS_PATH });
 * ```
 */
export function createChatApp(options: ChatAppOptions = {}): ChatApp {
  const logger = options.logger ?? createLogger();
  const jwtSecret = options.jwtSecret ?? resolveJwtSecret(process.env, logger);
  const db = new ChatDatabase(options.databasePath ?? process.env.DATABASE_PATH ?? DEFAULT_DATABASE_PATH);
  const authenticate: Authenticator = chatAuthenticator(db, jwtSecret);
  const manager = createRoomManager({ db, authenticate, logger: logger.child({ component: 'roomwire' }) });
  const context: ApiContext = { db, manager, jwtSecret, logger };

  const failure = (error: unknown): ChatResponse => {
    if (error instanceof ApiError) return errorBody(error.code, error.message);
    const status = frameworkStatus(error);
    if (status === 413) return errorBody('too_large', `the body is larger than ${BODY_LIMIT_BYTES} bytes`);
    if (status !== undefined && status < 500) return errorBody('bad_request', 'the request could not be read', 400);
    logger.error({ err: error }, 'request failed');
    return errorBody('internal', 'internal error');
  };

  const apiRoute = (route: ApiRoute): ChatRoute => ({
    method: route.method,
    path: route.path,
    async handle(request) {
      try {
        let user: string | undefined;
        if (route.auth) {
          user = await userOfRequest(authenticate, request.headers);
          if (user === undefined) throw new ApiError('unauthorized', 'a valid Bearer token is required');
        }
        const reply: ApiReply = await route.handler(context, {
          user,
          params: stringRecord(request.params),
          query: (request.query ?? {}) as Record<string, unknown>,
          body: parseJsonBody(request.body),
        });
        return json(reply.status, reply.body);
      } catch (error) {
        return failure(error);
      }
    },
  });

  const assetRoute = (asset: PageAsset): ChatRoute => ({
    method: 'GET',
    path: asset.path,
    async handle() {
      try {
        return { status: 200, headers: { 'content-type': asset.contentType, 'cache-control': 'no-cache' }, payload: await asset.load() };
      } catch (error) {
        logger.error({ err: error, path: asset.path }, 'page asset unavailable');
        return errorBody('internal', `${asset.path} is unavailable; see the server log`);
      }
    },
  });

  // Bundling takes a moment: start now so the first page load does not wait for it.
  bundleClient().catch((error: unknown) => {
    logger.warn({ err: error }, 'could not bundle the roomwire client for the page (the API works without it)');
  });

  return {
    db,
    manager,
    logger,
    routes: [...PAGE_ASSETS.map(assetRoute), ...API_ROUTES.map(apiRoute)],
    notFound: () => errorBody('not_found', 'no such route'),
    errorResponse: failure,
    close: () => db.close(),
  };
}

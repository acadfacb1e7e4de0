import { createServer } from 'node:http';
import express, { type NextFunction, type Request, type Response } from 'express';
import { attachWebSocket } from 'roomwire/ws';
import { BODY_LIMIT_BYTES, WS_PATH, createChatApp, parseQuery, routablePath, type ChatResponse } from '../chat/app.js';
import { DEFAULT_HOST, DEFAULT_PORT, isMain, running, runFromCommandLine, type RunningChatServer, type StartOptions } from '../chat/server.js';

function send(res: Response, { status, headers, payload }: ChatResponse): void {
  res.status(status).set(headers);
  if (payload === undefined) res.end();
  else res.send(payload);
}

/** Methods whose body Fastify never reads; this server does not either. */
const BODYLESS_METHODS = new Set(['GET', 'HEAD']);

/**
 * The raw body as text, read the way the Fastify example reads it (its content type
 * parser): not at all on a GET or HEAD; the size first (413), then the encoding (a
 * compressed body is 400); as UTF-8 whatever charset the Content-Type names (JSON is
 * UTF-8), without a leading byte order mark. An empty body is no body, whatever its encoding.
 */
function rawBodyAsText(): (req: Request, res: Response, next: NextFunction) => void {
  const read = express.raw({ type: () => true, limit: BODY_LIMIT_BYTES, inflate: false });
  return (req, res, next) => {
    if (BODYLESS_METHODS.has(req.method)) {
      next();
      return;
    }
    // body-parser refuses an encoding before reading, so a compressed body over the limit
    // would be 400, not 413: it is shown no encoding, and the encoding is checked once read.
    const encoding = req.headers['content-encoding'];
    delete req.headers['content-encoding'];
    read(req, res, (error?: unknown) => {
      if (encoding !== undefined) req.headers['content-encoding'] = encoding;
      if (error) {
        next(error);
        return;
      }
      const body: unknown = req.body;
      if (!Buffer.isBuffer(body) || body.length === 0) {
        req.body = undefined;
        next();
        return;
      }
      if (encoding !== undefined && encoding.toLowerCase() !== 'identity') {
        next(Object.assign(new Error(`unsupported content encoding ${encoding}`), { status: 415 }));
        return;
      }
      const text = body.toString('utf8');
      req.body = text.startsWith('\uFEFF') ? text.slice(1) : text;
      next();
    });
  };
}

/**
 * Starts the chat demo on Express 5: the shared app's routes, and roomwire's WebSocket on
 * the same node:http server at `/api/v1/ws/chat`.
 *
 * @returns the listening server; `close()` it to stop (tests pass `port: 0`).
 */
export async function startExpressChat(options: StartOptions = {}): Promise<RunningChatServer> {
  const chat = createChatApp(options);
  const app = express();
  // Fastify routes are strict and case-sensitive; Express is made to match so both answer alike.
  app.set('strict routing', true);
  app.set('case sensitive routing', true);
  app.disable('x-powered-by');
  // No ETags: a 304 is not in the API table, and Fastify sends none.
  app.set('etag', false);
  // The query parser is the Fastify example's too.
  app.set('query parser', parseQuery);
  // Routed as Fastify routes (see routablePath).
  app.use((req, _res, next) => {
    req.url = routablePath(req.url);
    next();
  });
  // The raw body, whatever its type: the shared app parses JSON, so malformed JSON gets its error body.
  // No inflating: Fastify does not decompress either, and a compressed body is a 400 in both.
  app.use(rawBodyAsText());
  const toRequest = (req: Request) => ({ headers: req.headers, params: req.params, query: req.query, body: req.body as unknown });
  for (const route of chat.routes) {
    const method = route.method === 'GET' ? 'get' : route.method === 'POST' ? 'post' : 'delete';
    app[method](route.path, async (req, res) => send(res, await route.handle(toRequest(req))));
  }
  app.use((_req: Request, res: Response) => send(res, chat.notFound()));
  app.use((error: unknown, _req: Request, res: Response, _next: express.NextFunction) => send(res, chat.errorResponse(error)));

  const server = createServer(app);
  const adapter = attachWebSocket(chat.manager, { server, path: WS_PATH });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? DEFAULT_PORT, options.host ?? DEFAULT_HOST, () => resolve());
  });
  return running(chat, server, adapter, async () => {
    // Idle keep-alive sockets would hold close() open for seconds.
    server.closeIdleConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
}

if (isMain(import.meta.url)) await runFromCommandLine('express', startExpressChat);

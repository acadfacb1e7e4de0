import { createServer } from 'node:http';
import express, { type Request, type Response } from 'express';
import { attachWebSocket } from 'roomwire/ws';
import { BODY_LIMIT_BYTES, WS_PATH, createChatApp, decodablePath, type ChatResponse } from '../chat/app.js';
import { DEFAULT_HOST, DEFAULT_PORT, isMain, running, runFromCommandLine, type RunningChatServer, type StartOptions } from '../chat/server.js';

function send(res: Response, { status, headers, payload }: ChatResponse): void {
  res.status(status).set(headers);
  if (payload === undefined) res.end();
  else res.send(payload);
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
  // A malformed percent-escape reaches the routes as text (an unknown id: 404), not as Express's 400.
  app.use((req, _res, next) => {
    req.url = decodablePath(req.url);
    next();
  });
  // The raw body, whatever its type: the shared app parses JSON, so malformed JSON gets its error body.
  // No inflating: Fastify does not decompress either, and a compressed body is a 400 in both.
  app.use(express.text({ type: () => true, limit: BODY_LIMIT_BYTES, inflate: false }));
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

import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify';
import { attachWebSocket } from 'roomwire/ws';
import { BODY_LIMIT_BYTES, WS_PATH, createChatApp, parseQuery, routablePath, urlForLog, type ChatResponse } from '../chat/app.js';
import { DEFAULT_HOST, DEFAULT_PORT, isMain, running, runFromCommandLine, type RunningChatServer, type StartOptions } from '../chat/server.js';

function send(reply: FastifyReply, { status, headers, payload }: ChatResponse): FastifyReply {
  return reply.code(status).headers(headers).send(payload);
}

/** What Fastify's own serializer logs of a request, its URL through {@link urlForLog}. */
function requestForLog(req: FastifyRequest) {
  return { method: req.method, url: urlForLog(req.url), version: req.headers['accept-version'], host: req.host, remoteAddress: req.ip, remotePort: req.socket?.remotePort };
}

/**
 * Starts the chat demo on Fastify 5: the shared app's routes, and roomwire's WebSocket on
 * Fastify's node:http server (`app.server`) at `/api/v1/ws/chat`.
 *
 * @returns the listening server; `close()` it to stop (tests pass `port: 0`).
 */
export async function startFastifyChat(options: StartOptions = {}): Promise<RunningChatServer> {
  const chat = createChatApp(options);
  const app = Fastify({
    // Fastify's request line, with a ?token= redacted: Fastify takes a `req` serializer of the logger over its own.
    loggerInstance: chat.logger.child({}, { serializers: { req: requestForLog } }),
    bodyLimit: BODY_LIMIT_BYTES,
    // User ids are token subjects of any length; Fastify answers a path parameter over
    // maxParamLength (100 by default) with its own 414, before the token check. Express has
    // no such limit: nor has this server beyond Node's own on the request line (16 KiB).
    // The query parser is the Express example's too.
    routerOptions: { maxParamLength: Number.MAX_SAFE_INTEGER, querystringParser: parseQuery },
    // A malformed percent-escape reaches the routes as text (an unknown id or route: 404),
    // as in Express, rather than failing the routing with a 400 (see routablePath).
    rewriteUrl: (req) => routablePath(req.url ?? '/'),
    // Any other framework error gets the API's error body, as in Express, not Fastify's own.
    frameworkErrors: (error, _req, reply) => send(reply, chat.errorResponse(error)),
  });
  // The raw body, whatever its type: the shared app parses JSON, so malformed JSON gets its error body.
  // Whatever its type really: Fastify answers a Content-Type it cannot parse (`garbage`,
  // `application/json, text/plain`) 415 before any parser runs, where Express reads the body
  // as any other. The body is read without its Content-Type, which nothing here looks at.
  app.addHook('onRequest', async (req) => {
    delete req.raw.headers['content-type'];
  });
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'string' }, (req, body, done) => {
    // A compressed body is not read, as the Express example's parser is set up (`inflate: false`);
    // an empty one is no body, whatever its encoding, as there.
    const encoding = req.headers['content-encoding']?.toLowerCase();
    // Express's body reader drops a leading byte order mark; so does this one.
    if (body === '' || encoding === undefined || encoding === 'identity') done(null, typeof body === 'string' && body.startsWith('\uFEFF') ? body.slice(1) : body);
    else done(Object.assign(new Error(`unsupported content encoding ${encoding}`), { statusCode: 415 }), undefined);
  });
  const toRequest = (req: FastifyRequest) => ({ headers: req.headers, params: req.params, query: req.query, body: req.body });
  // Fastify matches a parameter to an empty segment (`/conversations//messages`); Express
  // matches no route there, and strict routing says so too: 404, before the token check.
  const emptyParam = (req: FastifyRequest) => Object.values(req.params as Record<string, unknown>).includes('');
  for (const route of chat.routes) {
    app.route({
      method: route.method,
      url: route.path,
      handler: async (req, reply) => send(reply, emptyParam(req) ? chat.notFound() : await route.handle(toRequest(req))),
    });
  }
  app.setNotFoundHandler((_req, reply) => send(reply, chat.notFound()));
  app.setErrorHandler((error, _req, reply) => send(reply, chat.errorResponse(error)));

  const adapter = attachWebSocket(chat.manager, { server: app.server, path: WS_PATH });
  await app.listen({ port: options.port ?? DEFAULT_PORT, host: options.host ?? DEFAULT_HOST });
  return running(chat, app.server, adapter, () => app.close());
}

if (isMain(import.meta.url)) await runFromCommandLine('fastify', startFastifyChat);

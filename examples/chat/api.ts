import type { Logger, RoomManager } from 'roomwire';
import { z } from 'zod';
import { signToken } from './auth.js';
import type { ChatDatabase, Conversation } from './database.js';
import { messageInputSchema } from './realtime.js';

/**
 * The stable error codes of the HTTP API, each with its status. Clients branch on `code`;
 * `message` is for people and may change.
 */
export const API_ERRORS = {
  bad_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  too_large: 413,
  internal: 500,
} as const;

/** A code of {@link API_ERRORS}. */
export type ApiErrorCode = keyof typeof API_ERRORS;

/** An error a handler throws to answer with `{"error": {"code", "message"}}` and the code's status. */
export class ApiError extends Error {
  override readonly name = 'ApiError';
  readonly status: number;

  constructor(
    readonly code: ApiErrorCode,
    message: string,
  ) {
    super(message);
    this.status = API_ERRORS[code];
  }
}

/** What a handler gets: who calls (undefined on public routes), the path parameters, the query, the parsed JSON body. */
export interface ApiCall {
  user: string | undefined;
  params: Readonly<Record<string, string>>;
  query: Readonly<Record<string, unknown>>;
  body: unknown;
}

/** What a handler answers: a status and a JSON body (none for 204). */
export interface ApiReply {
  status: number;
  body?: unknown;
}

/** What the handlers work with. */
export interface ApiContext {
  db: ChatDatabase;
  manager: RoomManager;
  jwtSecret: string;
  logger: Logger;
}

/** A route handler: plain data in, plain data out, no framework in sight. */
export type ApiHandler = (context: ApiContext, call: ApiCall) => ApiReply | Promise<ApiReply>;

/** One row of the HTTP API table. */
export interface ApiRoute {
  method: 'GET' | 'POST' | 'DELETE';
  /** `:name` marks a path parameter; Express and Fastify read that syntax alike. */
  path: string;
  /** False only for login and health: every other route answers 401 without a valid Bearer token. */
  auth: boolean;
  handler: ApiHandler;
}

/** Validates `input` or throws a 400 naming the first problem. */
function parse<T>(schema: z.ZodType<T>, input: unknown): T {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    throw new ApiError('bad_request', 'the body must be a JSON object');
  }
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  throw new ApiError('bad_request', issue?.message ?? 'invalid body');
}

function caller(call: ApiCall): string {
  // The route table marks this route as authenticated; reaching here without a user is a wiring bug.
  if (call.user === undefined) throw new Error('route needs authentication but has no user');
  return call.user;
}

/**
 * The conversation of the `:id` parameter, if the caller participates in it: 404 when it
 * does not exist (a malformed id names nothing, so it is 404 too), 403 when the caller is
 * not a participant.
 */
function ownConversation(context: ApiContext, call: ApiCall): Conversation {
  const raw = call.params.id ?? '';
  const conversation = /^[1-9]\d{0,15}$/.test(raw) ? context.db.conversation(Number(raw)) : undefined;
  if (!conversation) throw new ApiError('not_found', `no conversation ${JSON.stringify(raw)}`);
  if (!conversation.participants.includes(caller(call))) {
    throw new ApiError('forbidden', 'you do not participate in this conversation');
  }
  return conversation;
}

/** A required string field whose messages name it, for both a missing and an empty value. */
const required = (name: string) => z.string({ error: `${name} is required (a string)` }).trim().min(1, `${name} is required`);

const loginSchema = z.object({ username: required('username') });
const createConversationSchema = z.object({
  title: required('title').max(200, 'title is longer than 200 characters'),
  participants: z.array(z.string(), { error: 'participants must be an array of user ids' }).max(100, 'at most 100 participants').optional(),
});
const addParticipantSchema = z.object({ user: required('user') });

const login: ApiHandler = async ({ db, jwtSecret }, call) => {
  const { username } = parse(loginSchema, call.body);
  const user = db.user(username);
  if (!user) throw new ApiError('unauthorized', 'unknown user');
  return { status: 200, body: { token: await signToken(user.id, jwtSecret), user } };
};

const listConversations: ApiHandler = ({ db }, call) => ({ status: 200, body: db.conversationsOf(caller(call)) });

const createConversation: ApiHandler = async (context, call) => {
  const { db } = context;
  const user = caller(call);
  const input = parse(createConversationSchema, call.body);
  const participants = [...new Set([user, ...(input.participants ?? [])])];
  const unknown = participants.filter((id) => !db.user(id));
  if (unknown.length > 0) throw new ApiError('bad_request', `unknown users: ${unknown.join(', ')}`);
  const conversation = db.createConversation(input.title, participants);
  // Online participants' sockets enter the new room now (each gets `joined`), so pages
  // can show the conversation without polling.
  for (const participant of participants) await tellSockets(context, conversation.room, participant);
  return { status: 201, body: conversation };
};

/**
 * `addMember` for a participant the database already holds. Its failure (with REDIS_URL,
 * Redis out of reach) is logged, not answered: the change is stored, a retry of the
 * request would create a second conversation, and the sockets catch up anyway (the next
 * broadcast into the room checks its participants, and the cached ones expire).
 */
async function tellSockets({ manager, logger }: ApiContext, room: string, user: string): Promise<void> {
  try {
    await manager.addMember(room, user);
  } catch (error) {
    logger.error({ err: error, room, user }, 'addMember of a stored participant failed');
  }
}

const addParticipant: ApiHandler = async (context, call) => {
  const conversation = ownConversation(context, call);
  const { user } = parse(addParticipantSchema, call.body);
  if (!context.db.user(user)) throw new ApiError('not_found', `no user ${JSON.stringify(user)}`);
  context.db.addParticipant(conversation.id, user);
  // Also when they already were one: addMember is idempotent and repairs a socket that missed its join.
  await tellSockets(context, conversation.room, user);
  return { status: 200, body: context.db.conversation(conversation.id) };
};

const removeParticipant: ApiHandler = async (context, call) => {
  const conversation = ownConversation(context, call);
  const user = call.params.user ?? '';
  if (!context.db.removeParticipant(conversation.id, user)) {
    throw new ApiError('not_found', `${JSON.stringify(user)} does not participate in this conversation`);
  }
  // After the database: a broadcast racing this reloads participants from the new state.
  // Awaited so that, with REDIS_URL, every process has dropped the user before the reply.
  await context.manager.removeMember(conversation.room, user);
  return { status: 204 };
};

const listMessages: ApiHandler = (context, call) => {
  const conversation = ownConversation(context, call);
  const after = call.query.after;
  if (after !== undefined && (typeof after !== 'string' || !/^\d{1,16}$/.test(after))) {
    throw new ApiError('bad_request', 'after must be a message id');
  }
  return { status: 200, body: context.db.messagesAfter(conversation.id, after === undefined ? 0 : Number(after)) };
};

const postMessage: ApiHandler = async (context, call) => {
  const conversation = ownConversation(context, call);
  const user = caller(call);
  const { content } = parse(messageInputSchema, call.body);
  const message = context.db.addMessage({ conversationId: conversation.id, from: user, content });
  try {
    await context.manager.broadcast(conversation.room, message, { from: user });
  } catch (error) {
    // Stored is what matters: clients that missed the push fetch it with GET .../messages.
    context.logger.error({ err: error, room: conversation.room }, 'broadcast of a stored message failed');
  }
  return { status: 201, body: message };
};

const debugRealtime: ApiHandler = ({ manager }, call) => {
  const user = caller(call);
  const stats = manager.stats();
  return {
    status: 200,
    body: {
      user,
      connections: manager.connectionsOf(user).map((connection) => ({
        id: connection.id,
        rooms: connection.rooms,
        openedAt: new Date(connection.openedAt).toISOString(),
      })),
      counts: { onlineUsers: stats.users, rooms: stats.rooms, connections: stats.connections },
    },
  };
};

const health: ApiHandler = () => ({ status: 200, body: { status: 'ok' } });

/** The HTTP API, one entry per row of the issue's table. */
export const API_ROUTES: readonly ApiRoute[] = [
  { method: 'POST', path: '/api/v1/auth/login', auth: false, handler: login },
  { method: 'GET', path: '/api/v1/conversations', auth: true, handler: listConversations },
  { method: 'POST', path: '/api/v1/conversations', auth: true, handler: createConversation },
  { method: 'POST', path: '/api/v1/conversations/:id/participants', auth: true, handler: addParticipant },
  { method: 'DELETE', path: '/api/v1/conversations/:id/participants/:user', auth: true, handler: removeParticipant },
  { method: 'GET', path: '/api/v1/conversations/:id/messages', auth: true, handler: listMessages },
  { method: 'POST', path: '/api/v1/conversations/:id/messages', auth: true, handler: postMessage },
  { method: 'GET', path: '/api/v1/debug/realtime', auth: true, handler: debugRealtime },
  { method: 'GET', path: '/healthz', auth: false, handler: health },
];

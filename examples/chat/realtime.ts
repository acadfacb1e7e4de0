import { z } from 'zod';
import { Redis } from 'ioredis';
import { RoomManager, RoomwireError, type Authenticator, type Backplane, type Logger } from 'roomwire';
import { RedisBackplane } from 'roomwire/redis';
import { conversationIdOf, type ChatDatabase } from './database.js';
import { databaseMembership } from './membership.js';

/** Longest message content, in characters; well under the 64 KiB message limit. */
export const MAX_CONTENT_LENGTH = 4000;

/**
 * What a message must look like, on both paths: the HTTP route's body and a realtime
 * publish's `data`. One schema, so the two cannot drift apart.
 */
export const messageInputSchema = z.object({
  content: z
    .string({ error: 'content is required (a string)' })
    .trim()
    .min(1, 'content must not be empty')
    .max(MAX_CONTENT_LENGTH, `content is longer than ${MAX_CONTENT_LENGTH} characters`),
});

/** The example's limits; each is a `RoomManagerOptions` field of the library. */
export const REALTIME_DEFAULTS = {
  maxFrameBytes: 1024 * 1024,
  maxMessageBytes: 64 * 1024,
  history: 500,
  maxConnectionsPerUser: 100,
  heartbeatMs: 25_000,
  presence: true,
  // A burst of 100 publishes per connection, refilled at 20 a second; more get `rate_limited`.
  publishRate: { burst: 100, perSecond: 20 },
} as const;

/**
 * With `REDIS_URL` set, several chat processes share rooms through Redis (see
 * examples/cluster/README.md); without it, one process serves alone.
 */
export function backplaneFromEnvironment(url = process.env.REDIS_URL, prefix = process.env.REDIS_PREFIX || 'roomwire-chat'): Backplane | undefined {
  if (url === undefined || url === '') return undefined;
  // No offline queue: while Redis is away a publish fails to its sender at once. No
  // resend after a reconnect: a publish Redis ran but could not answer would run twice.
  const redis = new Redis(url, { enableOfflineQueue: false, autoResendUnfulfilledCommands: false });
  return new RedisBackplane({ redis, prefix, closeClients: true });
}

/**
 * The chat's {@link RoomManager}: participants come from the database, and a client's
 * `publish` is validated, stored, and broadcast as the stored message, so a message sent
 * over the WebSocket and one POSTed over HTTP produce the same `message` frame.
 */
export function createRoomManager(options: { db: ChatDatabase; authenticate: Authenticator; logger: Logger }): RoomManager {
  const { db, authenticate, logger } = options;
  const backplane = backplaneFromEnvironment();
  const { history, ...defaults } = REALTIME_DEFAULTS;
  return new RoomManager({
    ...defaults,
    // The backplane keeps the history (in Redis) when there is one.
    ...(backplane === undefined ? { history } : { backplane }),
    authenticate,
    membership: databaseMembership(db),
    logger,
    publishSchema: messageInputSchema,
    // A repeated cid never reaches this hook within the core's dedupe window; past it (or
    // after a restart) the database's unique (conversation, sender, cid) keeps it stored once.
    onPublish: ({ user, room, data, cid }) => {
      const conversationId = conversationIdOf(room);
      // The core only lets participants publish; this check covers a removal racing the publish.
      if (conversationId === undefined || !db.isParticipant(conversationId, user.id)) {
        throw new RoomwireError('forbidden', 'not a participant of this conversation');
      }
      const { content } = data as z.infer<typeof messageInputSchema>;
      return db.addMessage({ conversationId, from: user.id, content, cid });
    },
  });
}

import { z } from 'zod';
import type { Authenticator, Principal } from './authenticator.js';
import { OptionsError } from './errors.js';
import type { Backplane } from './backplane.js';
import type { HistoryStore } from './history-store.js';
import type { Logger } from './logger.js';
import type { MaybePromise, MembershipLoader } from './membership-loader.js';

/** What an `onPublish` hook is told about a client's publish. */
export interface PublishContext {
  /** The publishing user. */
  readonly user: Principal;
  /** The publishing connection's id. */
  readonly connectionId: string;
  /** The room the client publishes into; the connection is in it. */
  readonly room: string;
  /** The client's `data`, after `publishSchema` when one is set. */
  readonly data: unknown;
  /** The client message id, when the client sent one. */
  readonly cid: string | undefined;
}

/**
 * Any validator with zod's `safeParse` shape (zod 3 or 4, or a compatible library).
 */
export interface SafeParser {
  /** Validates a publish's `data` without throwing. */
  safeParse(input: unknown):
    | {
        /** The data is valid. */
        success: true;
        /** The parsed value; it replaces the client's `data`. */
        data: unknown;
      }
    | {
        /** The data is invalid: the publisher gets `bad_request`. */
        success: false;
        /** Why; its `issues` (zod's shape: `path`, `message`) are sent as `details.issues`. */
        error: unknown;
      };
}

/** A token bucket: `burst` frames at once, refilled at `perSecond`. */
export interface RateLimit {
  /** Frames allowed at once, from a full bucket. */
  burst: number;
  /** Frames the bucket refills per second. */
  perSecond: number;
}

/** Options of the `RoomManager`. */
export interface RoomManagerOptions {
  /** Turns each upgrade's handshake into a principal, or refuses it. */
  authenticate: Authenticator;
  /** The application's source of truth about participants. */
  membership: MembershipLoader;
  /** A pino-compatible logger. @default silent */
  logger?: Logger | undefined;
  /**
   * Messages kept per room for `resume` with the in-memory store, or a
   * {@link HistoryStore} of your own. @default 500
   */
  history?: number | HistoryStore | undefined;
  /** How long a room's `membersOf` answer is trusted. @default 30000 */
  membershipTtlMs?: number | undefined;
  /** How long the authenticator may take before the upgrade is refused with 401. @default 10000 */
  authTimeoutMs?: number | undefined;
  /** How long a membership loader call may take before it counts as failed. @default 5000 */
  loaderTimeoutMs?: number | undefined;
  /** Rooms whose `membersOf` answer is cached at once. @default 10000 */
  membershipCacheSize?: number | undefined;
  /** Largest frame a client may send, in bytes; a larger one closes the connection with 1009. @default 1048576 */
  maxFrameBytes?: number | undefined;
  /**
   * Largest `publish.data`, in UTF-8 bytes of the client's data encoded as JSON again
   * (before `publishSchema` and `onPublish`); a larger one gets `too_large`. @default 65536
   */
  maxMessageBytes?: number | undefined;
  /**
   * Rooms one connection may be in. A participant's connection at the limit enters no
   * more rooms; the fallback sends it the broadcasts of its other rooms directly (with a
   * backplane, its process receives those rooms for it). @default 1000
   */
  maxRoomsPerConnection?: number | undefined;
  /** Open connections one user may have; one more is refused with 403 at the upgrade. @default 100 */
  maxConnectionsPerUser?: number | undefined;
  /** The heartbeat interval announced in `welcome` and used by transports' ping sweeps. @default 25000 */
  heartbeatMs?: number | undefined;
  /** Send `presence` frames when a participant's first connection opens or last one closes. @default false */
  presence?: boolean | undefined;
  /**
   * How long a publish `cid` is remembered for idempotency: by this process, and by the
   * backplane for the whole cluster (a retry on another process gets the first `ack`).
   * `0` turns it off. @default 300000
   */
  dedupeWindowMs?: number | undefined;
  /** How long `close()` waits, in all, for frames already accepted to finish and for connections to close before dropping them. @default 5000 */
  closeTimeoutMs?: number | undefined;
  /** Publishes one connection may make; excess gets `rate_limited`. `false` turns it off. @default { burst: 100, perSecond: 20 } */
  publishRate?: RateLimit | false | undefined;
  /** `join`, `leave` and `resume` frames one connection may send; excess gets `rate_limited`. @default { burst: 50, perSecond: 10 } */
  joinRate?: RateLimit | false | undefined;
  /**
   * How many `rate_limited` answers a connection may collect (refilled over time) before
   * it is closed with 4008 for sustained abuse. @default { burst: 50, perSecond: 1 }
   */
  rateLimitStrikes?: RateLimit | undefined;
  /**
   * A connection whose unsent bytes pass this mark when a broadcast reaches it is closed
   * with 4008 ("too slow") instead of growing the server's memory. The default holds about
   * 20 s of a slow 3G link. @default 1048576
   */
  maxBufferedBytes?: number | undefined;
  /** Validates a client's `publish.data`; a failure is answered with `bad_request`. */
  publishSchema?: SafeParser | undefined;
  /**
   * Runs before a client's publish is broadcast: store, transform or refuse it (throw a
   * `RoomwireError`). What it returns is the broadcast `data`. Not called for a repeated `cid`.
   */
  onPublish?: ((context: PublishContext) => MaybePromise<unknown>) | undefined;
  /**
   * Shares rooms with other processes (`RedisBackplane` from `roomwire/redis`, or a
   * {@link LocalBus} node). Its history replaces the `history` option, which must then be
   * left out. Without it the manager serves this process's connections alone.
   */
  backplane?: Backplane | undefined;
}

const isFunction = (value: unknown): boolean => typeof value === 'function';
const fn = (what: string) => z.custom<(...args: never[]) => unknown>(isFunction, { message: `${what} must be a function` });
const positiveInt = z.number().int().positive();
const timeMs = z.number().int().min(0).or(z.literal(Number.POSITIVE_INFINITY));

const rateLimit = z.object({ burst: positiveInt, perSecond: z.number().positive() });
/** A union's own error says what it takes: zod's would be "Invalid input". */
const rateLimitOrOff = (name: string) =>
  z.union([rateLimit, z.literal(false)], { error: `${name} must be false or { burst, perSecond }: burst a whole number > 0, perSecond a number > 0` });

// Strict: a misspelled option is named in the error rather than silently ignored.
const optionsSchema = z.strictObject({
  authenticate: fn('authenticate'),
  membership: z.object({
    roomsOf: fn('membership.roomsOf'),
    membersOf: fn('membership.membersOf'),
    canJoin: fn('membership.canJoin').optional(),
  }, { message: 'membership must be a MembershipLoader { roomsOf, membersOf, canJoin? }' }),
  logger: z
    .object({ debug: fn('logger.debug'), info: fn('logger.info'), warn: fn('logger.warn'), error: fn('logger.error') })
    .optional(),
  history: z
    .union(
      [z.number().int().min(0), z.object({ append: fn('history.append'), latestSeq: fn('history.latestSeq'), since: fn('history.since') })],
      { error: 'history must be a number of messages per room (a whole number >= 0) or a HistoryStore { append, latestSeq, since }' },
    )
    .optional(),
  membershipTtlMs: timeMs.optional(),
  authTimeoutMs: timeMs.optional(),
  loaderTimeoutMs: timeMs.optional(),
  membershipCacheSize: positiveInt.optional(),
  maxFrameBytes: positiveInt.optional(),
  maxMessageBytes: positiveInt.optional(),
  maxRoomsPerConnection: positiveInt.optional(),
  maxConnectionsPerUser: positiveInt.or(z.literal(Number.POSITIVE_INFINITY)).optional(),
  heartbeatMs: positiveInt.optional(),
  presence: z.boolean().optional(),
  dedupeWindowMs: timeMs.optional(),
  closeTimeoutMs: timeMs.optional(),
  publishRate: rateLimitOrOff('publishRate').optional(),
  joinRate: rateLimitOrOff('joinRate').optional(),
  rateLimitStrikes: rateLimit.optional(),
  maxBufferedBytes: positiveInt.optional(),
  publishSchema: z.object({ safeParse: fn('publishSchema.safeParse') }).optional(),
  onPublish: fn('onPublish').optional(),
  backplane: z
    .object(
      {
        history: z.object({ append: fn('backplane.history.append'), latestSeq: fn('backplane.history.latestSeq'), since: fn('backplane.history.since') }),
        presence: z.object({ track: fn('backplane.presence.track'), onlineUsers: fn('backplane.presence.onlineUsers') }),
        start: fn('backplane.start'),
        publish: fn('backplane.publish'),
        subscribe: fn('backplane.subscribe'),
        unsubscribe: fn('backplane.unsubscribe'),
        announce: fn('backplane.announce'),
        close: fn('backplane.close'),
      },
      { message: 'backplane must be a Backplane (a LocalBus node or a RedisBackplane)' },
    )
    .optional(),
});

/** The options with every default filled in. */
export interface ResolvedOptions {
  authenticate: Authenticator;
  membership: MembershipLoader;
  logger: Logger | undefined;
  history: number | HistoryStore;
  membershipTtlMs: number;
  authTimeoutMs: number;
  loaderTimeoutMs: number;
  membershipCacheSize: number;
  maxFrameBytes: number;
  maxMessageBytes: number;
  maxRoomsPerConnection: number;
  maxConnectionsPerUser: number;
  heartbeatMs: number;
  presence: boolean;
  dedupeWindowMs: number;
  closeTimeoutMs: number;
  publishRate: RateLimit | false;
  joinRate: RateLimit | false;
  rateLimitStrikes: RateLimit;
  maxBufferedBytes: number;
  publishSchema: SafeParser | undefined;
  onPublish: ((context: PublishContext) => MaybePromise<unknown>) | undefined;
  backplane: Backplane | undefined;
}

/** Validates the options and fills in defaults; throws {@link OptionsError} naming each bad option. */
export function resolveOptions(options: RoomManagerOptions): ResolvedOptions {
  const parsed = optionsSchema.safeParse(options);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((issue) => `  - ${issue.path.map(String).join('.') || 'options'}: ${issue.message}`);
    throw new OptionsError(`invalid RoomManager options:\n${lines.join('\n')}`);
  }
  if (options.backplane !== undefined && options.history !== undefined) {
    // Two sources of seqs would disagree; the backplane's history is the cluster's.
    throw new OptionsError('invalid RoomManager options:\n  - history: leave it out with a backplane; the backplane keeps the history');
  }
  // The schema checked shapes; the original objects are kept so methods keep their `this`.
  return {
    authenticate: options.authenticate,
    membership: options.membership,
    logger: options.logger,
    history: options.history ?? 500,
    membershipTtlMs: options.membershipTtlMs ?? 30_000,
    authTimeoutMs: options.authTimeoutMs ?? 10_000,
    loaderTimeoutMs: options.loaderTimeoutMs ?? 5_000,
    membershipCacheSize: options.membershipCacheSize ?? 10_000,
    maxFrameBytes: options.maxFrameBytes ?? 1024 * 1024,
    maxMessageBytes: options.maxMessageBytes ?? 64 * 1024,
    maxRoomsPerConnection: options.maxRoomsPerConnection ?? 1000,
    maxConnectionsPerUser: options.maxConnectionsPerUser ?? 100,
    heartbeatMs: options.heartbeatMs ?? 25_000,
    presence: options.presence ?? false,
    dedupeWindowMs: options.dedupeWindowMs ?? 5 * 60_000,
    closeTimeoutMs: options.closeTimeoutMs ?? 5_000,
    publishRate: options.publishRate ?? { burst: 100, perSecond: 20 },
    joinRate: options.joinRate ?? { burst: 50, perSecond: 10 },
    rateLimitStrikes: options.rateLimitStrikes ?? { burst: 50, perSecond: 1 },
    maxBufferedBytes: options.maxBufferedBytes ?? 1024 * 1024,
    publishSchema: options.publishSchema,
    onPublish: options.onPublish,
    backplane: options.backplane,
  };
}

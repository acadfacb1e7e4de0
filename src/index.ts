/**
 * The core of roomwire: the {@link RoomManager}, the interfaces an application plugs into
 * it ({@link Authenticator}, {@link MembershipLoader}, {@link HistoryStore}, {@link Logger})
 * or a transport wraps a socket in ({@link Connection}), the errors, and the protocol v1
 * codec. It imports no framework and no socket library.
 *
 * @module roomwire
 */
export { RoomManager } from './room-manager.js';
export type {
  BroadcastOptions,
  JoinReason,
  LeaveReason,
  RoomManagerEvents,
  RoomManagerStats,
} from './room-manager.js';
export type { RoomManagerOptions, PublishContext, RateLimit, SafeParser } from './options.js';
export type { Authenticator, Handshake, Principal } from './authenticator.js';
export type { MembershipLoader, MaybePromise } from './membership-loader.js';
export type { Connection, ConnectionHandlers, ConnectionInfo } from './connection.js';
export type { DeliveryReport } from './delivery-report.js';
export { InMemoryHistoryStore, type HistoryStore, type StoredMessage } from './history-store.js';
export {
  PARTICIPANTS_PER_NOTICE,
  type Backplane,
  type BackplaneHandlers,
  type CidClaim,
  type ClusterCids,
  type ClusterPresence,
  type LostUser,
  type MembershipChange,
  type PublishCid,
} from './backplane.js';
export { LocalBus, LocalBackplane, type LocalBusOptions } from './backplanes/local.js';
export { silentLogger, type Logger, type LogFn } from './logger.js';
export {
  ERROR_CODES,
  HandshakeError,
  OptionsError,
  RoomwireError,
  isHandshakeError,
  isRoomwireError,
  type ErrorCode,
  type HandshakeStatus,
} from './errors.js';
export { TimeoutError } from './timeout.js';
export * from './protocol/index.js';

/**
 * `roomwire/client`: a browser, React Native and Node client for roomwire servers that
 * reconnects, resumes every room from the last message seen, and publishes exactly once.
 * No runtime dependency beyond a WebSocket.
 *
 * @module roomwire/client
 */
export { connect, type PublishOptions, type RoomwireClient } from './client.js';
export { ClientError, isClientError, type ClientErrorCode } from './errors.js';
export type { ClientEvents, ClientState, RoomMessage } from './events.js';
export type { ClientOptions, ReconnectOptions } from './options.js';
export type { SocketHandler, WebSocketConstructor, WebSocketLike } from './websocket.js';
export type { MessageFrame, PresenceFrame, WelcomeFrame } from '../protocol/frames.js';

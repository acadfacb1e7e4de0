/**
 * What one broadcast did, emitted as the `delivery` event and returned by
 * `RoomManager.broadcast`. Counts are of this process's connections.
 */
export interface DeliveryReport {
  /** The room the message was broadcast into. */
  readonly room: string;
  /** The message id. */
  readonly id: string;
  /** The message's `seq` in the room. */
  readonly seq: number;
  /** Users the membership loader lists as participants of the room. */
  readonly participants: number;
  /** Participants with at least one open connection (the sender included). */
  readonly online: number;
  /** Online participants reached on at least one connection (the sender counts as reached). */
  readonly reached: number;
  /** Connections the message was sent to, by the room broadcast or the fallback. */
  readonly delivered: number;
  /** Of `delivered`, connections reached only by the fallback (missing from the room, or a send that threw). */
  readonly viaFallback: number;
  /** Connections that should have received it and could not be sent to, even by the fallback. */
  readonly failed: number;
  /** Connections closed with 4008 because their unsent bytes passed `maxBufferedBytes`. */
  readonly slow: number;
  /** Connections added to the room by ensure-participants before this broadcast. */
  readonly added: number;
  /** Connections taken out of the room because their user is no longer a participant. */
  readonly removed: number;
  /** True when the membership loader failed and the last known participants were used. */
  readonly stale: boolean;
}

import type { Principal } from './authenticator.js';

/** A value or a promise of it. */
export type MaybePromise<T> = T | Promise<T>;

/**
 * The application's source of truth about who participates in which room. roomwire asks
 * it on connect (auto-join), before broadcasts (ensure-participants, answers cached per
 * room) and when a client joins a room it is not listed in.
 *
 * @example
 * ```ts
 * import type { MembershipLoader } from 'roomwire';
 *
 * declare const db: {
 *   roomsOfUser(userId: string): Promise<string[]>;
 *   usersInRoom(room: string): Promise<string[]>;
 * };
 * const membership: MembershipLoader = {
 *   roomsOf: (user) => db.roomsOfUser(user.id),
 *   membersOf: (room) => db.usersInRoom(room),
 *   canJoin: (user, room) => room.startsWith('public:'),
 * };
 * ```
 */
export interface MembershipLoader {
  /** The rooms the user participates in; the connection is joined to each on connect. */
  roomsOf(user: Principal): MaybePromise<Iterable<string>>;
  /** The user ids participating in the room. */
  membersOf(room: string): MaybePromise<Iterable<string>>;
  /**
   * Whether the user may `join` (be admitted to) a room they do not participate in.
   * Without it, only participants may join.
   */
  canJoin?(user: Principal, room: string): MaybePromise<boolean>;
}

import type { MembershipLoader } from 'roomwire';
import { conversationIdOf, roomOf, type ChatDatabase } from './database.js';

/**
 * The chat's {@link MembershipLoader}: the participants table is the source of truth for
 * who is in which conversation's room. roomwire calls `roomsOf` when a user connects
 * (auto-join) and `membersOf` before a broadcast (ensure participants, cached per room);
 * the routes keep that cache exact with `addMember` and `removeMember`.
 *
 * No `canJoin`: a conversation is private, so only participants may be in its room.
 */
export function databaseMembership(db: ChatDatabase): MembershipLoader {
  return {
    roomsOf: (user) => db.conversationIdsOf(user.id).map(roomOf),
    membersOf: (room) => {
      const conversationId = conversationIdOf(room);
      return conversationId === undefined ? [] : db.participantsOf(conversationId);
    },
  };
}

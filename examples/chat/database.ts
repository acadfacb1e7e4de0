import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';

/** The repository root, so the default database lands in the same place whatever the working directory. */
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Where the database lives when `DATABASE_PATH` is unset: `data/chat.db` under the repository root. */
export const DEFAULT_DATABASE_PATH = resolve(ROOT, 'data/chat.db');

/** A user of the chat. Seeded users have their username as id. */
export interface User {
  id: string;
  name: string;
}

/** A conversation as the HTTP API returns it. */
export interface Conversation {
  id: number;
  title: string;
  /** The roomwire room its messages are broadcast in. */
  room: string;
  /** User ids, in the order they were added. */
  participants: string[];
}

/** A stored message; the same object is the `data` of the realtime `message` frame. */
export interface ChatMessage {
  id: number;
  conversationId: number;
  /** The sender's user id. */
  from: string;
  content: string;
  /** ISO 8601. */
  createdAt: string;
}

const ROOM_PREFIX = 'conversation:';

/** The roomwire room of a conversation. */
export function roomOf(conversationId: number): string {
  return `${ROOM_PREFIX}${conversationId}`;
}

/** The conversation id of a room name, or undefined for a room that is not a conversation's. */
export function conversationIdOf(room: string): number | undefined {
  if (!room.startsWith(ROOM_PREFIX)) return undefined;
  const rest = room.slice(ROOM_PREFIX.length);
  return /^[1-9]\d{0,15}$/.test(rest) ? Number(rest) : undefined;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS users (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS conversations (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  title TEXT NOT NULL,
  created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS participants (
  conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
  user_id TEXT NOT NULL REFERENCES users(id),
  added_at TEXT NOT NULL,
  PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX IF NOT EXISTS participants_by_user ON participants(user_id, conversation_id);
CREATE TABLE IF NOT EXISTS messages (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
  user_id TEXT NOT NULL REFERENCES users(id),
  content TEXT NOT NULL,
  created_at TEXT NOT NULL,
  cid TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
-- A publish retried with the same cid after the core's dedupe window (or after a restart)
-- must still be stored once.
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_cid ON messages(conversation_id, user_id, cid) WHERE cid IS NOT NULL;
`;

const SEED_USERS: User[] = [
  { id: 'alice', name: 'Alice Liddell' },
  { id: 'bob', name: 'Bob Marley' },
  { id: 'carol', name: 'Carol King' },
  { id: 'dave', name: 'Dave Grohl' },
];

const SEED_CONVERSATIONS: { title: string; participants: string[] }[] = [
  { title: 'alice & bob', participants: ['alice', 'bob'] },
  { title: 'team', participants: ['alice', 'bob', 'carol'] },
];

interface MessageRow {
  id: number;
  conversation_id: number;
  user_id: string;
  content: string;
  created_at: string;
}

function toMessage(row: MessageRow): ChatMessage {
  return { id: row.id, conversationId: row.conversation_id, from: row.user_id, content: row.content, createdAt: row.created_at };
}

/**
 * The chat's data: users, conversations, participants and messages in SQLite. Opening it
 * creates the schema and, on an empty database, the demo seed. better-sqlite3 is
 * synchronous, so each method is one short query and needs no await.
 */
export class ChatDatabase {
  private readonly db: Database.Database;
  private readonly statements;

  /**
   * @param path a file path (its folder is created) or `:memory:`.
   * @default {@link DEFAULT_DATABASE_PATH}
   */
  constructor(readonly path: string = DEFAULT_DATABASE_PATH) {
    if (path !== ':memory:' && !path.startsWith('file:')) mkdirSync(dirname(resolve(path)), { recursive: true });
    this.db = new Database(path);
    // WAL lets several server processes share one file (the scale-out setup) without
    // readers blocking the writer; busy_timeout rides out the short write locks.
    if (path !== ':memory:') this.db.pragma('journal_mode = WAL');
    this.db.pragma('busy_timeout = 5000');
    this.db.pragma('foreign_keys = ON');
    this.db.exec(SCHEMA);
    const db = this.db;
    this.statements = {
      user: db.prepare<[string], User>('SELECT id, name FROM users WHERE id = ?'),
      insertUser: db.prepare<[string, string]>('INSERT OR IGNORE INTO users (id, name) VALUES (?, ?)'),
      conversationCount: db.prepare<[], { n: number }>('SELECT COUNT(*) AS n FROM conversations'),
      conversation: db.prepare<[number], { id: number; title: string }>('SELECT id, title FROM conversations WHERE id = ?'),
      conversationsOf: db.prepare<[string], { id: number; title: string }>(
        'SELECT c.id, c.title FROM conversations c JOIN participants p ON p.conversation_id = c.id WHERE p.user_id = ? ORDER BY c.id',
      ),
      insertConversation: db.prepare<[string, string]>('INSERT INTO conversations (title, created_at) VALUES (?, ?)'),
      participants: db.prepare<[number], { user_id: string }>(
        'SELECT user_id FROM participants WHERE conversation_id = ? ORDER BY added_at, rowid',
      ),
      isParticipant: db.prepare<[number, string], { one: number }>(
        'SELECT 1 AS one FROM participants WHERE conversation_id = ? AND user_id = ?',
      ),
      roomsOf: db.prepare<[string], { conversation_id: number }>('SELECT conversation_id FROM participants WHERE user_id = ?'),
      addParticipant: db.prepare<[number, string, string]>(
        'INSERT OR IGNORE INTO participants (conversation_id, user_id, added_at) VALUES (?, ?, ?)',
      ),
      removeParticipant: db.prepare<[number, string]>('DELETE FROM participants WHERE conversation_id = ? AND user_id = ?'),
      messagesAfter: db.prepare<[number, number], MessageRow>(
        'SELECT id, conversation_id, user_id, content, created_at FROM messages WHERE conversation_id = ? AND id > ? ORDER BY id',
      ),
      insertMessage: db.prepare<[number, string, string, string, string | null], MessageRow>(
        `INSERT INTO messages (conversation_id, user_id, content, created_at, cid) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT DO NOTHING RETURNING id, conversation_id, user_id, content, created_at`,
      ),
      messageByCid: db.prepare<[number, string, string], MessageRow>(
        'SELECT id, conversation_id, user_id, content, created_at FROM messages WHERE conversation_id = ? AND user_id = ? AND cid = ?',
      ),
    };
    this.seed();
  }

  private seed(): void {
    this.db.transaction(() => {
      for (const user of SEED_USERS) this.statements.insertUser.run(user.id, user.name);
      // Conversations are seeded once: a restart must not duplicate them.
      if ((this.statements.conversationCount.get()?.n ?? 0) > 0) return;
      for (const conversation of SEED_CONVERSATIONS) this.createConversation(conversation.title, conversation.participants);
    })();
  }

  /** A user by id. */
  user(id: string): User | undefined {
    return this.statements.user.get(id);
  }

  /** A conversation with its participants. */
  conversation(id: number): Conversation | undefined {
    const row = this.statements.conversation.get(id);
    return row && this.withParticipants(row);
  }

  /** The conversations `user` participates in, oldest first. */
  conversationsOf(user: string): Conversation[] {
    return this.statements.conversationsOf.all(user).map((row) => this.withParticipants(row));
  }

  /** Creates a conversation; `participants` must be existing user ids. */
  createConversation(title: string, participants: readonly string[]): Conversation {
    return this.db.transaction(() => {
      const now = new Date().toISOString();
      const id = Number(this.statements.insertConversation.run(title, now).lastInsertRowid);
      for (const user of participants) this.statements.addParticipant.run(id, user, now);
      return this.conversation(id)!;
    })();
  }

  /** The participants of a conversation (empty for an unknown one). */
  participantsOf(conversationId: number): string[] {
    return this.statements.participants.all(conversationId).map((row) => row.user_id);
  }

  /** True when `user` participates in the conversation. */
  isParticipant(conversationId: number, user: string): boolean {
    return this.statements.isParticipant.get(conversationId, user) !== undefined;
  }

  /** Ids of the conversations `user` participates in. */
  conversationIdsOf(user: string): number[] {
    return this.statements.roomsOf.all(user).map((row) => row.conversation_id);
  }

  /** Adds a participant; returns false when they already were one. */
  addParticipant(conversationId: number, user: string): boolean {
    return this.statements.addParticipant.run(conversationId, user, new Date().toISOString()).changes > 0;
  }

  /** Removes a participant; returns false when they were not one. */
  removeParticipant(conversationId: number, user: string): boolean {
    return this.statements.removeParticipant.run(conversationId, user).changes > 0;
  }

  /** Messages with an id above `afterId`, oldest first. */
  messagesAfter(conversationId: number, afterId = 0): ChatMessage[] {
    return this.statements.messagesAfter.all(conversationId, afterId).map(toMessage);
  }

  /**
   * Stores a message. With a `cid` already stored for the same sender and conversation, the
   * stored message is returned and nothing new is written.
   */
  addMessage(input: { conversationId: number; from: string; content: string; cid?: string | undefined }): ChatMessage {
    const { conversationId, from, content } = input;
    const cid = input.cid ?? null;
    const inserted = this.statements.insertMessage.get(conversationId, from, content, new Date().toISOString(), cid);
    if (inserted) return toMessage(inserted);
    const existing = cid === null ? undefined : this.statements.messageByCid.get(conversationId, from, cid);
    if (!existing) throw new Error('message was neither stored nor found');
    return toMessage(existing);
  }

  /** Closes the database file. */
  close(): void {
    if (this.db.open) this.db.close();
  }

  private withParticipants(row: { id: number; title: string }): Conversation {
    return { id: row.id, title: row.title, room: roomOf(row.id), participants: this.participantsOf(row.id) };
  }
}

import { randomBytes } from 'node:crypto';
import type { MaybePromise } from './membership-loader.js';

/** One message as a room's history keeps it; the `message` frame carries the same fields. */
export interface StoredMessage {
  /** The room it was published into. */
  readonly room: string;
  /** Unique message id. */
  readonly id: string;
  /** Position in the room: 1 for the first message, each next one higher by exactly 1. */
  readonly seq: number;
  /** The sending user's id, or null for the server. */
  readonly from: string | null;
  /** The JSON value broadcast. */
  readonly data: unknown;
  /** When it was accepted, in ms since the epoch. */
  readonly ts: number;
}

/**
 * Assigns each room's `seq` and keeps a bounded recent history so clients can `resume`.
 * Methods may answer synchronously (the in-memory store does, which keeps the broadcast
 * path free of promises) or with a promise (a store over the network).
 */
export interface HistoryStore {
  /**
   * Names this store's seq numbering; must change whenever seqs restart from 1 (a new
   * in-memory store). Sent in `welcome` so a client resuming against a restarted server
   * gets `history_gap` instead of messages that only look like the ones it missed.
   * A durable store whose seqs never restart may leave it out.
   */
  readonly epoch?: string | undefined;
  /** Gives the message the room's next `seq`, keeps it, and returns it. */
  append(message: Omit<StoredMessage, 'seq'>): MaybePromise<StoredMessage>;
  /** The room's latest `seq`; 0 when it has none. */
  latestSeq(room: string): MaybePromise<number>;
  /**
   * The messages of `room` with `afterSeq < seq <= untilSeq` (no upper bound without
   * `untilSeq`), oldest first; `null` when the history no longer reaches back to
   * `afterSeq + 1`, or when `afterSeq` is beyond anything this store has seen.
   */
  since(room: string, afterSeq: number, untilSeq?: number): MaybePromise<StoredMessage[] | null>;
}

/**
 * A ring of one room's newest messages, at most `capacity`. It grows as messages come
 * (a room with three messages holds an array of three, not of `capacity`).
 */
class RoomHistory {
  latest = 0;
  /** A message, or its `message` frame once the broadcast encoded it (see `keepEncoded`). */
  private readonly ring: (StoredMessage | string)[] = [];
  private size = 0;

  constructor(private readonly capacity: number) {}

  push(message: StoredMessage): void {
    this.latest = message.seq;
    if (this.capacity === 0) return;
    // Seqs start at 1: slot seq - 1, so the array fills from index 0 without holes.
    this.ring[(message.seq - 1) % this.capacity] = message;
    if (this.size < this.capacity) this.size++;
  }

  since(afterSeq: number, untilSeq: number): StoredMessage[] | null {
    if (afterSeq > this.latest) return null;
    const oldest = this.latest - this.size + 1;
    if (afterSeq + 1 < oldest) return null;
    const until = Math.min(untilSeq, this.latest);
    const out: StoredMessage[] = [];
    for (let seq = afterSeq + 1; seq <= until; seq++) {
      const message = this.ring[(seq - 1) % this.capacity];
      if (message !== undefined) out.push(typeof message === 'string' ? decodeStored(message) : message);
    }
    return out;
  }

  /** Swaps a kept message for its encoded frame, if the slot still holds that message. */
  keepEncoded(message: StoredMessage, frame: string): void {
    if (this.capacity === 0) return;
    const slot = (message.seq - 1) % this.capacity;
    if (this.ring[slot] === message) this.ring[slot] = frame;
  }
}

/** A kept `message` frame back as the message it carries. */
function decodeStored(frame: string): StoredMessage {
  const { room, id, seq, from, data, ts } = JSON.parse(frame) as StoredMessage;
  return { room, id, seq, from, data, ts };
}

/**
 * The default {@link HistoryStore}: per-room `seq` and the newest `limit` messages of each
 * room, in this process's memory. History is lost when the process exits; a client that
 * resumes against a restarted process gets `history_gap` and refetches from the app.
 */
export class InMemoryHistoryStore implements HistoryStore {
  /** Random per store: seqs restart with every new store. */
  readonly epoch = randomBytes(8).toString('base64url');
  private readonly rooms = new Map<string, RoomHistory>();

  /** @param limit Messages kept per room. @default 500 */
  constructor(readonly limit = 500) {
    if (!Number.isInteger(limit) || limit < 0) throw new RangeError('history limit must be a whole number >= 0');
  }

  append(message: Omit<StoredMessage, 'seq'>): StoredMessage {
    let history = this.rooms.get(message.room);
    if (!history) {
      history = new RoomHistory(this.limit);
      this.rooms.set(message.room, history);
    }
    const { room, id, from, data, ts } = message;
    const stored: StoredMessage = { room, id, seq: history.latest + 1, from, data, ts };
    history.push(stored);
    return stored;
  }

  latestSeq(room: string): number {
    return this.rooms.get(room)?.latest ?? 0;
  }

  since(room: string, afterSeq: number, untilSeq = Number.MAX_SAFE_INTEGER): StoredMessage[] | null {
    const history = this.rooms.get(room);
    if (!history) return afterSeq === 0 ? [] : null;
    return history.since(afterSeq, untilSeq);
  }

  /**
   * @internal Keeps `message` as the `message` frame the broadcast already encoded: one
   * flat string instead of an object graph, so the history costs the garbage collector
   * less. `since` decodes it again (the data then comes back as JSON gives it).
   */
  keepEncoded(message: StoredMessage, frame: string): void {
    this.rooms.get(message.room)?.keepEncoded(message, frame);
  }
}

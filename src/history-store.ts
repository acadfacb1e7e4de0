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
  /**
   * The connection its broadcast left out (`broadcast()`'s `except`), on a message read
   * back from a backplane's history that keeps it: a process catching up on the room
   * from the history leaves that connection out too. Never sent to clients.
   */
  readonly except?: string | undefined;
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
   * A durable store whose seqs never restart may leave it out. One over 64 characters
   * (what `resume` takes back) is announced as a digest of it.
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
 * A ring of one room's newest messages, at most `capacity`. A message is kept as the
 * object `append` made until the broadcast hands over its encoded `message` frame
 * (`keepEncoded`); from then on only the frame's UTF-8 bytes are kept, in one buffer per
 * room outside the JavaScript heap. So a busy room's history is not thousands of strings
 * that every scavenge copies and every major GC marks: it is one buffer. Everything grows
 * with the messages (a room with three messages holds three, not `capacity`).
 */
class RoomHistory {
  latest = 0;
  private size = 0;
  /**
   * The message whose frame is not kept yet, and its slot ((seq - 1) % capacity; -1: none).
   * A broadcast keeps its frame in the tick it was appended, so one is the usual most; a
   * field pair rather than an array as long as the history, which would sit in the
   * JavaScript heap for every room and grow with it.
   */
  private pendingSlot = -1;
  private pendingMessage: StoredMessage | undefined;
  /** Further messages waiting for their frame, by slot: appended while an earlier one waited. */
  private morePending: Map<number, StoredMessage> | undefined;
  /** Slot: where its frame starts in `bytes`, and how long it is (0: none kept). */
  private starts = new Uint32Array(0);
  private lengths = new Uint32Array(0);
  /** The kept frames, appended at `used`; `live` of those bytes still belong to a kept message. */
  private bytes = EMPTY;
  private used = 0;
  private live = 0;

  constructor(private readonly capacity: number) {}

  push(message: StoredMessage): void {
    this.latest = message.seq;
    if (this.capacity === 0) return;
    // Seqs start at 1: slot seq - 1, so the slots fill from 0 without holes.
    const slot = (message.seq - 1) % this.capacity;
    // A message still pending in this slot is older than the history reaches now: replaced.
    if (this.pendingSlot === -1 || this.pendingSlot === slot) {
      this.pendingSlot = slot;
      this.pendingMessage = message;
      this.morePending?.delete(slot);
    } else (this.morePending ??= new Map()).set(slot, message);
    if (slot < this.lengths.length) this.drop(slot);
    if (this.size < this.capacity) this.size++;
  }

  since(afterSeq: number, untilSeq: number): StoredMessage[] | null {
    if (afterSeq > this.latest) return null;
    const oldest = this.latest - this.size + 1;
    if (afterSeq + 1 < oldest) return null;
    const until = Math.min(untilSeq, this.latest);
    const out: StoredMessage[] = [];
    for (let seq = afterSeq + 1; seq <= until; seq++) {
      const slot = (seq - 1) % this.capacity;
      const message = this.pendingAt(slot);
      if (message !== undefined) out.push(message);
      else if (slot < this.lengths.length && this.lengths[slot]! > 0) {
        const start = this.starts[slot]!;
        out.push(decodeStored(this.bytes.toString('utf8', start, start + this.lengths[slot]!)));
      }
    }
    return out;
  }

  /** Keeps a message as its encoded frame, if its slot still holds that message. */
  keepEncoded(message: StoredMessage, frame: string): void {
    if (this.capacity === 0) return;
    const slot = (message.seq - 1) % this.capacity;
    if (this.pendingAt(slot) !== message) return;
    if (slot >= this.lengths.length) this.growSlots(slot + 1);
    let length: number;
    // UTF-8 takes at most 3 bytes per UTF-16 code unit: when that surely fits, encode in
    // one pass; otherwise measure first, and make room.
    if (this.used + frame.length * 3 <= this.bytes.length) length = this.bytes.write(frame, this.used);
    else {
      length = Buffer.byteLength(frame);
      if (this.used + length > this.bytes.length) this.compact(length);
      this.bytes.write(frame, this.used, length);
    }
    this.starts[slot] = this.used;
    this.lengths[slot] = length;
    this.used += length;
    this.live += length;
    if (this.pendingSlot === slot) {
      this.pendingSlot = -1;
      this.pendingMessage = undefined;
    } else this.morePending?.delete(slot);
  }

  private pendingAt(slot: number): StoredMessage | undefined {
    return this.pendingSlot === slot ? this.pendingMessage : this.morePending?.get(slot);
  }

  /** Forgets the frame kept in `slot`: its bytes are dead until the next compaction. */
  private drop(slot: number): void {
    this.live -= this.lengths[slot]!;
    this.lengths[slot] = 0;
  }

  /**
   * Makes room for `length` more bytes by dropping the dead ones: the kept frames move, in
   * seq order, to the front of a buffer. When this buffer has a quarter to spare once they
   * have moved, and is not more than twice what they need, they move within it; otherwise
   * to a new buffer half as large again as they need (larger while the room's history
   * fills, smaller after its messages shrank). So a room whose history is full keeps one
   * buffer, compacted in place, instead of leaving a dead one outside the heap, for a full
   * collection to free, every few hundred messages. Each byte kept is copied a few times
   * in all.
   */
  private compact(length: number): void {
    const needed = this.live + length;
    const spare = this.bytes.length / needed;
    const inPlace = spare >= 1.25 && spare <= 2 && this.keptInOrder();
    const next = inPlace ? this.bytes : Buffer.allocUnsafeSlow(Math.max(MIN_ARENA_BYTES, Math.ceil(needed * 1.5)));
    let at = 0;
    this.eachKept((slot, start, size) => {
      // In place, a frame only ever moves towards the front (keptInOrder), over bytes already moved or dead.
      if (inPlace) next.copyWithin(at, start, start + size);
      else this.bytes.copy(next, at, start, start + size);
      this.starts[slot] = at;
      at += size;
      return true;
    });
    this.bytes = next;
    this.used = at;
    this.live = at;
  }

  /** Whether the kept frames lie in the buffer in seq order, as they are appended. */
  private keptInOrder(): boolean {
    let end = 0;
    return this.eachKept((_slot, start, size) => {
      if (start < end) return false;
      end = start + size;
      return true;
    });
  }

  /** Visits the kept frames in seq order until `visit` returns false; true if it never did. */
  private eachKept(visit: (slot: number, start: number, size: number) => boolean): boolean {
    for (let seq = Math.max(1, this.latest - this.size + 1); seq <= this.latest; seq++) {
      const slot = (seq - 1) % this.capacity;
      const size = slot < this.lengths.length ? this.lengths[slot]! : 0;
      if (size > 0 && !visit(slot, this.starts[slot]!, size)) return false;
    }
    return true;
  }

  private growSlots(needed: number): void {
    const size = Math.min(this.capacity, Math.max(needed, this.lengths.length * 2, 8));
    const starts = new Uint32Array(size);
    const lengths = new Uint32Array(size);
    starts.set(this.starts);
    lengths.set(this.lengths);
    this.starts = starts;
    this.lengths = lengths;
  }
}

const EMPTY = Buffer.alloc(0);
/** The smallest frame buffer a room gets: a few frames of a typical chat message. */
const MIN_ARENA_BYTES = 1024;

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
  /** The room appended to last and its history: the broadcast hands over that message's frame next. */
  private lastRoom: string | undefined;
  private lastHistory: RoomHistory | undefined;

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
    this.lastRoom = room;
    this.lastHistory = history;
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
   * @internal Keeps `message` as the `message` frame the broadcast already encoded, as
   * UTF-8 bytes in the room's buffer outside the JavaScript heap, so the history costs the
   * garbage collector nothing per message. `since` decodes it again (the data then comes
   * back as JSON gives it).
   */
  keepEncoded(message: StoredMessage, frame: string): void {
    const history = message.room === this.lastRoom ? this.lastHistory : this.rooms.get(message.room);
    history?.keepEncoded(message, frame);
  }
}

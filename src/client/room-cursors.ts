import type { MessageFrame } from '../protocol/frames.js';
import type { RoomMessage } from './events.js';

/** How many message ids are remembered for dropping duplicates. */
const REMEMBERED_IDS = 2000;

/**
 * Per room: the last `seq` seen (what `resume` asks from), a hold buffer for live
 * messages that arrive before a resume's replay is complete, and the ids already
 * delivered. It is what turns "replay plus live" into one ordered, duplicate-free stream.
 */
export class RoomCursors {
  private readonly seqs = new Map<string, number>();
  private readonly held = new Map<string, MessageFrame[]>();
  private readonly ids = new Set<string>();

  constructor(private readonly deliver: (message: RoomMessage) => void) {}

  /** The last seq known for `room`; undefined when the client does not know where the room stands. */
  seq(room: string): number | undefined {
    return this.seqs.get(room);
  }

  /** Moves the room's position forward (never back). */
  advance(room: string, seq: number): void {
    if (seq > (this.seqs.get(room) ?? -1)) this.seqs.set(room, seq);
  }

  /** Forgets the room: its position and anything held for it. */
  forget(room: string): void {
    this.seqs.delete(room);
    this.held.delete(room);
  }

  /** True while live messages of `room` are held for a resume. */
  isHeld(room: string): boolean {
    return this.held.has(room);
  }

  /** Starts holding live messages of `room` until {@link release}. */
  hold(room: string): void {
    this.held.set(room, []);
  }

  /** Takes in a message: a replayed one is delivered at once, a live one of a held room waits. */
  receive(message: MessageFrame, replayed: boolean): void {
    const buffer = replayed ? undefined : this.held.get(message.room);
    if (buffer) buffer.push(message);
    else this.accept(message);
  }

  /**
   * Ends the hold of `room` and delivers what it held, in seq order. With `restart`
   * the room's position is dropped first: after a history gap the old seq means nothing.
   */
  release(room: string, restart = false): void {
    if (restart) this.seqs.delete(room);
    const buffer = this.held.get(room);
    if (!buffer) return;
    this.held.delete(room);
    buffer.sort((a, b) => a.seq - b.seq);
    for (const message of buffer) this.accept(message);
  }

  /** Releases every held room. */
  releaseAll(): void {
    for (const room of [...this.held.keys()]) this.release(room);
  }

  /**
   * Discards every hold without delivering: the connection is gone, and the next resume
   * asks again from the last position actually delivered, so nothing is lost.
   */
  dropHolds(): void {
    this.held.clear();
  }

  /** Remembers a message id as delivered: the publisher's own messages, known from their ack. */
  remember(id: string): void {
    this.ids.add(id);
    if (this.ids.size > REMEMBERED_IDS) this.ids.delete(this.ids.values().next().value as string);
  }

  private accept(message: MessageFrame): void {
    const { room, id, seq, from, data, ts } = message;
    this.advance(room, seq);
    if (this.ids.has(id)) return;
    this.remember(id);
    this.deliver({ room, id, seq, from, data, ts });
  }
}

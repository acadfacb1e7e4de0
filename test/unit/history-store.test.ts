import fc from 'fast-check';
import { describe, expect, it, vi } from 'vitest';
import { InMemoryHistoryStore, type StoredMessage } from '../../src/index.js';
import { encodeMessageFrame } from '../../src/protocol/encode.js';
import { report, settledHeap } from '../reliability/support.js';

let ids = 0;
function append(store: InMemoryHistoryStore, room: string, data: unknown = null): StoredMessage {
  return store.append({ room, id: `m${++ids}`, from: 'alice', data, ts: 1_700_000_000_000 + ids });
}

function fill(store: InMemoryHistoryStore, room: string, count: number): StoredMessage[] {
  return Array.from({ length: count }, (_, i) => append(store, room, i + 1));
}

const seqs = (messages: StoredMessage[] | null) => messages?.map((m) => m.seq) ?? null;

describe('InMemoryHistoryStore: seq', () => {
  it('starts at 1 and goes up by exactly 1 per message', () => {
    const store = new InMemoryHistoryStore(10);
    expect(store.latestSeq('a')).toBe(0);
    const stored = fill(store, 'a', 25);
    expect(stored.map((m) => m.seq)).toEqual(Array.from({ length: 25 }, (_, i) => i + 1));
    expect(store.latestSeq('a')).toBe(25);
  });

  it('keeps the fields it was given and adds seq', () => {
    const store = new InMemoryHistoryStore();
    const stored = store.append({ room: 'a', id: 'x1', from: null, data: { text: 'hi' }, ts: 42 });
    expect(stored).toEqual({ room: 'a', id: 'x1', from: null, data: { text: 'hi' }, ts: 42, seq: 1 });
    expect(store.since('a', 0)).toEqual([stored]);
  });

  it('counts each room on its own', () => {
    const store = new InMemoryHistoryStore(3);
    expect(append(store, 'a').seq).toBe(1);
    expect(append(store, 'b').seq).toBe(1);
    expect(append(store, 'a').seq).toBe(2);
    expect(append(store, 'a').seq).toBe(3);
    expect(append(store, 'b').seq).toBe(2);
    expect(store.latestSeq('a')).toBe(3);
    expect(store.latestSeq('b')).toBe(2);
    expect(store.latestSeq('c')).toBe(0);
    expect(seqs(store.since('b', 0))).toEqual([1, 2]);
    expect(store.since('b', 0)!.every((m) => m.room === 'b')).toBe(true);
  });

  it('keeps counting when it keeps nothing (limit 0)', () => {
    const store = new InMemoryHistoryStore(0);
    expect(fill(store, 'a', 3).map((m) => m.seq)).toEqual([1, 2, 3]);
    expect(store.latestSeq('a')).toBe(3);
  });

  it.each([-1, 1.5, Number.NaN])('refuses the limit %s', (limit) => {
    expect(() => new InMemoryHistoryStore(limit)).toThrow(RangeError);
  });

  it('keeps 500 messages per room by default', () => {
    const store = new InMemoryHistoryStore();
    expect(store.limit).toBe(500);
    fill(store, 'a', 600);
    expect(store.since('a', 100)).toHaveLength(500);
    expect(store.since('a', 99)).toBeNull();
  });
});

describe('InMemoryHistoryStore: since', () => {
  it('returns exactly the messages after a seq, oldest first', () => {
    const store = new InMemoryHistoryStore(10);
    const stored = fill(store, 'a', 6);
    expect(store.since('a', 0)).toEqual(stored);
    expect(store.since('a', 3)).toEqual(stored.slice(3));
    expect(seqs(store.since('a', 5))).toEqual([6]);
    expect(store.since('a', 4)!.map((m) => m.data)).toEqual([5, 6]);
  });

  it('returns nothing (not a gap) for the latest seq', () => {
    const store = new InMemoryHistoryStore(10);
    fill(store, 'a', 4);
    expect(store.since('a', 4)).toEqual([]);
  });

  it('stops at untilSeq', () => {
    const store = new InMemoryHistoryStore(10);
    fill(store, 'a', 8);
    expect(seqs(store.since('a', 2, 5))).toEqual([3, 4, 5]);
    expect(seqs(store.since('a', 0, 1))).toEqual([1]);
    expect(seqs(store.since('a', 5, 5))).toEqual([]);
    expect(seqs(store.since('a', 6, 100))).toEqual([7, 8]);
  });

  it('answers after the ring wrapped around, in order', () => {
    const store = new InMemoryHistoryStore(4);
    const stored = fill(store, 'a', 11);
    expect(store.since('a', 7)).toEqual(stored.slice(7));
    expect(seqs(store.since('a', 8, 10))).toEqual([9, 10]);
  });

  it('answers null (a gap) when the ring no longer reaches back to afterSeq + 1', () => {
    const store = new InMemoryHistoryStore(3);
    fill(store, 'a', 5); // keeps 3, 4, 5
    expect(seqs(store.since('a', 2))).toEqual([3, 4, 5]);
    expect(store.since('a', 1)).toBeNull();
    expect(store.since('a', 0)).toBeNull();
    expect(store.since('a', 1, 4)).toBeNull();
  });

  it('answers null when afterSeq is beyond the latest seq', () => {
    const store = new InMemoryHistoryStore(10);
    fill(store, 'a', 3);
    expect(store.since('a', 4)).toBeNull();
    expect(store.since('a', 1000)).toBeNull();
  });

  it('for a room it never saw: nothing after 0, a gap after anything else', () => {
    const store = new InMemoryHistoryStore(10);
    expect(store.since('nowhere', 0)).toEqual([]);
    expect(store.since('nowhere', 1)).toBeNull();
  });

  it('with limit 0: nothing for the latest seq, a gap for anything older', () => {
    const store = new InMemoryHistoryStore(0);
    fill(store, 'a', 3);
    expect(store.since('a', 3)).toEqual([]);
    expect(store.since('a', 2)).toBeNull();
    expect(store.since('a', 0)).toBeNull();
    expect(store.since('a', 4)).toBeNull();
  });

  it('returns the message objects it stored, one per seq (property of a long run)', () => {
    const store = new InMemoryHistoryStore(7);
    const stored: StoredMessage[] = [];
    for (let i = 0; i < 50; i++) {
      stored.push(append(store, 'a', i));
      const latest = stored.length;
      for (let after = 0; after <= latest + 1; after++) {
        const answer = store.since('a', after);
        if (after > latest || after < latest - 7) expect(answer).toBeNull();
        else expect(answer).toEqual(stored.slice(after));
      }
    }
  });
});

describe('InMemoryHistoryStore: frames kept as bytes', () => {
  /** What the broadcast does: encode the frame, then hand it to the store. */
  const keep = (store: InMemoryHistoryStore, message: StoredMessage): void =>
    store.keepEncoded(message, encodeMessageFrame(message, JSON.stringify(message.data)));

  it('gives back what it was given, after the frames moved to bytes', () => {
    const store = new InMemoryHistoryStore(10);
    const stored = [append(store, 'a', { text: 'héllo wörld 👋', n: 1.5 }), append(store, 'a', ['x', null, true]), append(store, 'a', 'naïve ✓')];
    for (const message of stored) keep(store, message);
    expect(store.since('a', 0)).toEqual(stored);
  });

  it('keeps frames handed over late, out of order, or after one that never came', () => {
    const store = new InMemoryHistoryStore(5);
    const [never, late, early] = [append(store, 'a', 'never kept'), append(store, 'a', 'kept late'), append(store, 'a', 'kept first')];
    keep(store, early!);
    keep(store, late!);
    const after = fill(store, 'a', 2);
    for (const message of after) keep(store, message);
    expect(store.since('a', 0)).toEqual([never, late, early, ...after]);
    // The ring wraps over the message that never got its frame, and the history goes on as usual.
    const wrapped = fill(store, 'a', 6);
    for (const message of wrapped) keep(store, message);
    expect(store.since('a', 6)).toEqual(wrapped.slice(1));
  });

  it('holds a full history outside the JavaScript heap: a few fields per room, nothing per message', async () => {
    const { bytes: before, collected } = await settledHeap();
    const store = new InMemoryHistoryStore(500);
    for (let r = 0; r < 1_000; r++) for (let i = 0; i < 500; i++) keep(store, append(store, `room:${r}`, i));
    const { bytes: after } = await settledHeap();
    if (!collected) return; // without a collector the heap figure is not comparable
    report('history heap, 1,000 rooms x 500 messages', { heapMiB: Number(((after - before) / 1024 / 1024).toFixed(2)) });
    // 500,000 messages; one heap entry each (a pending-slot array as long as the history
    // did that) would take 4 MiB alone.
    expect(after - before).toBeLessThan(2.5 * 1024 * 1024);
    expect(store.since('room:999', 498)).toHaveLength(2);
  });

  it('keeps one buffer for a room whose history is full: compactions move the frames within it', () => {
    const store = new InMemoryHistoryStore(20);
    const allocations = vi.spyOn(Buffer, 'allocUnsafeSlow');
    try {
      const stored: StoredMessage[] = [];
      const publish = (count: number): void => {
        for (let i = 0; i < count; i++) {
          // Sizes vary, as chat messages do, so compactions land at any point of the ring.
          const message = append(store, 'a', { text: 'x'.repeat(20 + ((stored.length * 37) % 150)), n: stored.length });
          keep(store, message);
          stored.push(message);
        }
      };
      publish(100);
      const grown = allocations.mock.calls.length;
      expect(grown).toBeGreaterThan(0);
      publish(1_000);
      expect(allocations.mock.calls.length).toBe(grown);
      expect(store.since('a', stored.length - 20)).toEqual(stored.slice(-20));
    } finally {
      allocations.mockRestore();
    }
  });

  it('gives a room a smaller buffer once its messages shrank', () => {
    const store = new InMemoryHistoryStore(20);
    const allocations = vi.spyOn(Buffer, 'allocUnsafeSlow');
    try {
      const publish = (count: number, size: number): StoredMessage[] =>
        Array.from({ length: count }, () => {
          const message = append(store, 'a', 'y'.repeat(size));
          keep(store, message);
          return message;
        });
      publish(60, 2_000);
      const largest = Math.max(...allocations.mock.calls.map(([size]) => size));
      const small = publish(60, 20);
      const last = allocations.mock.calls.at(-1)?.[0] ?? largest;
      expect(last).toBeLessThan(largest / 4);
      expect(store.since('a', 100)).toEqual(small.slice(-20));
    } finally {
      allocations.mockRestore();
    }
  });

  it('answers like a plain list of the newest messages, whatever the sizes, characters and order of keeping (property)', () => {
    const text = fc.string({ unit: fc.constantFrom('a', 'é', '€', '😀', '"', '\\', '\n', 'z'), maxLength: 300 });
    const op = fc.record({ room: fc.constantFrom('a', 'b'), data: fc.oneof(text, fc.record({ text, n: fc.integer() })), keep: fc.constantFrom('now', 'later', 'never') });
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 12 }), fc.array(op, { maxLength: 120 }), (limit, ops) => {
        const store = new InMemoryHistoryStore(limit);
        const model = new Map<string, StoredMessage[]>();
        const later: StoredMessage[] = [];
        for (const { room, data, keep: when } of ops) {
          const message = append(store, room, data);
          model.set(room, [...(model.get(room) ?? []), message]);
          if (when === 'now') keep(store, message);
          else if (when === 'later') later.push(message);
          // Frames kept out of seq order (the general publish path may finish them so).
          if (later.length > 3) keep(store, later.splice(Math.floor(later.length / 2), 1)[0]!);
          for (const [name, all] of model) {
            const latest = all.length;
            const kept = all.slice(Math.max(0, latest - limit));
            for (const after of [latest - kept.length, latest - 1, latest]) {
              if (after < latest - kept.length) continue;
              expect(store.since(name, after)).toEqual(all.slice(after));
            }
            if (latest - kept.length > 0) expect(store.since(name, latest - kept.length - 1)).toBeNull();
          }
        }
      }),
      { numRuns: 150 },
    );
  });
});

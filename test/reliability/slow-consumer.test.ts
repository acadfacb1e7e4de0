import { performance } from 'node:perf_hooks';
import { afterEach, describe, expect, it } from 'vitest';
import type { DeliveryReport } from '../../src/index.js';
import { TestClient, closeClients, type Frame } from '../helpers/client.js';
import { MembershipTable, closeAll, startServer, tokenFor } from '../helpers/server.js';
import { median, percentile, rawSocket, report, waitFor } from './support.js';

/**
 * A client stops reading (its socket paused, as a phone that went to sleep mid-stream)
 * while a publisher keeps sending 16 KiB messages. The server must close it with 4008
 * once its unsent bytes pass `maxBufferedBytes`, and the other members of the room must
 * keep receiving every message, as fast as before.
 */

afterEach(async () => {
  await closeClients();
  await closeAll();
});

const MAX_BUFFERED = 256 * 1024;
const PAYLOAD = 'x'.repeat(16 * 1024);
const BEFORE = 100;
const AFTER = 50;
/** Upper bound on publishes while waiting for the slow client to be dropped (~48 MiB). */
const MAX_SLOW_PHASE = 3000;

/** Records when each frame arrived, by the frame object the TestClient stored. */
function arrivals(client: TestClient): Map<Frame, number> {
  const times = new Map<Frame, number>();
  client.ws.on('message', () => {
    const frame = client.frames.at(-1);
    if (frame) times.set(frame, performance.now());
  });
  return times;
}

describe('a slow consumer', () => {
  it('is closed with 4008 while the others keep receiving every message at the same latency', async () => {
    const s = await startServer({
      membership: new MembershipTable({ feed: ['publisher', 'reader-1', 'reader-2', 'sleeper'] }),
      maxBufferedBytes: MAX_BUFFERED,
      publishRate: false,
    });
    const slowEvents: { user: string; bufferedAmount: number }[] = [];
    s.manager.on('slow', (event) => slowEvents.push(event));
    const reports: DeliveryReport[] = [];
    s.manager.on('delivery', (r) => reports.push(r));

    const connect = async (user: string) => TestClient.connect(s.url, await tokenFor(user));
    const publisher = await connect('publisher');
    const readers = [await connect('reader-1'), await connect('reader-2')];
    const sleeper = await connect('sleeper');
    const times = readers.map(arrivals);

    const sentAt = new Map<number, number>();
    let published = 0;
    const publish = async (): Promise<void> => {
      const n = ++published;
      sentAt.set(n, performance.now());
      const ack = await publisher.request({ type: 'publish', room: 'feed', data: { n, payload: PAYLOAD } });
      expect(ack).toMatchObject({ type: 'ack', seq: n });
    };
    /** Latency of messages n in [from, to] at every reader, in ms. */
    const latencies = async (from: number, to: number): Promise<number[]> => {
      await Promise.all(readers.map((r) => r.until((frames) => frames.filter((f) => f.type === 'message').length >= to, 15_000, `message ${to}`)));
      const out: number[] = [];
      readers.forEach((reader, i) => {
        for (const message of reader.of('message')) {
          const n = Number(message.seq);
          if (n >= from && n <= to) out.push(times[i]!.get(message)! - sentAt.get(n)!);
        }
      });
      return out;
    };

    // Before: everyone reads.
    for (let i = 0; i < BEFORE; i++) await publish();
    const before = await latencies(1, BEFORE);

    // During: the sleeper stops reading; the publisher goes on until the server drops it.
    rawSocket(sleeper).pause();
    const slowStart = published + 1;
    const phaseStarted = performance.now();
    while (slowEvents.length === 0 && published - slowStart < MAX_SLOW_PHASE) await publish();
    const slowPhaseMs = performance.now() - phaseStarted;
    const slowEnd = published;
    expect(slowEvents.map((e) => e.user)).toEqual(['sleeper']);
    const during = await latencies(slowStart, slowEnd);

    // After: the room goes on without it.
    for (let i = 0; i < AFTER; i++) await publish();
    const after = await latencies(slowEnd + 1, published);

    // The sleeper wakes up: it reads its backlog, then the close frame.
    rawSocket(sleeper).resume();
    await sleeper.closed();
    expect(sleeper.closeCode).toBe(4008);
    expect(sleeper.closeReason).toBe('too slow');
    const sleeperSeqs = sleeper.of('message').map((m) => Number(m.seq));
    // It got an unbroken prefix of the room, nothing after it was dropped.
    expect(sleeperSeqs).toEqual(Array.from({ length: sleeperSeqs.length }, (_, i) => i + 1));
    expect(sleeperSeqs.length).toBeLessThan(slowEnd);

    // Every reader got every message, once, in order.
    for (const reader of readers) {
      expect(reader.of('message').map((m) => Number(m.seq))).toEqual(Array.from({ length: published }, (_, i) => i + 1));
      expect(reader.closeCode).toBeUndefined();
    }
    // The server held at most one message over the mark for it, and said so in the report.
    expect(slowEvents[0]!.bufferedAmount).toBeGreaterThan(MAX_BUFFERED);
    expect(slowEvents[0]!.bufferedAmount).toBeLessThan(MAX_BUFFERED + 64 * 1024);
    expect(reports.filter((r) => r.slow > 0)).toHaveLength(1);
    expect(reports.find((r) => r.slow > 0)).toMatchObject({ slow: 1, failed: 0, delivered: 2 });
    await waitFor(() => s.manager.stats().connections === 3, 5_000, 'the sleeper to be released');

    const medianBefore = median(before);
    const medianDuring = median(during);
    report('slow-consumer', {
      maxBufferedBytes: MAX_BUFFERED,
      messageBytes: PAYLOAD.length,
      publishedBefore: BEFORE,
      publishedUntilDropped: slowEnd - slowStart + 1,
      bytesUntilDropped: (slowEnd - slowStart + 1) * PAYLOAD.length,
      slowPhaseMs: Math.round(slowPhaseMs),
      bufferedAtDrop: slowEvents[0]!.bufferedAmount,
      sleeperGot: sleeperSeqs.length,
      readersGot: published,
      latencyMs: {
        before: { median: +medianBefore.toFixed(2), p95: +percentile(before, 95).toFixed(2) },
        during: { median: +medianDuring.toFixed(2), p95: +percentile(during, 95).toFixed(2) },
        after: { median: +median(after).toFixed(2), p95: +percentile(after, 95).toFixed(2) },
      },
    });
    // Flat: a generous relative bound, never an absolute timing.
    expect(medianDuring).toBeLessThan(5 * medianBefore + 20);
    expect(median(after)).toBeLessThan(5 * medianBefore + 20);
  }, 60_000);
});

import { describe, expect, it } from 'vitest';
import { DedupeWindow } from '../../src/dedupe-window.js';

/** A clock the test moves by hand. */
function clock(start = 1_000_000) {
  let now = start;
  return {
    now: () => now,
    advance(ms: number) {
      now += ms;
    },
  };
}

describe('DedupeWindow', () => {
  it('answers the remembered value within the window', () => {
    const time = clock();
    const window = new DedupeWindow<string>(1_000, time.now);
    window.set('alice:general:c1', 'ack-1');
    expect(window.get('alice:general:c1')).toBe('ack-1');
    time.advance(999);
    expect(window.get('alice:general:c1')).toBe('ack-1');
    expect(window.size).toBe(1);
  });

  it('forgets a value once the window has passed', () => {
    const time = clock();
    const window = new DedupeWindow<string>(1_000, time.now);
    window.set('k', 'v');
    time.advance(1_000);
    expect(window.get('k')).toBeUndefined();
    expect(window.size).toBe(0);
  });

  it('answers undefined for a key it never saw', () => {
    const window = new DedupeWindow<number>(1_000, clock().now);
    expect(window.get('missing')).toBeUndefined();
  });

  it('keeps keys apart and lets each expire on its own schedule', () => {
    const time = clock();
    const window = new DedupeWindow<number>(1_000, time.now);
    window.set('a', 1);
    time.advance(400);
    window.set('b', 2);
    time.advance(400);
    window.set('c', 3);
    expect([window.get('a'), window.get('b'), window.get('c')]).toEqual([1, 2, 3]);
    time.advance(200); // a is 1000 old
    expect([window.get('a'), window.get('b'), window.get('c')]).toEqual([undefined, 2, 3]);
    time.advance(400); // b is 1000 old
    expect([window.get('a'), window.get('b'), window.get('c')]).toEqual([undefined, undefined, 3]);
    time.advance(400); // c is 1000 old
    expect(window.size).toBe(0);
  });

  it('restarts the window when a key is set again', () => {
    const time = clock();
    const window = new DedupeWindow<string>(1_000, time.now);
    window.set('a', 'first');
    window.set('b', 'other');
    time.advance(800);
    window.set('a', 'second');
    time.advance(800); // b is 1600 old, a 800
    expect(window.get('b')).toBeUndefined();
    expect(window.get('a')).toBe('second');
    time.advance(200);
    expect(window.get('a')).toBeUndefined();
  });

  it('an expired key does not hide a younger one behind it', () => {
    const time = clock();
    const window = new DedupeWindow<string>(1_000, time.now);
    window.set('old', 'x');
    time.advance(500);
    window.set('young', 'y');
    time.advance(600);
    expect(window.get('young')).toBe('y');
    expect(window.size).toBe(1);
  });

  it('delete forgets a key at once, so a failed publish may be retried', () => {
    const time = clock();
    const window = new DedupeWindow<string>(1_000, time.now);
    window.set('k', 'v');
    window.delete('k');
    expect(window.get('k')).toBeUndefined();
    window.delete('never-set');
    window.set('k', 'again');
    expect(window.get('k')).toBe('again');
  });

  it('remembers values of any kind, promises included', async () => {
    const window = new DedupeWindow<Promise<number>>(1_000, clock().now);
    window.set('p', Promise.resolve(7));
    await expect(window.get('p')).resolves.toBe(7);
  });

  it('a window of 0 remembers nothing', () => {
    const window = new DedupeWindow<string>(0, clock().now);
    window.set('k', 'v');
    expect(window.get('k')).toBeUndefined();
  });

  it('with maxEntries, forgets the oldest live entries first, and never more than needed', () => {
    const time = clock();
    const window = new DedupeWindow<number>(60_000, time.now, 3);
    for (const [i, key] of ['a', 'b', 'c', 'd', 'e'].entries()) {
      window.set(key, i);
      time.advance(1);
    }
    expect(window.size).toBe(3);
    expect(['a', 'b', 'c', 'd', 'e'].map((key) => window.get(key))).toEqual([undefined, undefined, 2, 3, 4]);
    // Setting a key it holds again does not push another one out.
    window.set('d', 30);
    expect(['c', 'd', 'e'].map((key) => window.get(key))).toEqual([2, 30, 4]);
    // And the refreshed key is now the youngest.
    window.set('f', 5);
    expect(['c', 'd', 'e', 'f'].map((key) => window.get(key))).toEqual([undefined, 30, 4, 5]);
  });

  it('stays small: expired entries are dropped as new ones arrive', () => {
    const time = clock();
    const window = new DedupeWindow<number>(100, time.now);
    for (let i = 0; i < 1_000; i++) {
      window.set(`k${i}`, i);
      time.advance(1);
    }
    // Now is 1000 ms after the first set: k901…k999 are younger than 100 ms.
    expect(window.size).toBe(99);
    expect(window.get('k901')).toBe(901);
    expect(window.get('k900')).toBeUndefined();
  });
});

it('forgets an entry at the end of its window though the wall clock stepped back', () => {
  let now = 10_000;
  const window = new DedupeWindow<string>(1_000, () => now);
  window.set('old', 'A'); // until 11,000
  now = 5_000; // the clock stepped back
  window.set('cid', 'B'); // until 6,000
  now = 7_000;
  expect(window.get('cid')).toBeUndefined();
  expect(window.get('old')).toBe('A');
});

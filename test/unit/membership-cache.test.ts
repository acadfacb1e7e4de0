import { afterEach, describe, expect, it, vi } from 'vitest';
import { MembershipCache, type MembersSnapshot } from '../../src/membership-cache.js';
import type { MembershipLoader } from '../../src/membership-loader.js';
import { TimeoutError } from '../../src/timeout.js';

interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(error: unknown): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/**
 * A loader the test scripts: each membersOf call takes the next queued answer (a value,
 * a deferred, or a function run at call time) and is recorded.
 */
class ScriptedLoader implements MembershipLoader {
  readonly calls: string[] = [];
  private readonly answers: (() => unknown)[] = [];

  roomsOf(): string[] {
    return [];
  }

  membersOf(room: string): Iterable<string> | Promise<Iterable<string>> {
    this.calls.push(room);
    const next = this.answers.shift();
    if (!next) throw new Error(`no scripted answer for call ${this.calls.length}`);
    return next() as Iterable<string> | Promise<Iterable<string>>;
  }

  /** Queues an answer (returned as is). */
  answer(value: unknown): this {
    this.answers.push(() => value);
    return this;
  }

  /** Queues an answer the test settles later. */
  later(): Deferred<unknown> {
    const d = deferred<unknown>();
    this.answers.push(() => d.promise);
    return d;
  }

  /** Queues a promise that rejects, made when the loader is called. */
  rejects(error: unknown): this {
    this.answers.push(() => Promise.reject(error));
    return this;
  }

  /** Queues a synchronous throw. */
  throws(error: unknown): this {
    this.answers.push(() => {
      throw error;
    });
    return this;
  }
}

function setup(options: { ttlMs?: number; timeoutMs?: number; maxRooms?: number } = {}) {
  let now = 1_000_000;
  const loader = new ScriptedLoader();
  const errors: { room: string; error: unknown }[] = [];
  const cache = new MembershipCache(loader, {
    ttlMs: options.ttlMs ?? 1_000,
    timeoutMs: options.timeoutMs ?? 5_000,
    maxRooms: options.maxRooms ?? 100,
    onError: (room, error) => errors.push({ room, error }),
    now: () => now,
  });
  return {
    cache,
    loader,
    errors,
    advance(ms: number) {
      now += ms;
    },
  };
}

/** Awaits a load whichever way it answers. */
async function load(cache: MembershipCache, room: string): Promise<{ users: string[] | null; stale: boolean }> {
  const snapshot: MembersSnapshot = await cache.load(room);
  return { users: snapshot.users ? [...snapshot.users].sort() : null, stale: snapshot.stale };
}

afterEach(() => {
  vi.useRealTimers();
});

describe('MembershipCache: caching', () => {
  it('asks the loader once and reuses the answer within the TTL, synchronously', async () => {
    const { cache, loader, advance } = setup({ ttlMs: 1_000 });
    loader.answer(['alice', 'bob']);
    expect(await load(cache, 'general')).toEqual({ users: ['alice', 'bob'], stale: false });
    advance(999);
    const again = cache.load('general');
    expect(again).not.toBeInstanceOf(Promise);
    expect(await load(cache, 'general')).toEqual({ users: ['alice', 'bob'], stale: false });
    expect(loader.calls).toEqual(['general']);
  });

  it('asks the loader again once the TTL has passed', async () => {
    const { cache, loader, advance } = setup({ ttlMs: 1_000 });
    loader.answer(['alice']).answer(['alice', 'carol']);
    expect(await load(cache, 'general')).toEqual({ users: ['alice'], stale: false });
    advance(1_000);
    expect(await load(cache, 'general')).toEqual({ users: ['alice', 'carol'], stale: false });
    expect(loader.calls).toEqual(['general', 'general']);
  });

  it('caches each room on its own', async () => {
    const { cache, loader } = setup();
    loader.answer(['alice']).answer(['bob']);
    expect(await load(cache, 'a')).toEqual({ users: ['alice'], stale: false });
    expect(await load(cache, 'b')).toEqual({ users: ['bob'], stale: false });
    expect(await load(cache, 'a')).toEqual({ users: ['alice'], stale: false });
    expect(loader.calls).toEqual(['a', 'b']);
    expect(cache.peek('a')).toEqual(new Set(['alice']));
    expect(cache.peek('c')).toBeUndefined();
  });

  it('shows a cached room with a stamp that changes exactly when its participants do', async () => {
    const { cache, loader } = setup();
    loader.answer(['alice']).answer(['bob']);
    expect(cache.cached('a')).toBeUndefined();
    await load(cache, 'a');
    await load(cache, 'b');
    const first = cache.cached('a')!.stamp;
    expect(cache.cached('a')!.members).toEqual(new Set(['alice']));
    await load(cache, 'a');
    cache.add('b', 'carol');
    expect(cache.cached('a')!.stamp).toBe(first);
    cache.add('a', 'dave');
    const second = cache.cached('a')!.stamp;
    expect(second).not.toBe(first);
    expect(cache.cached('a')!.members).toEqual(new Set(['alice', 'dave']));
    cache.remove('a', 'alice');
    expect(cache.cached('a')!.stamp).not.toBe(second);
    expect(cache.peek('a')).toEqual(new Set(['dave']));
  });

  it('accepts any iterable of strings: a Set, a generator, a promise of either', async () => {
    const { cache, loader } = setup();
    loader.answer(new Set(['a1'])).answer((function* () {
      yield 'g1';
      yield 'g2';
    })()).answer(Promise.resolve(new Set(['p1'])));
    expect((await load(cache, 'set')).users).toEqual(['a1']);
    expect((await load(cache, 'gen')).users).toEqual(['g1', 'g2']);
    expect((await load(cache, 'promise')).users).toEqual(['p1']);
  });

  it('shares one loader call between concurrent misses', async () => {
    const { cache, loader } = setup();
    const pending = loader.later();
    const loads = [load(cache, 'general'), load(cache, 'general'), load(cache, 'general')];
    pending.resolve(['alice', 'bob']);
    const answers = await Promise.all(loads);
    expect(answers).toEqual(Array.from({ length: 3 }, () => ({ users: ['alice', 'bob'], stale: false })));
    expect(loader.calls).toEqual(['general']);
  });

  it('shares one loader call between concurrent refreshes of an expired answer', async () => {
    const { cache, loader, advance } = setup({ ttlMs: 100 });
    loader.answer(['alice']);
    await load(cache, 'general');
    advance(100);
    const pending = loader.later();
    const loads = [load(cache, 'general'), load(cache, 'general')];
    pending.resolve(['alice', 'bob']);
    expect(await Promise.all(loads)).toEqual([
      { users: ['alice', 'bob'], stale: false },
      { users: ['alice', 'bob'], stale: false },
    ]);
    expect(loader.calls).toHaveLength(2);
  });

  it('keeps at most maxRooms rooms', async () => {
    const { cache, loader } = setup({ maxRooms: 3 });
    for (let i = 0; i < 10; i++) {
      loader.answer([`u${i}`]);
      await load(cache, `room${i}`);
      expect(cache.size).toBeLessThanOrEqual(3);
    }
    expect(cache.peek('room9')).toEqual(new Set(['u9']));
  });
});

describe('MembershipCache: add, remove, invalidate', () => {
  it('applies add and remove to a cached answer at once', async () => {
    const { cache, loader } = setup();
    loader.answer(['alice', 'bob']);
    await load(cache, 'general');
    cache.add('general', 'carol');
    cache.remove('general', 'alice');
    expect(await load(cache, 'general')).toEqual({ users: ['bob', 'carol'], stale: false });
    expect(loader.calls).toHaveLength(1);
  });

  it('applies add and remove made while a load is in flight to its answer', async () => {
    const { cache, loader } = setup();
    const pending = loader.later();
    const first = load(cache, 'general');
    // The loader read its answer before these changes reached it.
    cache.add('general', 'carol');
    cache.remove('general', 'alice');
    pending.resolve(['alice', 'bob']);
    expect(await first).toEqual({ users: ['bob', 'carol'], stale: false });
    expect(await load(cache, 'general')).toEqual({ users: ['bob', 'carol'], stale: false });
  });

  it('applies add and remove to the old answer and to a refresh in flight', async () => {
    const { cache, loader, advance } = setup({ ttlMs: 100 });
    loader.answer(['alice', 'bob']);
    await load(cache, 'general');
    advance(100);
    const pending = loader.later();
    const refresh = load(cache, 'general');
    cache.remove('general', 'bob');
    cache.add('general', 'dave');
    expect(cache.peek('general')).toEqual(new Set(['alice', 'dave']));
    pending.resolve(['alice', 'bob']);
    expect(await refresh).toEqual({ users: ['alice', 'dave'], stale: false });
  });

  it('a later add undoes an earlier remove made during the same load, and the other way round', async () => {
    const { cache, loader } = setup();
    const pending = loader.later();
    const first = load(cache, 'general');
    cache.remove('general', 'alice');
    cache.add('general', 'alice');
    cache.add('general', 'eve');
    cache.remove('general', 'eve');
    pending.resolve(['alice', 'bob']);
    expect(await first).toEqual({ users: ['alice', 'bob'], stale: false });
  });

  it('ignores add and remove for a room it has not cached: the loader is asked later', async () => {
    const { cache, loader } = setup();
    cache.add('general', 'carol');
    cache.remove('general', 'alice');
    expect(cache.size).toBe(0);
    loader.answer(['alice']);
    expect(await load(cache, 'general')).toEqual({ users: ['alice'], stale: false });
  });

  it('invalidate makes the next load ask the loader', async () => {
    const { cache, loader } = setup();
    loader.answer(['alice']).answer(['alice', 'bob']);
    await load(cache, 'general');
    cache.invalidate('general');
    expect(cache.peek('general')).toBeUndefined();
    expect(await load(cache, 'general')).toEqual({ users: ['alice', 'bob'], stale: false });
    expect(loader.calls).toHaveLength(2);
    cache.invalidate('never-loaded');
  });

  it('invalidate during a load: the answer is used once, then asked again', async () => {
    const { cache, loader } = setup();
    const pending = loader.later();
    const first = load(cache, 'general');
    cache.invalidate('general');
    pending.resolve(['alice']);
    expect(await first).toEqual({ users: ['alice'], stale: false });
    loader.answer(['alice', 'bob']);
    expect(await load(cache, 'general')).toEqual({ users: ['alice', 'bob'], stale: false });
    expect(loader.calls).toHaveLength(2);
  });

  it('a load after invalidate does not share the one already in flight: it gets an answer asked after it', async () => {
    const { cache, loader } = setup();
    const before = loader.later();
    const after = loader.later();
    const first = load(cache, 'general');
    // The application removed bob, then said so with invalidate (not removeMember).
    cache.invalidate('general');
    const second = load(cache, 'general');
    const third = load(cache, 'general');
    before.resolve(['alice', 'bob']);
    expect(await first).toEqual({ users: ['alice', 'bob'], stale: false });
    // Asked once the first answered: loads of one room never overlap.
    expect(loader.calls).toHaveLength(2);
    cache.remove('general', 'alice');
    after.resolve(['alice']);
    expect(await second).toEqual({ users: [], stale: false });
    expect(await third).toEqual({ users: [], stale: false });
    expect(await load(cache, 'general')).toEqual({ users: [], stale: false });
    expect(loader.calls).toHaveLength(2);
  });

  it("an invalidate's since goes with the next answer asked for after it, not one already in flight", async () => {
    const { cache, loader } = setup();
    const before = loader.later();
    const first = load(cache, 'general');
    cache.invalidate('general', 7);
    cache.invalidate('general', 9);
    before.resolve(['alice']);
    await first;
    expect(cache.cached('general')?.since).toBeUndefined();
    // The lowest of the two, kept while the answer after them fails.
    loader.rejects(new Error('down')).answer(['alice', 'bob']);
    await load(cache, 'general');
    expect(cache.cached('general')?.since).toBeUndefined();
    await load(cache, 'general');
    expect(cache.cached('general')?.since).toBe(7);
    cache.add('general', 'carol');
    expect(cache.cached('general')?.since).toBe(7);
    // Answered once: an invalidate without a since leaves none for the answer after it.
    cache.invalidate('general');
    loader.answer(['alice']);
    await load(cache, 'general');
    expect(cache.cached('general')?.since).toBeUndefined();
  });
});

describe('MembershipCache: loader failures', () => {
  it('a loader that throws marks the snapshot stale and keeps the last known answer', async () => {
    const { cache, loader, errors, advance } = setup({ ttlMs: 100 });
    const failure = new Error('db down');
    loader.answer(['alice', 'bob']).throws(failure);
    await load(cache, 'general');
    advance(100);
    expect(await load(cache, 'general')).toEqual({ users: ['alice', 'bob'], stale: true });
    expect(errors).toEqual([{ room: 'general', error: failure }]);
  });

  it('a loader whose promise rejects counts the same', async () => {
    const { cache, loader, errors, advance } = setup({ ttlMs: 100 });
    loader.answer(['alice']).rejects(new Error('network'));
    await load(cache, 'general');
    advance(100);
    expect(await load(cache, 'general')).toEqual({ users: ['alice'], stale: true });
    expect(errors).toHaveLength(1);
  });

  it('with nothing known before, a failure answers users null, stale', async () => {
    const { cache, loader, errors } = setup();
    loader.throws(new Error('db down'));
    expect(await load(cache, 'general')).toEqual({ users: null, stale: true });
    expect(errors.map((e) => e.room)).toEqual(['general']);
  });

  it('asks again after a failure and is fresh once the loader answers', async () => {
    const { cache, loader } = setup();
    loader.answer(['alice']);
    await load(cache, 'general');
    cache.invalidate('general');
    loader.throws(new Error('blip')).answer(['alice', 'bob']);
    expect(await load(cache, 'general')).toEqual({ users: null, stale: true });
    expect(await load(cache, 'general')).toEqual({ users: ['alice', 'bob'], stale: false });
    expect(await load(cache, 'general')).toEqual({ users: ['alice', 'bob'], stale: false });
    expect(loader.calls).toHaveLength(3);
  });

  it('a loader hanging past the timeout marks the snapshot stale and keeps the last known answer', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const { cache, loader, errors, advance } = setup({ ttlMs: 100, timeoutMs: 2_000 });
    loader.answer(['alice']);
    await load(cache, 'general');
    advance(100);
    loader.later(); // never settles
    const hanging = load(cache, 'general');
    await vi.advanceTimersByTimeAsync(2_000);
    expect(await hanging).toEqual({ users: ['alice'], stale: true });
    expect(errors).toHaveLength(1);
    expect(errors[0]!.error).toBeInstanceOf(TimeoutError);
  });

  it('a hanging load does not hold up the next one after the timeout', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const { cache, loader } = setup({ timeoutMs: 500 });
    loader.later();
    const hanging = load(cache, 'general');
    await vi.advanceTimersByTimeAsync(500);
    expect(await hanging).toEqual({ users: null, stale: true });
    loader.answer(['bob']);
    expect(await load(cache, 'general')).toEqual({ users: ['bob'], stale: false });
  });

  it.each([
    ['a number', 42],
    ['null', null],
    ['undefined', undefined],
    ['a plain object', { alice: true }],
    ['a string (iterable, but not of user ids)', 'alice'],
    ['a promise of a number', Promise.resolve(7)],
  ])('an answer that is %s counts as a failure', async (_name, answer) => {
    const { cache, loader, errors, advance } = setup({ ttlMs: 100 });
    loader.answer(['alice']).answer(answer);
    await load(cache, 'general');
    advance(100);
    expect(await load(cache, 'general')).toEqual({ users: ['alice'], stale: true });
    expect(errors).toHaveLength(1);
  });

  it.each([
    ['numbers', [1, 2]],
    ['a null among strings', ['alice', null]],
    ['objects', [{ id: 'alice' }]],
  ])('an iterable of %s counts as a failure', async (_name, answer) => {
    const { cache, loader, errors, advance } = setup({ ttlMs: 100 });
    loader.answer(['alice']).answer(answer);
    await load(cache, 'general');
    advance(100);
    expect(await load(cache, 'general')).toEqual({ users: ['alice'], stale: true });
    expect(errors).toHaveLength(1);
    expect(errors[0]!.error).toBeInstanceOf(TypeError);
  });
});

describe('MembershipCache limits', () => {
  it('comes back under maxRooms after loads in flight pushed it over', async () => {
    const cache = new MembershipCache(
      { roomsOf: () => [], membersOf: (room: string) => Promise.resolve([room]) },
      { ttlMs: 30_000, timeoutMs: 5_000, maxRooms: 2, onError: () => undefined },
    );
    await Promise.all(['a', 'b', 'c', 'd', 'e'].map((room) => cache.load(room)));
    for (const room of ['f', 'g']) await cache.load(room);
    expect(cache.size).toBeLessThanOrEqual(2);
  });

  it('takes a loader timeout longer than a timer can run as none, not as 1 ms', async () => {
    const cache = new MembershipCache(
      { roomsOf: () => [], membersOf: () => new Promise<string[]>((resolve) => setTimeout(() => resolve(['alice']), 10)) },
      { ttlMs: 30_000, timeoutMs: 3_000_000_000, maxRooms: 10, onError: () => undefined },
    );
    expect(await cache.load('general')).toEqual({ users: new Set(['alice']), stale: false });
  });
});

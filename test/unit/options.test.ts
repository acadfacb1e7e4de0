import { describe, expect, it } from 'vitest';
import { InMemoryHistoryStore, LocalBus, OptionsError, RoomManager, type RoomManagerOptions } from '../../src/index.js';

const good: RoomManagerOptions = {
  authenticate: () => ({ id: 'alice' }),
  membership: { roomsOf: () => [], membersOf: () => [] },
};

/** Constructs with `options` and returns the OptionsError it throws. */
function optionsError(options: unknown): OptionsError {
  let error: unknown;
  try {
    new RoomManager(options as RoomManagerOptions);
  } catch (caught) {
    error = caught;
  }
  if (!(error instanceof OptionsError)) throw new Error(`expected an OptionsError, got ${String(error)}`);
  return error;
}

describe('RoomManager options', () => {
  it('constructs with the two required options', async () => {
    const manager = new RoomManager(good);
    expect(manager.limits).toEqual({ maxFrameBytes: 1024 * 1024, heartbeatMs: 25_000 });
    expect(manager.stats()).toMatchObject({ connections: 0, users: 0, rooms: 0, messages: 0 });
    await manager.close();
  });

  it('constructs with every option set to a valid value', async () => {
    const noop = () => {};
    const manager = new RoomManager({
      ...good,
      membership: { roomsOf: () => [], membersOf: () => [], canJoin: () => true },
      logger: { debug: noop, info: noop, warn: noop, error: noop },
      history: 10,
      membershipTtlMs: 0,
      loaderTimeoutMs: Number.POSITIVE_INFINITY,
      membershipCacheSize: 5,
      maxFrameBytes: 2048,
      maxMessageBytes: 1024,
      maxRoomsPerConnection: 3,
      maxConnectionsPerUser: Number.POSITIVE_INFINITY,
      heartbeatMs: 1_000,
      presence: true,
      dedupeWindowMs: 60_000,
      closeTimeoutMs: 100,
      publishSchema: { safeParse: (input: unknown) => ({ success: true as const, data: input }) },
      onPublish: ({ data }) => data,
    });
    expect(manager.limits).toEqual({ maxFrameBytes: 2048, heartbeatMs: 1_000 });
    await manager.close();
  });

  it('accepts a HistoryStore of its own', async () => {
    const manager = new RoomManager({ ...good, history: new InMemoryHistoryStore(3) });
    await manager.close();
  });

  it('accepts a backplane, and refuses one together with a history of its own', async () => {
    const bus = new LocalBus();
    const manager = new RoomManager({ ...good, backplane: bus.node() });
    await manager.close();
    expect(optionsError({ ...good, backplane: bus.node(), history: 10 }).message).toMatch(/history: leave it out with a backplane/);
    expect(optionsError({ ...good, backplane: { publish: () => {} } }).message).toMatch(/backplane/);
  });

  it('keeps the loader object, so its methods keep their this', async () => {
    class Loader {
      private readonly table = new Map([['alice', ['general']]]);
      roomsOf(user: { id: string }) {
        return this.table.get(user.id) ?? [];
      }
      membersOf() {
        return ['alice'];
      }
    }
    const manager = new RoomManager({ ...good, membership: new Loader() });
    const sent: string[] = [];
    const handlers = manager.open({ send: (text) => sent.push(text), close: () => {}, bufferedAmount: 0 }, { id: 'alice' });
    await handlers.ready;
    expect(JSON.parse(sent[0]!)).toMatchObject({ type: 'welcome', rooms: ['general'] });
    handlers.closed(1000, '');
    await manager.close();
  });

  it('says what an option that takes one of two shapes accepts', () => {
    expect(optionsError({ ...good, publishRate: { burst: 10 } }).message).toContain('publishRate must be false or { burst, perSecond }');
    expect(optionsError({ ...good, joinRate: true }).message).toContain('joinRate must be false or { burst, perSecond }');
    expect(optionsError({ ...good, history: '500' }).message).toContain('history must be a number of messages per room');
    expect(optionsError({ ...good, history: -1 }).message).toMatch(/history: Too small/);
  });

  it('refuses missing options altogether', () => {
    expect(optionsError(undefined).message).toMatch(/authenticate|options/);
  });

  it('names a missing authenticate', () => {
    const { authenticate: _, ...rest } = good;
    const error = optionsError(rest);
    expect(error.name).toBe('OptionsError');
    expect(error.message).toContain('authenticate');
  });

  it('names an authenticate that is not a function', () => {
    expect(optionsError({ ...good, authenticate: 'jwt' }).message).toContain('authenticate');
  });

  it('names a missing membership', () => {
    const { membership: _, ...rest } = good;
    expect(optionsError(rest).message).toContain('membership');
  });

  it('names a membership without membersOf', () => {
    const message = optionsError({ ...good, membership: { roomsOf: () => [] } }).message;
    expect(message).toContain('membership.membersOf');
    expect(message).not.toContain('membership.roomsOf');
  });

  it('names a membership without roomsOf, and a canJoin that is not a function', () => {
    const message = optionsError({ ...good, membership: { membersOf: () => [], canJoin: true } }).message;
    expect(message).toContain('membership.roomsOf');
    expect(message).toContain('membership.canJoin');
  });

  it.each([
    ['history', -1],
    ['history', 1.5],
    ['membershipTtlMs', -1],
    ['loaderTimeoutMs', -100],
    ['membershipCacheSize', 0],
    ['maxFrameBytes', -1],
    ['maxFrameBytes', 0],
    ['maxMessageBytes', -5],
    ['maxRoomsPerConnection', -1],
    ['maxConnectionsPerUser', 0],
    ['maxConnectionsPerUser', -3],
    ['heartbeatMs', 0],
    ['dedupeWindowMs', -1],
    ['closeTimeoutMs', -1],
    ['maxFrameBytes', Number.NaN],
    ['maxFrameBytes', 1.5],
  ])('names %s = %s', (option, value) => {
    const error = optionsError({ ...good, [option]: value });
    expect(error.message).toContain(option);
  });

  it.each([
    ['history', 'lots'],
    ['history', { append: () => {} }],
    ['membershipTtlMs', '30s'],
    ['maxFrameBytes', '1mb'],
    ['maxRoomsPerConnection', null],
    ['maxConnectionsPerUser', true],
    ['heartbeatMs', {}],
    ['presence', 'yes'],
    ['presence', 1],
    ['logger', {}],
    ['logger', { info: () => {} }],
    ['publishSchema', { parse: () => {} }],
    ['onPublish', 'store'],
  ])('names %s of the wrong type (%j)', (option, value) => {
    const error = optionsError({ ...good, [option]: value });
    expect(error.message).toContain(option);
  });

  it('names every bad option at once', () => {
    const message = optionsError({
      authenticate: 1,
      membership: { roomsOf: () => [] },
      maxFrameBytes: -1,
      presence: 'no',
    }).message;
    for (const name of ['authenticate', 'membership.membersOf', 'maxFrameBytes', 'presence']) expect(message).toContain(name);
  });
});

describe('RoomManager options: typos', () => {
  it('names a misspelled option instead of ignoring it', () => {
    const options = { authenticate: () => ({ id: 'a' }), membership: { roomsOf: () => [], membersOf: () => [] }, maxFramesBytes: 10 };
    expect(() => new RoomManager(options as unknown as RoomManagerOptions)).toThrow(OptionsError);
    expect(() => new RoomManager(options as unknown as RoomManagerOptions)).toThrow(/maxFramesBytes/);
  });
});

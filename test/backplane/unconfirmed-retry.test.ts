import { describe, expect, it } from 'vitest';
import { LocalBus, RoomManager, type Backplane, type StoredMessage } from '../../src/index.js';
import { openFake, settle } from '../helpers/fake-connection.js';
import { MembershipTable } from '../helpers/server.js';

/**
 * A backplane of one's own that implements `cids` (claims, for onPublish) but whose
 * `publish` ignores `cid` — both allowed by docs/backplane.md ("A backplane that ignores
 * `cid` leaves the manager's own per-process window as the only one"). Its first publish
 * goes out but its reply is lost (unconfirmed), as with a Redis that answered too late.
 */
function lossyBackplane(inner: Backplane, { keepCid = false, downAfterFirst = false } = {}): Backplane {
  let first = true;
  return {
    history: inner.history,
    presence: inner.presence,
    cids: inner.cids,
    start: (handlers) => inner.start(handlers),
    publish: async (message: Omit<StoredMessage, 'seq'>, cid) => {
      if (!first && downAfterFirst) throw new Error('backplane unreachable');
      const stored = await inner.publish(message, keepCid ? cid : undefined);
      if (first) {
        first = false;
        throw new Error('reply lost');
      }
      return stored;
    },
    subscribe: (room) => inner.subscribe(room),
    unsubscribe: (room) => inner.unsubscribe(room),
    announce: (change) => inner.announce(change),
    close: () => inner.close(),
  };
}

/** Alice publishes with cid c1 through `backplane`; the publish is refused `internal` (unconfirmed), and its copy reaches bob. */
async function unconfirmedOnce(backplane: Backplane) {
  const rooms = new RoomManager({ authenticate: () => ({ id: 'unused' }), membership: new MembershipTable({ chat: ['alice', 'bob'] }), backplane });
  rooms.on('error', () => {});
  const alice = await openFake(rooms, 'alice');
  const bob = await openFake(rooms, 'bob');
  await settle(20);
  alice.receive({ type: 'publish', room: 'chat', data: 'hello', cid: 'c1', ref: 'r1' });
  await settle(20);
  expect(alice.of('error')[0]).toMatchObject({ code: 'internal', ref: 'r1' });
  // Bob got it: the copy arrived, the publish happened.
  expect(bob.of('message')).toHaveLength(1);
  return { rooms, alice, bob };
}

describe('a retry of an unconfirmed publish (review)', () => {
  it('is not delivered a second time by a backplane with cids whose publish ignores cid', async () => {
    const { rooms, alice, bob } = await unconfirmedOnce(lossyBackplane(new LocalBus().node()));
    // The client retries with the same cid, as the error tells it to.
    alice.receive({ type: 'publish', room: 'chat', data: 'hello', cid: 'c1', ref: 'r2' });
    await settle(20);
    const ack = alice.of('ack')[0];
    expect(ack).toMatchObject({ ref: 'r2', id: bob.of('message')[0]!.id });
    expect(bob.of('message')).toHaveLength(1);
    await rooms.close();
  });

  it('a retry after the first attempt\'s copy arrived gets the first ack, even while the backplane is down again', async () => {
    // A backplane that keeps cids (as Redis does); its first reply was lost, and it is unreachable for the retry.
    const { rooms, alice, bob } = await unconfirmedOnce(lossyBackplane(new LocalBus().node(), { keepCid: true, downAfterFirst: true }));
    alice.receive({ type: 'publish', room: 'chat', data: 'hello', cid: 'c1', ref: 'r2' });
    await settle(20);
    // The process has the copy: the message was delivered, and the retry is told so.
    expect(alice.frames.at(-1)).toMatchObject({ type: 'ack', ref: 'r2', id: bob.of('message')[0]!.id });
    await rooms.close();
  });
});

describe('a publish with an onPublish hook while the backplane is unreachable', () => {
  it('is refused internal with the advice to retry with the same cid, and the retry is delivered once', async () => {
    const inner = new LocalBus().node();
    let down = false;
    const refuse = (): Promise<never> => Promise.reject(new Error("Stream isn't writeable and enableOfflineQueue options is false"));
    // As RedisBackplane while Redis is out of reach: every command fails at once.
    const backplane: Backplane = {
      history: inner.history,
      presence: inner.presence,
      cids: {
        claim: (key, holdMs) => (down ? refuse() : inner.cids!.claim(key, holdMs)),
        release: (key) => (down ? refuse() : inner.cids!.release(key)),
      },
      start: (handlers) => inner.start(handlers),
      publish: (message, cid, except) => (down ? refuse() : inner.publish(message, cid, except)),
      subscribe: (room) => inner.subscribe(room),
      unsubscribe: (room) => inner.unsubscribe(room),
      announce: (change) => inner.announce(change),
      close: () => inner.close(),
    };
    let hookRuns = 0;
    const rooms = new RoomManager({
      authenticate: () => ({ id: 'unused' }),
      membership: new MembershipTable({ chat: ['alice', 'bob'] }),
      backplane,
      onPublish: ({ data }) => {
        hookRuns++;
        return data;
      },
    });
    const phases: string[] = [];
    rooms.on('error', (_error, context) => phases.push(context.phase));
    const alice = await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    await settle(20);

    down = true;
    alice.receive({ type: 'publish', room: 'chat', data: 'hello', cid: 'c1', ref: 'r1' });
    await settle(20);
    // docs/scaling.md, "Never a silent drop": the error says what to do, as for a publish
    // the backplane did not confirm; the failure is the backplane's, not the hook's.
    expect(alice.of('error')).toEqual([
      expect.objectContaining({ code: 'internal', ref: 'r1', room: 'chat', message: expect.stringMatching(/^publish not confirmed: .*retry with the same cid/) }),
    ]);
    expect(phases).toEqual(['backplane.cids']);
    expect(hookRuns).toBe(0);

    down = false;
    alice.receive({ type: 'publish', room: 'chat', data: 'hello', cid: 'c1', ref: 'r2' });
    await settle(20);
    expect(alice.of('ack')).toEqual([expect.objectContaining({ ref: 'r2', seq: 1 })]);
    expect(bob.of('message').map((m) => m.data)).toEqual(['hello']);
    expect(hookRuns).toBe(1);
    await rooms.close();
  });
});

import { afterEach, describe, expect, it } from 'vitest';
import { ERROR_CODES, InMemoryHistoryStore, RoomwireError } from '../../src/index.js';
import { closeClients } from '../helpers/client.js';
import { MembershipTable, closeAll, connectAs, startServer } from '../helpers/server.js';

/**
 * Rules of docs/protocol.md checked letter by letter over real WebSocket frames, where
 * the other suites left them unprobed.
 */

afterEach(async () => {
  await closeClients();
  await closeAll();
});

const connect = connectAs;

describe('"The server\'s first frame after the upgrade is welcome"', () => {
  it('holds when a join listener broadcasts into the room the connection is auto-joined to', async () => {
    const s = await startServer({ membership: new MembershipTable({ a: ['alice', 'bob'] }) });
    // A "someone is here" message, as an application may send one.
    s.manager.on('join', (event) => void s.manager.broadcast(event.room, { here: event.user }).catch(() => {}));
    const alice = await connect(s.url, 'alice');
    await alice.next('message', (m) => (m.data as { here: string }).here === 'alice');
    // The room's participants are cached now: the broadcast for bob runs without waiting.
    const bob = await connect(s.url, 'bob');
    const here = await bob.next('message', (m) => (m.data as { here: string }).here === 'bob');
    expect(bob.frames[0]?.type).toBe('welcome');
    // The message follows the seq welcome announced for the room.
    expect(here.seq).toBe((bob.welcome.seqs as Record<string, number>).a! + 1);
  });
});

describe('"join: joined {room, seq}, or error forbidden"', () => {
  it('answers a join whose room limit filled while canJoin ran with forbidden, not silence', async () => {
    let allow: () => void = () => {};
    const gate = new Promise<void>((resolve) => (allow = resolve));
    const membership = {
      roomsOf: () => [],
      membersOf: () => [],
      canJoin: async (_user: unknown, room: string) => {
        await gate;
        return room === 'open';
      },
    };
    const s = await startServer({ membership, maxRoomsPerConnection: 1 });
    const alice = await connect(s.url, 'alice');
    alice.send({ type: 'join', room: 'open', ref: 'j' });
    await alice.quiet(50);
    // The server admits the connection elsewhere meanwhile: its one room is taken.
    expect(await s.manager.join(String(alice.welcome.connectionId), 'other')).toBe(true);
    allow();
    expect(await alice.replyTo('j')).toMatchObject({ type: 'error', code: 'forbidden', room: 'open' });
    expect(s.manager.roomsOf(String(alice.welcome.connectionId))).toEqual(['other']);
  });
});

describe('"Error codes: bad_request, unknown_type, forbidden, too_large, rate_limited, history_gap, internal"', () => {
  it('sends internal, not the code, when onPublish throws a RoomwireError of a code the protocol does not have', async () => {
    const errors: string[] = [];
    const s = await startServer({
      membership: new MembershipTable({ a: ['alice', 'bob'] }),
      onPublish: ({ data }) => {
        // What a hook in JavaScript can do: nothing checks the code there.
        if (data === 'odd') throw new RoomwireError('archived' as never, 'this conversation is archived');
        if (data === 'known') throw new RoomwireError('forbidden', 'not now');
        return data;
      },
    });
    s.manager.on('error', (error, context) => errors.push(`${context.phase}: ${error.message}`));
    const alice = await connect(s.url, 'alice');
    const bob = await connect(s.url, 'bob');
    const odd = await alice.request({ type: 'publish', room: 'a', data: 'odd' });
    expect(odd).toMatchObject({ type: 'error', code: 'internal', room: 'a' });
    expect(ERROR_CODES).toContain(odd.code);
    expect(errors).toEqual(['publish: this conversation is archived']);
    // A code of the protocol still goes through as the hook chose it.
    expect(await alice.request({ type: 'publish', room: 'a', data: 'known' })).toMatchObject({ code: 'forbidden', message: 'not now' });
    expect(await alice.request({ type: 'publish', room: 'a', data: 'fine' })).toMatchObject({ type: 'ack', seq: 1 });
    await bob.next('message');
    expect(await bob.quiet()).toEqual([]);
    expect(bob.of('message').map((m) => m.data)).toEqual(['fine']);
  });
});

describe('"welcome carries an optional epoch … resume accepts it back"', () => {
  it('takes back the epoch of a history store whose epoch is longer than resume allows', async () => {
    /** A store of one's own naming its numbering at length, as a URL or a path may. */
    class NamedStore extends InMemoryHistoryStore {
      override readonly epoch = `db://history/${'numbering-'.repeat(10)}`;
    }
    const store = new NamedStore();
    const s = await startServer({ membership: new MembershipTable({ a: ['alice', 'bob'] }), history: store });
    const alice = await connect(s.url, 'alice');
    await alice.request({ type: 'publish', room: 'a', data: 1 });
    const bob = await connect(s.url, 'bob');
    const epoch = bob.welcome.epoch as string;
    expect(typeof epoch).toBe('string');
    // What the client sends back must pass the server's own check (at most 64 characters).
    expect(epoch.length).toBeLessThanOrEqual(64);
    bob.send({ type: 'resume', rooms: { a: 0 }, epoch, ref: 'same' });
    expect(await bob.next('message')).toMatchObject({ seq: 1, ref: 'same' });
    expect(await bob.next('resumed')).toEqual({ type: 'resumed', rooms: { a: { replayed: 1 } }, ref: 'same' });
    // Another numbering's epoch still gets history_gap.
    expect(await bob.request({ type: 'resume', rooms: { a: 1 }, epoch: 'another' })).toMatchObject({ code: 'history_gap', room: 'a' });
    // Announced the same to every connection of the numbering.
    expect((await connect(s.url, 'alice')).welcome.epoch).toBe(epoch);
  });
});

describe('note 13: "Once close() has begun, frames other than ping are ignored"', () => {
  it('answers no frame over the rate limit during close(), and does not close the connection with 4008 for it', async () => {
    let release: () => void = () => {};
    const held = new Promise<void>((resolve) => (release = resolve));
    const s = await startServer({
      membership: new MembershipTable({ a: ['alice'] }),
      publishRate: { burst: 1, perSecond: 0.001 },
      joinRate: { burst: 1, perSecond: 0.001 },
      rateLimitStrikes: { burst: 1, perSecond: 0.001 },
      onPublish: async ({ data }) => {
        await held;
        return data;
      },
    });
    const alice = await connect(s.url, 'alice');
    alice.send({ type: 'publish', room: 'a', data: 'held', cid: 'c1', ref: 'p1' });
    await alice.quiet(50);
    const closing = s.manager.close();
    alice.send({ type: 'publish', room: 'a', data: 'late', cid: 'c2', ref: 'p2' });
    alice.send({ type: 'join', room: 'a', ref: 'j1' });
    alice.send({ type: 'leave', room: 'a', ref: 'l1' });
    alice.send({ type: 'publish', room: 'a', data: 'later', cid: 'c3', ref: 'p3' });
    alice.send({ type: 'ping', ref: 'ping' });
    expect(await alice.replyTo('ping')).toMatchObject({ type: 'pong' });
    release();
    expect(await alice.replyTo('p1')).toMatchObject({ type: 'ack', seq: 1 });
    await closing;
    await alice.closed();
    expect(alice.closeCode).toBe(1001);
    // Ignored: neither answered nor counted against the connection.
    expect(alice.frames.filter((f) => f.ref !== undefined).map((f) => f.ref)).toEqual(['ping', 'p1']);
  });
});

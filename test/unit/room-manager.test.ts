import { afterEach, describe, expect, it, vi } from 'vitest';
import { LocalBus, RoomManager, RoomwireError, type DeliveryReport, type MembershipLoader, type RoomManagerOptions } from '../../src/index.js';
import { FakeConnection, openFake, settle, untilMessages } from '../helpers/fake-connection.js';
import { MembershipTable } from '../helpers/server.js';

/** The managers a test made, closed after it (closing twice is harmless). */
const made: RoomManager[] = [];
afterEach(async () => {
  for (const rooms of made.splice(0)) await rooms.close();
});

function manager(table: MembershipTable, options: Partial<RoomManagerOptions> = {}): RoomManager {
  const rooms = new RoomManager({ authenticate: () => ({ id: 'unused' }), membership: table, ...options });
  made.push(rooms);
  return rooms;
}

/** Two managers on one LocalBus, each with its own further options. */
function twoNodes(table: MembershipTable, one: Partial<RoomManagerOptions> = {}, two: Partial<RoomManagerOptions> = {}): [RoomManager, RoomManager] {
  const bus = new LocalBus();
  return [manager(table, { backplane: bus.node(), ...one }), manager(table, { backplane: bus.node(), ...two })];
}

/**
 * bob, removed and added again while his own publish of 'mine' waited: he is told `left`,
 * his ack, and `joined` at `joinedAt`, and never sent his own message; alice gets it.
 */
async function expectOwnLeftOut(adding: Promise<unknown>, bob: FakeConnection, alice: FakeConnection, joinedAt: number): Promise<void> {
  await adding;
  await settle(10);
  expect(bob.frames.slice(1).map((f) => [f.type, f.seq])).toEqual([
    ['left', undefined],
    ['ack', 1],
    ['joined', joinedAt],
  ]);
  expect(alice.of('message').map((m) => m.data)).toEqual(['mine']);
}

/** A broadcast of 'after' into r, once a race is over, reaches `conn` as any other: its messages' data are then `data`. */
async function expectAfter(node: RoomManager, conn: FakeConnection, data: unknown[]): Promise<void> {
  await node.broadcast('r', 'after');
  await untilMessages(conn, data.length);
  expect(conn.of('message').map((m) => m.data)).toEqual(data);
}

describe('RoomManager core (in-memory connections)', () => {
  it('sends welcome first, listing the auto-joined rooms', async () => {
    const rooms = manager(new MembershipTable({ a: ['alice'], b: ['alice', 'bob'], c: ['bob'] }));
    const alice = await openFake(rooms, 'alice');
    expect(alice.frames[0]).toMatchObject({ type: 'welcome', protocol: 1, user: { id: 'alice' }, heartbeatMs: 25_000 });
    expect((alice.frames[0]!.rooms as string[]).sort()).toEqual(['a', 'b']);
    expect(rooms.roomsOf(alice.handlers.id).sort()).toEqual(['a', 'b']);
  });

  it('handles frames that arrive before welcome after it, in order', async () => {
    let release!: () => void;
    const table = new MembershipTable({ a: ['alice'] });
    const slow = { ...table, roomsOf: (user: { id: string }) => new Promise<string[]>((resolve) => (release = () => resolve(table.roomsOf(user)))), membersOf: (room: string) => table.membersOf(room) };
    const rooms = manager(table, { membership: slow });
    const alice = new FakeConnection();
    alice.handlers = rooms.open(alice, { id: 'alice' });
    alice.receive({ type: 'ping', ref: 'p1' });
    alice.receive({ type: 'publish', room: 'a', data: 1, ref: 'x' });
    await settle();
    expect(alice.frames).toEqual([]);
    release();
    await alice.handlers.ready;
    await settle();
    expect(alice.frames.map((f) => f.type)).toEqual(['welcome', 'pong', 'ack']);
  });

  it('connects the user when roomsOf throws, reports it, and ensure-participants repairs membership', async () => {
    const table = new MembershipTable({ a: ['alice', 'bob'] });
    const broken = { roomsOf: () => Promise.reject(new Error('db down')), membersOf: (room: string) => table.membersOf(room) };
    const rooms = manager(table, { membership: broken });
    const errors: string[] = [];
    rooms.on('error', (_error, context) => errors.push(context.phase));
    const alice = await openFake(rooms, 'alice');
    expect(alice.frames[0]).toMatchObject({ type: 'welcome', rooms: [] });
    expect(errors).toEqual(['roomsOf']);
    const report = await rooms.broadcast('a', 'hello');
    expect(report).toMatchObject({ participants: 2, online: 1, delivered: 1, added: 1, failed: 0 });
    expect(alice.frames.slice(1)).toMatchObject([
      { type: 'joined', room: 'a', seq: 0 },
      { type: 'message', room: 'a', seq: 1, data: 'hello', from: null },
    ]);
  });

  it('connects the user when roomsOf hangs past loaderTimeoutMs', async () => {
    const table = new MembershipTable({ a: ['alice'] });
    const hanging = { roomsOf: () => new Promise<string[]>(() => {}), membersOf: (room: string) => table.membersOf(room) };
    const rooms = manager(table, { membership: hanging, loaderTimeoutMs: 20 });
    const alice = await openFake(rooms, 'alice');
    expect(alice.frames[0]).toMatchObject({ type: 'welcome', rooms: [] });
  });

  it('retries a send that threw through the fallback and reports it, without duplicates', async () => {
    const rooms = manager(new MembershipTable({ a: ['alice', 'bob'] }));
    const alice = await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    const bobTab2 = await openFake(rooms, 'bob');
    bob.failNext = 1;
    const reports: DeliveryReport[] = [];
    rooms.on('delivery', (report) => reports.push(report));
    const report = await rooms.broadcast('a', { n: 1 });
    expect(report).toMatchObject({ participants: 2, online: 2, reached: 2, delivered: 3, viaFallback: 1, failed: 0 });
    expect(reports).toEqual([report]);
    for (const connection of [alice, bob, bobTab2]) expect(connection.of('message')).toHaveLength(1);
  });

  it('still falls back when a send throws in a room whose reconciliation was reused', async () => {
    const rooms = manager(new MembershipTable({ a: ['alice', 'bob'] }));
    const alice = await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    expect(await rooms.broadcast('a', 1)).toMatchObject({ delivered: 2, viaFallback: 0, online: 2, reached: 2 });
    bob.failNext = 1;
    expect(await rooms.broadcast('a', 2)).toMatchObject({ delivered: 2, viaFallback: 1, online: 2, reached: 2, failed: 0 });
    const aliceTab2 = await openFake(rooms, 'alice');
    expect(await rooms.broadcast('a', 3)).toMatchObject({ delivered: 3, online: 2, reached: 2 });
    expect(alice.of('message')).toHaveLength(3);
    expect(bob.of('message').map((m) => m.data)).toEqual([1, 2, 3]);
    expect(aliceTab2.of('message').map((m) => m.data)).toEqual([3]);
  });

  it('reports a connection that fails on both paths as failed and keeps serving the others', async () => {
    const rooms = manager(new MembershipTable({ a: ['alice', 'bob'] }));
    const alice = await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    bob.failing = true;
    const report = await rooms.broadcast('a', 'x');
    expect(report).toMatchObject({ delivered: 1, viaFallback: 0, failed: 1, reached: 1, online: 2 });
    expect(alice.of('message')).toHaveLength(1);
  });

  it('counts a send to a closing socket as failed, reporting a throw as an error and a refusal not', async () => {
    const rooms = manager(new MembershipTable({ a: ['alice', 'bob'] }));
    const alice = await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    const errors: string[] = [];
    rooms.on('error', (_error, { phase }) => errors.push(phase));
    // The close is on its way (the transport has not called closed() yet): routine.
    bob.closing = true;
    expect(await rooms.broadcast('a', 'racing a close')).toMatchObject({ delivered: 1, failed: 1, reached: 1, online: 2 });
    expect(errors).toEqual([]);
    bob.closing = false;
    bob.failing = true;
    expect(await rooms.broadcast('a', 'a socket that threw')).toMatchObject({ delivered: 1, failed: 1 });
    expect(errors).toEqual(['send', 'send']);
    expect(alice.of('message')).toHaveLength(2);
  });

  it('sends directly to a participant connection that could not enter the room (room limit)', async () => {
    const rooms = manager(new MembershipTable({ a: ['alice', 'bob'], b: ['bob'] }), { maxRoomsPerConnection: 1 });
    await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    const inRoom = rooms.roomsOf(bob.handlers.id);
    expect(inRoom).toHaveLength(1);
    const other = inRoom[0] === 'a' ? 'b' : 'a';
    const report = await rooms.broadcast(other, 'direct');
    expect(report.viaFallback).toBe(1);
    expect(bob.of('message')).toMatchObject([{ room: other, data: 'direct' }]);
  });

  it('never re-adds a connection that left, until it joins again', async () => {
    const rooms = manager(new MembershipTable({ a: ['alice', 'bob'] }));
    const alice = await openFake(rooms, 'alice');
    alice.receive({ type: 'leave', room: 'a', ref: 'l' });
    await settle();
    expect(alice.frames.at(-1)).toEqual({ type: 'left', room: 'a', ref: 'l' });
    await rooms.broadcast('a', 1);
    expect(alice.of('message')).toHaveLength(0);
    alice.receive({ type: 'join', room: 'a', ref: 'j' });
    await settle();
    expect(alice.frames.at(-1)).toEqual({ type: 'joined', room: 'a', seq: 1, ref: 'j' });
    await rooms.broadcast('a', 2);
    expect(alice.of('message')).toMatchObject([{ seq: 2, data: 2 }]);
  });

  it('admits a non-participant through canJoin and keeps it through ensure-participants, until removeMember', async () => {
    const table = new MembershipTable({ a: ['alice'] });
    table.canJoinRooms.add('a');
    const rooms = manager(table);
    const eve = await openFake(rooms, 'eve');
    eve.receive({ type: 'join', room: 'a', ref: 'j' });
    await settle();
    expect(eve.frames.at(-1)).toMatchObject({ type: 'joined', room: 'a', ref: 'j' });
    await rooms.broadcast('a', 'one');
    expect(eve.of('message')).toHaveLength(1);
    rooms.removeMember('a', 'eve');
    expect(eve.frames.at(-1)).toEqual({ type: 'left', room: 'a' });
    await rooms.broadcast('a', 'two');
    expect(eve.of('message')).toHaveLength(1);
  });

  it('refuses a join the loader and canJoin do not allow with forbidden', async () => {
    const rooms = manager(new MembershipTable({ a: ['alice'] }));
    const eve = await openFake(rooms, 'eve');
    eve.receive({ type: 'join', room: 'a', ref: 'j' });
    eve.receive({ type: 'publish', room: 'a', data: 'sneaky', ref: 'p' });
    await settle();
    expect(eve.frames.slice(1)).toMatchObject([
      { type: 'error', code: 'forbidden', room: 'a', ref: 'j' },
      { type: 'error', code: 'forbidden', room: 'a', ref: 'p' },
    ]);
    expect(rooms.stats().messages).toBe(0);
  });

  it('takes users the loader no longer lists out of the room before the broadcast', async () => {
    const table = new MembershipTable({ a: ['alice', 'bob'] });
    const rooms = manager(table, { membershipTtlMs: 0 });
    await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    table.remove('a', 'bob');
    const report = await rooms.broadcast('a', 'secret');
    expect(report).toMatchObject({ removed: 1, delivered: 1 });
    expect(bob.frames.at(-1)).toEqual({ type: 'left', room: 'a' });
    expect(bob.of('message')).toHaveLength(0);
  });

  it('uses the last known participants when the loader fails, and says so in the report', async () => {
    const table = new MembershipTable({ a: ['alice', 'bob'] });
    let fail = false;
    const flaky = { roomsOf: (user: { id: string }) => table.roomsOf(user), membersOf: (room: string) => (fail ? Promise.reject(new Error('down')) : table.membersOf(room)) };
    const rooms = manager(table, { membership: flaky, membershipTtlMs: 0 });
    await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    await rooms.broadcast('a', 1);
    fail = true;
    const report = await rooms.broadcast('a', 2);
    expect(report).toMatchObject({ stale: true, participants: 2, delivered: 2 });
    expect(bob.of('message')).toHaveLength(2);
  });

  it('keeps seq in order per room when the membership loader is slow', async () => {
    const table = new MembershipTable({ a: ['alice'] });
    const slow = { roomsOf: (user: { id: string }) => table.roomsOf(user), membersOf: async (room: string) => { await settle(10); return table.membersOf(room); } };
    const rooms = manager(table, { membership: slow, membershipTtlMs: 0 });
    const alice = await openFake(rooms, 'alice');
    await Promise.all([1, 2, 3, 4, 5].map((n) => rooms.broadcast('a', n)));
    expect(alice.of('message').map((m) => [m.seq, m.data])).toEqual([[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]]);
  });

  it('runs the publish hook once per cid, transforms data, and answers a repeat with the first ack', async () => {
    const onPublish = vi.fn(({ data }: { data: unknown }) => ({ stored: data }));
    const rooms = manager(new MembershipTable({ a: ['alice', 'bob'] }), { onPublish });
    const alice = await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    alice.receive({ type: 'publish', room: 'a', data: 'hi', cid: 'c1', ref: 'one' });
    alice.receive({ type: 'publish', room: 'a', data: 'hi', cid: 'c1', ref: 'two' });
    await settle();
    const acks = alice.of('ack');
    expect(acks).toHaveLength(2);
    expect(acks[0]).toMatchObject({ ref: 'one', seq: 1 });
    expect(acks[1]).toMatchObject({ ref: 'two', seq: 1, id: acks[0]!.id });
    expect(onPublish).toHaveBeenCalledTimes(1);
    expect(bob.of('message')).toMatchObject([{ data: { stored: 'hi' }, from: 'alice' }]);
  });

  it('turns a RoomwireError from the hook into an error frame and lets the client retry the cid', async () => {
    let refuse = true;
    const rooms = manager(new MembershipTable({ a: ['alice', 'bob'] }), {
      onPublish: ({ data }) => {
        if (refuse) throw new RoomwireError('forbidden', 'archived', { details: { why: 'archived' } });
        return data;
      },
    });
    const alice = await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    alice.receive({ type: 'publish', room: 'a', data: 'x', cid: 'c', ref: 'r1' });
    await settle();
    expect(alice.frames.at(-1)).toEqual({ type: 'error', code: 'forbidden', message: 'archived', ref: 'r1', room: 'a', details: { why: 'archived' } });
    refuse = false;
    alice.receive({ type: 'publish', room: 'a', data: 'x', cid: 'c', ref: 'r2' });
    await settle();
    expect(alice.frames.at(-1)).toMatchObject({ type: 'ack', ref: 'r2', seq: 1 });
    expect(bob.of('message')).toHaveLength(1);
  });

  it('answers a hook that throws something else with internal and keeps the connection', async () => {
    const rooms = manager(new MembershipTable({ a: ['alice'] }), { onPublish: () => { throw new Error('db exploded'); } });
    const alice = await openFake(rooms, 'alice');
    alice.receive({ type: 'publish', room: 'a', data: 'x', ref: 'r' });
    await settle();
    expect(alice.frames.at(-1)).toMatchObject({ type: 'error', code: 'internal', ref: 'r', room: 'a' });
    expect(alice.closedWith).toBeUndefined();
    expect(alice.frames.at(-1)!.message).not.toContain('exploded');
  });

  it('validates publish data with publishSchema', async () => {
    const schema = { safeParse: (input: unknown) => (typeof input === 'object' && input !== null && 'content' in input ? { success: true as const, data: input } : { success: false as const, error: { issues: [{ path: ['content'], message: 'Required' }] } }) };
    const rooms = manager(new MembershipTable({ a: ['alice'] }), { publishSchema: schema });
    const alice = await openFake(rooms, 'alice');
    alice.receive({ type: 'publish', room: 'a', data: { nope: 1 }, ref: 'r' });
    await settle();
    expect(alice.frames.at(-1)).toMatchObject({ type: 'error', code: 'bad_request', ref: 'r', details: { issues: [{ path: 'content', message: 'Required' }] } });
  });

  it('handles a plain publish in the tick it arrives, with the same frames as the general path', async () => {
    const run = async (options: Partial<RoomManagerOptions>): Promise<{ sync: unknown[]; all: unknown[][] }> => {
      const rooms = manager(new MembershipTable({ a: ['alice', 'bob'] }), options);
      const alice = await openFake(rooms, 'alice');
      const bob = await openFake(rooms, 'bob');
      await rooms.broadcast('a', 'warm'); // participants cached
      const before = alice.frames.length;
      alice.receive({ type: 'publish', room: 'a', data: { n: 1 }, cid: 'c1', ref: 'r1' });
      const sync = alice.frames.slice(before).map((f) => f.type);
      alice.receive({ type: 'publish', room: 'a', data: { n: 1 }, cid: 'c1', ref: 'r2' }); // a repeat: dedupe
      alice.receive({ type: 'publish', room: 'a', data: 2, ref: 'r3' });
      await settle();
      const strip = (frames: Record<string, unknown>[]): unknown[] => frames.map(({ id: _id, ts: _ts, connectionId: _c, epoch: _e, ...rest }) => rest);
      return { sync, all: [strip(alice.frames), strip(bob.frames)] };
    };
    const fast = await run({});
    // A hook that changes nothing sends every publish down the general (asynchronous) path.
    const general = await run({ onPublish: () => undefined });
    expect(fast.sync).toEqual(['ack']);
    expect(general.sync).toEqual([]);
    expect(fast.all).toEqual(general.all);
    expect(fast.all[0]).toMatchObject([{ type: 'welcome' }, { type: 'message', seq: 1 }, { type: 'ack', seq: 2, ref: 'r1' }, { type: 'ack', seq: 2, ref: 'r2' }, { type: 'ack', seq: 3, ref: 'r3' }]);
  });

  it('answers data over maxMessageBytes with too_large', async () => {
    const rooms = manager(new MembershipTable({ a: ['alice'] }), { maxMessageBytes: 100 });
    const alice = await openFake(rooms, 'alice');
    alice.receive({ type: 'publish', room: 'a', data: 'x'.repeat(200), ref: 'r' });
    alice.receive({ type: 'publish', room: 'a', data: 'x'.repeat(50), ref: 'ok' });
    await settle();
    expect(alice.frames.slice(1)).toMatchObject([{ type: 'error', code: 'too_large', ref: 'r' }, { type: 'ack', ref: 'ok' }]);
  });

  it('measures maxMessageBytes in UTF-8 bytes of the data as JSON, on both publish paths', async () => {
    for (const options of [{}, { onPublish: () => undefined }]) {
      const rooms = manager(new MembershipTable({ a: ['alice'] }), { maxMessageBytes: 100, ...options });
      const alice = await openFake(rooms, 'alice');
      // 40 euro signs are 42 UTF-16 units but 122 bytes of JSON; 30 are 92.
      alice.receive({ type: 'publish', room: 'a', data: '€'.repeat(40), ref: 'euros' });
      alice.receive({ type: 'publish', room: 'a', data: '€'.repeat(30), ref: 'fewer' });
      // A number re-encodes longer than it was sent: 5 × "1e20" is 111 bytes as JSON.
      alice.receive('{"type":"publish","room":"a","data":[1e20,1e20,1e20,1e20,1e20],"ref":"grown"}');
      alice.receive('{"type":"publish","room":"a","data":[1e20,1e20,1e20,1e20],"ref":"four"}');
      await settle();
      expect(alice.frames.slice(1)).toMatchObject([
        { type: 'error', code: 'too_large', ref: 'euros' },
        { type: 'ack', ref: 'fewer' },
        { type: 'error', code: 'too_large', ref: 'grown' },
        { type: 'ack', ref: 'four' },
      ]);
    }
  });

  it('keeps a publish apart from one whose user, room and cid only run together the same way', async () => {
    const rooms = manager(new MembershipTable({ b: ['alice', 'bob'], 'b\nc': ['alice', 'bob'] }));
    const alice = await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    alice.receive({ type: 'publish', room: 'b\nc', data: 'one', cid: 'd', ref: 'p1' });
    alice.receive({ type: 'publish', room: 'b', data: 'two', cid: 'c\nd', ref: 'p2' });
    await settle();
    expect(bob.frames.filter((f) => f.type === 'message').map((f) => f.data)).toEqual(['one', 'two']);
    expect(alice.frames.filter((f) => f.type === 'ack').map((f) => [f.room, f.seq])).toEqual([['b\nc', 1], ['b', 1]]);
  });

  it('remembers the newest leave when its list of left rooms is full, forgetting the oldest', async () => {
    const table = new MembershipTable({ a: ['alice', 'bob'] });
    table.canJoinRooms.add('pub1');
    table.canJoinRooms.add('pub2');
    const rooms = manager(table, { maxRoomsPerConnection: 2 });
    const alice = await openFake(rooms, 'alice');
    await openFake(rooms, 'bob');
    for (const room of ['pub1', 'pub2']) {
      alice.receive({ type: 'join', room, ref: `j${room}` });
      alice.receive({ type: 'leave', room, ref: `l${room}` });
    }
    alice.receive({ type: 'leave', room: 'a', ref: 'la' });
    await settle();
    await rooms.broadcast('a', 'after leave');
    await settle();
    expect(alice.frames.filter((f) => f.type === 'message')).toEqual([]);
  });

  it('does not auto-join a room the user was removed from while their roomsOf was in flight', async () => {
    const table = new MembershipTable({ x: ['alice', 'bob'], y: ['bob'] });
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const rooms = manager(table, {
      membership: {
        roomsOf: async (user) => {
          const answer = table.roomsOf(user);
          if (user.id === 'bob') await gate;
          return answer;
        },
        membersOf: (room) => table.membersOf(room),
      },
    });
    await openFake(rooms, 'alice');
    const opening = openFake(rooms, 'bob');
    await settle();
    table.remove('x', 'bob');
    await rooms.removeMember('x', 'bob');
    await rooms.broadcast('x', 'after removal');
    // Removed and added back before the answer: joined after all.
    table.remove('y', 'bob');
    await rooms.removeMember('y', 'bob');
    table.add('y', 'bob');
    await rooms.addMember('y', 'bob');
    release();
    const bob = await opening;
    expect(bob.frames[0]).toMatchObject({ type: 'welcome', rooms: ['y'] });
    // Where each listed room stands, and no word of the room it was removed from.
    expect(Object.keys(bob.frames[0]!.seqs as object)).toEqual(['y']);
    bob.receive({ type: 'publish', room: 'x', data: 'sneaky', ref: 'p' });
    bob.receive({ type: 'resume', rooms: { x: 0 }, ref: 'r' });
    await settle();
    expect(bob.frames.filter((f) => f.type === 'message')).toEqual([]);
    expect(bob.frames.filter((f) => f.type === 'error').map((f) => [f.ref, f.code])).toEqual([['p', 'forbidden'], ['r', 'forbidden']]);
  });

  /**
   * A loader whose `membersOf` reads the table when asked and, while holding (from the
   * start unless `holding` is false; `hold` switches), answers when the test calls one of
   * `answers`.
   */
  function membersOfHeld(
    table: MembershipTable,
    holding = true,
  ): { membership: MembershipLoader; answers: (() => void)[]; hold: (on: boolean) => void } {
    const answers: (() => void)[] = [];
    let on = holding;
    const membership: MembershipLoader = {
      roomsOf: (user) => table.roomsOf(user),
      membersOf: async (room) => {
        const answer = table.membersOf(room);
        if (on) await new Promise<void>((resolve) => answers.push(resolve));
        return answer;
      },
    };
    return { membership, answers, hold: (value) => void (on = value) };
  }

  /** Answers every `membersOf` call held so far. */
  const answerAll = (answers: (() => void)[]): void => answers.splice(0).forEach((answer) => answer());

  it('does not put in a user removed while their addMember waited for the room', async () => {
    const table = new MembershipTable({ r: ['alice'] });
    const { membership, answers } = membersOfHeld(table);
    const rooms = manager(table, { membership });
    await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    // A broadcast holds the room while the loader answers: the addMember waits for it.
    const sent = rooms.broadcast('r', 'one');
    await settle();
    table.add('r', 'bob');
    const adding = rooms.addMember('r', 'bob');
    table.remove('r', 'bob');
    await rooms.removeMember('r', 'bob');
    answerAll(answers);
    await sent;
    await adding;
    expect(bob.frames.slice(1)).toEqual([]);
    expect(rooms.roomsOf(bob.handlers.id)).toEqual([]);
    bob.receive({ type: 'resume', rooms: { r: 0 }, ref: 'r' });
    bob.receive({ type: 'publish', room: 'r', data: 'sneaky', ref: 'p' });
    for (let i = 0; i < 3; i++) {
      answerAll(answers);
      await settle();
    }
    expect(bob.frames.slice(1).map((f) => [f.type, f.code, f.ref])).toEqual([
      ['error', 'forbidden', 'r'],
      ['resumed', undefined, 'r'],
      ['error', 'forbidden', 'p'],
    ]);
  });

  it('does not send a publisher its own message when it is removed and added again while the publish waits for the room', async () => {
    const table = new MembershipTable({ r: ['alice', 'bob'] });
    const { membership, answers } = membersOfHeld(table, false);
    const rooms = manager(table, { membership });
    const alice = await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    await rooms.invalidate('r');
    // bob's publish holds the room while the loader answers; it has no seq yet.
    const loads = membersOfHeld(table);
    Object.assign(membership, { membersOf: loads.membership.membersOf });
    bob.receive({ type: 'publish', room: 'r', data: 'mine', ref: 'p' });
    await settle();
    table.remove('r', 'bob');
    await rooms.removeMember('r', 'bob');
    table.add('r', 'bob');
    // From the room's seq now, 0: the addition waits for the publish, which leaves bob out.
    const adding = rooms.addMember('r', 'bob');
    answerAll(loads.answers);
    answerAll(answers);
    await expectOwnLeftOut(adding, bob, alice, 0);
  });

  it('does not send a publisher its own message when it is removed and added again while the published message waits for the room, with a backplane', async () => {
    const table = new MembershipTable({ r: ['alice', 'bob'] });
    const loads = membersOfHeld(table, false);
    const rooms = manager(table, { backplane: new LocalBus().node(), membership: loads.membership });
    const alice = await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    await rooms.invalidate('r');
    // bob's message has its seq, 1; its delivery here waits for the loader.
    loads.hold(true);
    bob.receive({ type: 'publish', room: 'r', data: 'mine', ref: 'p' });
    await settle();
    table.remove('r', 'bob');
    await rooms.removeMember('r', 'bob');
    table.add('r', 'bob');
    // From the room's seq now, 1: the delivery that leaves bob out comes first.
    const adding = rooms.addMember('r', 'bob');
    loads.hold(false);
    answerAll(loads.answers);
    await expectOwnLeftOut(adding, bob, alice, 1);
    await rooms.close();
  });

  it('puts in a connection whose join of a room it had left waits for the loader when its user is added meanwhile', async () => {
    const table = new MembershipTable({ r: ['alice'] });
    const { membership, answers } = membersOfHeld(table);
    const rooms = manager(table, { membership });
    const alice = await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    bob.receive({ type: 'leave', room: 'r', ref: 'l' });
    // The join waits for the loader; bob asked to be in the room from now on.
    bob.receive({ type: 'join', room: 'r', ref: 'j' });
    await settle();
    table.add('r', 'bob');
    await rooms.addMember('r', 'bob');
    const sent = rooms.broadcast('r', 'added');
    for (let i = 0; i < 5; i++) {
      answerAll(answers);
      await settle();
    }
    await sent;
    await settle(10);
    expect(bob.frames.slice(1).map((f) => [f.type, f.seq, f.ref])).toEqual([
      ['left', undefined, 'l'],
      ['joined', 0, undefined],
      ['message', 1, undefined],
      ['joined', 1, 'j'],
    ]);
    expect(alice.of('message').map((m) => m.data)).toEqual(['added']);
  });

  it('takes out a user the loader stopped listing when invalidate came while a load of the room was in flight', async () => {
    const table = new MembershipTable({ r: ['alice', 'bob'] });
    const { membership, answers } = membersOfHeld(table);
    const rooms = manager(table, { membership });
    await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    const carol = await openFake(rooms, 'carol');
    // carol's join asks the loader, which reads bob still listed.
    carol.receive({ type: 'join', room: 'r', ref: 'j' });
    await settle();
    expect(answers).toHaveLength(1);
    table.remove('r', 'bob');
    await rooms.invalidate('r');
    const sent = rooms.broadcast('r', 'after removal');
    for (let i = 0; i < 3; i++) {
      answerAll(answers);
      await settle();
    }
    expect(await sent).toMatchObject({ participants: 1, removed: 1 });
    expect(bob.frames.slice(1)).toEqual([{ type: 'left', room: 'r' }]);
  });

  it('refuses a server-side broadcast into a room name with an unpaired surrogate', async () => {
    const rooms = manager(new MembershipTable({}));
    await expect(rooms.broadcast('x\uD800', 'hi')).rejects.toMatchObject({ name: 'RoomwireError', code: 'bad_request' });
  });

  it('does not replay on resume what the fallback already sent to a connection outside the room', async () => {
    const rooms = manager(new MembershipTable({ a: ['alice', 'bob'], b: ['bob', 'carol'] }), { maxRoomsPerConnection: 1 });
    await openFake(rooms, 'alice');
    await openFake(rooms, 'carol');
    // Joined to 'a' only: the room limit keeps it out of 'b', so 'b' reaches it through the fallback.
    const bob = await openFake(rooms, 'bob');
    await rooms.broadcast('b', 'direct');
    bob.receive({ type: 'resume', rooms: { b: 0 }, ref: 'r' });
    await settle();
    expect(bob.frames.filter((f) => f.type === 'message' && f.room === 'b').map((f) => f.seq)).toEqual([1]);
    expect(bob.frames.find((f) => f.type === 'resumed')).toMatchObject({ rooms: { b: { replayed: 0 } }, ref: 'r' });
  });

  it('remembers what the fallback sent a connection outside its rooms for as many rooms as its limit, the newest', async () => {
    const table = new MembershipTable({ home: ['bob'] });
    const rooms = manager(table, { maxRoomsPerConnection: 10 });
    const bob = await openFake(rooms, 'bob');
    // The first rooms take bob in; past the limit each is reached through the fallback.
    for (let i = 0; i < 200; i++) {
      table.add(`r${i}`, 'bob');
      await rooms.broadcast(`r${i}`, i);
    }
    expect(bob.of('message')).toHaveLength(200);
    const internals = rooms as unknown as { conns: Map<string, object>; sentOutsideRoom: WeakMap<object, Map<string, number>> };
    const outside = internals.sentOutsideRoom.get(internals.conns.get(bob.handlers.id)!);
    expect(outside?.size).toBe(10);
    bob.receive({ type: 'resume', rooms: { r199: 0 }, ref: 'r' });
    await settle();
    expect(bob.frames.find((f) => f.type === 'resumed')).toMatchObject({ rooms: { r199: { replayed: 0 } }, ref: 'r' });
  });

  it('does not replay on resume what a connection got live before it left the room and came back', async () => {
    const table = new MembershipTable({ a: ['alice', 'bob'] });
    const rooms = manager(table);
    const bob = await openFake(rooms, 'bob');
    await rooms.broadcast('a', 1); // live
    bob.receive({ type: 'leave', room: 'a' });
    await rooms.broadcast('a', 2); // missed
    bob.receive({ type: 'join', room: 'a', ref: 'j' });
    await settle();
    await rooms.broadcast('a', 3); // live
    // Removed and added back by the application: the same holds.
    table.remove('a', 'bob');
    await rooms.removeMember('a', 'bob');
    await rooms.broadcast('a', 4); // missed
    table.add('a', 'bob');
    await rooms.addMember('a', 'bob');
    await rooms.broadcast('a', 5); // live
    expect(bob.of('message').map((m) => m.data)).toEqual([1, 3, 5]);
    bob.receive({ type: 'resume', rooms: { a: 0 }, ref: 'r' });
    await settle();
    const replayed = bob.frames.filter((f) => f.type === 'message' && f.ref === 'r').map((m) => m.data);
    expect(replayed).toEqual([2, 4]);
    expect(bob.of('resumed')).toEqual([{ type: 'resumed', rooms: { a: { replayed: 2 } }, ref: 'r' }]);
  });

  it('answers forbidden, not a replay after its left, a resume of a room a connection was admitted to and taken out of meanwhile', async () => {
    const table = new MembershipTable({ a: ['alice'] });
    table.canJoinRooms.add('pub');
    const rooms = manager(table);
    const bob = await openFake(rooms, 'bob');
    await rooms.broadcast('pub', 'before');
    expect(await rooms.join(bob.handlers.id, 'pub')).toBe(true);
    // The resume reads the history; the application takes bob out of pub meanwhile.
    bob.receive({ type: 'resume', rooms: { pub: 0 }, ref: 'r' });
    expect(rooms.leave(bob.handlers.id, 'pub')).toBe(true);
    await settle();
    // Admitted, not a participant: out of the room it may not read it (docs/protocol.md, note 15).
    expect(bob.frames.slice(1).map((f) => [f.type, f.code ?? f.seq, f.ref])).toEqual([
      ['joined', 1, undefined],
      ['left', undefined, undefined],
      ['error', 'forbidden', 'r'],
      ['resumed', undefined, 'r'],
    ]);
    expect(bob.of('resumed')).toEqual([{ type: 'resumed', rooms: {}, ref: 'r' }]);
  });

  it('still replays a room to a participant taken out of it while its resume read the history', async () => {
    const table = new MembershipTable({ a: ['bob'] });
    const rooms = manager(table);
    const bob = await openFake(rooms, 'bob');
    bob.receive({ type: 'leave', room: 'a' });
    await rooms.broadcast('a', 'missed');
    bob.receive({ type: 'join', room: 'a', ref: 'j' });
    await settle();
    bob.receive({ type: 'resume', rooms: { a: 0 }, ref: 'r' });
    expect(rooms.leave(bob.handlers.id, 'a')).toBe(true);
    await settle();
    // Leaving is not losing read access for a participant (docs/protocol.md, note 15).
    expect(bob.frames.filter((f) => f.ref === 'r').map((f) => [f.type, f.data])).toEqual([
      ['message', 'missed'],
      ['resumed', undefined],
    ]);
  });

  it('does not replay what a node sent live to a participant it found for another node’s broadcast', async () => {
    const table = new MembershipTable({ r: ['alice'] });
    const [n1, n2] = twoNodes(table);
    await openFake(n1, 'alice');
    const bob = await openFake(n2, 'bob');
    table.add('r', 'bob'); // and no addMember: node 1's broadcast finds bob, node 2 brings him in
    await n1.broadcast('r', 'one');
    await untilMessages(bob, 1);
    expect(bob.of('message').map((m) => m.data)).toEqual(['one']);
    bob.receive({ type: 'resume', rooms: { r: 0 }, ref: 'x' });
    for (let i = 0; i < 100 && bob.of('resumed').length === 0; i++) await settle(10);
    expect(bob.of('resumed')).toEqual([{ type: 'resumed', rooms: { r: { replayed: 0 } }, ref: 'x' }]);
    expect(bob.of('message')).toHaveLength(1);
  });

  it('brings in a user added on another node while this node had a load of the room in flight', async () => {
    const table = new MembershipTable({ r: ['alice'] });
    const answers: (() => void)[] = [];
    const slow = {
      roomsOf: (user: { id: string }) => table.roomsOf(user),
      membersOf: async (room: string) => {
        const answer = table.membersOf(room);
        await new Promise<void>((resolve) => answers.push(resolve));
        return answer;
      },
    };
    const [n1, n2] = twoNodes(table, {}, { membership: slow });
    await openFake(n1, 'alice');
    await n1.broadcast('r', 'before');
    // dave, alone on node 2, asks to join before he is a participant: node 2 loads the room.
    const dave = await openFake(n2, 'dave');
    dave.receive({ type: 'join', room: 'r', ref: 'j' });
    await settle();
    expect(answers).toHaveLength(1);
    table.add('r', 'dave');
    await n1.addMember('r', 'dave');
    for (let i = 0; i < 5; i++) {
      answerAll(answers);
      await settle(2);
    }
    // Refused as of the first answer, then brought in by the addMember.
    expect(dave.frames.slice(1).map((f) => f.type)).toEqual(['error', 'joined']);
    await expectAfter(n1, dave, ['after']);
  });

  it.each(['addMember', 'a participants notice'] as const)('brings in a user another node found once the loader answers again, after %s it failed to check', async (how) => {
    const table = new MembershipTable({ r: ['alice'] });
    let failNext = false;
    const bus = new LocalBus();
    const n1 = manager(table, { backplane: bus.node() });
    const n2 = manager(table, {
      backplane: bus.node(),
      membership: {
        roomsOf: (user) => table.roomsOf(user),
        membersOf: (room) => {
          if (failNext) {
            failNext = false;
            throw new Error('database down');
          }
          return table.membersOf(room);
        },
      },
    });
    n2.on('error', () => undefined);
    await openFake(n1, 'alice');
    await n1.broadcast('r', 'before');
    const dave = await openFake(n2, 'dave');
    table.add('r', 'dave');
    // Without addMember, node 1 finds dave once it asks its loader again.
    if (how === 'a participants notice') await n1.invalidate('r');
    await settle();
    failNext = true;
    if (how === 'addMember') await n1.addMember('r', 'dave');
    await n1.broadcast('r', 'while the loader was down');
    await settle(20);
    expect(dave.frames.slice(1)).toEqual([]);
    // Checked again half a second later: the user enters, with what they missed.
    await settle(600);
    expect(dave.frames.slice(1).map((f) => [f.type, f.seq])).toEqual([
      ['joined', 1],
      ['message', 2],
    ]);
    await expectAfter(n1, dave, ['while the loader was down', 'after']);
  });

  /** A loader whose `roomsOf` answer for `user` is read at once but held until `release()`: it predates what the test changes meanwhile. */
  function roomsOfHeldFor(user: string, table: MembershipTable): { membership: MembershipLoader; release: () => void } {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const membership: MembershipLoader = {
      roomsOf: async (principal) => {
        const answer = table.roomsOf(principal);
        if (principal.id === user) await gate;
        return answer;
      },
      membersOf: (room) => table.membersOf(room),
    };
    return { membership, release: () => release() };
  }

  it('brings in a connection that was auto-joining on another node when its user was added', async () => {
    const table = new MembershipTable({ r: ['alice'] });
    const { membership, release } = roomsOfHeldFor('dave', table);
    const [n1, n2] = twoNodes(table, {}, { membership });
    await openFake(n1, 'alice');
    await n1.broadcast('r', 'before');
    const dave = new FakeConnection();
    dave.handlers = n2.open(dave, { id: 'dave' });
    await settle();
    table.add('r', 'dave');
    await n1.addMember('r', 'dave');
    // Published once addMember resolved: dave gets it, though his connection was not open yet.
    await n1.broadcast('r', 'added');
    await settle();
    release();
    await dave.handlers.ready;
    await untilMessages(dave, 1);
    expect(dave.frames.map((f) => f.type)).toEqual(['welcome', 'joined', 'message']);
    expect(dave.frames[0]).toMatchObject({ rooms: [] });
    expect(dave.frames[1]).toEqual({ type: 'joined', room: 'r', seq: 1 });
    expect(dave.frames[2]).toMatchObject({ seq: 2, data: 'added' });
    await expectAfter(n1, dave, ['added', 'after']);
  });

  it('sends a connection still connecting, whose roomsOf lists the room, what another node broadcast after its addMember', async () => {
    const table = new MembershipTable({ r: ['alice'] });
    const loads = membersOfHeld(table, false);
    // Node 2 checks the addMember notice with a loader that answers late.
    const [n1, n2] = twoNodes(table, {}, { membership: loads.membership });
    await openFake(n1, 'alice');
    loads.hold(true);
    const dave = new FakeConnection();
    dave.handlers = n2.open(dave, { id: 'dave' });
    table.add('r', 'dave');
    await n1.addMember('r', 'dave');
    // Published once addMember resolved, before node 2's loader confirmed the notice.
    await n1.broadcast('r', 'added');
    await settle();
    answerAll(loads.answers);
    await dave.handlers.ready;
    await untilMessages(dave, 1);
    expect(dave.frames[0]).toMatchObject({ type: 'welcome', rooms: [] });
    expect(dave.of('joined')).toEqual([{ type: 'joined', room: 'r', seq: 0 }]);
    expect(dave.of('message').map((m) => [m.seq, m.data])).toEqual([[1, 'added']]);
    await expectAfter(n1, dave, ['added', 'after']);
  });

  it('delivers once a broadcast that waited for the loader while close() dropped the feed a connection opened meanwhile', async () => {
    const table = new MembershipTable({ r: ['ann'] });
    const { membership, answers } = membersOfHeld(table);
    const rooms = manager(table, { backplane: new LocalBus().node(), membership });
    const emitted: number[] = [];
    const reports: number[] = [];
    rooms.on('message', (message) => emitted.push(message.seq));
    rooms.on('delivery', (report) => reports.push(report.seq));
    // No feed for r here: the broadcast takes the direct path, and its room task waits for the loader.
    const sent = rooms.broadcast('r', 'one');
    await settle();
    // ann's auto-join opens r's feed, which starts before the waiting broadcast, fetches it
    // and queues its own delivery behind that room task.
    const ann = await openFake(rooms, 'ann');
    expect(ann.frames[0]).toMatchObject({ type: 'welcome', rooms: ['r'], seqs: { r: 0 } });
    // close() drops the feed; then the loader answers and the broadcast's turn comes.
    await rooms.close();
    answerAll(answers);
    expect(await sent).toMatchObject({ seq: 1 });
    await settle(10);
    expect(emitted).toEqual([1]);
    expect(reports).toEqual([1]);
  });

  it('sends a participant who publishes into a room they are outside what another node broadcast while the check ran', async () => {
    const table = new MembershipTable({ r: ['alice'] });
    const held: [(() => void)[], (() => void)[]] = [[], []];
    let slow = false;
    const loader = (n: 0 | 1): MembershipLoader => ({
      roomsOf: (user) => table.roomsOf(user),
      membersOf: async (room) => {
        const members = table.membersOf(room);
        if (slow) await new Promise<void>((resolve) => held[n].push(resolve));
        return members;
      },
    });
    const [n1, n2] = twoNodes(table, { membership: loader(0) }, { membership: loader(1) });
    await openFake(n1, 'alice');
    const dave = await openFake(n2, 'dave');
    table.add('r', 'dave'); // and no addMember
    await n1.invalidate('r');
    slow = true;
    // dave publishes first: node 2 checks that he is a participant, slowly.
    dave.receive({ type: 'publish', room: 'r', data: 'mine', ref: 'p' });
    await settle();
    // Node 1's broadcast is published at once; its participants notice waits for node 1's loader.
    const sent = n1.broadcast('r', 'one');
    await settle();
    held[1].splice(0).forEach((answer) => answer());
    for (let i = 0; i < 100 && dave.of('ack').length === 0; i++) await settle(10);
    held[0].splice(0).forEach((answer) => answer());
    await sent;
    await settle(20);
    expect(dave.frames.slice(1).map((f) => [f.type, f.seq])).toEqual([
      ['joined', 0],
      ['message', 1],
      ['ack', 2],
    ]);
  });

  it('sends a participant a participants notice brings in what this node broadcast to them while the notice waited', async () => {
    const table = new MembershipTable({ r: ['cat'] });
    const loads = membersOfHeld(table, false);
    const [n1, n2] = twoNodes(table, { membership: loads.membership });
    const cat = await openFake(n1, 'cat');
    const ann = await openFake(n1, 'ann');
    table.add('r', 'ann'); // and no addMember
    await n1.invalidate('r');
    // Node 1 broadcasts after the change: seq 1 waits for node 1's loader.
    loads.hold(true);
    const one = n1.broadcast('r', 'one');
    await settle();
    // Node 2 broadcasts seq 2, finds ann, and tells node 1: the notice starts her after seq 1.
    await n2.broadcast('r', 'two');
    await settle();
    loads.hold(false);
    for (let i = 0; i < 5; i++) {
      answerAll(loads.answers);
      await settle(2);
    }
    await one;
    await untilMessages(ann, 2);
    await settle(20);
    // Seq 1 left her to the notice's entry, which sends it too, before seq 2.
    expect(ann.frames.slice(1).map((f) => [f.type, f.seq])).toEqual([
      ['joined', 0],
      ['message', 1],
      ['message', 2],
    ]);
    expect(cat.of('message').map((m) => m.data)).toEqual(['one', 'two']);
    await expectAfter(n1, ann, ['one', 'two', 'after']);
  });

  it('sends a participant added with invalidate what another node broadcast while this node did not receive the room', async () => {
    const table = new MembershipTable({ r: ['alice'] });
    const [n1, n2] = twoNodes(table);
    const alice = await openFake(n1, 'alice');
    // dan, alone on node 2, is outside the room: node 2 does not receive it.
    const dan = await openFake(n2, 'dan');
    await n2.broadcast('r', 'before');
    table.add('r', 'dan'); // and no addMember
    await n1.invalidate('r');
    // Both nodes broadcast at once. Node 2's own broadcast, seq 3, finds dan before node 1's
    // notice about seq 2, which node 2 never received, reaches it.
    const sent = [n1.broadcast('r', 'one'), n2.broadcast('r', 'two')];
    await Promise.all(sent);
    await untilMessages(dan, 2);
    await settle(20);
    expect(dan.frames.slice(1).map((f) => [f.type, f.seq])).toEqual([
      ['joined', 1],
      ['message', 2],
      ['message', 3],
    ]);
    expect(alice.of('message').map((m) => m.seq)).toEqual([1, 2, 3]);
    await expectAfter(n2, dan, ['one', 'two', 'after']);
  });

  it('sends a connection whose join raced another node’s addMember what was published once the addMember resolved', async () => {
    const table = new MembershipTable({ r: ['alice'] });
    table.canJoinRooms.add('r');
    const here = membersOfHeld(table, false);
    const there = membersOfHeld(table, false);
    const [n1, n2] = twoNodes(table, { membership: here.membership }, { membership: { ...there.membership, canJoin: (user, room) => table.canJoin(user, room) } });
    await openFake(n1, 'alice');
    const dave = await openFake(n2, 'dave');
    // dave's join is decided on an answer from before his addMember: admitted, not a member.
    there.hold(true);
    dave.receive({ type: 'join', room: 'r', ref: 'j' });
    await settle();
    table.add('r', 'dave');
    await n1.addMember('r', 'dave');
    // Published once addMember resolved; node 1's participants notice waits for its loader.
    here.hold(true);
    const sent = n1.broadcast('r', 'added');
    await settle();
    // The join's answer comes first: node 2 subscribes the room after seq 1 and puts dave in,
    // while it still checks the addMember notice.
    answerAll(there.answers);
    for (let i = 0; i < 100 && dave.of('joined').length === 0; i++) await settle(10);
    here.hold(false);
    there.hold(false);
    for (let i = 0; i < 5; i++) {
      answerAll(here.answers);
      answerAll(there.answers);
      await settle(2);
    }
    await sent;
    await untilMessages(dave, 1);
    await settle(20);
    // Not joined at 1, past a message it never got: the notice's seq holds for the join too.
    expect(dave.frames.slice(1).map((f) => [f.type, f.seq, f.ref])).toEqual([
      ['joined', 0, 'j'],
      ['message', 1, undefined],
    ]);
    await expectAfter(n1, dave, ['added', 'after']);
  });

  it('sends a connection still connecting when its user was added the broadcast made right after, once', async () => {
    const table = new MembershipTable({ r: ['alice'] });
    const { membership, release } = roomsOfHeldFor('dave', table);
    const rooms = manager(table, { membership });
    await openFake(rooms, 'alice');
    await rooms.broadcast('r', 'before');
    const dave = new FakeConnection();
    dave.handlers = rooms.open(dave, { id: 'dave' });
    await settle();
    table.add('r', 'dave');
    await rooms.addMember('r', 'dave');
    await rooms.broadcast('r', 'added');
    release();
    await dave.handlers.ready;
    // Open now, outside the room until its turn comes: the fallback reaches it meanwhile.
    await rooms.broadcast('r', 'opened');
    await untilMessages(dave, 2);
    await rooms.broadcast('r', 'after');
    await untilMessages(dave, 3);
    await settle(20);
    expect(dave.frames[0]).toMatchObject({ type: 'welcome', rooms: [] });
    expect(dave.of('joined')).toEqual([{ type: 'joined', room: 'r', seq: 1 }]);
    expect(dave.of('message').map((m) => [m.seq, m.data])).toEqual([
      [2, 'added'],
      [3, 'opened'],
      [4, 'after'],
    ]);
  });

  it('sends a connection still connecting when its user was added the broadcast made right after, when its roomsOf already lists the room', async () => {
    const table = new MembershipTable({ r: ['alice'] });
    const { membership, release } = roomsOfHeldFor('dave', table);
    const rooms = manager(table, { membership });
    await openFake(rooms, 'alice');
    await rooms.broadcast('r', 'before');
    // The database changed first: dave's roomsOf, read as he connects, lists the room.
    table.add('r', 'dave');
    const dave = new FakeConnection();
    dave.handlers = rooms.open(dave, { id: 'dave' });
    await settle();
    await rooms.addMember('r', 'dave');
    await rooms.broadcast('r', 'added');
    release();
    await dave.handlers.ready;
    await rooms.broadcast('r', 'after');
    await settle(20);
    // Not counted as seen in welcome.seqs: joined from the seq at addMember, then what followed.
    expect(dave.frames[0]).toMatchObject({ type: 'welcome', rooms: [] });
    expect(dave.of('joined')).toEqual([{ type: 'joined', room: 'r', seq: 1 }]);
    expect(dave.of('message').map((m) => [m.seq, m.data])).toEqual([
      [2, 'added'],
      [3, 'after'],
    ]);
  });

  it('sends a connection still connecting when its user was added what it missed in seq order, whatever broadcasts wait meanwhile', async () => {
    const table = new MembershipTable({ r: ['alice'] });
    const held = roomsOfHeldFor('dave', table);
    const loads = membersOfHeld(table, false);
    const rooms = manager(table, { membership: { roomsOf: held.membership.roomsOf, membersOf: loads.membership.membersOf } });
    await openFake(rooms, 'alice');
    await rooms.broadcast('r', 'before');
    const dave = new FakeConnection();
    dave.handlers = rooms.open(dave, { id: 'dave' });
    await settle();
    table.add('r', 'dave');
    await rooms.addMember('r', 'dave');
    await rooms.broadcast('r', 'while connecting');
    // The next broadcast waits for a fresh answer of the loader, holding the room.
    loads.hold(true);
    await rooms.invalidate('r');
    const waiting = rooms.broadcast('r', 'held');
    await settle();
    loads.hold(false);
    held.release();
    await dave.handlers.ready;
    await settle();
    answerAll(loads.answers);
    await waiting;
    await rooms.broadcast('r', 'after');
    await untilMessages(dave, 3);
    await settle(20);
    expect(dave.frames.slice(1).map((f) => [f.type, f.seq])).toEqual([
      ['joined', 1],
      ['message', 2],
      ['message', 3],
      ['message', 4],
    ]);
  });

  it('sends an added user a broadcast that waited for the room\'s participants once, by the fallback or as missed', async () => {
    const table = new MembershipTable({ r: ['alice'] });
    const loads = membersOfHeld(table, false);
    const rooms = manager(table, { membership: loads.membership });
    await openFake(rooms, 'alice');
    const dave = await openFake(rooms, 'dave');
    await rooms.broadcast('r', 'before');
    // The next broadcast waits for a fresh answer of the loader; dave is added meanwhile.
    loads.hold(true);
    await rooms.invalidate('r');
    const waiting = rooms.broadcast('r', 'waited');
    await settle();
    loads.hold(false);
    table.add('r', 'dave');
    const added = rooms.addMember('r', 'dave');
    await settle();
    answerAll(loads.answers);
    await waiting;
    await added;
    await rooms.broadcast('r', 'after');
    await settle(20);
    expect(dave.of('message').map((m) => m.data)).toEqual(['waited', 'after']);
    expect(dave.of('joined')).toHaveLength(1);
  });

  it('does not send an added user on another node a broadcast twice that its fallback sent before the notice came', async () => {
    const table = new MembershipTable({ r: ['alice', 'bob'] });
    const [n1, n2] = twoNodes(table, {}, { membershipTtlMs: 20 });
    await openFake(n1, 'alice');
    await openFake(n2, 'bob');
    const dave = await openFake(n2, 'dave');
    await n1.broadcast('r', 'before');
    await settle(40);
    // Node 2's cached participants expired: it asks its loader, which lists dave already.
    table.add('r', 'dave');
    const added = n1.addMember('r', 'dave');
    const sent = n1.broadcast('r', 'right after');
    await added;
    await sent;
    await n1.broadcast('r', 'after');
    await untilMessages(dave, 2);
    await settle(20);
    expect(dave.of('message').map((m) => m.data)).toEqual(['right after', 'after']);
    expect(dave.of('joined')).toHaveLength(1);
  });

  it('keeps the rooms an always-connected user left, for their offline, bounded like the connection’s left rooms', async () => {
    const table = new MembershipTable({ home: ['alice', 'bob'] });
    const rooms = manager(table, { presence: true, maxRoomsPerConnection: 10, joinRate: false });
    const bob = await openFake(rooms, 'bob');
    for (let i = 0; i < 200; i++) {
      table.add(`r${i}`, 'bob');
      bob.receive({ type: 'join', room: `r${i}` });
      await settle();
      bob.receive({ type: 'leave', room: `r${i}` });
    }
    await settle();
    expect(bob.of('left')).toHaveLength(200);
    const user = (rooms as unknown as { users: Map<string, { offlineRooms?: Set<string> }> }).users.get('bob')!;
    expect(user.offlineRooms?.size).toBe(10);
  });

  it('reports a listener that throws and finishes what it was doing: closes, broadcasts, acks', async () => {
    const phases: string[] = [];
    const bug = () => {
      throw new Error('listener bug');
    };
    // A close: leave and disconnect listeners throw.
    const closing = manager(new MembershipTable({ r: ['alice'] }), { closeTimeoutMs: 100 });
    closing.on('error', (_error, { phase }) => phases.push(phase));
    closing.on('leave', bug);
    closing.on('disconnect', bug);
    const alice = await openFake(closing, 'alice');
    alice.handlers.closed(1000, '');
    await closing.close();
    expect(closing.stats().connections).toBe(0);
    expect(phases).toEqual(['listener', 'listener']);

    /** A listener that throws on its first call only. */
    const throwsOnce = () => {
      let calls = 0;
      return () => {
        if (++calls === 1) bug();
      };
    };
    // A clustered publish: the first delivery listener call throws.
    const clustered = manager(new MembershipTable({ r: ['alice', 'bob'] }), { backplane: new LocalBus().node() });
    clustered.on('error', () => undefined);
    clustered.on('delivery', throwsOnce());
    const publisher = await openFake(clustered, 'alice');
    const reader = await openFake(clustered, 'bob');
    publisher.receive({ type: 'publish', room: 'r', data: 1, ref: 'p1' });
    await settle(50);
    publisher.receive({ type: 'publish', room: 'r', data: 2, ref: 'p2' });
    await settle(50);
    expect(publisher.frames.filter((f) => f.type === 'ack').map((f) => [f.ref, f.seq])).toEqual([['p1', 1], ['p2', 2]]);
    expect(reader.frames.filter((f) => f.type === 'message').map((f) => f.seq)).toEqual([1, 2]);
    await clustered.close();

    // A publish through onPublish with a cid, repeated: delivered once, the same ack.
    const hooked = manager(new MembershipTable({ r: ['alice', 'bob'] }), { onPublish: ({ data }) => data });
    hooked.on('error', () => undefined);
    hooked.on('message', throwsOnce());
    const sender = await openFake(hooked, 'alice');
    const receiver = await openFake(hooked, 'bob');
    sender.receive({ type: 'publish', room: 'r', data: 'hi', cid: 'c1', ref: 'a' });
    await settle(20);
    sender.receive({ type: 'publish', room: 'r', data: 'hi', cid: 'c1', ref: 'b' });
    await settle(20);
    expect(receiver.frames.filter((f) => f.type === 'message')).toHaveLength(1);
    expect(sender.frames.filter((f) => f.type === 'ack').map((f) => [f.ref, f.seq])).toEqual([['a', 1], ['b', 1]]);
  });

  it('welcomes a connection whose roomsOf failed, though the logger throws', async () => {
    const throwing = () => {
      throw new Error('logger bug');
    };
    const rooms = manager(new MembershipTable({}), {
      membership: {
        roomsOf: () => {
          throw new Error('loader down');
        },
        membersOf: () => [],
      },
      logger: { debug: throwing, info: throwing, warn: throwing, error: throwing },
    });
    rooms.on('error', () => undefined);
    const alice = await openFake(rooms, 'alice');
    expect(alice.frames[0]).toMatchObject({ type: 'welcome', rooms: [] });
    await rooms.close();
  });

  it('closes with 4008 a connection whose backlog passed maxBufferedBytes, whatever it is sent', async () => {
    const rooms = manager(new MembershipTable({ r: ['alice'] }), { maxBufferedBytes: 1_000 });
    const slow: string[] = [];
    rooms.on('slow', ({ user }) => slow.push(user));
    const alice = await openFake(rooms, 'alice');
    alice.bufferedAmount = 1_001;
    // Not a broadcast: a ping's pong, a bad frame's error.
    alice.receive({ type: 'ping', ref: 'p' });
    alice.receive('not json');
    await settle();
    expect(alice.closedWith).toEqual({ code: 4008, reason: 'too slow' });
    expect(alice.of('pong')).toEqual([]);
    expect(slow).toEqual(['alice']);
  });

  it('keeps at most maxFrameBytes of frames that arrive before welcome', async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const table = new MembershipTable({ r: ['alice'] });
    const rooms = manager(table, {
      maxFrameBytes: 1_000,
      membership: { roomsOf: async (user) => (await gate, table.roomsOf(user)), membersOf: (room) => table.membersOf(room) },
    });
    const alice = new FakeConnection();
    alice.handlers = rooms.open(alice, { id: 'alice' });
    const frame = (ref: string) => ({ type: 'publish', room: 'r', data: 'x'.repeat(350), ref });
    for (const ref of ['a', 'b', 'c']) alice.receive(frame(ref));
    release();
    await alice.handlers.ready;
    await settle();
    // Welcome first, always; the frame past the limit is refused in its place, by ref.
    expect(alice.frames.map((f) => [f.type, f.ref, f.code])).toEqual([
      ['welcome', undefined, undefined],
      ['ack', 'a', undefined],
      ['ack', 'b', undefined],
      ['error', 'c', 'rate_limited'],
    ]);
  });

  it('closes a frame over maxFrameBytes with 1009', async () => {
    const rooms = manager(new MembershipTable({ a: ['alice'] }), { maxFrameBytes: 64 });
    const alice = await openFake(rooms, 'alice');
    alice.receive({ type: 'publish', room: 'a', data: 'x'.repeat(100) });
    await settle();
    expect(alice.closedWith).toEqual({ code: 1009, reason: 'frame too large' });
    expect(rooms.stats().connections).toBe(0);
  });

  it('sends presence when a participant’s first connection opens and last one closes', async () => {
    const rooms = manager(new MembershipTable({ a: ['alice', 'bob'] }), { presence: true });
    const alice = await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    const bob2 = await openFake(rooms, 'bob');
    bob.handlers.closed(1000, '');
    expect(alice.of('presence')).toEqual([{ type: 'presence', room: 'a', user: 'bob', event: 'online' }]);
    bob2.handlers.closed(1000, '');
    expect(alice.of('presence')).toEqual([
      { type: 'presence', room: 'a', user: 'bob', event: 'online' },
      { type: 'presence', room: 'a', user: 'bob', event: 'offline' },
    ]);
  });

  it('sends offline to every room that saw the user online: rooms left, and rooms of connections closed before', async () => {
    const table = new MembershipTable({ a: ['alice', 'bob'], b: ['alice', 'bob'], c: ['alice', 'bob'] });
    const rooms = manager(table, { presence: true });
    const alice = await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    const bob2 = await openFake(rooms, 'bob');
    const online = (room: string) => ({ type: 'presence', room, user: 'bob', event: 'online' });
    const offline = (room: string) => ({ type: 'presence', room, user: 'bob', event: 'offline' });
    expect(alice.of('presence')).toEqual(['a', 'b', 'c'].map(online));
    // One connection leaves b and closes; the other leaves c and closes last.
    bob.receive({ type: 'leave', room: 'b' });
    bob.handlers.closed(1000, '');
    bob2.receive({ type: 'leave', room: 'c' });
    // A leave of a room bob has no part in is no reason to tell its members anything.
    bob2.receive({ type: 'leave', room: 'elsewhere' });
    await settle();
    expect(alice.of('presence')).toHaveLength(3);
    bob2.handlers.closed(1000, '');
    expect(alice.of('presence').slice(3).sort((x, y) => String(x.room).localeCompare(String(y.room)))).toEqual(['a', 'b', 'c'].map(offline));
  });

  it('answers frames sent before welcome after it, refusing those past the limit by ref, and closes 4008 past twice the limit', async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const table = new MembershipTable({ a: ['alice'] });
    const rooms = manager(table, {
      membership: { roomsOf: async (user) => (await gate, table.roomsOf(user)), membersOf: (room) => table.membersOf(room) },
    });
    const eager = new FakeConnection();
    eager.handlers = rooms.open(eager, { id: 'alice' });
    const flood = new FakeConnection();
    flood.handlers = rooms.open(flood, { id: 'alice' });
    for (let i = 0; i < 300; i++) eager.receive({ type: 'ping', ref: `p${i}` });
    for (let i = 0; i < 600; i++) flood.receive({ type: 'ping', ref: `p${i}` });
    expect(eager.sent).toEqual([]);
    expect(flood.closedWith).toEqual({ code: 4008, reason: 'too many frames before welcome' });
    release();
    await eager.handlers.ready;
    const frames = eager.frames;
    expect(frames[0]).toMatchObject({ type: 'welcome' });
    expect(frames.slice(1).map((f) => `${f.type}:${String(f.ref)}`)).toEqual(
      Array.from({ length: 300 }, (_, i) => `${i < 256 ? 'pong' : 'error'}:p${i}`),
    );
    expect(frames.at(-1)).toMatchObject({ code: 'rate_limited', message: 'too many frames before welcome' });
  });

  it('logs the 4008 of a flood before welcome at warn, as every other 4008 (docs/troubleshooting.md)', async () => {
    const warnings: string[] = [];
    const noop = (): void => undefined;
    const rooms = manager(new MembershipTable({ a: ['alice'] }), {
      membership: { roomsOf: () => new Promise<never>(() => undefined), membersOf: () => [] },
      logger: { debug: noop, info: noop, warn: (_object: unknown, message?: string) => void warnings.push(String(message)), error: noop },
    });
    const flood = new FakeConnection();
    flood.handlers = rooms.open(flood, { id: 'alice' });
    for (let i = 0; i < 600; i++) flood.receive({ type: 'ping', ref: `p${i}` });
    expect(flood.closedWith).toEqual({ code: 4008, reason: 'too many frames before welcome' });
    expect(warnings).toEqual([`closing connection ${flood.handlers.id} of user alice: too many frames before welcome`]);
  });

  it('pairs every connect with one disconnect, and raises neither for a connection closed before its welcome', async () => {
    const table = new MembershipTable({ a: ['alice'] });
    let answer: (rooms: string[]) => void = () => undefined;
    const rooms = manager(table, {
      membership: { roomsOf: (user) => (user.id === 'bob' ? new Promise<string[]>((resolve) => (answer = resolve)) : table.roomsOf(user)), membersOf: (room) => table.membersOf(room) },
    });
    const events: string[] = [];
    rooms.on('connect', ({ user }) => events.push(`connect ${user}`));
    rooms.on('disconnect', ({ user, code }) => events.push(`disconnect ${user} ${code}`));
    const alice = await openFake(rooms, 'alice');
    const bob = new FakeConnection();
    bob.handlers = rooms.open(bob, { id: 'bob' });
    await settle();
    bob.handlers.closed(1001, 'gone before welcome');
    answer([]);
    alice.handlers.closed(1000, 'bye');
    await settle();
    expect(bob.frames).toEqual([]);
    expect(events).toEqual(['connect alice', 'disconnect alice 1000']);
  });

  it('gives each leave event its reason: leave, removed (removeMember, ensure-participants), server (leave(), a close)', async () => {
    const table = new MembershipTable({ a: ['alice'], b: ['alice'], c: ['alice'], d: ['alice'], e: ['alice'] });
    const rooms = manager(table);
    const leaves: string[] = [];
    rooms.on('leave', ({ room, reason }) => leaves.push(`${room} ${reason}`));
    const alice = await openFake(rooms, 'alice');
    alice.receive({ type: 'leave', room: 'a' });
    await settle();
    await rooms.removeMember('b', 'alice');
    table.remove('c', 'alice');
    await rooms.broadcast('c', 'after the loader dropped alice');
    rooms.leave(alice.handlers.id, 'd');
    alice.handlers.closed(1000, 'bye');
    expect(leaves).toEqual(['a leave', 'b removed', 'c removed', 'd server', 'e server']);
  });

  it('closes every connection with 1001 on close() and refuses new ones', async () => {
    const rooms = manager(new MembershipTable({ a: ['alice'] }));
    const alice = await openFake(rooms, 'alice');
    await rooms.close();
    expect(alice.closedWith).toEqual({ code: 1001, reason: 'server shutting down' });
    expect(rooms.stats().connections).toBe(0);
    const late = new FakeConnection();
    late.handlers = rooms.open(late, { id: 'alice' });
    expect(late.closedWith?.code).toBe(1001);
    await expect(rooms.authenticate({ url: '/', headers: {} })).rejects.toMatchObject({ status: 403 });
  });

  it('never answers a join with joined after the connection was taken out of the room', async () => {
    // The join of a room the connection is in is answered in room order; a removal made
    // while it read the room's seq comes first, so the join is decided again: refused.
    const table = new MembershipTable({ a: ['alice'] });
    const rooms = manager(table);
    const alice = await openFake(rooms, 'alice');
    alice.receive({ type: 'join', room: 'a', ref: 'j' });
    table.rooms.get('a')!.delete('alice');
    await rooms.removeMember('a', 'alice');
    await settle();
    expect(alice.frames.slice(1).map((f) => [f.type, f.ref ?? null, f.code ?? null])).toEqual([
      ['left', null, null],
      ['error', 'j', 'forbidden'],
    ]);
    expect(rooms.roomsOf(alice.handlers.id)).toEqual([]);
  });

  it('decides a join again, not as over the room limit, when the connection is taken out while it is answered', async () => {
    const table = new MembershipTable({ a: ['alice'] });
    const rooms = manager(table);
    const alice = await openFake(rooms, 'alice');
    alice.receive({ type: 'leave', room: 'a', ref: 'l' });
    alice.receive({ type: 'join', room: 'a', ref: 'j' });
    // In the room again, its joined not sent yet: the seq is being read.
    for (let i = 0; i < 50 && !rooms.roomsOf(alice.handlers.id).includes('a'); i++) await Promise.resolve();
    expect(rooms.roomsOf(alice.handlers.id)).toEqual(['a']);
    table.rooms.get('a')!.delete('alice');
    await rooms.removeMember('a', 'alice');
    await settle();
    expect(alice.frames.slice(1).map((f) => [f.type, f.ref ?? null, f.code ?? null, f.message ?? null])).toEqual([
      ['left', 'l', null, null],
      ['left', null, null, null],
      ['error', 'j', 'forbidden', 'not allowed to join this room'],
    ]);
  });

  it('refuses broadcast() once close() has closed the connections, with or without a backplane', async () => {
    for (const backplane of [undefined, new LocalBus().node()]) {
      let release!: () => void;
      const hook = new Promise<void>((resolve) => (release = resolve));
      const rooms = manager(new MembershipTable({ a: ['alice', 'bob'] }), { backplane, onPublish: () => hook });
      const alice = await openFake(rooms, 'alice');
      const bob = await openFake(rooms, 'bob');
      bob.receive({ type: 'publish', room: 'a', data: 'held', ref: 'p' });
      await settle();
      const during = rooms.close();
      // close() lets the publish its hook holds finish with the connections open: a broadcast then still reaches them.
      await expect(rooms.broadcast('a', 'during')).resolves.toMatchObject({ delivered: 2 });
      release();
      await during;
      const before = rooms.stats().messages;
      await expect(rooms.broadcast('a', 'after')).rejects.toMatchObject({ code: 'internal', message: 'room manager closed: nothing was broadcast' });
      expect(rooms.stats().messages).toBe(before);
      expect(alice.frames.filter((frame) => frame.type === 'message').map((frame) => frame.data)).toEqual(['during', 'held']);
    }
  });

  it('closes a connection with 1008 when its credentials expire', async () => {
    const rooms = manager(new MembershipTable({ a: ['alice'] }));
    const alice = new FakeConnection();
    alice.handlers = rooms.open(alice, { id: 'alice', expiresAt: Date.now() + 30 });
    await alice.handlers.ready;
    await settle(60);
    expect(alice.closedWith).toEqual({ code: 1008, reason: 'credentials expired' });
  });

  it('keeps the inspection APIs in step with connections', async () => {
    const rooms = manager(new MembershipTable({ a: ['alice', 'bob'], b: ['alice'] }));
    const alice = await openFake(rooms, 'alice');
    await openFake(rooms, 'alice');
    expect(rooms.onlineUsers()).toEqual(['alice']);
    expect(rooms.connectionsOf('alice')).toHaveLength(2);
    expect(await rooms.membersOnline('a')).toEqual(['alice']);
    expect(rooms.stats()).toMatchObject({ connections: 2, users: 1, rooms: 2, messages: 0 });
    alice.handlers.closed(1000, '');
    expect(rooms.connectionsOf('alice')).toHaveLength(1);
  });

  it('rejects an invalid room name in broadcast', async () => {
    const rooms = manager(new MembershipTable());
    await expect(rooms.broadcast('', 1)).rejects.toMatchObject({ name: 'RoomwireError', code: 'bad_request' });
    await expect(rooms.broadcast('x'.repeat(257), 1)).rejects.toMatchObject({ code: 'bad_request' });
  });
});

describe('RoomManager limits', () => {
  it('answers publishes over the rate limit with rate_limited, then closes sustained abuse with 4008', async () => {
    const rooms = manager(new MembershipTable({ a: ['alice', 'bob'] }), {
      publishRate: { burst: 3, perSecond: 0.001 },
      rateLimitStrikes: { burst: 2, perSecond: 0.001 },
    });
    const alice = await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    const events: boolean[] = [];
    rooms.on('rateLimited', (event) => events.push(event.closed));
    for (let i = 0; i < 3; i++) alice.receive({ type: 'publish', room: 'a', data: i, ref: `p${i}` });
    await settle();
    for (let i = 3; i < 6; i++) alice.receive({ type: 'publish', room: 'a', data: i, ref: `p${i}` });
    await settle();
    expect(alice.frames.slice(1).map((f) => [f.type, f.code ?? null, f.ref])).toEqual([
      ['ack', null, 'p0'],
      ['ack', null, 'p1'],
      ['ack', null, 'p2'],
      ['error', 'rate_limited', 'p3'],
      ['error', 'rate_limited', 'p4'],
    ]);
    expect(alice.closedWith).toEqual({ code: 4008, reason: 'rate limit exceeded' });
    expect(events).toEqual([false, false, true]);
    expect(bob.of('message')).toHaveLength(3);
    expect(rooms.connectionsOf('alice')).toEqual([]);
  });

  it('rate-limits joins separately from publishes, and can be turned off', async () => {
    const table = new MembershipTable({ a: ['alice'] });
    const rooms = manager(table, { joinRate: { burst: 1, perSecond: 0.001 }, publishRate: false });
    const alice = await openFake(rooms, 'alice');
    alice.receive({ type: 'join', room: 'a', ref: 'j1' });
    alice.receive({ type: 'join', room: 'a', ref: 'j2' });
    for (let i = 0; i < 150; i++) alice.receive({ type: 'publish', room: 'a', data: i });
    await settle();
    expect(alice.of('error')).toMatchObject([{ code: 'rate_limited', ref: 'j2' }]);
    expect(alice.of('ack')).toHaveLength(150);
  });

  it('closes a connection that cannot keep up with 4008 and keeps delivering to the others', async () => {
    const rooms = manager(new MembershipTable({ a: ['alice', 'bob', 'carol'] }), { maxBufferedBytes: 1000 });
    await openFake(rooms, 'alice');
    const bob = await openFake(rooms, 'bob');
    const carol = await openFake(rooms, 'carol');
    const slow: string[] = [];
    rooms.on('slow', (event) => slow.push(event.user));
    bob.bufferedAmount = 5000; // bob stopped reading
    const report = await rooms.broadcast('a', 'news');
    expect(report).toMatchObject({ slow: 1, delivered: 2, failed: 0 });
    expect(bob.closedWith).toEqual({ code: 4008, reason: 'too slow' });
    expect(slow).toEqual(['bob']);
    expect(carol.of('message')).toHaveLength(1);
    expect(rooms.onlineUsers().sort()).toEqual(['alice', 'carol']);
  });
});

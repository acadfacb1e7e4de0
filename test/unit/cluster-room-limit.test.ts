import { afterEach, describe, expect, it } from 'vitest';
import { LocalBus, RoomManager, type RoomManagerOptions } from '../../src/index.js';
import { openFake, settle, untilMessages, type FakeConnection } from '../helpers/fake-connection.js';
import { MembershipTable } from '../helpers/server.js';

/**
 * A participant whose connection on one process is at `maxRoomsPerConnection` cannot
 * enter a room; on one process the fallback sends it the room's broadcasts directly.
 * These check the same holds when the broadcast is made on another process: its process
 * receives the room for it and sends each message once, in seq order.
 */

const LIMIT = 2;

/** The managers a test made, closed after it. */
const managers: RoomManager[] = [];
afterEach(async () => {
  for (const made of managers.splice(0)) await made.close();
});

function manager(table: MembershipTable, bus: LocalBus, options: Partial<RoomManagerOptions> = {}): RoomManager {
  const made = new RoomManager({ authenticate: () => ({ id: 'unused' }), membership: table, backplane: bus.node(), maxRoomsPerConnection: LIMIT, ...options });
  managers.push(made);
  return made;
}

/**
 * Two nodes: alice on node 1, bob on node 2 in x and y (his limit); r's participants are
 * `inR`, so with bob among them r is past his limit from the start.
 */
async function twoNodes(inR: string[], extra: Partial<RoomManagerOptions> = {}): Promise<{ table: MembershipTable; n1: RoomManager; n2: RoomManager; alice: FakeConnection; bob: FakeConnection }> {
  const table = new MembershipTable({ x: ['bob'], y: ['bob'], r: inR });
  const bus = new LocalBus();
  const n1 = manager(table, bus);
  const n2 = manager(table, bus, extra);
  const alice = await openFake(n1, 'alice');
  const bob = await openFake(n2, 'bob');
  expect(bob.frames[0]).toMatchObject({ type: 'welcome', rooms: ['x', 'y'] });
  return { table, n1, n2, alice, bob };
}

/** Waits until `conn` has `count` messages (or gives up after a second), then a little more for any extra. */
async function messagesOf(conn: FakeConnection, count: number): Promise<unknown[]> {
  await untilMessages(conn, count);
  await settle(30);
  return conn.of('message').map((m) => [m.room, m.seq, m.data]);
}

/** What the manager keeps for connections outside a room by their limit, and the rooms it receives. */
function internals(rooms: RoomManager): { heldOut: Map<unknown, Set<string>>; feeds: Map<string, unknown>; sweepFeeds(): void } {
  return rooms as unknown as { heldOut: Map<unknown, Set<string>>; feeds: Map<string, unknown>; sweepFeeds(): void };
}

/** Runs the feed sweep as if every room without a local connection had been so for long enough. */
function sweepIdle(rooms: RoomManager): void {
  const { feeds, sweepFeeds } = internals(rooms);
  for (const feed of feeds.values()) (feed as { idleSince: number | undefined }).idleSince = 0;
  sweepFeeds.call(rooms);
}

/** After a sweep, `node` keeps nothing for connections outside r, and no longer receives r. */
function expectLetGo(node: RoomManager): void {
  sweepIdle(node);
  expect(internals(node).heldOut.size).toBe(0);
  expect(internals(node).feeds.has('r')).toBe(false);
}

describe('a participant at its room limit on another process', () => {
  /** bob is in x and y (his limit) on node 2; r, the third room roomsOf lists, is past it. */
  const atLimit = (extra: Partial<RoomManagerOptions> = {}) => twoNodes(['alice', 'bob'], extra);

  it('gets a room its roomsOf lists past the limit, from broadcasts and publishes on any node, each once and in order', async () => {
    const { n1, n2, alice, bob } = await atLimit();
    await n1.broadcast('r', 'one');
    alice.receive({ type: 'publish', room: 'r', data: 'two', ref: 'p' });
    for (let i = 0; i < 100 && alice.of('ack').length === 0; i++) await settle(10);
    await n2.broadcast('r', 'three');
    await n1.broadcast('r', 'four');
    expect(await messagesOf(bob, 4)).toEqual([
      ['r', 1, 'one'],
      ['r', 2, 'two'],
      ['r', 3, 'three'],
      ['r', 4, 'four'],
    ]);
    // Sent directly: it is not in the room, and is told nothing else.
    expect(bob.frames.slice(1).map((f) => f.type)).toEqual(['message', 'message', 'message', 'message']);
    expect(n2.roomsOf(bob.handlers.id)).toEqual(['x', 'y']);
  });

  it('does not get a broadcast that excepts it', async () => {
    const { n1, bob } = await atLimit();
    await n1.broadcast('r', 'not for bob', { except: bob.handlers.id });
    await n1.broadcast('r', 'for bob');
    expect(await messagesOf(bob, 1)).toEqual([['r', 2, 'for bob']]);
  });

  it('gets nothing of a room it left, though it was never in it', async () => {
    const { n1, n2, bob } = await atLimit();
    await n1.broadcast('r', 'before');
    bob.receive({ type: 'leave', room: 'r', ref: 'l' });
    await settle(10);
    await n1.broadcast('r', 'after');
    expect(await messagesOf(bob, 1)).toEqual([['r', 1, 'before']]);
    // Nothing keeps the room here for it any more.
    expectLetGo(n2);
  });

  it('enters the room once it left another, with no message twice', async () => {
    const { n1, n2, bob } = await atLimit();
    await n1.broadcast('r', 'outside');
    await messagesOf(bob, 1);
    bob.receive({ type: 'leave', room: 'x', ref: 'l' });
    await settle(10);
    await n1.broadcast('r', 'inside');
    await n1.broadcast('r', 'still inside');
    expect(await messagesOf(bob, 3)).toEqual([
      ['r', 1, 'outside'],
      ['r', 2, 'inside'],
      ['r', 3, 'still inside'],
    ]);
    // Ensure-participants put it in at the next broadcast, as on one process.
    expect(bob.of('joined')).toEqual([{ type: 'joined', room: 'r', seq: 1 }]);
    expect(n2.roomsOf(bob.handlers.id).sort()).toEqual(['r', 'y']);
  });

  it.each(['removeMember', 'invalidate'] as const)('gets nothing once its user is removed (%s), and the room is let go', async (how) => {
    const { table, n1, n2, bob } = await atLimit();
    await n1.broadcast('r', 'before');
    await messagesOf(bob, 1);
    table.remove('r', 'bob');
    if (how === 'removeMember') await n1.removeMember('r', 'bob');
    else await n1.invalidate('r');
    await settle(10);
    await n1.broadcast('r', 'after');
    expect(await messagesOf(bob, 1)).toEqual([['r', 1, 'before']]);
    expectLetGo(n2);
  });

  it('keeps the room received while such a connection is open, and not after it closed', async () => {
    const { n1, n2, bob } = await atLimit();
    sweepIdle(n2);
    expect(internals(n2).feeds.has('r')).toBe(true);
    await n1.broadcast('r', 'after a sweep');
    expect(await messagesOf(bob, 1)).toEqual([['r', 1, 'after a sweep']]);
    bob.handlers.closed(1000, 'bye');
    expect(internals(n2).heldOut.size).toBe(0);
    sweepIdle(n2);
    expect(internals(n2).feeds.size).toBe(0);
  });

  it.each(['on the broadcasting node', 'on its own node'] as const)('is reached from the broadcast made right after addMember %s, once', async (where) => {
    const { table, n1, n2, bob } = await twoNodes(['alice']);
    await n1.broadcast('r', 'before');
    table.add('r', 'bob');
    await (where === 'on the broadcasting node' ? n1 : n2).addMember('r', 'bob');
    await n1.broadcast('r', 'added');
    await n1.broadcast('r', 'after');
    expect(await messagesOf(bob, 2)).toEqual([
      ['r', 2, 'added'],
      ['r', 3, 'after'],
    ]);
    expect(bob.of('joined')).toEqual([]);
    // A resume does not send again what it was sent outside the room.
    bob.receive({ type: 'resume', rooms: { r: 1 }, ref: 'x' });
    for (let i = 0; i < 100 && bob.of('resumed').length === 0; i++) await settle(10);
    expect(bob.of('resumed')).toEqual([{ type: 'resumed', rooms: { r: { replayed: 0 } }, ref: 'x' }]);
  });

  it('is left out of a broadcast that excepts it among those it is sent after addMember', async () => {
    const { table, n1, bob } = await twoNodes(['alice']);
    table.add('r', 'bob');
    await n1.addMember('r', 'bob');
    // Published while node 2 may still be checking the notice: sent with what bob missed.
    await n1.broadcast('r', 'his own', { except: bob.handlers.id });
    await n1.broadcast('r', 'for bob');
    expect(await messagesOf(bob, 1)).toEqual([['r', 2, 'for bob']]);
  });

  it('is reached from the broadcast that finds its user a participant, without addMember', async () => {
    const { table, n1, bob } = await twoNodes(['alice']);
    await n1.broadcast('r', 'before');
    table.add('r', 'bob');
    // Node 1 asks its loader again at its next broadcast, finds bob and tells node 2.
    await n1.invalidate('r');
    await n1.broadcast('r', 'found');
    await messagesOf(bob, 1);
    await n1.broadcast('r', 'after');
    expect(await messagesOf(bob, 2)).toEqual([
      ['r', 2, 'found'],
      ['r', 3, 'after'],
    ]);
  });

  it('is reached after its own node broadcast into the room, which no connection there was in', async () => {
    const { table, n1, n2, bob } = await twoNodes(['alice']);
    await n1.broadcast('r', 'before');
    // Added in the database only; node 2 loads the room for its own broadcast and finds bob.
    table.add('r', 'bob');
    await n2.broadcast('r', 'from node 2');
    await n1.broadcast('r', 'from node 1');
    expect(await messagesOf(bob, 2)).toEqual([
      ['r', 2, 'from node 2'],
      ['r', 3, 'from node 1'],
    ]);
  });
});

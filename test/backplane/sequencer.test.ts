import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  LocalBus,
  RoomManager,
  type Backplane,
  type BackplaneHandlers,
  type HistoryStore,
  type LocalBackplane,
  type MembershipChange,
  type PublishCid,
  type StoredMessage,
} from '../../src/index.js';
import { openFake, settle } from '../helpers/fake-connection.js';
import { MembershipTable } from '../helpers/server.js';

/** A LocalBus node that can lose subscription copies and refuse publishes, as a flaky Redis does. */
class FlakyBackplane implements Backplane {
  /** Subscription copies this returns true for never arrive. */
  drop: (message: StoredMessage) => boolean = () => false;
  failPublish = false;
  failAnnounce = false;
  handlers: BackplaneHandlers | undefined;
  /** subscribe/unsubscribe calls, in order. */
  readonly calls: string[] = [];

  /** How long a read of messages (`history.since`) takes, as over a slow link to Redis. */
  sinceDelayMs = 0;
  readonly history: HistoryStore;

  constructor(private readonly inner: LocalBackplane) {
    const history = inner.history;
    this.history = {
      get epoch() {
        return history.epoch;
      },
      append: (message) => history.append(message),
      latestSeq: (room) => history.latestSeq(room),
      since: async (room, afterSeq, untilSeq) => {
        if (this.sinceDelayMs > 0) await settle(this.sinceDelayMs);
        return history.since(room, afterSeq, untilSeq);
      },
    };
  }

  get presence() {
    return this.inner.presence;
  }

  /** While true, membership changes announced by the other processes never arrive. */
  deaf = false;

  start(handlers: BackplaneHandlers): Promise<void> {
    this.handlers = handlers;
    return this.inner.start({
      ...handlers,
      message: (message, except) => {
        if (!this.drop(message)) handlers.message(message, except);
      },
      membership: (change) => {
        if (!this.deaf) handlers.membership(change);
      },
    });
  }

  publish(message: Omit<StoredMessage, 'seq'>, cid?: PublishCid, except?: string): Promise<StoredMessage> {
    return this.failPublish ? Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:6379')) : this.inner.publish(message, cid, except);
  }

  /** How long a subscribe takes, as over a slow link to Redis. */
  subscribeDelayMs = 0;

  async subscribe(room: string): Promise<void> {
    this.calls.push(`subscribe ${room}`);
    if (this.subscribeDelayMs > 0) await settle(this.subscribeDelayMs);
    return this.inner.subscribe(room);
  }

  unsubscribe(room: string): Promise<void> {
    this.calls.push(`unsubscribe ${room}`);
    return this.inner.unsubscribe(room);
  }

  announce(change: MembershipChange): Promise<void> {
    return this.failAnnounce ? Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:6379')) : this.inner.announce(change);
  }

  /** How long close() takes, as a backplane leaving a cluster over a stalled link does. */
  closeDelayMs = 0;

  async close(): Promise<void> {
    if (this.closeDelayMs > 0) await settle(this.closeDelayMs);
    return this.inner.close();
  }
}

const managers: RoomManager[] = [];

function manager(table: MembershipTable, backplane: Backplane, roomsOf?: () => string[]): RoomManager {
  const created = new RoomManager({
    authenticate: (handshake) => ({ id: handshake.url }),
    membership: roomsOf ? { roomsOf, membersOf: (room) => table.membersOf(room) } : table,
    backplane,
  });
  managers.push(created);
  return created;
}

afterEach(async () => {
  await Promise.all(managers.splice(0).map((m) => m.close()));
});

const seqsOf = (frames: { type: string; [key: string]: unknown }[]): unknown[] => frames.filter((f) => f.type === 'message').map((f) => f.seq);

/** Two processes on one bus, the second's copies droppable, and bob connected to it. */
async function lossyPair(bus = new LocalBus()) {
  const table = new MembershipTable({ room: ['alice', 'bob'] });
  const sender = manager(table, bus.node());
  const lossy = new FlakyBackplane(bus.node());
  const receiver = manager(table, lossy);
  const bob = await openFake(receiver, 'bob');
  return { bus, table, sender, lossy, receiver, bob };
}

describe('the per-room sequencer', () => {
  it('fetches a message whose copy never arrives from the history, and delivers in order', async () => {
    const bus = new LocalBus();
    const table = new MembershipTable({ room: ['alice', 'bob'] });
    const sender = manager(table, bus.node());
    const lossy = new FlakyBackplane(bus.node());
    lossy.drop = (message) => message.seq === 2;
    const receiver = manager(table, lossy);
    const bob = await openFake(receiver, 'bob');
    for (const n of [1, 2, 3]) await sender.broadcast('room', n);
    await settle(20);
    expect(seqsOf(bob.frames)).toEqual([1]);
    await settle(400);
    expect(seqsOf(bob.frames)).toEqual([1, 2, 3]);
  });

  it('leaves the excepted connection out of a message whose copy it fetches from the history', async () => {
    const { sender, lossy, receiver, bob } = await lossyPair();
    const bobTab = await openFake(receiver, 'bob');
    const bobId = bob.of('welcome')[0]!.connectionId as string;
    lossy.drop = (message) => message.seq === 2;
    for (const n of [1, 2, 3]) await sender.broadcast('room', n, { except: bobId });
    await settle(400);
    expect(seqsOf(bobTab.frames)).toEqual([1, 2, 3]);
    expect(seqsOf(bob.frames)).toEqual([]);
  });

  it('refills every subscribed room after a reconnect, even a room that went quiet', async () => {
    const { sender, lossy, bob } = await lossyPair();
    await sender.broadcast('room', 1);
    lossy.drop = () => true;
    await sender.broadcast('room', 2);
    await sender.broadcast('room', 3);
    lossy.drop = () => false;
    await settle(20);
    expect(seqsOf(bob.frames)).toEqual([1]);
    lossy.handlers!.reconnected();
    await settle(20);
    expect(seqsOf(bob.frames)).toEqual([1, 2, 3]);
  });

  it('applies the membership changes it missed once it is back: bob removed, carol outside the room added', async () => {
    const { table, sender, lossy, receiver, bob } = await lossyPair();
    const carol = await openFake(receiver, 'carol');
    await sender.broadcast('room', 1);
    lossy.drop = () => true;
    lossy.deaf = true;
    table.remove('room', 'bob');
    await sender.removeMember('room', 'bob');
    table.add('room', 'carol');
    await sender.addMember('room', 'carol');
    await settle(20);
    lossy.drop = () => false;
    lossy.deaf = false;
    lossy.handlers!.reconnected();
    await settle(20);
    await sender.broadcast('room', 2);
    await settle(20);
    expect(bob.frames.slice(1).map((f) => [f.type, f.seq])).toEqual([
      ['message', 1],
      ['left', undefined],
    ]);
    expect(carol.frames.slice(1).map((f) => [f.type, f.seq])).toEqual([
      ['joined', 1],
      ['message', 2],
    ]);
  });

  it('does not bring in a participant another node found once they were removed while their messages were read', async () => {
    const bus = new LocalBus();
    const table = new MembershipTable({ room: ['alice'] });
    const sender = manager(table, bus.node());
    const slow = new FlakyBackplane(bus.node());
    const receiver = manager(table, slow);
    await openFake(sender, 'alice');
    const bob = await openFake(receiver, 'bob');
    // bob becomes a participant without addMember: the sender's broadcast finds him, and
    // the receiver reads what he missed from the history, slowly. He is removed meanwhile.
    table.add('room', 'bob');
    slow.sinceDelayMs = 50;
    await sender.broadcast('room', 'found');
    await settle(10);
    table.remove('room', 'bob');
    await sender.removeMember('room', 'bob');
    await settle(100);
    expect(receiver.roomsOf(bob.handlers.id)).toEqual([]);
    bob.receive({ type: 'publish', room: 'room', data: 'after removal', ref: 'p' });
    await settle(20);
    expect(bob.frames.slice(1).map((f) => [f.type, f.code])).toEqual([['error', 'forbidden']]);
  });

  it('closes with 1001 the connections of a room whose missing messages the history no longer has', async () => {
    const { sender, lossy, bob } = await lossyPair(new LocalBus({ historyLimit: 5 }));
    await sender.broadcast('room', 1);
    lossy.drop = () => true;
    for (let n = 2; n <= 20; n++) await sender.broadcast('room', n);
    lossy.drop = () => false;
    await sender.broadcast('room', 21);
    await settle(400);
    // Not a silent jump from 1 to 21: the client reconnects, and its resume says history_gap.
    expect(bob.closedWith).toEqual({ code: 1001, reason: 'messages lost; reconnect and resume' });
  });

  it('fetches what others published while a participant brought in here was being subscribed', async () => {
    const bus = new LocalBus();
    const table = new MembershipTable({ room: ['alice'] });
    const other = manager(table, bus.node());
    const slow = new FlakyBackplane(bus.node());
    slow.subscribeDelayMs = 100;
    const here = manager(table, slow);
    await openFake(other, 'alice');
    const bob = await openFake(here, 'bob');
    await other.broadcast('room', 'a1');
    table.add('room', 'bob');
    // This process has no feed for the room: its own broadcast brings bob in directly.
    const own = here.broadcast('room', 'b2');
    const others = (async () => {
      for (let n = 0; n < 10; n++) {
        await other.broadcast('room', n);
        await settle(5);
      }
    })();
    await Promise.all([own, others]);
    await settle(400);
    expect(seqsOf(bob.frames)).toEqual(Array.from({ length: 11 }, (_, i) => i + 2));
  });

  it('delivers in order and once the broadcasts that took the direct path before the room had a feed', async () => {
    const bus = new LocalBus();
    const table = new MembershipTable({ room: ['bob'] });
    const other = manager(table, bus.node());
    const here = manager(table, bus.node());
    await openFake(other, 'bob');
    const alice = await openFake(here, 'alice');
    // alice becomes a participant without addMember: the first broadcast here brings her in.
    table.add('room', 'alice');
    // Published before this process has a feed for the room: both of its copies take the
    // direct path (the first one's room task waits for the loader meanwhile), and the
    // first one's ensure-participants opens the feed.
    const first = here.broadcast('room', 1);
    const between = other.broadcast('room', 2);
    const third = here.broadcast('room', 3);
    await Promise.all([first, between, third]);
    await settle(20);
    expect(alice.of('joined')).toEqual([{ type: 'joined', room: 'room', seq: 0 }]);
    expect(seqsOf(alice.frames)).toEqual([1, 2, 3]);
  });

  it('delivers a direct broadcast that a connection opening meanwhile handed to its feed still subscribing', async () => {
    const bus = new LocalBus();
    const table = new MembershipTable({ room: ['bob'] });
    const here = manager(table, bus.node());
    manager(table, bus.node());
    const alice = await openFake(here, 'alice');
    table.add('room', 'alice');
    await here.invalidate('room');
    // No feed for the room here: the broadcast takes the direct path. alice's second
    // connection, opened right after, auto-joins the room and opens its feed first.
    const sent = here.broadcast('room', 'hi');
    const second = await openFake(here, 'alice');
    expect(await sent).toMatchObject({ seq: 1, online: 1, reached: 1, added: 1 });
    await settle(20);
    // The open connection is brought in with the message; the second came in after it.
    expect(alice.frames.slice(1).map((f) => [f.type, f.seq])).toEqual([
      ['joined', 0],
      ['message', 1],
    ]);
    expect(second.frames[0]).toMatchObject({ type: 'welcome', rooms: ['room'], seqs: { room: 1 } });
    expect(second.of('message')).toEqual([]);
  });

  it('delivers a direct broadcast whose turn came after a connection opening meanwhile had subscribed the room', async () => {
    const bus = new LocalBus();
    const table = new MembershipTable({ room: ['bob'] });
    let answer: () => void = () => undefined;
    let slow = false;
    const here = new RoomManager({
      authenticate: (handshake) => ({ id: handshake.url }),
      membership: {
        roomsOf: (user) => table.roomsOf(user),
        membersOf: async (room) => {
          const members = table.membersOf(room);
          if (slow) await new Promise<void>((resolve) => (answer = resolve));
          return members;
        },
      },
      backplane: bus.node(),
    });
    managers.push(here);
    manager(table, bus.node());
    const alice = await openFake(here, 'alice');
    table.add('room', 'alice');
    await here.invalidate('room');
    // No feed for the room here: the broadcast takes the direct path and waits for the
    // loader. alice's second connection auto-joins the room meanwhile, and its feed is
    // active before the broadcast's turn comes.
    slow = true;
    const sent = here.broadcast('room', 'hi');
    await settle();
    const second = await openFake(here, 'alice');
    answer();
    await sent;
    await settle(20);
    // The open connection is brought in with the message; the second gets it once.
    expect(alice.frames.slice(1).map((f) => [f.type, f.seq])).toEqual([
      ['joined', 0],
      ['message', 1],
    ]);
    expect(second.frames[0]).toMatchObject({ type: 'welcome', rooms: ['room'], seqs: { room: 0 } });
    expect(second.of('message').map((m) => m.seq)).toEqual([1]);
  });

  it('refills after a reconnect also while a fill is running', async () => {
    const { bus, sender, lossy, bob } = await lossyPair();
    // The history answers slowly, so the gap fill for seq 2 is still running at the reconnect.
    const since = bus.history.since.bind(bus.history);
    bus.history.since = ((...args: Parameters<typeof since>) => settle(300).then(() => since(...args))) as unknown as typeof since;
    lossy.drop = (message) => message.seq === 2;
    for (const n of [1, 2, 3]) await sender.broadcast('room', n);
    await settle(300);
    lossy.drop = (message) => message.seq >= 4;
    for (const n of [4, 5]) await sender.broadcast('room', n);
    lossy.drop = () => false;
    lossy.handlers!.reconnected();
    await settle(1_200);
    expect(seqsOf(bob.frames)).toEqual([1, 2, 3, 4, 5]);
  });

  it('answers a publish the backplane refuses with an internal error, and rejects broadcast()', async () => {
    const bus = new LocalBus();
    const table = new MembershipTable({ room: ['alice', 'bob'] });
    const flaky = new FlakyBackplane(bus.node());
    const node = manager(table, flaky);
    const alice = await openFake(node, 'alice');
    const bob = await openFake(node, 'bob');
    const errors: string[] = [];
    node.on('error', (_error, context) => errors.push(context.phase));
    flaky.failPublish = true;
    alice.receive({ type: 'publish', room: 'room', data: 'lost?', ref: 'p' });
    await settle(10);
    expect(alice.of('error')).toEqual([expect.objectContaining({ code: 'internal', ref: 'p', room: 'room', message: expect.stringMatching(/backplane is unavailable or slow/) })]);
    await expect(node.broadcast('room', 'x')).rejects.toMatchObject({ name: 'RoomwireError', code: 'internal' });
    expect(errors).toContain('backplane.publish');
    flaky.failPublish = false;
    alice.receive({ type: 'publish', room: 'room', data: 'kept', ref: 'q' });
    await settle(10);
    expect(alice.of('ack')).toEqual([expect.objectContaining({ seq: 1, ref: 'q' })]);
    expect(bob.of('message').map((m) => m.data)).toEqual(['kept']);
  });

  it('addMember joins here but rejects internal when the other processes cannot be told; removeMember resolves (docs/errors.md)', async () => {
    const bus = new LocalBus();
    const table = new MembershipTable({ room: ['alice'] });
    const flaky = new FlakyBackplane(bus.node());
    const node = manager(table, flaky);
    const errors: string[] = [];
    node.on('error', (_error, context) => errors.push(context.phase));
    const alice = await openFake(node, 'alice');
    flaky.failAnnounce = true;
    table.add('other', 'alice');
    await expect(node.addMember('other', 'alice')).rejects.toMatchObject({
      name: 'RoomwireError',
      code: 'internal',
      message: expect.stringMatching(/^could not tell the other processes/),
    });
    // This process's part is done: the connection is in the room.
    expect(alice.of('joined')).toEqual([{ type: 'joined', room: 'other', seq: 0 }]);
    await expect(node.removeMember('other', 'alice')).resolves.toBeUndefined();
    expect(alice.of('left')).toEqual([{ type: 'left', room: 'other' }]);
    expect(errors).toEqual(['backplane.announce', 'backplane.announce']);
  });

  it('close() takes closeTimeoutMs for the connections, then the backplane\'s own close on top (docs/concepts.md)', async () => {
    const flaky = new FlakyBackplane(new LocalBus().node());
    const node = new RoomManager({
      authenticate: () => ({ id: 'unused' }),
      membership: new MembershipTable({ room: ['alice'] }),
      backplane: flaky,
      closeTimeoutMs: 100,
    });
    const alice = await openFake(node, 'alice');
    flaky.closeDelayMs = 400;
    const started = Date.now();
    await node.close();
    expect(alice.closedWith).toEqual({ code: 1001, reason: 'server shutting down' });
    // Leaving the cluster (presence removed, subscriptions dropped) is waited for, past closeTimeoutMs.
    expect(Date.now() - started).toBeGreaterThanOrEqual(390);
  });

  it('retries roomsOf for a connection whose auto-join failed', async () => {
    const bus = new LocalBus();
    const table = new MembershipTable({ room: ['bob'] });
    let calls = 0;
    const node = manager(table, bus.node(), () => {
      if (++calls === 1) throw new Error('database down');
      return ['room'];
    });
    const events: string[] = [];
    node.on('connect', ({ rooms }) => events.push(`connect [${rooms.join()}]`));
    node.on('join', ({ room, reason }) => events.push(`join ${room} ${reason}`));
    const bob = await openFake(node, 'bob');
    expect(bob.of('welcome')[0]).toMatchObject({ rooms: [] });
    await settle(700);
    expect(bob.of('joined')).toEqual([{ type: 'joined', room: 'room', seq: 0 }]);
    // The retried auto-join's `join` event (reason auto) comes with its joined, after connect.
    expect(events).toEqual(['connect []', 'join room auto']);
    await node.broadcast('room', 'reached');
    expect(bob.of('message').map((m) => m.data)).toEqual(['reached']);
  });

  it('does not put a connection in a room its user was removed from while its retried roomsOf answered', async () => {
    const table = new MembershipTable({ room: ['bob'] });
    let calls = 0;
    const node = new RoomManager({
      authenticate: () => ({ id: 'unused' }),
      backplane: new LocalBus().node(),
      membership: {
        // The retry reads the table, then answers 100 ms later.
        roomsOf: async (user) => {
          if (++calls === 1) throw new Error('database down');
          const answer = table.roomsOf(user);
          await settle(100);
          return answer;
        },
        membersOf: (room) => table.membersOf(room),
      },
    });
    managers.push(node);
    node.on('error', () => undefined);
    const bob = await openFake(node, 'bob');
    await settle(550);
    table.remove('room', 'bob');
    await node.removeMember('room', 'bob');
    await settle(200);
    expect(node.roomsOf(bob.handlers.id)).toEqual([]);
    bob.receive({ type: 'publish', room: 'room', data: 'after removal', ref: 'p' });
    await settle(20);
    expect(bob.frames.slice(1).map((f) => [f.type, f.code])).toEqual([['error', 'forbidden']]);
  });

  it('does not put back a connection that left a room while its retried auto-join was subscribing', async () => {
    const table = new MembershipTable({ room: ['bob'] });
    let calls = 0;
    const slow = new FlakyBackplane(new LocalBus().node());
    const node = manager(table, slow, () => {
      if (++calls === 1) throw new Error('database down');
      return ['room'];
    });
    const bob = await openFake(node, 'bob');
    expect(bob.of('welcome')[0]).toMatchObject({ rooms: [] });
    // The retry (after 500 ms) finds the room and subscribes it, slowly; bob leaves meanwhile.
    slow.subscribeDelayMs = 400;
    await settle(650);
    expect(slow.calls).toEqual(['subscribe room']);
    bob.receive({ type: 'leave', room: 'room', ref: 'l' });
    await settle(500);
    expect(bob.of('left')).toEqual([{ type: 'left', room: 'room', ref: 'l' }]);
    expect(bob.of('joined')).toEqual([]);
    expect(node.roomsOf(bob.handlers.id)).toEqual([]);
    await node.broadcast('room', 'not for bob');
    expect(bob.of('message')).toEqual([]);
  });

  it('refuses a join whose user was removed while it subscribed the room, and lets nothing in', async () => {
    const table = new MembershipTable({ room: ['bob'] });
    const slow = new FlakyBackplane(new LocalBus().node());
    const node = manager(table, slow, () => []);
    const bob = await openFake(node, 'bob');
    slow.subscribeDelayMs = 50;
    bob.receive({ type: 'join', room: 'room', ref: 'j' });
    await settle(10);
    table.remove('room', 'bob');
    await node.removeMember('room', 'bob');
    await settle(100);
    expect(node.roomsOf(bob.handlers.id)).toEqual([]);
    bob.receive({ type: 'publish', room: 'room', data: 'after removal', ref: 'p' });
    await settle(20);
    expect(bob.frames.slice(1).map((f) => [f.type, f.ref, f.code])).toEqual([
      ['error', 'j', 'forbidden'],
      ['error', 'p', 'forbidden'],
    ]);
  });

  it('keeps no state for a room whose copies arrive after its last local connection closed', async () => {
    const bus = new LocalBus();
    const table = new MembershipTable();
    const sender = manager(table, bus.node());
    const here = manager(table, bus.node());
    for (let i = 0; i < 200; i++) {
      const room = `r${i}`;
      table.add(room, `u${i}`);
      const conn = await openFake(here, `u${i}`);
      // Caches the room's participants here, so its copies take the direct path.
      await here.broadcast(room, 'hello');
      conn.close(1000, 'bye');
      await settle();
      // The subscription outlives the close for a while: this copy still arrives here.
      await sender.broadcast(room, 'after');
      await settle();
    }
    const rooms = (here as unknown as { rooms: Map<string, unknown> }).rooms;
    expect(here.stats().rooms).toBe(0);
    expect(rooms.size).toBe(0);
  });

  it('unsubscribes a room only after it has had no local connection for a while', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'setInterval', 'clearTimeout', 'clearInterval', 'Date'] });
    try {
      const table = new MembershipTable({ room: ['bob'] });
      const watched = new FlakyBackplane(new LocalBus().node());
      const node = manager(table, watched);
      const first = await openFake(node, 'bob');
      first.close(1000, 'bye');
      await vi.advanceTimersByTimeAsync(0);
      // A quick reconnect reuses the subscription: no churn.
      const second = await openFake(node, 'bob');
      second.close(1000, 'bye');
      await vi.advanceTimersByTimeAsync(6_000);
      expect(watched.calls).toEqual(['subscribe room']);
      await vi.advanceTimersByTimeAsync(10_000);
      expect(watched.calls).toEqual(['subscribe room', 'unsubscribe room']);
      const third = await openFake(node, 'bob');
      expect(watched.calls).toEqual(['subscribe room', 'unsubscribe room', 'subscribe room']);
      await node.broadcast('room', 'still reached');
      expect(third.of('message').map((m) => m.data)).toEqual(['still reached']);
    } finally {
      vi.useRealTimers();
    }
  });
});

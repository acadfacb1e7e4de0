import { afterEach, describe, expect, it } from 'vitest';
import { HandshakeError } from '../../src/index.js';
import { TestClient, closeClients } from '../helpers/client.js';
import { MembershipTable, closeAll, connectAs, startServer } from '../helpers/server.js';

afterEach(async () => {
  await closeClients();
  await closeAll();
});

const connect = connectAs;

describe('rooms over real WebSockets', () => {
  it('auto-joins before welcome: a message published right after welcome arrives', async () => {
    const s = await startServer({ membership: new MembershipTable({ 'conversation:1': ['alice', 'bob'] }) });
    const bob = await connect(s.url, 'bob');
    expect(bob.welcome.rooms).toEqual(['conversation:1']);
    // No join frame was sent: the server put bob in the room before welcome.
    await s.manager.broadcast('conversation:1', { text: 'from the server' });
    expect(await bob.next('message')).toMatchObject({ room: 'conversation:1', seq: 1, from: null, data: { text: 'from the server' } });
  });

  it("delivers to every other connection of every participant, the sender's other tabs included", async () => {
    const s = await startServer({ membership: new MembershipTable({ team: ['alice', 'bob', 'carol'], other: ['dave'] }) });
    const aliceTab1 = await connect(s.url, 'alice');
    const aliceTab2 = await connect(s.url, 'alice');
    const bob = await connect(s.url, 'bob');
    const carolPhone = await connect(s.url, 'carol');
    const carolLaptop = await connect(s.url, 'carol');
    const dave = await connect(s.url, 'dave');
    const ack = await aliceTab1.request({ type: 'publish', room: 'team', data: 'standup in 5' });
    expect(ack).toMatchObject({ type: 'ack', room: 'team', seq: 1 });
    for (const client of [aliceTab2, bob, carolPhone, carolLaptop]) {
      expect(await client.next('message')).toMatchObject({ id: ack.id, seq: 1, from: 'alice', data: 'standup in 5' });
    }
    expect(aliceTab1.of('message')).toEqual([]);
    expect(await dave.quiet()).toEqual([]);
  });

  it('gives a user added after connecting the next message without reconnecting', async () => {
    const table = new MembershipTable({ team: ['alice', 'bob'] });
    const s = await startServer({ membership: table });
    const alice = await connect(s.url, 'alice');
    const carol = await connect(s.url, 'carol');
    expect(carol.welcome.rooms).toEqual([]);
    await alice.request({ type: 'publish', room: 'team', data: 'before carol' });
    table.add('team', 'carol');
    await s.manager.addMember('team', 'carol');
    expect(await carol.next('joined')).toEqual({ type: 'joined', room: 'team', seq: 1 });
    await alice.request({ type: 'publish', room: 'team', data: 'welcome carol' });
    expect(await carol.next('message')).toMatchObject({ seq: 2, data: 'welcome carol' });
    expect(carol.of('message')).toHaveLength(1);
  });

  it('reaches a participant the application forgot to announce, through ensure-participants', async () => {
    const table = new MembershipTable({ team: ['alice'] });
    const s = await startServer({ membership: table, membershipTtlMs: 0 });
    const alice = await connect(s.url, 'alice');
    const bob = await connect(s.url, 'bob');
    table.add('team', 'bob'); // the database changed; nobody called addMember
    await alice.request({ type: 'publish', room: 'team', data: 'hi bob' });
    expect(await bob.next('message')).toMatchObject({ room: 'team', data: 'hi bob' });
  });

  it('sends nothing more to a removed user', async () => {
    const table = new MembershipTable({ team: ['alice', 'bob'] });
    const s = await startServer({ membership: table });
    const alice = await connect(s.url, 'alice');
    const bob = await connect(s.url, 'bob');
    await alice.request({ type: 'publish', room: 'team', data: 'one' });
    await bob.next('message');
    table.remove('team', 'bob');
    s.manager.removeMember('team', 'bob');
    expect(await bob.next('left')).toEqual({ type: 'left', room: 'team' });
    await alice.request({ type: 'publish', room: 'team', data: 'two' });
    expect(await bob.quiet()).toEqual([]);
    const refused = await bob.request({ type: 'publish', room: 'team', data: 'still here?' });
    expect(refused).toMatchObject({ type: 'error', code: 'forbidden', room: 'team' });
  });

  it('refuses join and publish of a room that is not the user’s with forbidden, and admits through canJoin', async () => {
    const table = new MembershipTable({ secret: ['alice'], lobby: ['alice'] });
    table.canJoinRooms.add('lobby');
    const s = await startServer({ membership: table });
    const alice = await connect(s.url, 'alice');
    const eve = await connect(s.url, 'eve');
    expect(await eve.request({ type: 'join', room: 'secret' })).toMatchObject({ type: 'error', code: 'forbidden', room: 'secret' });
    expect(await eve.request({ type: 'publish', room: 'secret', data: 'x' })).toMatchObject({ type: 'error', code: 'forbidden' });
    expect(await eve.request({ type: 'resume', rooms: { secret: 0 } })).toMatchObject({ type: 'error', code: 'forbidden', room: 'secret' });
    expect(await eve.request({ type: 'join', room: 'lobby' })).toMatchObject({ type: 'joined', room: 'lobby', seq: 0 });
    await alice.request({ type: 'publish', room: 'secret', data: 'for alice only' });
    await alice.request({ type: 'publish', room: 'lobby', data: 'hello all' });
    expect(await eve.next('message')).toMatchObject({ room: 'lobby', data: 'hello all' });
    expect(eve.of('message')).toHaveLength(1);
  });

  it('answers every malformed frame with its documented error and keeps the connection', async () => {
    const s = await startServer({ membership: new MembershipTable({ a: ['alice'] }) });
    const alice = await connect(s.url, 'alice');
    const cases: [unknown, Record<string, unknown>][] = [
      ['not json', { code: 'bad_request' }],
      ['[1,2]', { code: 'bad_request' }],
      [{ room: 'a' }, { code: 'bad_request' }],
      [{ type: 'dance', ref: 'd' }, { code: 'unknown_type', ref: 'd' }],
      [{ type: 'join', ref: 'j' }, { code: 'bad_request', ref: 'j' }],
      [{ type: 'join', room: 'x'.repeat(257), ref: 'long' }, { code: 'bad_request', ref: 'long' }],
      [{ type: 'join', room: 7, ref: 'num' }, { code: 'bad_request', ref: 'num' }],
      [{ type: 'publish', room: 'a', ref: 'nodata' }, { code: 'bad_request', ref: 'nodata' }],
      [{ type: 'ping', ref: 'r'.repeat(65) }, { code: 'bad_request' }],
      [{ type: 'ping', ref: 12 }, { code: 'bad_request' }],
    ];
    for (const [frame, expected] of cases) {
      alice.send(frame);
      const error = await alice.next('error');
      expect(error).toMatchObject(expected);
      if (!('ref' in expected)) expect(error).not.toHaveProperty('ref');
      expect(typeof error.message).toBe('string');
    }
    alice.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    expect(await alice.next('error')).toMatchObject({ code: 'bad_request' });
    expect(await alice.request({ type: 'ping' })).toMatchObject({ type: 'pong' });
    expect(await alice.request({ type: 'publish', room: 'a', data: null })).toMatchObject({ type: 'ack', seq: 1 });
  });

  it('closes a connection that sends a frame over the frame limit with 1009, and serves the others', async () => {
    const s = await startServer({ membership: new MembershipTable({ a: ['alice', 'bob'] }), maxFrameBytes: 1024 });
    const alice = await connect(s.url, 'alice');
    const bob = await connect(s.url, 'bob');
    alice.send({ type: 'publish', room: 'a', data: 'x'.repeat(2000) });
    await alice.closed();
    expect(alice.closeCode).toBe(1009);
    expect(await bob.request({ type: 'ping' })).toMatchObject({ type: 'pong' });
  });

  it('replays exactly the missed messages in order on resume, then says resumed', async () => {
    const s = await startServer({ membership: new MembershipTable({ chat: ['alice', 'bob'], side: ['bob'] }) });
    const alice = await connect(s.url, 'alice');
    let bob = await connect(s.url, 'bob');
    for (const n of [1, 2]) await alice.request({ type: 'publish', room: 'chat', data: n });
    await bob.until((frames) => frames.filter((f) => f.type === 'message').length === 2);
    await bob.close();
    for (const n of [3, 4, 5]) await alice.request({ type: 'publish', room: 'chat', data: n });
    await s.manager.broadcast('side', 'side 1');

    bob = await connect(s.url, 'bob');
    bob.send({ type: 'resume', rooms: { chat: 2, side: 0 }, ref: 'resume-1' });
    const resumed = await bob.next('resumed');
    expect(resumed).toEqual({ type: 'resumed', rooms: { chat: { replayed: 3 }, side: { replayed: 1 } }, ref: 'resume-1' });
    const replayed = bob.of('message');
    expect(replayed.map((m) => [m.room, m.seq, m.data])).toEqual([
      ['chat', 3, 3],
      ['chat', 4, 4],
      ['chat', 5, 5],
      ['side', 1, 'side 1'],
    ]);
    for (const message of replayed) expect(message.ref).toBe('resume-1');

    // Nothing is replayed twice, and live messages keep flowing after the replay.
    await alice.request({ type: 'publish', room: 'chat', data: 6 });
    expect(await bob.next('message', (m) => m.seq === 6)).toMatchObject({ data: 6 });
    const again = await bob.request({ type: 'resume', rooms: { chat: 5 } });
    expect(again).toMatchObject({ type: 'resumed', rooms: { chat: { replayed: 0 } } });
  });

  it('answers history_gap when the history no longer reaches back, and still lists the other rooms', async () => {
    const s = await startServer({ membership: new MembershipTable({ chat: ['alice', 'bob'], quiet: ['bob'] }), history: 2 });
    const alice = await connect(s.url, 'alice');
    for (const n of [1, 2, 3, 4]) await alice.request({ type: 'publish', room: 'chat', data: n });
    const bob = await connect(s.url, 'bob');
    bob.send({ type: 'resume', rooms: { chat: 1, quiet: 0 }, ref: 'r' });
    expect(await bob.next('error')).toMatchObject({ code: 'history_gap', room: 'chat', ref: 'r' });
    expect(await bob.next('resumed')).toEqual({ type: 'resumed', rooms: { quiet: { replayed: 0 } }, ref: 'r' });
    expect(await bob.request({ type: 'resume', rooms: { chat: 2 } })).toMatchObject({ type: 'message', seq: 3 });
  });

  it('delivers a retried publish once when the client reuses its cid after a reconnect', async () => {
    const s = await startServer({ membership: new MembershipTable({ chat: ['alice', 'bob'] }) });
    const bob = await connect(s.url, 'bob');
    let alice = await connect(s.url, 'alice');
    const first = await alice.request({ type: 'publish', room: 'chat', data: 'once', cid: 'm-1' });
    await alice.close(); // pretend the ack was lost with the connection
    alice = await connect(s.url, 'alice');
    const retry = await alice.request({ type: 'publish', room: 'chat', data: 'once', cid: 'm-1' });
    expect(retry).toMatchObject({ type: 'ack', id: first.id, seq: first.seq });
    await bob.next('message');
    expect(await bob.quiet()).toEqual([]);
    expect(bob.of('message')).toHaveLength(1);
  });

  it('refuses an upgrade the authenticator forbids with 403', async () => {
    const s = await startServer({
      membership: new MembershipTable(),
      authenticate: () => {
        throw HandshakeError.forbidden('banned');
      },
    });
    await expect(TestClient.connect(s.url, 'x')).rejects.toMatchObject({ status: 403 });
  });

  it('delivers to 1,000 connections in 100 rooms', async () => {
    const rooms: Record<string, string[]> = {};
    for (let i = 0; i < 1000; i++) (rooms[`room-${Math.floor(i / 10)}`] ??= []).push(`user-${i}`);
    const s = await startServer({
      membership: new MembershipTable(rooms),
      // Signing 1,000 JWTs is beside the point here: the user id rides in the query.
      authenticate: (handshake) => ({ id: new URL(handshake.url, 'http://x').searchParams.get('user')! }),
    });
    const clients: TestClient[] = [];
    for (let batch = 0; batch < 10; batch++) {
      const opened = await Promise.all(
        Array.from({ length: 100 }, (_, i) => TestClient.connect(`${s.url}?user=user-${batch * 100 + i}`, undefined)),
      );
      clients.push(...opened);
    }
    expect(s.manager.stats()).toMatchObject({ connections: 1000, users: 1000, rooms: 100 });
    // The first member of each room publishes once; the other nine must each get it.
    await Promise.all(clients.filter((_, i) => i % 10 === 0).map((client, r) => client.request({ type: 'publish', room: `room-${r}`, data: r })));
    await Promise.all(
      clients.map((client, i) =>
        i % 10 === 0 ? Promise.resolve() : client.until((frames) => frames.some((f) => f.type === 'message'), 10_000, 'its message'),
      ),
    );
    for (const [i, client] of clients.entries()) {
      const messages = client.of('message');
      if (i % 10 === 0) expect(messages).toHaveLength(0);
      else expect(messages.map((m) => [m.room, m.data])).toEqual([[`room-${Math.floor(i / 10)}`, Math.floor(i / 10)]]);
    }
  }, 60_000);
});

describe('resume across seq numberings', () => {
  it('answers history_gap when the client resumes with the epoch of another numbering', async () => {
    const s = await startServer({ membership: new MembershipTable({ chat: ['alice', 'bob'] }) });
    await s.manager.broadcast('chat', 1);
    await s.manager.broadcast('chat', 2);
    const bob = await connect(s.url, 'bob');
    const epoch = bob.welcome.epoch as string;
    expect(epoch).toMatch(/^[\w-]+$/);
    expect(await bob.request({ type: 'resume', rooms: { chat: 1 }, epoch })).toMatchObject({ type: 'message', seq: 2 });
    expect(await bob.request({ type: 'resume', rooms: { chat: 1 }, epoch: 'from-a-restarted-server' })).toMatchObject({
      type: 'error',
      code: 'history_gap',
      room: 'chat',
    });
    // Nothing seen (seq 0) is the same under any numbering: the whole history is replayed.
    expect(await bob.request({ type: 'resume', rooms: { chat: 0 }, epoch: 'other' })).toMatchObject({ type: 'message', seq: 1 });
  });
});

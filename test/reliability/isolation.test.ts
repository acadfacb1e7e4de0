import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MembershipLoader } from '../../src/index.js';
import { TestClient, closeClients, type Frame } from '../helpers/client.js';
import { MembershipTable, closeAll, startServer, tokenFor, type TestServer } from '../helpers/server.js';
import { report, seedFrom } from './support.js';

/**
 * Whatever frames a user sends — joins of arbitrary room names, `resume` of foreign rooms
 * with any seq, publishes with a forged `from`, `id` or `seq` — they never receive a
 * message (or presence) of a room they do not participate in, and every delivered `from`
 * is the real sender's id.
 *
 * Replay a failure with ISOLATION_SEED=<seed printed by fast-check>.
 */

const SEED = seedFrom('ISOLATION_SEED', 0x150_1a7e);
const RUNS = 150;

const table = new MembershipTable({
  secret: ['alice', 'bob', 'dan'],
  'secret:2': ['alice'],
  shared: ['eve', 'bob'],
  'eve:own': ['eve'],
  'public:lobby': ['alice', 'dan'],
});
/** Rooms named public:* are open to anyone who joins them. */
const membership: MembershipLoader = {
  roomsOf: (user) => table.roomsOf(user),
  membersOf: (room) => table.membersOf(room),
  canJoin: (_user, room) => room.startsWith('public:'),
};
const EVE_ROOMS = new Set(['shared', 'eve:own']);

let s: TestServer;
let alice: TestClient;
let bob: TestClient;
let eve: TestClient;
/** Message id → its real sender (null: the server) and room, as the server accepted it. */
const accepted = new Map<string, { from: string | null; room: string }>();

beforeAll(async () => {
  // No rate limits here: the fuzz test covers them; this one is about what a user may see.
  s = await startServer({ membership, presence: true, publishRate: false, joinRate: false });
  s.manager.on('message', (message) => accepted.set(message.id, { from: message.from, room: message.room }));
  alice = await TestClient.connect(s.url, await tokenFor('alice'));
  bob = await TestClient.connect(s.url, await tokenFor('bob'));
  eve = await TestClient.connect(s.url, await tokenFor('eve'));
});

afterAll(async () => {
  await closeClients();
  await closeAll();
});

/**
 * Every frame a client got that it should not have, replaying its frames in order: a live
 * message or presence of a room it is not in at that point (welcome, joined and left move
 * it in and out), a replayed message of a room it does not participate in, a `from`
 * that is not the real sender, a `joined` of a room it may not enter.
 */
function violations(client: TestClient, participantOf: Set<string>): Frame[] {
  const inRoom = new Set<string>();
  const out: Frame[] = [];
  for (const frame of client.frames) {
    const name = String(frame.room);
    switch (frame.type) {
      case 'welcome':
        for (const r of frame.rooms as string[]) inRoom.add(r);
        if (!(frame.rooms as string[]).every((r) => participantOf.has(r))) out.push(frame);
        break;
      case 'joined':
        if (!participantOf.has(name) && !name.startsWith('public:')) out.push(frame);
        inRoom.add(name);
        break;
      case 'left':
        inRoom.delete(name);
        break;
      case 'message': {
        // A `ref` marks a replay (resume): any room the client participates in or is in.
        const readable = frame.ref === undefined ? inRoom.has(name) : inRoom.has(name) || participantOf.has(name);
        if (!readable || frame.from !== accepted.get(String(frame.id))?.from) out.push(frame);
        break;
      }
      case 'presence':
        if (!inRoom.has(name)) out.push(frame);
        break;
      case 'resumed':
        if (Object.keys(frame.rooms as object).some((r) => !inRoom.has(r) && !participantOf.has(r))) out.push(frame);
        break;
    }
  }
  return out;
}

const room = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom('secret', 'secret:2', 'shared', 'eve:own', 'public:lobby', 'public:new') },
  fc.constantFrom('SECRET', 'secret ', ' secret', 'secret\u0000', 'ｓecret', 'secret/', 'secret:2/../secret', '__proto__', 'constructor', 'public:', 'public'),
  fc.string({ minLength: 1, maxLength: 30 }),
  fc.string({ minLength: 0, maxLength: 20 }).map((tail) => `public:${tail}`),
);
const seq = fc.oneof(fc.nat({ max: 60 }), fc.constantFrom(0, 1, Number.MAX_SAFE_INTEGER));
const eveFrame = fc.oneof(
  fc.record({ type: fc.constant('join'), room }),
  fc.record({ type: fc.constant('leave'), room }),
  fc.record({ type: fc.constant('resume'), rooms: fc.dictionary(room, seq, { minKeys: 1, maxKeys: 4 }) }),
  fc.record({
    type: fc.constant('publish'),
    room,
    data: fc.jsonValue({ maxDepth: 2 }),
    from: fc.constantFrom<unknown>('alice', 'bob', null, 'server', ''),
    id: fc.string({ maxLength: 16 }),
    seq,
    ts: fc.integer(),
  }),
);

describe('isolation', () => {
  it('delivers forged publishes with the real sender, id and seq', async () => {
    const ack = await eve.request({ type: 'publish', room: 'shared', data: 'hi', from: 'alice', id: 'forged-id', seq: 999, ts: 1, user: { id: 'alice' } });
    expect(ack).toMatchObject({ type: 'ack', room: 'shared' });
    expect(ack.id).not.toBe('forged-id');
    const message = await bob.next('message', (m) => m.id === ack.id);
    expect(message).toMatchObject({ room: 'shared', from: 'eve', seq: ack.seq, data: 'hi' });
    expect(message.ts).not.toBe(1);
  });

  it('refuses joins, resumes and publishes of foreign rooms with forbidden and sends nothing of them', async () => {
    await alice.request({ type: 'publish', room: 'secret', data: 'for alice and bob' });
    expect(await eve.request({ type: 'join', room: 'secret' })).toMatchObject({ type: 'error', code: 'forbidden', room: 'secret' });
    eve.send({ type: 'resume', rooms: { secret: 0, 'secret:2': 5, shared: 0 }, ref: 'foreign-resume' });
    const resumed = await eve.next('resumed', (f) => f.ref === 'foreign-resume');
    expect(Object.keys(resumed.rooms as object)).toEqual(['shared']);
    const errors = eve.of('error').filter((f) => f.ref === 'foreign-resume');
    expect(errors.map((f) => [f.code, f.room])).toEqual([
      ['forbidden', 'secret'],
      ['forbidden', 'secret:2'],
    ]);
    expect(await eve.request({ type: 'publish', room: 'secret', data: 'let me in', from: 'alice' })).toMatchObject({ type: 'error', code: 'forbidden' });
    expect(violations(eve, EVE_ROOMS)).toEqual([]);
  });

  it('keeps every room private whatever frames a user sends (property)', async () => {
    let runs = 0;
    let framesSent = 0;
    const danToken = await tokenFor('dan');
    await fc.assert(
      fc.asyncProperty(fc.array(eveFrame, { minLength: 1, maxLength: 40 }), async (frames) => {
        runs++;
        for (const [i, frame] of frames.entries()) eve.send({ ...frame, ref: `run${runs}-${i}` });
        framesSent += frames.length;
        // A join queues behind every frame eve sent: its answer means all of them were handled.
        expect(await eve.request({ type: 'join', room: 'eve:own' })).toMatchObject({ type: 'joined' });

        // Now the others talk in rooms eve is not in, and in the one she shares with bob;
        // dan comes and goes, so presence flows in his rooms.
        const dan = await TestClient.connect(s.url, danToken);
        const danAck = await dan.request({ type: 'publish', room: 'secret', data: { run: runs, by: 'dan' } });
        expect(danAck).toMatchObject({ type: 'ack' });
        await dan.close();
        const secret = await alice.request({ type: 'publish', room: 'secret', data: { run: runs } });
        const secret2 = await alice.request({ type: 'publish', room: 'secret:2', data: { run: runs } });
        const server = await s.manager.broadcast('secret', { run: runs, from: 'server' });
        const sharedAck = await bob.request({ type: 'publish', room: 'shared', data: { run: runs } });
        expect(secret).toMatchObject({ type: 'ack' });
        expect(secret2).toMatchObject({ type: 'ack' });
        expect(sharedAck).toMatchObject({ type: 'ack' });
        // bob, a participant, gets them; whatever eve's frames were.
        await bob.next('message', (m) => m.id === secret.id);
        await bob.next('message', (m) => m.id === server.id);
        // eve gets bob's message in the room she shares with him, if she has not left it.
        // Whatever was sent to eve before this pong has arrived once the pong has.
        expect(await eve.request({ type: 'ping' })).toMatchObject({ type: 'pong' });

        const leaks = violations(eve, EVE_ROOMS);
        expect(leaks).toEqual([]);
        expect(violations(bob, new Set(['secret', 'shared']))).toEqual([]);
        expect(violations(alice, new Set(['secret', 'secret:2', 'public:lobby']))).toEqual([]);
        // Every publish of eve's the server accepted into the room she shares with bob
        // reached him (sent before alice's, which he has), and as from "eve".
        const bobGot = new Map(bob.of('message').map((m) => [String(m.id), m]));
        for (const [id, message] of accepted) {
          if (message.from === 'eve' && message.room === 'shared') expect(bobGot.get(id)?.from, `eve's ${id} at bob`).toBe('eve');
        }
      }),
      { seed: SEED, numRuns: RUNS },
    );
    const byRoom: Record<string, number> = {};
    for (const message of eve.of('message')) {
      const room = String(message.room).startsWith('public:') ? 'public:*' : String(message.room);
      byRoom[room] = (byRoom[room] ?? 0) + 1;
    }
    const acceptedFromEve = [...accepted.values()].filter((m) => m.from === 'eve').length;
    const acceptedFromEveIntoShared = [...accepted.values()].filter((m) => m.from === 'eve' && m.room === 'shared').length;
    report('isolation', {
      seed: SEED,
      runs,
      framesSent,
      eveGot: Object.fromEntries(['message', 'joined', 'left', 'presence', 'error', 'resumed'].map((type) => [type, eve.of(type).length])),
      eveMessagesByRoom: byRoom,
      acceptedFromEve,
      acceptedFromEveIntoShared,
      messagesBroadcast: accepted.size,
      presenceToBob: bob.of('presence').length,
    });
    expect(eve.closeCode).toBeUndefined();
  }, 60_000);
});

import { afterEach, describe, expect, it } from 'vitest';
import { TestClient, closeClients } from '../helpers/client.js';
import { MembershipTable, closeAll, startServer, tokenFor } from '../helpers/server.js';

/**
 * Rules of docs/protocol.md checked letter by letter over real WebSocket frames, where
 * the other suites left them unprobed.
 */

afterEach(async () => {
  await closeClients();
  await closeAll();
});

async function connect(url: string, user: string): Promise<TestClient> {
  return TestClient.connect(url, await tokenFor(user));
}

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

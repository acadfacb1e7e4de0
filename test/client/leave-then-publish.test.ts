import { afterEach, describe, expect, it } from 'vitest';
import { MembershipTable, tokenFor } from '../helpers/server.js';
import { client, opened, serve, teardown, trackedWebSocket, until } from '../client/helpers.js';

afterEach(teardown);

describe('a leave, then a publish, while offline (review)', () => {
  it('does not join the room again: the only publish waiting was called after the leave (docs/client.md)', async () => {
    const table = new MembershipTable({});
    table.canJoinRooms.add('lobby');
    const tracked = trackedWebSocket();
    const s = await serve({ membership: table });
    const alice = client({ url: s.url, token: await tokenFor('alice'), WebSocket: tracked.WebSocket });
    await opened(alice);
    await alice.client.join('lobby');
    const joins: string[] = [];
    s.manager.on('join', ({ room, reason }) => joins.push(`${room}:${reason}`));
    tracked.sockets.at(-1)!.terminate();
    await until(() => alice.client.state === 'reconnecting', 'reconnecting');
    const left = alice.client.leave('lobby');
    const published = alice.client.publish('lobby', 'after leaving').catch((error: { code?: string }) => error.code);
    await opened(alice, 2);
    await left;
    expect(await published).toBe('forbidden');
    // "a room you leave is not joined again unless a publish you called before the leave waits for it"
    expect(joins).toEqual([]);
  });
});

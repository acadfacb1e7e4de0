import { afterEach, describe, expect, it } from 'vitest';
import { MembershipTable, tokenFor } from '../helpers/server.js';
import { client, opened, serve, teardown, trackedWebSocket, until } from '../client/helpers.js';

afterEach(teardown);

describe('chaos finding: the app calls keep their order across a reconnect', () => {
  it('publish, leave, join, publish into a joined room while offline: both publishes are accepted, and the client ends in the room', async () => {
    const table = new MembershipTable({});
    table.canJoinRooms.add('lobby');
    const s = await serve({ membership: table });
    const tracked = trackedWebSocket();
    const alice = client({ url: s.url, token: await tokenFor('alice'), WebSocket: tracked.WebSocket });
    const bob = client({ url: s.url, token: await tokenFor('bob') });
    await opened(alice);
    await opened(bob);
    await alice.client.join('lobby');
    await bob.client.join('lobby');
    const welcomes = alice.welcomes;
    tracked.sockets.at(-1)!.terminate();
    await until(() => alice.client.state === 'reconnecting', 'alice reconnecting');
    const outcome = (p: Promise<{ id: string }>): Promise<string> => p.then((ack) => ack.id, (error: unknown) => `rejected: ${String((error as Error).message)}`);
    const first = outcome(alice.client.publish('lobby', 'one'));
    const left = alice.client.leave('lobby');
    const joined = alice.client.join('lobby');
    const second = outcome(alice.client.publish('lobby', 'two'));
    await opened(alice, welcomes + 1);
    await left;
    await joined;
    const ids = [await first, await second];
    expect(ids.filter((id) => id.startsWith('rejected'))).toEqual([]);
    await until(() => bob.messages.length === 2, 'bob gets both');
    expect(bob.messages.map((m) => m.id)).toEqual(ids);
    expect([...alice.client.rooms]).toEqual(['lobby']);
    await until(() => s.manager.roomsOf(alice.client.connectionId!).includes('lobby'), 'the server has alice in lobby', 1000);
  });
});

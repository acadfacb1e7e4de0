import { afterEach, describe, expect, it } from 'vitest';
import { MembershipTable, tokenFor } from '../helpers/server.js';
import { client, opened, serve, teardown, trackedWebSocket, until } from '../client/helpers.js';

afterEach(teardown);

describe('chaos finding: a publish retried with its cid after the user left the participants', () => {
  it('gets the first ack (it was delivered), not forbidden', async () => {
    const table = new MembershipTable({ chat: ['alice', 'bob'], other: ['alice'] });
    const tracked = trackedWebSocket();
    let cut = true;
    let removed: Promise<void> | undefined;
    const s = await serve({
      membership: table,
      onPublish: ({ room }) => {
        if (cut && room === 'chat') {
          cut = false;
          // The ack will be lost: alice's connection drops now, and the app removes her
          // from the room before her client sends the publish again.
          tracked.sockets.at(-1)?.terminate();
          table.remove('chat', 'alice');
          removed = s.manager.removeMember('chat', 'alice');
        }
        return undefined;
      },
    });
    const alice = client({ url: s.url, token: await tokenFor('alice'), WebSocket: tracked.WebSocket });
    const bob = client({ url: s.url, token: await tokenFor('bob') });
    await opened(alice);
    await opened(bob);
    const outcome = alice.client.publish('chat', 'hello').then(
      (ack) => ack.id,
      (error: unknown) => `rejected: ${String((error as Error).message)}`,
    );
    await until(() => bob.messages.length === 1, 'bob gets the message');
    await removed;
    // Delivered to bob, so the publish happened: the retry must say so.
    expect(await outcome).toBe(bob.messages[0]!.id);
  });
});

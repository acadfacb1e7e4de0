import { afterEach, describe, expect, it } from 'vitest';
import { MembershipTable, tokenFor } from '../helpers/server.js';
import { client, opened, serve, teardown, trackedWebSocket, until } from '../client/helpers.js';

afterEach(teardown);

describe('chaos finding: publish, then leave, across a reconnect', () => {
  it('a publish whose ack was lost, into a joined room the app then leaves, is not rejected after it was delivered', async () => {
    const table = new MembershipTable({});
    table.canJoinRooms.add('lobby');
    const tracked = trackedWebSocket();
    let cut = true;
    const s = await serve({
      membership: table,
      // The first publish reaches the server, which broadcasts it; the publisher's connection drops before the ack.
      onPublish: () => {
        if (cut) {
          cut = false;
          tracked.sockets.at(-1)?.terminate();
        }
        return undefined;
      },
    });
    const alice = client({ url: s.url, token: await tokenFor('alice'), WebSocket: tracked.WebSocket });
    const bob = client({ url: s.url, token: await tokenFor('bob') });
    await opened(alice);
    await opened(bob);
    await alice.client.join('lobby');
    await bob.client.join('lobby');

    // The app leaves the room once it sees the connection drop, after its publish.
    let leaving: Promise<void> | undefined;
    alice.client.on('state', (state) => {
      if (state === 'reconnecting') leaving ??= alice.client.leave('lobby');
    });
    const outcome = alice.client.publish('lobby', 'hello').then(
      (ack) => ({ ok: true as const, ack }),
      (error: unknown) => ({ ok: false as const, error }),
    );
    await until(() => bob.messages.length === 1, 'bob gets the message');
    const result = await outcome;
    await leaving;
    // Bob received it: the publish happened, so its promise must not say it was refused.
    expect(result.ok ? result.ack.id : String((result.error as Error).message)).toBe(bob.messages[0]!.id);
  });

  it('a publish queued while offline, then a leave of that room, both called in that order: the publish is not refused', async () => {
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
    // Drop alice only; while she is offline the app publishes, then leaves.
    const welcomes = alice.welcomes;
    tracked.sockets.at(-1)!.terminate();
    await until(() => alice.client.state === 'reconnecting', 'alice reconnecting');
    const published = alice.client.publish('lobby', 'queued').then(
      (ack) => ack.id,
      (error: unknown) => `rejected: ${String((error as Error).message)}`,
    );
    const left = alice.client.leave('lobby');
    await opened(alice, welcomes + 1);
    await left;
    const id = await published;
    expect(id).not.toMatch(/^rejected/);
    await until(() => bob.messages.length === 1, 'bob gets the message');
    expect(id).toBe(bob.messages[0]!.id);
  });
});

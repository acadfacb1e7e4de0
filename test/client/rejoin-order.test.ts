import { afterEach, describe, expect, it } from 'vitest';
import type { RoomManagerOptions } from 'roomwire';
import { MembershipTable, tokenFor } from '../helpers/server.js';
import { client, opened, serve, teardown, trackedWebSocket, until } from './helpers.js';

/**
 * The app's publish, join and leave calls for a room the client is joining again after a
 * reconnect wait for that rejoin and then go in the order the app made them; a publish
 * retried with its cid is answered with its first ack. Found by the chaos run
 * (test/chaos/): each failed before its fix.
 */

afterEach(teardown);

/** Alice and bob in the public room `lobby` (joined with `join()`); `options` may use alice's sockets. */
async function twoInLobby(options: (tracked: ReturnType<typeof trackedWebSocket>) => Partial<RoomManagerOptions> = () => ({})) {
  const table = new MembershipTable({});
  table.canJoinRooms.add('lobby');
  const tracked = trackedWebSocket();
  const s = await serve({ membership: table, ...options(tracked) });
  const alice = client({ url: s.url, token: await tokenFor('alice'), WebSocket: tracked.WebSocket });
  const bob = client({ url: s.url, token: await tokenFor('bob') });
  await opened(alice);
  await opened(bob);
  await alice.client.join('lobby');
  await bob.client.join('lobby');
  return { s, alice, bob, tracked };
}

/** {@link twoInLobby}, and alice's connection has just dropped. */
async function aliceOffline() {
  const { s, alice, bob, tracked } = await twoInLobby();
  const welcomes = alice.welcomes;
  tracked.sockets.at(-1)!.terminate();
  await until(() => alice.client.state === 'reconnecting', 'alice reconnecting');
  /** Waits for alice's next welcome. */
  const reopened = (): Promise<void> => opened(alice, welcomes + 1);
  return { s, alice, bob, reopened };
}

describe('calls for a room joined again after a reconnect keep the app\'s order', () => {
  it('a publish whose ack was lost, into a joined room the app then leaves, is not rejected after it was delivered', async () => {
    let cut = true;
    const { alice, bob } = await twoInLobby((tracked) => ({
      // The first publish reaches the server, which broadcasts it; the publisher's connection drops before the ack.
      onPublish: () => {
        if (cut) {
          cut = false;
          tracked.sockets.at(-1)?.terminate();
        }
        return undefined;
      },
    }));

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
    // While alice is offline the app publishes, then leaves.
    const { s, alice, bob, reopened } = await aliceOffline();
    const published = alice.client.publish('lobby', 'queued').then(
      (ack) => ack.id,
      (error: unknown) => `rejected: ${String((error as Error).message)}`,
    );
    const left = alice.client.leave('lobby');
    await reopened();
    await left;
    const id = await published;
    expect(id).not.toMatch(/^rejected/);
    await until(() => bob.messages.length === 1, 'bob gets the message');
    expect(id).toBe(bob.messages[0]!.id);
  });
  it('publish, leave, join, publish into a joined room while offline: both publishes are accepted, and the client ends in the room', async () => {
    const { s, alice, bob, reopened } = await aliceOffline();
    const outcome = (p: Promise<{ id: string }>): Promise<string> => p.then((ack) => ack.id, (error: unknown) => `rejected: ${String((error as Error).message)}`);
    const first = outcome(alice.client.publish('lobby', 'one'));
    const left = alice.client.leave('lobby');
    const joined = alice.client.join('lobby');
    const second = outcome(alice.client.publish('lobby', 'two'));
    await reopened();
    await left;
    await joined;
    const ids = [await first, await second];
    expect(ids.filter((id) => id.startsWith('rejected'))).toEqual([]);
    await until(() => bob.messages.length === 2, 'bob gets both');
    expect(bob.messages.map((m) => m.id)).toEqual(ids);
    expect([...alice.client.rooms]).toEqual(['lobby']);
    await until(() => s.manager.roomsOf(alice.client.connectionId!).includes('lobby'), 'the server has alice in lobby', 1000);
  });

  it('a leave, then a publish into that room, while offline: the publish is refused and the client ends outside the room', async () => {
    const { s, alice, bob, reopened } = await aliceOffline();
    const left = alice.client.leave('lobby');
    const published = alice.client.publish('lobby', 'after leaving').then(
      (ack) => ack.id,
      (error: unknown) => `rejected: ${(error as { code?: string }).code}`,
    );
    await reopened();
    await left;
    expect(await published).toBe('rejected: forbidden');
    expect([...alice.client.rooms]).toEqual([]);
    await until(() => !s.manager.roomsOf(alice.client.connectionId!).includes('lobby'), 'the server has alice out of lobby', 1000);
    expect(bob.messages).toEqual([]);
  });
});

describe('calls for an auto-joined room the app left wait for its re-leave after a reconnect', () => {
  /** Alice and bob in `team`, where the server joins them on every connect; alice's app left it, and her connection has just dropped. */
  async function aliceLeftTeamAndOffline() {
    const table = new MembershipTable({ team: ['alice', 'bob'] });
    const tracked = trackedWebSocket();
    const s = await serve({ membership: table });
    const alice = client({ url: s.url, token: await tokenFor('alice'), WebSocket: tracked.WebSocket });
    const bob = client({ url: s.url, token: await tokenFor('bob') });
    await opened(alice);
    await opened(bob);
    await alice.client.leave('team');
    const welcomes = alice.welcomes;
    tracked.sockets.at(-1)!.terminate();
    await until(() => alice.client.state === 'reconnecting', 'alice reconnecting');
    return { s, alice, bob, reopened: () => opened(alice, welcomes + 1) };
  }

  it('a publish into it, made while offline, is refused as it would be online, not delivered', async () => {
    const { s, alice, bob, reopened } = await aliceLeftTeamAndOffline();
    const published = alice.client.publish('team', 'after leaving').then(
      (ack) => ack.id,
      (error: unknown) => `rejected: ${(error as { code?: string }).code}`,
    );
    await reopened();
    expect(await published).toBe('rejected: forbidden');
    await until(() => !s.manager.roomsOf(alice.client.connectionId!).includes('team'), 'the server has alice out of team', 1000);
    expect(bob.messages).toEqual([]);
    expect([...alice.client.rooms]).toEqual([]);
  });

  it('a join of it and a publish, made while offline, end in the room with the message delivered', async () => {
    const { s, alice, bob, reopened } = await aliceLeftTeamAndOffline();
    const joined = alice.client.join('team');
    const published = alice.client.publish('team', 'back again');
    await reopened();
    await joined;
    expect((await published).id).toBeTruthy();
    await until(() => bob.messages.length === 1, 'bob gets the message');
    expect([...alice.client.rooms]).toEqual(['team']);
    expect(s.manager.roomsOf(alice.client.connectionId!)).toContain('team');
  });
});

describe('a publish retried with its cid', () => {
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

import { afterEach, describe, expect, it } from 'vitest';
import { MembershipTable, tokenFor } from '../helpers/server.js';
import { client, opened, serve, teardown, until } from './helpers.js';

afterEach(teardown);

describe('roomwire/client reconnect', () => {
  it('reconnects after the server drops every connection, and keeps delivering', async () => {
    const s = await serve({ membership: new MembershipTable({ chat: ['alice', 'bob'] }) });
    const alice = client({ url: s.url, token: await tokenFor('alice') });
    const bob = client({ url: s.url, token: await tokenFor('bob') });
    await opened(alice);
    await opened(bob);
    expect(alice.client.rooms).toEqual(new Set(['chat']));
    const firstId = alice.client.connectionId;
    await alice.client.publish('chat', 'before');
    await until(() => bob.messages.length === 1, 'the first message');

    for (const socket of s.adapter.clients) socket.terminate();
    await opened(alice, 2);
    await opened(bob, 2);

    expect(alice.states).toEqual(['open', 'reconnecting', 'open']);
    expect(alice.client.connectionId).toBeDefined();
    expect(alice.client.connectionId).not.toBe(firstId);
    expect(alice.client.rooms).toEqual(new Set(['chat']));
    const ack = await alice.client.publish('chat', 'after');
    await until(() => bob.messages.length === 2, 'the second message');
    expect(bob.messages.map((m) => [m.data, m.seq])).toEqual([
      ['before', 1],
      ['after', 2],
    ]);
    expect(bob.messages[1]!.id).toBe(ack.id);
    expect(bob.gaps).toEqual([]);
  });

  it('reconnects to a restarted server on the same port, reports the lost history as a gap, and sends what was queued', async () => {
    const table = new MembershipTable({ chat: ['alice', 'bob'] });
    const first = await serve({ membership: table });
    // Alice's token function waits on a gate, so the test decides who reaches the new server first.
    let gate = Promise.resolve();
    let openGate = (): void => {};
    const aliceToken = await tokenFor('alice');
    const alice = client({
      url: first.url,
      token: async () => {
        await gate;
        return aliceToken;
      },
    });
    const bob = client({ url: first.url, token: await tokenFor('bob') });
    await opened(alice);
    await opened(bob);
    for (let i = 1; i <= 3; i++) await alice.client.publish('chat', `old ${i}`);
    await until(() => bob.messages.length === 3, 'the old messages');
    expect(bob.client.lastSeq('chat')).toBe(3);

    gate = new Promise((resolve) => (openGate = resolve));
    await first.close(); // the RoomManager closes every connection with 1001, then the port is freed
    await until(() => alice.client.state === 'reconnecting' && bob.client.state === 'reconnecting', 'both reconnecting');
    // Published while no server runs: queued, sent after the reconnect.
    const queued = alice.client.publish('chat', 'written offline');

    const second = await serve({ membership: table }, first.port);
    await opened(bob, 2);
    openGate();
    const ack = await queued;
    await until(() => bob.messages.length === 4, 'the queued message');

    // The new process has no history: neither client can resume, and both say so.
    await until(() => alice.gaps.length === 1 && bob.gaps.length === 1, 'the gaps');
    expect(alice.gaps).toEqual(['chat']);
    expect(bob.gaps).toEqual(['chat']);
    expect(bob.messages.slice(3)).toMatchObject([{ room: 'chat', id: ack.id, seq: 1, from: 'alice', data: 'written offline' }]);
    expect(ack.seq).toBe(1);
    // Positions follow the new server, so the next resume asks from the right place.
    await until(() => alice.client.lastSeq('chat') === 1 && bob.client.lastSeq('chat') === 1, 'positions on the new server');
    expect(alice.messages).toEqual([]);
    expect(bob.states).toEqual(['open', 'reconnecting', 'open']);
    expect(second.manager.stats().connections).toBe(2);
  });

  // Seqs restart with a new in-memory history: once the new process's room has caught up
  // with the client's seq, seq alone cannot tell old from new. The welcome's epoch can.
  it('reports a gap after a restart even when the new server already reached the client seq', async () => {
    const table = new MembershipTable({ chat: ['bob'] });
    const first = await serve({ membership: table });
    let gate = Promise.resolve();
    let openGate = (): void => {};
    const token = await tokenFor('bob');
    const bob = client({
      url: first.url,
      token: async () => {
        await gate;
        return token;
      },
    });
    await opened(bob);
    await first.manager.broadcast('chat', 'old 1');
    await first.manager.broadcast('chat', 'old 2');
    await until(() => bob.client.lastSeq('chat') === 2, 'seq 2');

    gate = new Promise((resolve) => (openGate = resolve));
    await first.close();
    const second = await serve({ membership: table }, first.port);
    for (const text of ['new 1', 'new 2', 'new 3']) await second.manager.broadcast('chat', text);
    openGate();
    await opened(bob, 2);
    await until(() => bob.gaps.length === 1 && bob.client.lastSeq('chat') === 3, 'the gap and the new position');
    expect(bob.gaps).toEqual(['chat']);
    expect(bob.messages.map((m) => m.data)).toEqual(['old 1', 'old 2']); // nothing taken for what it is not
    await second.manager.broadcast('chat', 'new 4');
    await until(() => bob.messages.length === 3, 'new 4');
    expect(bob.messages[2]).toMatchObject({ seq: 4, data: 'new 4' });
  });
});

import type WebSocket from 'ws';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ClientError, isClientError, type PresenceFrame } from 'roomwire/client';
import { Emitter } from '../../src/client/emitter.js';
import { MembershipTable, tokenFor } from '../helpers/server.js';
import { client, opened, rawServer, serve, teardown, until } from './helpers.js';

afterEach(async () => {
  vi.useRealTimers();
  await teardown();
});

/** Sends `frames` in one TCP write, as a busy server or a slow network delivers them. */
function sendTogether(socket: WebSocket, frames: object[]): void {
  const raw = (socket as unknown as { _socket: { cork(): void; uncork(): void } })._socket;
  raw.cork();
  for (const frame of frames) socket.send(JSON.stringify(frame));
  raw.uncork();
}

describe('roomwire/client API', () => {
  it('joins, publishes and leaves; a refused request rejects with the protocol code', async () => {
    const table = new MembershipTable({ chat: ['alice', 'bob'], lobby: [] });
    table.canJoinRooms.add('lobby');
    const s = await serve({ membership: table });
    const alice = client({ url: s.url, token: await tokenFor('alice') });
    const bob = client({ url: s.url, token: await tokenFor('bob') });
    await opened(alice);
    await opened(bob);

    const error = await alice.client.publish('secret', 1).catch((e: unknown) => e);
    expect(isClientError(error)).toBe(true);
    expect(error).toMatchObject({ name: 'ClientError', code: 'forbidden', room: 'secret' });
    await expect(alice.client.join('secret')).rejects.toMatchObject({ code: 'forbidden', room: 'secret' });

    await expect(alice.client.join('lobby')).resolves.toEqual({ room: 'lobby', seq: 0 });
    await bob.client.join('lobby');
    expect(alice.client.rooms).toEqual(new Set(['chat', 'lobby']));
    expect(alice.joined).toEqual([{ room: 'lobby', seq: 0 }]);
    const ack = await alice.client.publish('lobby', { text: 'hi' }, { cid: 'my-cid' });
    expect(ack).toMatchObject({ room: 'lobby', seq: 1 });
    // The same cid again is the same message: acked again, delivered once.
    await expect(alice.client.publish('lobby', { text: 'hi' }, { cid: 'my-cid' })).resolves.toEqual(ack);
    await until(() => bob.messages.length === 1, 'the lobby message');
    expect(bob.messages).toEqual([{ room: 'lobby', id: ack.id, seq: 1, from: 'alice', data: { text: 'hi' }, ts: expect.any(Number) }]);

    await expect(alice.client.leave('lobby')).resolves.toBeUndefined();
    expect(alice.left).toEqual(['lobby']);
    expect(alice.client.rooms).toEqual(new Set(['chat']));
    expect(alice.client.lastSeq('lobby')).toBe(0);
    expect(alice.errors).toEqual([]);
  });

  it('follows the server: joined and left without a request, presence, and lastSeq from joined', async () => {
    const table = new MembershipTable({ chat: ['alice', 'bob'] });
    const s = await serve({ membership: table, presence: true });
    const alice = client({ url: s.url, token: await tokenFor('alice') });
    await opened(alice);
    const presence: PresenceFrame[] = [];
    alice.client.on('presence', (frame) => presence.push(frame));
    const bob = client({ url: s.url, token: await tokenFor('bob') });
    await opened(bob);
    await until(() => presence.length === 1, 'presence');
    expect(presence[0]).toMatchObject({ room: 'chat', user: 'bob', event: 'online' });

    await s.manager.broadcast('news', 'old'); // seq 1, before alice is a participant
    table.add('news', 'alice');
    await s.manager.addMember('news', 'alice');
    await until(() => alice.joined.length === 1, 'joined');
    expect(alice.joined).toEqual([{ room: 'news', seq: 1 }]);
    expect(alice.client.lastSeq('news')).toBe(1);
    await s.manager.broadcast('news', 'fresh');
    await until(() => alice.messages.length === 1, 'the news');
    expect(alice.messages[0]).toMatchObject({ room: 'news', seq: 2, data: 'fresh', from: null });

    table.remove('news', 'alice');
    s.manager.removeMember('news', 'alice');
    await until(() => alice.left.length === 1, 'left');
    expect(alice.left).toEqual(['news']);
    expect(alice.client.rooms).toEqual(new Set(['chat']));
  });

  it('joins again what the app joined, and leaves again what it left, after a reconnect', async () => {
    const table = new MembershipTable({ chat: ['alice', 'bob'], ops: ['alice', 'bob'], lobby: ['bob'] });
    table.canJoinRooms.add('lobby');
    const s = await serve({ membership: table });
    const alice = client({ url: s.url, token: await tokenFor('alice') });
    const bob = client({ url: s.url, token: await tokenFor('bob') });
    await opened(alice);
    await opened(bob);
    await alice.client.join('lobby');
    await alice.client.leave('ops');
    await bob.client.publish('lobby', 'l1');
    await until(() => alice.messages.length === 1, 'l1');

    for (const socket of s.adapter.clients) socket.terminate();
    await opened(alice, 2);
    await opened(bob, 2);
    expect(alice.client.rooms).toEqual(new Set(['chat', 'lobby']));
    await until(() => s.manager.roomsOf(alice.client.connectionId!).sort().join() === 'chat,lobby', 'server-side rooms');

    await bob.client.publish('ops', 'o1');
    await bob.client.publish('lobby', 'l2');
    await until(() => alice.messages.length === 2, 'l2');
    expect(alice.messages.map((m) => m.data)).toEqual(['l1', 'l2']);
    expect(alice.left).toEqual(['ops']); // no second left, no joined: the app's view did not change
    expect(alice.joined).toEqual([{ room: 'lobby', seq: 0 }]);
  });

  it('queues while offline up to queueLimit, times out, and rejects what is pending on close()', async () => {
    const gone = await rawServer();
    const url = gone.url;
    await gone.close(); // nothing listens there any more
    const c = client({ url, queueLimit: 3, reconnect: { minDelayMs: 1_000, maxDelayMs: 1_000 } });
    const quick = c.client.publish('chat', 1, { timeoutMs: 30 });
    const pending = [c.client.publish('chat', 2), c.client.join('lobby')];
    const full = c.client.publish('chat', 4);
    await expect(full).rejects.toMatchObject({ code: 'queue_full' });
    await expect(quick).rejects.toMatchObject({ code: 'timeout', room: 'chat' });
    const third = c.client.leave('lobby'); // a slot is free again
    c.client.close();
    for (const p of [...pending, third]) await expect(p).rejects.toMatchObject({ code: 'closed' });
    expect(c.client.state).toBe('closed');
    expect(c.states).toEqual(['closed']);
    await expect(c.client.publish('chat', 5)).rejects.toBeInstanceOf(ClientError);
  });

  it('rejects invalid requests without sending them', async () => {
    const s = await serve({ membership: new MembershipTable({ chat: ['alice'] }) });
    const alice = client({ url: s.url, token: await tokenFor('alice') });
    await opened(alice);
    await expect(alice.client.publish('', 1)).rejects.toMatchObject({ code: 'bad_request' });
    await expect(alice.client.join('x'.repeat(257))).rejects.toMatchObject({ code: 'bad_request' });
    await expect(alice.client.publish('chat', 1n)).rejects.toMatchObject({ code: 'bad_request' });
    await expect(alice.client.publish('chat', 1, { cid: 'c'.repeat(65) })).rejects.toMatchObject({ code: 'bad_request' });
    await expect(alice.client.publish('chat', undefined)).rejects.toMatchObject({ code: 'bad_request', message: /data is required/ });
    await expect(alice.client.publish('chat', 'fine')).resolves.toMatchObject({ seq: 1 });
    // At most 64 characters, as the protocol says: none is a cid too.
    await expect(alice.client.publish('chat', 'empty cid', { cid: '' })).resolves.toMatchObject({ seq: 2 });
    await expect(alice.client.publish('chat', 'empty cid', { cid: '' })).resolves.toMatchObject({ seq: 2 });
  });

  it('takes only an answer frame as the answer to a request, not a frame of a type it does not know', async () => {
    const server = await rawServer((socket) => {
      socket.send(JSON.stringify({ type: 'welcome', protocol: 1, connectionId: 'c1', user: { id: 'alice' }, rooms: ['chat'], seqs: { chat: 0 }, heartbeatMs: 25_000 }));
      socket.on('message', (data) => {
        const frame = JSON.parse(String(data)) as { type: string; ref?: string; room?: string };
        if (frame.type !== 'publish') return;
        // A newer server's progress report with the request's ref, then the real answer.
        socket.send(JSON.stringify({ type: 'progress', ref: frame.ref }));
        setTimeout(() => socket.send(JSON.stringify({ type: 'ack', room: frame.room, id: 'm1', seq: 1, ref: frame.ref })), 50);
      });
    });
    const alice = client({ url: server.url, token: 'unused' });
    await opened(alice);
    await expect(alice.client.publish('chat', 'hi')).resolves.toEqual({ room: 'chat', id: 'm1', seq: 1 });
  });
});

describe('frames that arrive in one read', () => {
  it('delivers the message that follows the joined answer in the same chunk', async () => {
    const server = await rawServer((socket) => {
      socket.send(JSON.stringify({ type: 'welcome', protocol: 1, connectionId: 'c1', user: { id: 'alice' }, rooms: ['lobby'], seqs: { lobby: 0 }, heartbeatMs: 25_000 }));
      let leaveRef: string | undefined;
      socket.on('message', (data) => {
        const frame = JSON.parse(String(data)) as { type: string; room: string; ref: string };
        if (frame.type === 'leave') leaveRef = frame.ref;
        if (frame.type === 'join') {
          sendTogether(socket, [
            { type: 'left', room: 'lobby', ref: leaveRef },
            { type: 'joined', room: 'lobby', seq: 0, ref: frame.ref },
            { type: 'message', room: 'lobby', id: 'm1', seq: 1, from: 'bob', data: 'after the join', ts: Date.now() },
          ]);
        }
      });
    });
    const alice = client({ url: server.url });
    await opened(alice);
    const left = alice.client.leave('lobby');
    const joined = alice.client.join('lobby');
    await left;
    expect(await joined).toEqual({ room: 'lobby', seq: 0 });
    // The app left, then joined again (seq 0): message 1 came after the join and is the app's.
    await until(() => alice.messages.length === 1, 'the message after the join', 1000);
    expect(alice.messages.map((m) => m.id)).toEqual(['m1']);
    expect(alice.gaps).toEqual([]);
  });
});

describe('Emitter', () => {
  it('keeps calling listeners when one throws, and rethrows the error on a later tick', () => {
    vi.useFakeTimers();
    const emitter = new Emitter<{ hit: (n: number) => void }>();
    const seen: number[] = [];
    const off = emitter.on('hit', () => {
      throw new Error('boom');
    });
    emitter.on('hit', (n) => seen.push(n));
    emitter.emit('hit', 1);
    expect(seen).toEqual([1]);
    expect(() => vi.runAllTimers()).toThrow('boom');
    off();
    emitter.emit('hit', 2);
    expect(seen).toEqual([1, 2]);
    expect(vi.getTimerCount()).toBe(0);
  });
});

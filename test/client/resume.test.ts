import type WebSocket from 'ws';
import type { ClientOptions } from 'roomwire/client';
import { afterEach, describe, expect, it } from 'vitest';
import { MembershipTable, tokenFor } from '../helpers/server.js';
import { client, opened, rawServer, serve, teardown, trackedWebSocket, until, type PortServer, type Recorded } from './helpers.js';

afterEach(teardown);

/** A token function that waits while the gate is shut: holds a client offline for as long as a test needs. */
function gatedToken(token: string): { token: () => Promise<string>; shut(): void; open(): void } {
  let opening: () => void = () => {};
  let gate = Promise.resolve();
  return {
    token: async () => {
      await gate;
      return token;
    },
    shut() {
      gate = new Promise((resolve) => (opening = resolve));
    },
    open: () => opening(),
  };
}

const seqs = (messages: { seq: number }[]) => messages.map((m) => m.seq);

/** Bob, connected with a token that `goOffline` can hold back. */
async function gatedBob(s: PortServer, options: Partial<ClientOptions> = {}): Promise<{ bob: Recorded; gate: ReturnType<typeof gatedToken> }> {
  const gate = gatedToken(await tokenFor('bob'));
  const bob = client({ url: s.url, token: gate.token, ...options });
  await opened(bob);
  return { bob, gate };
}

/** Cuts the client's connection and keeps it offline until `gate.open()`. */
async function goOffline(s: PortServer, bob: Recorded, gate: ReturnType<typeof gatedToken>): Promise<void> {
  gate.shut();
  for (const socket of s.adapter.clients) socket.terminate();
  await until(() => bob.client.state === 'reconnecting', 'reconnecting');
}

describe('roomwire/client resume', () => {
  it('delivers messages published during the outage exactly once, in order, before newer ones', async () => {
    const s = await serve({ membership: new MembershipTable({ chat: ['bob'] }) });
    // The seqs the second connection's wire carries, watched from its creation: on a fast
    // machine its welcome and first message can arrive before any poll would see it.
    const raw: number[] = [];
    const tracked = trackedWebSocket((socket, index) => {
      if (index !== 1) return;
      socket.on('message', (data) => {
        const frame = JSON.parse(String(data)) as { type: string; seq?: number };
        if (frame.type === 'message') raw.push(frame.seq!);
      });
    });
    const gate = gatedToken(await tokenFor('bob'));
    const bob = client({ url: s.url, token: gate.token, WebSocket: tracked.WebSocket });
    await opened(bob);
    await s.manager.broadcast('chat', 'm1');
    await s.manager.broadcast('chat', 'm2');
    await until(() => bob.messages.length === 2, 'the first two messages');

    await goOffline(s, bob, gate);
    for (const text of ['m3', 'm4', 'm5']) await s.manager.broadcast('chat', text);
    // Published right after the new connection's welcome, before its resume is handled:
    // it reaches the client live, ahead of the replay of m3..m5.
    s.manager.once('connect', () => void s.manager.broadcast('chat', 'm6'));
    gate.open();
    await opened(bob, 2);
    await until(() => bob.messages.length === 6, 'six messages');
    await s.manager.broadcast('chat', 'm7');
    await until(() => bob.messages.length === 7, 'seven messages');

    expect(raw.slice(0, 4)).toEqual([6, 3, 4, 5]); // what the wire carried
    expect(bob.messages.map((m) => m.data)).toEqual(['m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7']); // what the app sees
    expect(seqs(bob.messages)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(new Set(bob.messages.map((m) => m.id)).size).toBe(7);
    expect(bob.client.lastSeq('chat')).toBe(7);
    expect(bob.gaps).toEqual([]);
  });

  it('delivers a publish whose ack was lost exactly once, and not back to its publisher', async () => {
    const s = await serve({ membership: new MembershipTable({ chat: ['alice', 'bob'] }) });
    const alice = client({ url: s.url, token: await tokenFor('alice') });
    await opened(alice);
    const aliceSocket = [...s.adapter.clients][0]!;
    const bob = client({ url: s.url, token: await tokenFor('bob') });
    await opened(bob);
    const accepted: string[] = [];
    s.manager.on('message', (message) => {
      accepted.push(message.id);
      // The publish is stored and broadcast; the ack would follow. Cut the line before it.
      if (accepted.length === 1) aliceSocket.terminate();
    });

    const ack = await alice.client.publish('chat', { text: 'only once' });

    expect(alice.welcomes).toBe(2); // the ack came on the second connection
    expect(accepted).toEqual([ack.id]); // the retry was deduplicated by its cid, not stored again
    await s.manager.broadcast('chat', 'next');
    await until(() => bob.messages.length === 2 && alice.messages.length === 1, 'the next message');
    expect(bob.messages.map((m) => [m.id, m.data])).toEqual([
      [ack.id, { text: 'only once' }],
      [expect.any(String), 'next'],
    ]);
    // Alice's resume replayed her own message; the client knew its id from the ack and dropped it.
    expect(alice.messages.map((m) => m.data)).toEqual(['next']);
    expect(alice.client.lastSeq('chat')).toBe(2);
  });

  it('emits gap when the history no longer reaches back, then goes on with new messages', async () => {
    const s = await serve({ membership: new MembershipTable({ chat: ['bob'] }), history: 2 });
    const { bob, gate } = await gatedBob(s);
    await s.manager.broadcast('chat', 'm1');
    await until(() => bob.messages.length === 1, 'm1');

    await goOffline(s, bob, gate);
    for (const text of ['m2', 'm3', 'm4', 'm5']) await s.manager.broadcast('chat', text); // history keeps m4, m5 only
    gate.open();
    await opened(bob, 2);
    await until(() => bob.gaps.length === 1, 'the gap');
    expect(bob.gaps).toEqual(['chat']);
    await until(() => bob.client.lastSeq('chat') === 5, 'the position after the gap');

    await s.manager.broadcast('chat', 'm6');
    await until(() => bob.messages.length === 2, 'm6');
    expect(bob.messages.map((m) => [m.seq, m.data])).toEqual([
      [1, 'm1'],
      [6, 'm6'],
    ]);
    expect(bob.errors).toEqual([]);
  });

  it('orders a replay before held live messages and drops duplicates by id (scripted server)', async () => {
    const welcome = (n: number) => JSON.stringify({ type: 'welcome', protocol: 1, connectionId: `c${n}`, user: { id: 'bob' }, rooms: ['r'], heartbeatMs: 25_000 });
    const message = (seq: number, ref?: string) => JSON.stringify({ type: 'message', room: 'r', id: `id${seq}`, seq, from: 'alice', data: seq, ts: 0, ...(ref ? { ref } : {}) });
    const server = await rawServer((socket, index) => {
      socket.send(welcome(index));
      socket.on('message', (data) => {
        const frame = JSON.parse(String(data)) as { type: string; ref: string; room?: string; rooms?: Record<string, number> };
        if (frame.type === 'join') socket.send(JSON.stringify({ type: 'joined', room: frame.room, seq: 0, ref: frame.ref }));
        if (frame.type === 'resume') {
          expect(frame.rooms).toEqual({ r: 2 });
          // Live messages first (out of order, one already seen), then the replay (one of
          // which also came live), then the end of the answer.
          for (const seq of [6, 5, 2]) socket.send(message(seq));
          for (const seq of [3, 4, 5]) socket.send(message(seq, frame.ref));
          socket.send(JSON.stringify({ type: 'resumed', rooms: { r: { replayed: 3 } }, ref: frame.ref }));
        }
      });
      if (index === 0) {
        socket.send(message(1));
        socket.send(message(2));
        setTimeout(() => socket.terminate(), 20);
      }
    });
    const bob = client({ url: server.url });
    await until(() => bob.messages.length === 6, 'six messages');
    expect(seqs(bob.messages)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(bob.client.lastSeq('r')).toBe(6);
  });
  it('rejoins more rooms than the server\'s join budget, paced inside it, and resumes its own rooms at once', async () => {
    // 80 rooms the app joined: their rejoins after a reconnect are more than the server's
    // join budget (50 at once, then 10 a second) allows, and each refusal is a strike.
    const table = new MembershipTable({ chat: ['bob'] });
    const lobbies = Array.from({ length: 80 }, (_, i) => `lobby${i}`);
    for (const lobby of lobbies) table.canJoinRooms.add(lobby);
    const s = await serve({ membership: table });
    const closes: number[] = [];
    s.manager.on('disconnect', ({ code }) => closes.push(code));
    const { bob, gate } = await gatedBob(s, { publishTimeoutMs: 10_000 });
    for (const [start, end] of [[0, 40], [40, 60], [60, 80]] as const) {
      await Promise.all(lobbies.slice(start, end).map((lobby) => bob.client.join(lobby)));
      await new Promise((resolve) => setTimeout(resolve, 2_000));
    }
    await s.manager.broadcast('chat', 'm1');
    await until(() => bob.messages.length === 1, 'm1');

    await goOffline(s, bob, gate);
    await s.manager.broadcast('chat', 'm2');
    await s.manager.broadcast('chat', 'm3');
    const leaving = bob.client.leave('lobby0');
    gate.open();
    await opened(bob, 2);
    // The auto-joined room is resumed without waiting for the rejoins.
    await until(() => bob.messages.length === 3, 'the missed messages', 1_500);
    expect(s.manager.connectionsOf('bob')[0]!.rooms.length).toBeLessThan(80);
    await leaving;
    await until(() => s.manager.connectionsOf('bob')[0]?.rooms.length === 80, 'every rejoin', 15_000);
    expect(bob.messages.map((m) => m.data)).toEqual(['m1', 'm2', 'm3']);
    expect(bob.client.rooms.size).toBe(80);
    expect(bob.client.rooms.has('lobby0')).toBe(false);
    expect(bob.gaps).toEqual([]);
    expect(bob.left).toEqual(['lobby0']);
    expect(bob.errors).toEqual([]);
    expect(closes).toEqual([1006]); // the cut alone: no 4008 for the rejoins
  }, 40_000);

  it('drops a room the user was removed from while offline, even when its resume was rate-limited', async () => {
    // A join budget of 2: after the reconnect, the rejoin of 'lobby' and the resume frame
    // take it, so the resume of 'ops' (no longer the connection's) is refused with
    // rate_limited; the client then asks with a join, which says forbidden.
    const table = new MembershipTable({ chat: ['bob'], ops: ['bob'] });
    table.canJoinRooms.add('lobby');
    const s = await serve({ membership: table, joinRate: { burst: 2, perSecond: 2 } });
    const { bob, gate } = await gatedBob(s);
    await bob.client.join('lobby');
    await s.manager.broadcast('ops', 'o1');
    await until(() => bob.messages.length === 1, 'o1');
    await new Promise((resolve) => setTimeout(resolve, 1_000));

    await goOffline(s, bob, gate);
    table.remove('ops', 'bob');
    await s.manager.removeMember('ops', 'bob');
    gate.open();
    await opened(bob, 2);
    await until(() => bob.gaps.includes('ops'), 'the refused resume', 5_000);
    await until(() => !bob.client.rooms.has('ops'), 'ops dropped', 5_000);
    expect(bob.left).toContain('ops');
    expect([...bob.client.rooms].sort()).toEqual(['chat', 'lobby']);
  });

  it('neither resumes nor delivers a room the app left while disconnected, or left before', async () => {
    const s = await serve({ membership: new MembershipTable({ chat: ['bob'], ops: ['bob'], news: ['bob'] }) });
    const { bob, gate } = await gatedBob(s);
    await bob.client.leave('news');
    await s.manager.broadcast('ops', 'o1');
    await until(() => bob.messages.length === 1, 'o1');

    await goOffline(s, bob, gate);
    const leaving = bob.client.leave('ops');
    await s.manager.broadcast('ops', 'o2');
    // Right after the next welcome, before the client's leaves reach the server.
    s.manager.once('connect', () => {
      void s.manager.broadcast('news', 'n1');
      void s.manager.broadcast('ops', 'o3');
    });
    gate.open();
    await leaving;
    await opened(bob, 2);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(bob.messages.map((m) => m.data)).toEqual(['o1']);
    expect([...bob.client.rooms]).toEqual(['chat']);
  });

  it('tells `left` once for a room left while offline, and joins no room it is leaving', async () => {
    const table = new MembershipTable({ own: ['bob'] });
    table.canJoinRooms.add('other');
    const s = await serve({ membership: table });
    const { bob, gate } = await gatedBob(s);
    await bob.client.join('other');
    await goOffline(s, bob, gate);
    const leaves = Promise.all([bob.client.leave('own'), bob.client.leave('other')]);
    gate.open();
    await leaves;
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect([...bob.client.rooms]).toEqual([]);
    expect(bob.joined).toEqual([{ room: 'other', seq: 0 }]);
    expect([...bob.left].sort()).toEqual(['other', 'own']);
  });

  it('delivers nothing of a room after leave() or close(), also what was held for its resume', async () => {
    for (const stop of ['leave', 'close'] as const) {
      // A slow hook holds up the frames after the resent publish: the resume is answered late.
      const s = await serve({
        membership: new MembershipTable({ r: ['bob'], s: ['bob'] }),
        onPublish: async () => void (await new Promise((resolve) => setTimeout(resolve, 800))),
      });
      const { bob, gate } = await gatedBob(s);
      await goOffline(s, bob, gate);
      void bob.client.publish('s', 'slow').catch(() => undefined);
      // Live messages of 'r' reach the new connection before its resume is answered: held.
      s.manager.once('connect', () => setTimeout(() => void Promise.all([0, 1, 2].map((i) => s.manager.broadcast('r', `live${i}`))), 50));
      let atStop = -1;
      const stopped = new Promise<void>((resolve) =>
        bob.client.on('welcome', () =>
          setTimeout(() => {
            atStop = bob.messages.length;
            if (stop === 'leave') void bob.client.leave('r');
            else bob.client.close();
            resolve();
          }, 300),
        ),
      );
      gate.open();
      await stopped;
      await new Promise((resolve) => setTimeout(resolve, 1_200));
      expect(atStop).toBe(0);
      expect(bob.messages).toEqual([]);
      await teardown();
    }
  });

  it('resumes a room named __proto__ like any other', async () => {
    const table = new MembershipTable({ plain: ['bob'] });
    table.add('__proto__', 'bob');
    const s = await serve({ membership: table });
    const { bob, gate } = await gatedBob(s);
    await s.manager.broadcast('__proto__', 0);
    await until(() => bob.messages.length === 1, 'the first message');
    await goOffline(s, bob, gate);
    for (const i of [1, 2, 3]) await s.manager.broadcast('__proto__', i);
    gate.open();
    await opened(bob, 2);
    await until(() => bob.messages.length === 4, 'the missed messages');
    expect(bob.messages.map((m) => m.data)).toEqual([0, 1, 2, 3]);
    expect(bob.gaps).toEqual([]);
  });

  it('rejects a publish over the frame limit with too_large, and does not send it again with every reconnect', async () => {
    const s = await serve({ membership: new MembershipTable({ chat: ['bob'] }), maxFrameBytes: 10_000 });
    const bob = client({ url: s.url, token: await tokenFor('bob') });
    await opened(bob);
    await expect(bob.client.publish('chat', 'x'.repeat(20_000))).rejects.toMatchObject({ code: 'too_large' });
    await opened(bob, 2);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(bob.states).toEqual(['open', 'reconnecting', 'open']);
    await expect(bob.client.publish('chat', 'small')).resolves.toMatchObject({ seq: 1 });
  });

  it('sends a publish queued offline into a room it joins again once that rejoin is answered', async () => {
    const table = new MembershipTable({ chat: ['bob'] });
    table.canJoinRooms.add('lobby');
    const s = await serve({ membership: table });
    const { bob, gate } = await gatedBob(s);
    await bob.client.join('lobby');
    await goOffline(s, bob, gate);
    const sent = bob.client.publish('lobby', 'hi', { timeoutMs: 3_000 });
    gate.open();
    await expect(sent).resolves.toMatchObject({ room: 'lobby', seq: 1 });
  });

  it('blames a resume over the frame limit, not a queued publish, and does not resume its rooms again', async () => {
    // 20 auto-joined rooms with long names: the resume frame is over the server's frame limit.
    const names = Array.from({ length: 20 }, (_, i) => `room-${i}-${'x'.repeat(60)}`);
    const table = new MembershipTable(Object.fromEntries(names.map((n) => [n, ['bob']])));
    const s = await serve({ membership: table, maxFrameBytes: 1_000 });
    const { bob, gate } = await gatedBob(s);
    await goOffline(s, bob, gate);
    const sent = bob.client.publish(names[0]!, 'small', { timeoutMs: 3_000 });
    gate.open();
    const outcome = await sent.then(() => 'ok', (e: { code: string }) => e.code);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(outcome).toBe('ok');
    expect(bob.client.state).toBe('open');
  });

  it('takes the frame over the limit in UTF-8 bytes for the one refused with 1009, not the longest string', async () => {
    const s = await serve({ membership: new MembershipTable({ chat: ['bob'] }), maxFrameBytes: 10_000 });
    const bob = client({ url: s.url, token: await tokenFor('bob') });
    await opened(bob);
    // 12 000 bytes in 4 000 units (over), then 9 000 bytes in 9 000 units (under).
    const big = bob.client.publish('chat', '€'.repeat(4_000)).then(() => 'ok', (e: { code: string }) => e.code);
    const fits = bob.client.publish('chat', 'x'.repeat(9_000)).then(() => 'ok', (e: { code: string }) => e.code);
    expect(await fits).toBe('ok');
    expect(await big).toBe('too_large');
  });

  it('asks no resume, and tells no gap, for a rejoined room refused before its resume went out', async () => {
    const table = new MembershipTable({ chat: ['bob'] });
    table.canJoinRooms.add('lobby');
    const s = await serve({ membership: table, joinRate: { burst: 2, perSecond: 1 } });
    const { bob, gate } = await gatedBob(s);
    await bob.client.join('lobby');
    await goOffline(s, bob, gate);
    table.canJoinRooms.delete('lobby');
    gate.open();
    await opened(bob, 2);
    await until(() => bob.left.includes('lobby'), 'lobby refused');
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    expect(bob.errors.map((e) => e.code)).toEqual(['forbidden']);
    expect(bob.gaps).toEqual([]); // the app lost lobby; a gap tells it to refetch a room it is not in
  }, 10_000);

  it('emits gap for the rooms of a resume answered with an error for the whole frame', async () => {
    const welcome = (n: number, seq: number) => JSON.stringify({ type: 'welcome', protocol: 1, connectionId: `c${n}`, user: { id: 'bob' }, rooms: ['r'], seqs: { r: seq }, heartbeatMs: 25_000 });
    const message = (seq: number) => JSON.stringify({ type: 'message', room: 'r', id: `id${seq}`, seq, from: 'alice', data: seq, ts: 0 });
    const server = await rawServer((socket, index) => {
      socket.send(welcome(index, index === 0 ? 0 : 5));
      if (index === 0) {
        socket.send(message(1));
        setTimeout(() => socket.terminate(), 20);
        return;
      }
      socket.send(message(6)); // live, held for the resume
      socket.on('message', (data) => {
        const frame = JSON.parse(String(data)) as { type: string; ref: string };
        if (frame.type === 'resume') socket.send(JSON.stringify({ type: 'error', code: 'internal', message: 'internal error', ref: frame.ref }));
      });
    });
    const bob = client({ url: server.url });
    await until(() => bob.messages.length === 2, 'two messages');
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(bob.messages.map((m) => m.seq)).toEqual([1, 6]); // 2..5 never replayed
    expect(bob.gaps).toEqual(['r']);
  });

  it('does not undo a leave() made while its rejoins are paced', async () => {
    const table = new MembershipTable({ chat: ['bob'] });
    const lobbies = Array.from({ length: 40 }, (_, i) => `lobby${i}`);
    for (const l of lobbies) table.canJoinRooms.add(l);
    const s = await serve({ membership: table });
    const { bob, gate } = await gatedBob(s);
    await Promise.all(lobbies.map((l) => bob.client.join(l)));
    await goOffline(s, bob, gate);
    let left: Promise<void> | undefined;
    bob.client.on('welcome', () => void (left ??= bob.client.leave('lobby39')));
    gate.open();
    await opened(bob, 2);
    await left;
    await until(() => s.manager.connectionsOf('bob')[0]?.rooms.length === 40, 'the rejoins', 10_000).catch(() => undefined);
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(s.manager.connectionsOf('bob')[0]!.rooms).not.toContain('lobby39');
    expect(bob.client.rooms.has('lobby39')).toBe(false);
    expect(bob.joined.filter((j) => j.room === 'lobby39')).toHaveLength(1); // the first join only
  }, 20_000);

  it('does not undo a join() made while its re-leaves are paced', async () => {
    const own = Array.from({ length: 30 }, (_, i) => `own${i}`);
    const table = new MembershipTable(Object.fromEntries([...own, 'chat'].map((r) => [r, ['bob']])));
    const s = await serve({ membership: table });
    const { bob, gate } = await gatedBob(s);
    await Promise.all(own.map((r) => bob.client.leave(r)));
    await goOffline(s, bob, gate);
    let joined: Promise<unknown> | undefined;
    bob.client.on('welcome', () => void (joined ??= bob.client.join('own29')));
    gate.open();
    await opened(bob, 2);
    await joined;
    await new Promise((resolve) => setTimeout(resolve, 2_500)); // every paced re-leave has gone out
    expect(s.manager.connectionsOf('bob')[0]!.rooms).toContain('own29');
    expect(bob.client.rooms.has('own29')).toBe(true);
    expect(bob.left.filter((r) => r === 'own29')).toHaveLength(1); // the first leave only
  }, 20_000);

  it('stays closed when a listener closes it while a welcome is handled', async () => {
    const table = new MembershipTable({ chat: ['bob'] });
    const first = await serve({ membership: table });
    const gate = gatedToken(await tokenFor('bob'));
    const bob = client({ url: first.url, token: gate.token });
    await opened(bob);
    await first.manager.broadcast('chat', 'x');
    await until(() => bob.client.lastSeq('chat') === 1, 'seq 1');
    bob.client.on('gap', () => bob.client.close());
    gate.shut();
    await first.close();
    // A new server on the same port: a new numbering, so the welcome brings a gap.
    await serve({ membership: table }, first.port);
    gate.open();
    await until(() => bob.gaps.length === 1, 'the gap');
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(bob.client.state).toBe('closed');
    expect(bob.states.at(-1)).toBe('closed');
    await expect(bob.client.publish('chat', 'after close')).rejects.toMatchObject({ code: 'closed' });
  });

  it('makes no attempt after a listener of the token function\'s error closes it', async () => {
    const s = await serve({ membership: new MembershipTable({ chat: ['bob'] }) });
    let calls = 0;
    const bob = client({
      url: s.url,
      token: () => {
        calls++;
        throw new Error('refresh failed');
      },
      reconnect: { minDelayMs: 50, maxDelayMs: 50 },
    });
    bob.client.on('error', () => bob.client.close());
    await until(() => bob.client.state === 'closed', 'closed');
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(calls).toBe(1);
  });
});

import { afterEach, describe, expect, it } from 'vitest';
import { TestClient, closeClients } from '../helpers/client.js';
import { MembershipTable, closeAll, startServer, tokenFor, type TestServer } from '../helpers/server.js';
import { MiB, TimerProbe, activeTimeouts, countHeapObjects, mib, report, seedFrom, seededRandom, settledHeap, sleep, waitFor } from './support.js';

/**
 * Connections churning for a bounded time — connect, publish, join, resume, disconnect
 * politely or abruptly — while the server broadcasts and membership changes. Then no
 * connection, user, room or timer may be left, and the heap must be back near its
 * baseline.
 *
 * Duration: SOAK_MS, else 60 s when CI=true, else 10 s.
 */

afterEach(async () => {
  await closeClients();
  await closeAll();
});

const SOAK_MS = Number(process.env.SOAK_MS) > 0 ? Number(process.env.SOAK_MS) : process.env.CI === 'true' ? 60_000 : 10_000;
const SEED = seedFrom('SOAK_SEED', 0x50a_c0de);
const WORKERS = 8;
const USERS = 24;
const ROOMS = 6;
const DEDUPE_WINDOW_MS = 1000;
const WATCHERS = 40;

const users = Array.from({ length: USERS }, (_, i) => `user-${i}`);
const roomNames = Array.from({ length: ROOMS }, (_, i) => `room-${i}`);

function membershipTable(): MembershipTable {
  const table = new MembershipTable();
  // Each user is in two rooms; each room has eight users.
  users.forEach((user, i) => {
    table.add(roomNames[i % ROOMS]!, user);
    table.add(roomNames[(i + 1) % ROOMS]!, user);
  });
  for (let i = 0; i < 3; i++) table.canJoinRooms.add(`public:${i}`);
  return table;
}

interface Counts {
  connections: number;
  publishes: number;
  joins: number;
  resumes: number;
  polite: number;
  abrupt: number;
  midPublish: number;
  received: number;
  refused: number;
}

/** One client's life: connect, do a few things, go away in one of several ways. */
async function life(s: TestServer, tokens: Map<string, string>, table: MembershipTable, random: () => number, counts: Counts, serial: number): Promise<void> {
  const user = users[Math.floor(random() * USERS)]!;
  const client = await TestClient.connect(s.url, tokens.get(user)!);
  counts.connections++;
  const mine = table.roomsOf({ id: user });
  const publishes = 1 + Math.floor(random() * 5);
  for (let i = 0; i < publishes && mine.length > 0; i++) {
    const room = mine[Math.floor(random() * mine.length)]!;
    const answer = await client.request({ type: 'publish', room, data: { user, i, pad: 'p'.repeat(Math.floor(random() * 512)) }, cid: `${serial}-${i}` });
    // forbidden only when a membership change raced the choice of room.
    if (answer.type === 'ack') counts.publishes++;
    else counts.refused++;
  }
  const roll = random();
  if (roll < 0.3) {
    const room = `public:${Math.floor(random() * 3)}`;
    expect(await client.request({ type: 'join', room })).toMatchObject({ type: 'joined', room });
    await client.request({ type: 'publish', room, data: 'hello' });
    counts.joins++;
  } else if (roll < 0.5 && mine.length > 0) {
    const answer = await client.request({ type: 'resume', rooms: { [mine[0]!]: 0 } });
    expect(['message', 'resumed', 'error']).toContain(answer.type);
    counts.resumes++;
  }
  counts.received += client.of('message').length;
  const end = random();
  if (end < 0.6) {
    await client.close();
    counts.polite++;
  } else if (end < 0.85) {
    client.ws.terminate();
    await client.closed();
    counts.abrupt++;
  } else {
    // Gone in the middle of a publish: its answer has nowhere to go.
    client.send({ type: 'publish', room: mine[0] ?? 'room-0', data: 'last words', cid: `${serial}-last` });
    client.ws.terminate();
    await client.closed();
    counts.midPublish++;
  }
}

describe('soak', () => {
  it(`churns connections for ${SOAK_MS / 1000} s and leaks no connection, room, timer or memory`, async () => {
    const table = membershipTable();
    const s = await startServer({
      membership: table,
      presence: true,
      // The sweep pings everyone several times during the soak.
      heartbeatMs: 500,
      // Short, so the retention the cid window intends is over before the heap is measured.
      dedupeWindowMs: DEDUPE_WINDOW_MS,
    });
    // Tokens carry an expiry, so every connection arms (and must clear) an expiry timer.
    const tokens = new Map<string, string>();
    for (const user of users) tokens.set(user, await tokenFor(user, { expiresIn: '1h' }));
    const random = seededRandom(SEED);
    const counts: Counts = { connections: 0, publishes: 0, joins: 0, resumes: 0, polite: 0, abrupt: 0, midPublish: 0, received: 0, refused: 0 };

    // Lives of clients, WORKERS at a time, until `until`.
    let serial = 0;
    const churn = (until: number) =>
      Promise.all(
        Array.from({ length: WORKERS }, async () => {
          while (Date.now() < until) await life(s, tokens, table, random, counts, serial++);
        }),
      );
    /** After the cid window: one cid publish prunes it (it is pruned lazily, by the next one). */
    const settle = async (): Promise<void> => {
      await waitFor(() => s.manager.stats().connections === 0, 10_000, 'every connection to be released');
      await sleep(DEDUPE_WINDOW_MS + 50);
      const client = await TestClient.connect(s.url, tokens.get('user-0')!);
      await client.request({ type: 'publish', room: 'room-0', data: 'settle', cid: `settle-${serial++}` });
      await client.close();
      await waitFor(() => s.manager.stats().connections === 0, 5_000, 'the settling connection to be released');
    };

    // Warm-up, then the baselines.
    await churn(Date.now() + Math.min(2_000, SOAK_MS / 5));
    await settle();
    const baseline = await settledHeap();
    const baselineTimeouts = activeTimeouts();
    Object.assign(counts, { connections: 0, publishes: 0, joins: 0, resumes: 0, polite: 0, abrupt: 0, midPublish: 0, received: 0, refused: 0 });
    const messagesBefore = s.manager.stats().messages;

    // Watchers stay connected all along, so every broadcast fans out to a crowd.
    const watchers = await Promise.all(Array.from({ length: WATCHERS }, (_, i) => TestClient.connect(s.url, tokens.get(users[i % USERS]!)!)));
    let watched = 0;
    const trim = setInterval(() => {
      for (const watcher of watchers) {
        watched += watcher.of('message').length;
        watcher.frames.length = 0;
      }
    }, 500);

    const started = Date.now();
    const deadline = started + SOAK_MS;
    // The last part runs under a probe that sees every timer (it slows promises down, hence not all along).
    const probedFrom = started + Math.round(SOAK_MS * 0.7);
    let broadcasts = 0;
    let membershipChanges = 0;
    let peakConnections = 0;
    // The server side churns too: broadcasts, and a user leaving and rejoining a room.
    const serverSide = (async () => {
      let toggled: { room: string; user: string } | undefined;
      while (Date.now() < deadline) {
        await s.manager.broadcast(roomNames[Math.floor(random() * ROOMS)]!, { tick: broadcasts++ });
        peakConnections = Math.max(peakConnections, s.manager.stats().connections);
        if (broadcasts % 10 === 0) {
          if (toggled) {
            table.add(toggled.room, toggled.user);
            await s.manager.addMember(toggled.room, toggled.user);
            toggled = undefined;
          } else {
            toggled = { room: roomNames[Math.floor(random() * ROOMS)]!, user: users[Math.floor(random() * USERS)]! };
            table.remove(toggled.room, toggled.user);
            s.manager.removeMember(toggled.room, toggled.user);
          }
          membershipChanges++;
        }
        await sleep(20);
      }
      if (toggled) {
        table.add(toggled.room, toggled.user);
        await s.manager.addMember(toggled.room, toggled.user);
      }
    })();
    await churn(probedFrom);
    const unprobed = { connections: counts.connections, ms: Date.now() - started };
    const probe = new TimerProbe().start();
    await Promise.all([serverSide, churn(deadline)]);
    const soakMs = Date.now() - started;
    clearInterval(trim);
    for (const watcher of watchers) watched += watcher.of('message').length;
    await Promise.all(watchers.map((watcher) => watcher.close()));
    watchers.length = 0;

    // ---- nothing left: connections, users, rooms, sockets
    await waitFor(() => s.manager.stats().connections === 0, 10_000, 'every connection to be released');
    const stats = s.manager.stats();
    expect(stats).toMatchObject({ connections: 0, users: 0, rooms: 0 });
    expect(s.manager.onlineUsers()).toEqual([]);
    expect(stats.cachedRooms).toBeLessThanOrEqual(ROOMS + 3);
    await waitFor(() => s.adapter.clients.size === 0, 5_000, 'the adapter to forget every socket');

    // ---- no timer left: every one created during the soak was cleared or fired
    await sleep(50);
    const timersAlive = probe.alive;
    probe.stop();
    const timeoutsNow = activeTimeouts();

    // ---- heap back near the baseline, once the cid window has passed and been pruned
    await settle();
    const heap = await settledHeap();
    const growth = heap.bytes - baseline.bytes;

    report('soak', {
      seed: SEED,
      soakMs,
      workers: WORKERS,
      ...counts,
      connectionsPerSecond: Math.round(counts.connections / (soakMs / 1000)),
      connectionsPerSecondUnprobed: Math.round(unprobed.connections / (unprobed.ms / 1000)),
      watchers: WATCHERS,
      watcherMessages: watched,
      peakConnections,
      serverBroadcasts: broadcasts,
      membershipChanges,
      messagesBroadcast: stats.messages - messagesBefore,
      cachedRooms: stats.cachedRooms,
      timersCreated: probe.created,
      timersAlive,
      refTimeouts: { before: baselineTimeouts, after: timeoutsNow },
      heapBaseline: mib(baseline.bytes),
      heapAfter: mib(heap.bytes),
      heapGrowth: mib(growth),
      gc: heap.collected,
    });
    // Throughput depends on the machine (two shared cores here); the claim is about what is left after.
    expect(counts.connections).toBeGreaterThan(5 * WORKERS);
    // A timer or two of the test's own (its sleeps) may be in flight; a leak would be one per connection.
    expect(timersAlive).toBeLessThanOrEqual(3);
    expect(timeoutsNow).toBeLessThanOrEqual(baselineTimeouts + 2);
    expect(growth).toBeLessThan((heap.collected ? 16 : 64) * MiB);
  }, SOAK_MS + 60_000);

  it('keeps no timer state of a closed connection whose token had an expiry', async () => {
    // Every connection arms an expiry timer for its token's exp. Node keeps one internal
    // TimersList per distinct duration; a cleared timer's list must go with it, or a
    // server retains one per connection until the token would have expired (hours, days).
    const CONNECTIONS = 150;
    const s = await startServer({ membership: new MembershipTable({ lobby: ['expiring'] }) });
    const token = await tokenFor('expiring', { expiresIn: '1h' });
    const before = await countHeapObjects('TimersList');
    for (let i = 0; i < CONNECTIONS; i++) {
      const client = await TestClient.connect(s.url, token);
      await client.close();
      await sleep(2); // a new ms: a new remaining duration, as between real connections
    }
    await waitFor(() => s.manager.stats().connections === 0, 5_000, 'every connection to be released');
    const after = await countHeapObjects('TimersList');
    report('expiry timers', { connections: CONNECTIONS, timerListsBefore: before, timerListsAfter: after });
    expect(after - before).toBeLessThan(CONNECTIONS / 10);
  }, 60_000);
});

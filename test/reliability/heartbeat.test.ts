import { performance } from 'node:perf_hooks';
import { afterEach, describe, expect, it } from 'vitest';
import { TestClient, closeClients } from '../helpers/client.js';
import { MembershipTable, closeAll, startServer, tokenFor } from '../helpers/server.js';
import { connectWith, lagMonitor, rawSocket, report, sleep, waitFor } from './support.js';

/**
 * The ws adapter checks every connection once each `heartbeatMs`, a slice of them every
 * 100 ms: it pings one it has not heard from since the last check, and terminates one
 * that left a ping unanswered for two rounds. A client that stops answering (a dead
 * network, a phone asleep) must be gone within about three heartbeats, and its user shown
 * offline to the others.
 */

afterEach(async () => {
  await closeClients();
  await closeAll();
});

// Small, but not so small that a stalled event loop on a busy shared machine (server and
// clients share this process) turns into a missed pong.
const HEARTBEAT_MS = 200;
/**
 * The sweep allows up to three heartbeats (a ping unanswered for two sweeps); on top, a little for the close to travel, and
 * twice the worst timer lateness measured meanwhile (a busy shared machine delays sweeps).
 */
const slack = (lagMs: number): number => 150 + 2 * lagMs;

/**
 * How long, from now, until `gone` settles (at most ten heartbeats and 5 s), and the
 * worst timer lateness meanwhile.
 */
async function timeUntil(gone: Promise<unknown>): Promise<{ afterMs: number; lagMs: number }> {
  const start = performance.now();
  const lag = lagMonitor();
  await Promise.race([gone, sleep(10 * HEARTBEAT_MS + 5_000)]);
  return { afterMs: performance.now() - start, lagMs: lag.stop() };
}

describe('heartbeats', () => {
  it('terminates a client that stops answering pings within about three heartbeats and tells the others it is offline', async () => {
    const s = await startServer({ membership: new MembershipTable({ team: ['alice', 'bob', 'carol'] }), heartbeatMs: HEARTBEAT_MS, presence: true });
    const alice = await TestClient.connect(s.url, await tokenFor('alice'));
    expect(alice.welcome.heartbeatMs).toBe(HEARTBEAT_MS);

    // bob answers pings by hand, so the test decides when he stops.
    let answering = true;
    let pings = 0;
    const bob = await connectWith(s.url, await tokenFor('bob'), { autoPong: false });
    bob.ws.on('ping', (data: Buffer) => {
      pings++;
      if (answering) bob.ws.pong(data);
    });
    await alice.next('presence', (f) => f.user === 'bob' && f.event === 'online');

    // While he answers, he stays, over many sweeps.
    await waitFor(() => pings >= 6 || bob.closeCode !== undefined, 20 * HEARTBEAT_MS + 5_000, 'six pings');
    expect(bob.closeCode).toBeUndefined();
    expect(s.manager.connectionsOf('bob')).toHaveLength(1);

    answering = false;
    const stopped = performance.now();
    const { afterMs: terminatedAfter, lagMs } = await timeUntil(bob.closed());
    // Terminated, not closed: no close frame, so the client sees an abnormal closure.
    expect(bob.closeCode).toBe(1006);
    const offline = await alice.next('presence', (f) => f.user === 'bob' && f.event === 'offline');
    const offlineAfter = performance.now() - stopped;
    expect(offline).toEqual({ type: 'presence', room: 'team', user: 'bob', event: 'offline' });
    expect(s.manager.connectionsOf('bob')).toEqual([]);
    await waitFor(() => s.adapter.clients.size === 1, 2_000, 'the adapter to forget bob');

    // alice, who answered all along, is still served.
    expect(await alice.request({ type: 'ping' })).toMatchObject({ type: 'pong' });
    expect(alice.closeCode).toBeUndefined();

    report('heartbeat (stops answering)', {
      heartbeatMs: HEARTBEAT_MS,
      pingsAnswered: pings,
      terminatedAfterMs: Math.round(terminatedAfter),
      offlineSeenAfterMs: Math.round(offlineAfter),
      worstTimerLagMs: Math.round(lagMs),
    });
    expect(terminatedAfter).toBeLessThan(3 * HEARTBEAT_MS + slack(lagMs));
    expect(offlineAfter).toBeLessThan(3 * HEARTBEAT_MS + slack(lagMs) + 100);
  });

  it('drops a client whose socket stopped reading (a phone asleep) the same way', async () => {
    const s = await startServer({ membership: new MembershipTable({ team: ['alice', 'carol'] }), heartbeatMs: HEARTBEAT_MS, presence: true });
    const alice = await TestClient.connect(s.url, await tokenFor('alice'));
    const carol = await TestClient.connect(s.url, await tokenFor('carol'));
    await alice.next('presence', (f) => f.user === 'carol' && f.event === 'online');
    const disconnected = new Promise<{ code: number }>((resolve) => {
      s.manager.on('disconnect', (event) => {
        if (event.user === 'carol') resolve(event);
      });
    });

    rawSocket(carol).pause();
    const { afterMs: droppedAfter, lagMs } = await timeUntil(disconnected);
    await alice.next('presence', (f) => f.user === 'carol' && f.event === 'offline');
    expect(s.manager.stats()).toMatchObject({ connections: 1, users: 1 });

    // When it wakes up, the client learns the connection is gone and can reconnect and resume.
    rawSocket(carol).resume();
    await carol.closed();
    expect(carol.closeCode).toBe(1006);

    report('heartbeat (socket paused)', { heartbeatMs: HEARTBEAT_MS, droppedAfterMs: Math.round(droppedAfter), worstTimerLagMs: Math.round(lagMs) });
    expect(droppedAfter).toBeLessThan(3 * HEARTBEAT_MS + slack(lagMs));
  });

  it('does not ping a connection that keeps sending, and terminates it once it falls silent', async () => {
    const s = await startServer({ membership: new MembershipTable({ team: ['alice', 'bob', 'carol'] }), heartbeatMs: HEARTBEAT_MS, presence: true });
    const alice = await TestClient.connect(s.url, await tokenFor('alice'));
    // bob sends a frame every quarter heartbeat; carol sends nothing. Both answer pings by hand.
    let talking = true;
    const bob = await connectWith(s.url, await tokenFor('bob'), { autoPong: false });
    const carol = await connectWith(s.url, await tokenFor('carol'), { autoPong: false });
    const pingsTo = { bob: 0, carol: 0 };
    bob.ws.on('ping', (data: Buffer) => {
      pingsTo.bob++;
      if (talking) bob.ws.pong(data);
    });
    carol.ws.on('ping', (data: Buffer) => {
      pingsTo.carol++;
      carol.ws.pong(data);
    });
    const chatter = setInterval(() => {
      if (talking) bob.ws.send(JSON.stringify({ type: 'ping' }));
    }, HEARTBEAT_MS / 4);
    try {
      // Count from one heartbeat after the chatter began: bob was pinged like anyone before.
      await sleep(HEARTBEAT_MS);
      pingsTo.bob = 0;
      pingsTo.carol = 0;
      const lag = lagMonitor();
      await sleep(10 * HEARTBEAT_MS);
      const quietLagMs = lag.stop();
      const whileTalking = { ...pingsTo };
      // carol is pinged every round; bob, heard from in every round, is not (an event loop
      // stalled for a heartbeat could leave one round without his frames, and one ping).
      expect(whileTalking.carol).toBeGreaterThanOrEqual(8);
      expect(whileTalking.bob).toBeLessThanOrEqual(1);
      expect(bob.closeCode).toBeUndefined();

      talking = false;
      const { afterMs: terminatedAfter, lagMs } = await timeUntil(bob.closed());
      expect(bob.closeCode).toBe(1006);
      await alice.next('presence', (f) => f.user === 'bob' && f.event === 'offline');
      expect(carol.closeCode).toBeUndefined();

      report('heartbeat (busy connection)', {
        heartbeatMs: HEARTBEAT_MS,
        pingsToBusyIn10Heartbeats: whileTalking.bob,
        pingsToSilentIn10Heartbeats: whileTalking.carol,
        terminatedAfterSilenceMs: Math.round(terminatedAfter),
        worstTimerLagMs: Math.round(Math.max(quietLagMs, lagMs)),
      });
      // Its first ping goes out at the first check that heard nothing: one heartbeat more than for a silent connection.
      expect(terminatedAfter).toBeLessThan(4 * HEARTBEAT_MS + slack(lagMs));
    } finally {
      clearInterval(chatter);
    }
  });

  it('spreads the pings over the heartbeat instead of sending them in one burst, and still pings everyone once per heartbeat', async () => {
    const heartbeatMs = 1_000;
    const users = Array.from({ length: 20 }, (_, i) => `user${i}`);
    const s = await startServer({ membership: new MembershipTable({ crowd: users }), heartbeatMs });
    const clients = await Promise.all(users.map(async (user) => connectWith(s.url, await tokenFor(user))));
    const pingsAt: number[][] = clients.map(() => []);
    const start = performance.now();
    clients.forEach((client, i) => client.ws.on('ping', () => pingsAt[i]?.push(performance.now() - start)));
    await sleep(2 * heartbeatMs + heartbeatMs / 2);

    // Everyone is pinged about once per heartbeat: two or three times in two and a half.
    for (const times of pingsAt) {
      expect(times.length).toBeGreaterThanOrEqual(2);
      expect(times.length).toBeLessThanOrEqual(3);
    }
    // The first pings are spread over the heartbeat: twenty connections in ten slices (one per 100 ms).
    const first = pingsAt.map((times) => times[0] ?? Number.NaN).sort((a, b) => a - b);
    const spread = (first.at(-1) ?? 0) - (first[0] ?? 0);
    report('heartbeat (spread)', { heartbeatMs, connections: users.length, firstPingSpreadMs: Math.round(spread) });
    expect(spread).toBeGreaterThan(heartbeatMs / 2);
    const distinctTicks = new Set(first.map((t) => Math.round(t / (heartbeatMs / 10)))).size;
    expect(distinctTicks).toBeGreaterThanOrEqual(5);
  });
});

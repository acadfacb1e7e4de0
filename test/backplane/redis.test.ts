import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { Backplane, BackplaneHandlers, MembershipChange } from '../../src/index.js';
import { RedisBackplane } from '../../src/backplanes/redis.js';
import { TestClient, closeClients } from '../helpers/client.js';
import { deleteKeys } from '../helpers/redis.js';
import { MembershipTable, closeAll, startServer, tokenFor, type TestServer } from '../helpers/server.js';
import { backplaneContract, type BackplaneFixture } from './contract.js';

const HOST = '127.0.0.1';
const SHARED_PORT = 6379;
/** Unique per test file run: every key this file makes starts with it, and is deleted after. */
const FILE_PREFIX = `roomwire-test:${process.pid}:${Date.now().toString(36)}`;

function reachable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = netConnect(port, HOST);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

function client(port: number): Redis {
  // Fail fast while Redis is away (a publish must fail to its publisher, not queue), and
  // reconnect quickly in tests.
  return new Redis({ host: HOST, port, enableOfflineQueue: false, autoResendUnfulfilledCommands: false, retryStrategy: () => 100, maxRetriesPerRequest: 1 });
}

/** A test-side connection (cleanup, inspection): it may queue until connected. */
function admin(port: number): Redis {
  return new Redis({ host: HOST, port });
}

type Method = (...args: never[]) => unknown;

/** `connection` with its `method` replaced by what `wrap` makes of the real one: a flaky Redis. */
function intercepted(connection: Redis, method: keyof Redis, wrap: (real: Method) => Method): Redis {
  return new Proxy(connection, {
    get(target, property) {
      const value: unknown = Reflect.get(target, property, target);
      if (typeof value !== 'function') return value;
      const bound = (value as Method).bind(target) as Method;
      return property === method ? wrap(bound) : bound;
    },
  });
}


const up = await reachable(SHARED_PORT);
if (!up) {
  const reason = `Redis is not reachable on ${HOST}:${SHARED_PORT}`;
  if (process.env.CI === 'true') throw new Error(`${reason}; the Redis backplane tests need it in CI`);
  console.log(`skipping the Redis backplane tests: ${reason}`);
}

let testCount = 0;

function fixture(port: number, nodeTimeoutMs: number): BackplaneFixture {
  const prefix = `${FILE_PREFIX}:${++testCount}`;
  const clients: Redis[] = [];
  const crashed = new Map<Backplane, Redis[]>();
  return {
    nodeTimeoutMs,
    node() {
      const redis = client(port);
      const subscriber = client(port);
      clients.push(redis, subscriber);
      const backplane = new RedisBackplane({ redis, subscriber, prefix, nodeTimeoutMs, heartbeatMs: 100, commandTimeoutMs: 1_000 });
      crashed.set(backplane, [redis, subscriber]);
      return backplane;
    },
    crash(node) {
      for (const connection of crashed.get(node) ?? []) connection.disconnect();
    },
    async cleanup() {
      const adminRedis = admin(port);
      try {
        await deleteKeys(adminRedis, prefix);
      } finally {
        adminRedis.disconnect();
        for (const connection of clients) connection.disconnect();
      }
    },
  };
}

describe.skipIf(!up)('RedisBackplane', () => {
  backplaneContract('RedisBackplane', () => Promise.resolve(fixture(SHARED_PORT, 700)));

  afterAll(async () => {
    const adminRedis = admin(SHARED_PORT);
    await deleteKeys(adminRedis, FILE_PREFIX);
    adminRedis.disconnect();
  });

  describe('one subscriber connection', () => {
    let cluster: BackplaneFixture | undefined;
    const started: Backplane[] = [];
    afterEach(async () => {
      for (const node of started.splice(0)) await node.close();
      await cluster?.cleanup();
      cluster = undefined;
    });

    it('keeps receiving membership changes after its last room channel is unsubscribed', async () => {
      // ioredis counts channels and shard channels as one: when the reply to the last
      // SUNSUBSCRIBE says 0, it leaves subscriber mode and drops what a plain SUBSCRIBE
      // still delivers. Every channel of the backplane is therefore a shard channel.
      cluster = fixture(SHARED_PORT, 5_000);
      const [a, b] = [cluster.node(), cluster.node()];
      started.push(a, b);
      const changes: MembershipChange[] = [];
      const errors: string[] = [];
      await a.start({
        message: () => undefined,
        membership: (change) => changes.push(change),
        reconnected: () => undefined,
        presence: () => undefined,
        error: (error, phase) => errors.push(`${phase}: ${error.message}`),
      });
      await b.start({ message: () => undefined, membership: () => undefined, reconnected: () => undefined, presence: () => undefined, error: () => undefined });
      await a.subscribe('team');
      await a.unsubscribe('team');
      await b.announce({ kind: 'add', room: 'team', user: 'dave' });
      for (let waited = 0; changes.length === 0 && waited < 2_000; waited += 20) await new Promise((r) => setTimeout(r, 20));
      expect(changes).toEqual([{ kind: 'add', room: 'team', user: 'dave' }]);
      expect(errors).toEqual([]);
    });
  });

  describe('a command connection that fails or lags once', () => {
    const owned: Redis[] = [];
    let prefix = '';
    afterEach(async () => {
      await closeClients();
      await closeAll();
      const adminRedis = admin(SHARED_PORT);
      await deleteKeys(adminRedis, prefix);
      adminRedis.disconnect();
      for (const connection of owned.splice(0)) connection.disconnect();
    });

    /** A new prefix, and the command and subscriber connections of two nodes. */
    function twoNodes(): [Redis, Redis, Redis, Redis] {
      prefix = `${FILE_PREFIX}:${++testCount}`;
      const connections: [Redis, Redis, Redis, Redis] = [client(SHARED_PORT), client(SHARED_PORT), client(SHARED_PORT), client(SHARED_PORT)];
      owned.push(...connections);
      return connections;
    }

    /** Two nodes on the given connections (perhaps intercepted), alice on the first and bob on the second, both in `chat`. */
    async function chatOnTwoNodes(redis1: Redis, subscriber1: Redis, redis2: Redis, subscriber2: Redis) {
      const options = { prefix, heartbeatMs: 100, commandTimeoutMs: 1_000 };
      const table = new MembershipTable({ chat: ['alice', 'bob'] });
      const n1 = await startServer({ membership: table, publishRate: false, backplane: new RedisBackplane({ redis: redis1, subscriber: subscriber1, ...options }) });
      const n2 = await startServer({ membership: table, publishRate: false, backplane: new RedisBackplane({ redis: redis2, subscriber: subscriber2, ...options }) });
      const alice = await TestClient.connect(n1.url, await tokenFor('alice'));
      const bob = await TestClient.connect(n2.url, await tokenFor('bob'));
      return { n1, n2, alice, bob, table };
    }

    it.each(['same', 'other'] as const)('gives a publish it did not confirm in time once, not to its publisher, and a retry with its cid on the %s node its ack', async (retryOn) => {
      const [slowCommands, subscriber1, commands2, subscriber2] = twoNodes();
      let delayNext = false;
      // The command connection, but its next publish script reaches Redis after the
      // backplane gave up on it (commandTimeoutMs 1 s), as with a stalled Redis.
      const slow = intercepted(slowCommands, 'evalsha', (evalsha) => (sha: string, keys: number, ...args: (string | number)[]) => {
        const publish = keys >= 3 && String(args[0]).includes(':seq:');
        if (!publish || !delayNext) return (evalsha as Redis['evalsha'])(sha, keys, ...args);
        delayNext = false;
        return new Promise((resolve) => setTimeout(resolve, 1_500)).then(() => (evalsha as Redis['evalsha'])(sha, keys, ...args));
      });
      const { n2, alice, bob } = await chatOnTwoNodes(slow, subscriber1, commands2, subscriber2);
      expect(await alice.request({ type: 'publish', room: 'chat', data: 'one', cid: 'c1' })).toMatchObject({ type: 'ack', seq: 1 });

      delayNext = true;
      const unconfirmed = await alice.request({ type: 'publish', room: 'chat', data: 'two', cid: 'c2' });
      expect(unconfirmed).toMatchObject({ type: 'error', code: 'internal' });
      expect(unconfirmed.message).toMatch(/retry with the same cid/);
      // On the other node the retry runs before the first attempt's script reaches Redis.
      const retrying = retryOn === 'same' ? alice : await TestClient.connect(n2.url, await tokenFor('alice'));
      const retry = await retrying.request({ type: 'publish', room: 'chat', data: 'two', cid: 'c2' });
      expect(retry).toMatchObject({ type: 'ack', seq: 2 });
      expect(await retrying.request({ type: 'publish', room: 'chat', data: 'three', cid: 'c3' })).toMatchObject({ type: 'ack', seq: 3 });

      await bob.next('message', (m) => m.seq === 3);
      await new Promise((resolve) => setTimeout(resolve, 800));
      expect(bob.of('message').map((m) => [m.seq, m.data])).toEqual([[1, 'one'], [2, 'two'], [3, 'three']]);
      // Only the connection that published it goes without; alice's first one is another.
      expect(retrying.of('message')).toEqual([]);
      expect(alice.of('message').map((m) => m.seq)).toEqual(retryOn === 'same' ? [] : [2, 3]);
    });

    it('publishes a retry with the cid of a publish that never reached Redis at once, on the same connection', async () => {
      const [commands1, subscriber1, commands2, subscriber2] = twoNodes();
      let failNext = false;
      // Node 1's next publish script is refused before it is sent, as ioredis refuses
      // commands while Redis is unreachable (or as Redis refuses a script when out of memory).
      const failing = intercepted(commands1, 'evalsha', (evalsha) => (sha: string, keys: number, ...args: (string | number)[]) => {
        if (failNext && keys >= 3 && String(args[0]).includes(':seq:')) {
          failNext = false;
          return Promise.reject(new Error("Stream isn't writeable and enableOfflineQueue options is false"));
        }
        return (evalsha as Redis['evalsha'])(sha, keys, ...args);
      });
      const { n2, alice, bob } = await chatOnTwoNodes(failing, subscriber1, commands2, subscriber2);
      expect(await alice.request({ type: 'publish', room: 'chat', data: 'one', cid: 'c1' })).toMatchObject({ type: 'ack', seq: 1 });
      failNext = true;
      expect(await alice.request({ type: 'publish', room: 'chat', data: 'two', cid: 'c2' })).toMatchObject({ type: 'error', code: 'internal' });
      // Redis is fine again: the retry the error asks for is published now, not after the
      // 10 s the first attempt's copy is awaited (which would also hold up the frames after it).
      const started = Date.now();
      expect(await alice.request({ type: 'publish', room: 'chat', data: 'two', cid: 'c2' })).toMatchObject({ type: 'ack', seq: 2 });
      expect(await alice.request({ type: 'publish', room: 'chat', data: 'three', cid: 'c3' })).toMatchObject({ type: 'ack', seq: 3 });
      expect(Date.now() - started).toBeLessThan(2_000);
      await bob.next('message', (m) => m.seq === 3);
      await bob.quiet(300);
      expect(bob.of('message').map((m) => [m.seq, m.data])).toEqual([[1, 'one'], [2, 'two'], [3, 'three']]);
    });

    it('does not take messages that arrive while it reads a room\'s latest seq after a reconnect for a restart of the numbering', async () => {
      const [commands1, subscriber1, commands2, subscriber2] = twoNodes();
      let slowGets = false;
      // Node 2's GETs run in Redis at once, but their replies come 300 ms later: the
      // subscriber's messages published meanwhile overtake them, as on a busy link.
      const slow = intercepted(commands2, 'get', (get) => (key: string) => {
        const reply = (get as Redis['get'])(key);
        return slowGets ? reply.then(async (value) => (await new Promise((r) => setTimeout(r, 300)), value)) : reply;
      });
      const { n2, alice, bob } = await chatOnTwoNodes(commands1, subscriber1, slow, subscriber2);
      expect(await alice.request({ type: 'publish', room: 'chat', data: 1 })).toMatchObject({ type: 'ack', seq: 1 });
      await bob.next('message', (m) => m.seq === 1);
      // Node 2's subscriber blips; once it is back, node 2 reads the room's latest seq.
      slowGets = true;
      const back = new Promise((resolve) => subscriber2.once('ready', resolve));
      subscriber2.disconnect(true);
      await back;
      for (let n = 2; n <= 6; n++) {
        expect(await alice.request({ type: 'publish', room: 'chat', data: n })).toMatchObject({ type: 'ack', seq: n });
        await new Promise((resolve) => setTimeout(resolve, 40));
      }
      await bob.until((frames) => frames.filter((f) => f.type === 'message').length === 6 || bob.closeCode !== undefined, 3_000, 'the messages');
      await bob.quiet(400);
      // Nothing restarted: bob stays connected and gets every message once.
      expect(bob.closeCode).toBeUndefined();
      expect(bob.of('message').map((m) => m.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    });

    it('leaves the excepted connection out of a broadcast its node catches up from the stream', async () => {
      const [commands1, subscriber1, commands2, subscriber2] = twoNodes();
      const { n1, n2, alice, bob } = await chatOnTwoNodes(commands1, subscriber1, commands2, subscriber2);
      const bobTab = await TestClient.connect(n2.url, await tokenFor('bob'));
      const bobId = bob.welcome.connectionId as string;
      await n1.manager.broadcast('chat', 'one', { except: bobId });
      await bobTab.next('message', (m) => m.seq === 1);
      // Node 2's subscriber is cut off while the next broadcast, leaving bob's first
      // connection out, is published: node 2 fetches it from the stream once it is back.
      const back = new Promise((resolve) => subscriber2.once('ready', resolve));
      const gone = new Promise((resolve) => subscriber2.once('close', resolve));
      subscriber2.disconnect(true);
      await gone;
      await n1.manager.broadcast('chat', 'two', { except: bobId });
      await back;
      await bobTab.next('message', (m) => m.seq === 2);
      expect(await alice.request({ type: 'publish', room: 'chat', data: 'three' })).toMatchObject({ type: 'ack', seq: 3 });
      await bob.next('message', (m) => m.seq === 3);
      await bob.quiet(200);
      expect(bob.of('message').map((m) => m.data)).toEqual(['three']);
      expect(bobTab.of('message').map((m) => m.data)).toEqual(['one', 'two', 'three']);
    });

    it('applies the membership changes announced while its subscriber was away once it is back', async () => {
      const [commands1, subscriber1, commands2, subscriber2] = twoNodes();
      const { n1, n2, alice, bob, table } = await chatOnTwoNodes(commands1, subscriber1, commands2, subscriber2);
      // carol's only connection is on node 2, outside the room.
      const carol = await TestClient.connect(n2.url, await tokenFor('carol'));
      expect(await alice.request({ type: 'publish', room: 'chat', data: 'one' })).toMatchObject({ type: 'ack', seq: 1 });
      await bob.next('message', (m) => m.seq === 1);
      // Node 2's subscriber drops; node 1 removes bob and adds carol before it is back.
      const back = new Promise((resolve) => subscriber2.once('ready', resolve));
      subscriber2.disconnect(true);
      table.remove('chat', 'bob');
      await n1.manager.removeMember('chat', 'bob');
      table.add('chat', 'carol');
      await n1.manager.addMember('chat', 'carol');
      await back;
      // Back: node 2 forgets the participants it had cached, as it may have missed changes.
      for (let i = 0; i < 100 && n2.manager.stats().cachedRooms > 0; i++) await new Promise((resolve) => setTimeout(resolve, 20));
      expect(await alice.request({ type: 'publish', room: 'chat', data: 'two' })).toMatchObject({ type: 'ack', seq: 2 });
      expect(await carol.next('joined')).toEqual({ type: 'joined', room: 'chat', seq: 1 });
      expect(await carol.next('message')).toMatchObject({ seq: 2, data: 'two' });
      await bob.quiet(300);
      expect(bob.of('message').map((m) => m.seq)).toEqual([1]);
      expect(bob.of('left')).toEqual([{ type: 'left', room: 'chat' }]);
    });

    it('says offline only when the last connection closes, though one count did not reach Redis', async () => {
      const [commands1, subscriber1, commands2, subscriber2] = twoNodes();
      let failNextCount = false;
      // Node 1's next presence count fails, as during a blip of its command connection.
      const flaky = intercepted(commands1, 'evalsha', (evalsha) => (sha: string, keys: number, ...args: (string | number)[]) => {
        if (failNextCount && keys === 4 && String(args[0]).includes(':presence:')) {
          failNextCount = false;
          return Promise.reject(new Error('Connection is closed.'));
        }
        return (evalsha as Redis['evalsha'])(sha, keys, ...args);
      });
      // Heartbeats far apart: the count must come right without the heartbeat's rewrite.
      const options = { prefix, heartbeatMs: 5_000, nodeTimeoutMs: 15_000, commandTimeoutMs: 1_000 };
      const table = new MembershipTable({ team: ['alice', 'bob'] });
      const n1 = await startServer({ membership: table, presence: true, backplane: new RedisBackplane({ redis: flaky, subscriber: subscriber1, ...options }) });
      const n2 = await startServer({ membership: table, presence: true, backplane: new RedisBackplane({ redis: commands2, subscriber: subscriber2, ...options }) });
      const alice = await TestClient.connect(n2.url, await tokenFor('alice'));
      const bobEvents = () => alice.of('presence').filter((f) => f.user === 'bob').map((f) => f.event);
      const first = await TestClient.connect(n1.url, await tokenFor('bob'));
      await alice.until(() => bobEvents().length === 1);
      failNextCount = true;
      const second = await TestClient.connect(n1.url, await tokenFor('bob'));
      await first.close();
      await alice.quiet(500);
      expect(bobEvents()).toEqual(['online']);
      await second.close();
      await alice.until(() => bobEvents().length === 2);
      expect(bobEvents()).toEqual(['online', 'offline']);
    });

    /**
     * Two nodes with presence on; node 1's presence counts fail while `outage.down`, and
     * with `outage.slowNext` the next one runs in Redis at once but its reply comes 400 ms
     * later (`outage.slowSent` once it went). Replies keep their order, as on one link.
     */
    async function presenceOutage(users: string[], timing = { heartbeatMs: 100, nodeTimeoutMs: 15_000 }) {
      const [commands1, subscriber1, commands2, subscriber2] = twoNodes();
      // With `beats`, node 1's heartbeats fail too, as when Redis is out of its reach;
      // with `node2`, node 2's counts and heartbeats fail.
      const outage = { down: false, beats: false, node2: false, slowNext: false, slowSent: false };
      let replies: Promise<unknown> = Promise.resolve();
      const flaky = intercepted(commands1, 'evalsha', (evalsha) => (sha: string, keys: number, ...args: (string | number)[]) => {
        const count = keys === 4 && String(args[0]).includes(':presence:');
        const beat = keys === 4 && String(args[0]).endsWith(':nodes');
        if ((count && outage.down) || (beat && outage.beats)) return Promise.reject(new Error('Connection is closed.'));
        const sent = (evalsha as Redis['evalsha'])(sha, keys, ...args);
        const slow = count && outage.slowNext;
        if (slow) [outage.slowNext, outage.slowSent] = [false, true];
        const reply = replies.then(() => sent).then(async (value) => (slow ? (await new Promise((r) => setTimeout(r, 400)), value) : value));
        replies = reply.catch(() => undefined);
        return reply;
      });
      const options = { prefix, ...timing, commandTimeoutMs: 1_000 };
      const table = new MembershipTable({ team: ['alice', ...users] });
      const n1 = await startServer({ membership: table, presence: true, backplane: new RedisBackplane({ redis: flaky, subscriber: subscriber1, ...options }) });
      const flaky2 = intercepted(commands2, 'evalsha', (evalsha) => (sha: string, keys: number, ...args: (string | number)[]) => {
        if (outage.node2 && keys === 4) return Promise.reject(new Error('Connection is closed.'));
        return (evalsha as Redis['evalsha'])(sha, keys, ...args);
      });
      const backplane2 = new RedisBackplane({ redis: flaky2, subscriber: subscriber2, ...options });
      const n2 = await startServer({ membership: table, presence: true, backplane: backplane2 });
      const alice = await TestClient.connect(n2.url, await tokenFor('alice'));
      const events = (user?: string): string[] =>
        alice.of('presence').filter((f) => user === undefined || f.user === user).map((f) => (user === undefined ? `${String(f.user)}:${String(f.event)}` : String(f.event)));
      const connectTo1 = async (user: string): Promise<TestClient> => TestClient.connect(n1.url, await tokenFor(user));
      const connectTo2 = async (user: string): Promise<TestClient> => TestClient.connect(n2.url, await tokenFor(user));
      /** Waits until a slowed count's write has reached Redis (its reply still on the way). */
      const slowWriteSent = async (): Promise<void> => {
        for (let i = 0; i < 200 && !outage.slowSent; i++) await new Promise((r) => setTimeout(r, 5));
        expect(outage.slowSent).toBe(true);
      };
      return { outage, alice, events, connectTo1, connectTo2, slowWriteSent, backplane2 };
    }

    it('says offline for a last close made while Redis was unreachable once it is back, and nothing for a close and reopen', async () => {
      const { outage, alice, events, connectTo1, backplane2 } = await presenceOutage(['bob']);
      const bob = await connectTo1('bob');
      await alice.until(() => events('bob').length === 1);
      outage.down = true;
      await bob.close();
      await alice.quiet(400);
      expect(events('bob')).toEqual(['online']);
      outage.down = false;
      await alice.until(() => events('bob').length === 2, 3_000, 'the offline');
      expect(events('bob')).toEqual(['online', 'offline']);

      const back = await connectTo1('bob');
      await alice.until(() => events('bob').length === 3);
      outage.down = true;
      await back.close();
      await connectTo1('bob');
      await alice.quiet(300);
      outage.down = false;
      // Several heartbeats: the counts are written again, and bob never went offline for them.
      await alice.quiet(600);
      expect(events('bob')).toEqual(['online', 'offline', 'online']);
      expect((await backplane2.presence.onlineUsers()).sort()).toEqual(['alice', 'bob']);
    });

    /**
     * Bob online on node 1; node 1 loses Redis (counts and heartbeats) for longer than
     * `nodeTimeoutMs`, `during` runs once bob's connection closed, and Redis comes back
     * once node 2 has dropped node 1. Returns alice's presence events for bob after that.
     */
    async function longOutage(during: (nodes: Awaited<ReturnType<typeof presenceOutage>>) => Promise<unknown>) {
      const nodes = await presenceOutage(['bob'], { heartbeatMs: 100, nodeTimeoutMs: 600 });
      const { outage, alice, events, backplane2 } = nodes;
      const bob = await nodes.connectTo1('bob');
      await alice.until(() => events('bob').length === 1);
      outage.down = true;
      outage.beats = true;
      await bob.close();
      await during(nodes);
      // Long enough for node 1's heartbeat to go stale and node 2 to drop its counts.
      await new Promise((resolve) => setTimeout(resolve, 1_200));
      outage.down = false;
      outage.beats = false;
      await alice.quiet(800);
      return { events: events('bob'), online: (await backplane2.presence.onlineUsers()).sort() };
    }

    it('says offline for the users of a node cut off longer than nodeTimeoutMs when it is dropped, and nothing more once Redis is back', async () => {
      const after = await longOutage(async ({ alice, events, backplane2 }) => {
        // Node 2 drops node 1, and says offline for bob, whose close node 1 could not write.
        for (let i = 0; i < 60 && (await backplane2.presence.onlineUsers()).includes('bob'); i++) await new Promise((r) => setTimeout(r, 50));
        expect(await backplane2.presence.onlineUsers()).toEqual(['alice']);
        await alice.until(() => events('bob').length === 2, 1_000, 'the offline of the dropped node');
        expect(events('bob')).toEqual(['online', 'offline']);
      });
      // Node 1's late count of the close is not a second offline.
      expect(after).toEqual({ events: ['online', 'offline'], online: ['alice'] });
    });

    it('says nothing for a last close made during a long outage when the user is online on another node', async () => {
      // Bob is back on node 2 before node 1 is dropped: online all along.
      expect(await longOutage(({ connectTo2 }) => connectTo2('bob'))).toEqual({ events: ['online'], online: ['alice', 'bob'] });
    });

    it('says offline when the node is dropped and online when it is back, for a user who closed and reopened on it meanwhile', async () => {
      // While node 1 was dropped the cluster did not count bob: the frames say so, and bob is online again once node 1 is back.
      expect(await longOutage(({ connectTo1 }) => connectTo1('bob'))).toEqual({ events: ['online', 'offline', 'online'], online: ['alice', 'bob'] });
    });

    it.each([
      ['every node was cut off', false],
      ['Redis lost its data meanwhile', true],
    ])('says nothing for a last close on one node when %s and the user is still on another', async (_name, lostData) => {
      const { outage, alice, events, connectTo1, connectTo2, backplane2 } = await presenceOutage(['bob'], { heartbeatMs: 100, nodeTimeoutMs: 600 });
      const bob = await connectTo1('bob');
      const bobOn2 = await connectTo2('bob');
      await alice.until(() => events('bob').length === 1);
      outage.down = true;
      outage.beats = true;
      outage.node2 = true;
      await bob.close();
      await new Promise((resolve) => setTimeout(resolve, 900));
      if (lostData) {
        const adminRedis = admin(SHARED_PORT);
        await deleteKeys(adminRedis, `${prefix}:`);
        adminRedis.disconnect();
      }
      // Both back: node 2's heartbeat was as stale as node 1's, which is no sign bob left.
      outage.down = false;
      outage.beats = false;
      outage.node2 = false;
      await alice.quiet(800);
      expect(events('bob')).toEqual(['online']);
      expect((await backplane2.presence.onlineUsers()).sort()).toEqual(['alice', 'bob']);
      // Bob's last connection closing is the offline.
      await bobOn2.close();
      await alice.until(() => events('bob').length === 2, 3_000, 'the offline');
      expect(events('bob')).toEqual(['online', 'offline']);
    });

    it('writes every failed count before a heartbeat rewrites them, however slow the writes', async () => {
      const { outage, alice, events, connectTo1 } = await presenceOutage(['bob', 'carol']);
      const bob = await connectTo1('bob');
      const carol = await connectTo1('carol');
      await alice.until(() => events().length === 2);
      outage.down = true;
      await bob.close();
      await carol.close();
      await alice.quiet(400);
      // Slower than a heartbeat: the next beat must wait for carol's count, not rewrite it away.
      outage.slowNext = true;
      outage.down = false;
      await alice.until(() => events().length === 4, 3_000, 'both offlines');
      expect(events().sort()).toEqual(['bob:offline', 'bob:online', 'carol:offline', 'carol:online']);
    });

    it.each([
      ['takes the crossing from the count it wrote, not from one a reconnect changed while the write was on its way', false],
      ["writes a count that failed while the same user's earlier one was being written, at a later heartbeat", true],
    ])('%s', async (_name, blipAgain) => {
      const { outage, alice, events, connectTo1, slowWriteSent } = await presenceOutage(['bob']);
      const bob = await connectTo1('bob');
      await alice.until(() => events('bob').length === 1);
      outage.down = true;
      await bob.close();
      await alice.quiet(300);
      outage.slowNext = true;
      outage.down = false;
      // The write of bob's 0 reached Redis (offline decided there); bob is back before its reply.
      await slowWriteSent();
      // Perhaps Redis blips again for bob's next count, while that write is on its way.
      outage.down = blipAgain;
      await connectTo1('bob');
      outage.down = false;
      await alice.quiet(1_500);
      // Redis decided offline, then online: never two onlines in a row, and bob ends online.
      expect(events('bob')).toEqual(['online', 'offline', 'online']);
    });

    /**
     * Backplanes on their own (no server) sharing one prefix; node 1's presence counts fail
     * while `flags.down` and its heartbeats while `flags.beats`, and `flags.onBeatReply`
     * sees each of its heartbeat replies before the backplane does. With `flags.loseNext`
     * the next count runs in Redis but its reply is lost, as with a connection that drops
     * before the reply.
     */
    async function presenceNodes(count: number, timing: { heartbeatMs: number; nodeTimeoutMs: number }) {
      const [commands1, subscriber1, commands2, subscriber2] = twoNodes();
      const flags = { down: false, beats: false, beats2: false, loseNext: false, onBeatReply: (_reply: unknown): void => undefined };
      const flaky = intercepted(commands1, 'evalsha', (evalsha) => (sha: string, keys: number, ...args: (string | number)[]) => {
        const countWrite = keys === 4 && String(args[0]).includes(':presence:');
        const beat = keys === 4 && String(args[0]).endsWith(':nodes');
        if ((countWrite && flags.down) || (beat && flags.beats)) return Promise.reject(new Error('Connection is closed.'));
        const reply = (evalsha as Redis['evalsha'])(sha, keys, ...args);
        if (countWrite && flags.loseNext) {
          flags.loseNext = false;
          return reply.then(() => Promise.reject(new Error('Connection is closed.')));
        }
        return beat ? reply.then((value) => (flags.onBeatReply(value), value)) : reply;
      });
      /** What each node's `presence` handler was told: `node:event:user[:rooms]`. */
      const said: string[] = [];
      const handlers = (node: number): BackplaneHandlers => ({
        message: () => undefined,
        membership: () => undefined,
        reconnected: () => undefined,
        presence: (event, users) => said.push(...users.map(({ user, rooms }) => [node, event, user, ...(rooms.length > 0 ? [rooms.join(',')] : [])].join(':'))),
        error: () => undefined,
      });
      const options = { prefix, ...timing, commandTimeoutMs: 1_000 };
      const nodes = [new RedisBackplane({ redis: flaky, subscriber: subscriber1, ...options })];
      // With `flags.beats2`, node 2's heartbeats fail.
      const flaky2 = intercepted(commands2, 'evalsha', (evalsha) => (sha: string, keys: number, ...args: (string | number)[]) => {
        if (flags.beats2 && keys === 4 && String(args[0]).endsWith(':nodes')) return Promise.reject(new Error('Connection is closed.'));
        return (evalsha as Redis['evalsha'])(sha, keys, ...args);
      });
      if (count > 1) nodes.push(new RedisBackplane({ redis: flaky2, subscriber: subscriber2, ...options }));
      for (const [i, node] of nodes.entries()) await node.start(handlers(i + 1));
      started.push(...nodes);
      return { flags, said, node1: nodes[0] as RedisBackplane, node2: nodes[1] };
    }
    const started: RedisBackplane[] = [];
    afterEach(async () => {
      for (const node of started.splice(0)) await node.close();
    });
    const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

    it('says nothing for a reopen written while an earlier close still waits, once its heartbeat went stale', async () => {
      // After an outage longer than nodeTimeoutMs, counts reach Redis again before the
      // next heartbeat: bob's close failed, his reopen is written, the node is still stale.
      const { flags, node1 } = await presenceNodes(1, { heartbeatMs: 100, nodeTimeoutMs: 300 });
      expect(await node1.presence.track('bob', 1)).toBe(true);
      flags.down = flags.beats = true;
      const close = node1.presence.track('bob', -1);
      await sleep(500);
      flags.down = false;
      // Decided with the close, once the node has beaten again.
      const reopen = node1.presence.track('bob', 1);
      flags.beats = false;
      expect(await reopen).toBe(false);
      expect(await close).toBe(false);
      expect(await node1.presence.track('bob', -1)).toBe(true);
    });

    it('says nothing for a close written while an earlier open still waits, once its heartbeat went stale', async () => {
      const { flags, node1 } = await presenceNodes(1, { heartbeatMs: 100, nodeTimeoutMs: 300 });
      flags.down = flags.beats = true;
      const open = node1.presence.track('bob', 1);
      await sleep(500);
      flags.down = false;
      // Bob was never said to be online: no offline either.
      const close = node1.presence.track('bob', -1);
      flags.beats = false;
      expect(await close).toBe(false);
      expect(await open).toBe(false);
    });

    it.each([
      ['says nothing more for a last close written between the heartbeat that finds the node dropped and its rewrite', -1, false],
      ['says online for another open written between the heartbeat that finds the node dropped and its rewrite', 1, true],
    ] as const)('%s', async (_name, delta, crossed) => {
      // Node 1's heartbeats fail (or its event loop stalls) while its counts are fine, so
      // nothing marks its hash dirty; node 2 drops it meanwhile, and says offline for bob.
      const { flags, said, node1, node2 } = await presenceNodes(2, { heartbeatMs: 100, nodeTimeoutMs: 300 });
      expect(await node1.presence.track('bob', 1)).toBe(true);
      flags.beats = true;
      // Out of onlineUsers() once node 1's heartbeat is stale; said offline once node 2's next heartbeat drops it.
      for (let i = 0; i < 60 && said.length === 0; i++) await sleep(50);
      expect(await node2!.presence.onlineUsers()).toEqual([]);
      expect(said).toEqual(['2:offline:bob']);
      let tracked: Promise<boolean> | undefined;
      flags.onBeatReply = (reply) => {
        if (reply === -1 && !tracked) tracked = node1.presence.track('bob', delta);
      };
      flags.beats = false;
      for (let i = 0; i < 60 && !tracked; i++) await sleep(20);
      expect(await tracked).toBe(crossed);
      await sleep(300);
      // The close: offline was said at the drop. The open: online now, by the write itself, not again by the rewrite.
      expect(await node2!.presence.onlineUsers()).toEqual(crossed ? ['bob'] : []);
      expect(said).toEqual(['2:offline:bob']);
    });

    it('says online again for a user still connected to a node that comes back after it was dropped, once', async () => {
      const { flags, said, node1, node2 } = await presenceNodes(2, { heartbeatMs: 100, nodeTimeoutMs: 300 });
      expect(await node1.presence.track('bob', 1, ['team'])).toBe(true);
      expect(await node1.presence.track('carol', 1, ['team'])).toBe(true);
      expect(await node2!.presence.track('carol', 1, ['team'])).toBe(false);
      flags.beats = true;
      for (let i = 0; i < 60 && said.length === 0; i++) await sleep(50);
      // Carol is still on node 2: only bob is gone, with the rooms node 1 was told.
      expect(said).toEqual(['2:offline:bob:team']);
      flags.beats = false;
      for (let i = 0; i < 60 && said.length === 1; i++) await sleep(50);
      await sleep(300);
      expect(said).toEqual(['2:offline:bob:team', '1:online:bob']);
      expect((await node2!.presence.onlineUsers()).sort()).toEqual(['bob', 'carol']);
      // Counted again: his last close is an offline, said once.
      expect(await node1.presence.track('bob', -1)).toBe(true);
    });

    /** Makes `node`'s heartbeat in Redis older than any timeout, as after a stall or an outage, before anyone has dropped it. */
    async function staleBeat(node: string): Promise<void> {
      const adminRedis = admin(SHARED_PORT);
      const [seconds] = await adminRedis.time();
      await adminRedis.zadd(`${prefix}:nodes`, (Number(seconds) - 3_600) * 1000, node);
      adminRedis.disconnect();
    }

    /** Waits until `node` is in the heartbeats (`true`) or out of them (`false`). */
    async function beating(node: string, yes: boolean): Promise<void> {
      const adminRedis = admin(SHARED_PORT);
      for (let i = 0; i < 100 && ((await adminRedis.zscore(`${prefix}:nodes`, node)) !== null) !== yes; i++) await sleep(50);
      expect((await adminRedis.zscore(`${prefix}:nodes`, node)) !== null).toBe(yes);
      adminRedis.disconnect();
    }

    it('says offline once for a user whose last close on a live node comes while a stale node with them is not yet dropped', async () => {
      const { flags, said, node1, node2 } = await presenceNodes(2, { heartbeatMs: 300, nodeTimeoutMs: 3_000 });
      expect(await node1.presence.track('bob', 1, ['team'])).toBe(true);
      expect(await node2!.presence.track('bob', 1, ['team'])).toBe(false);
      flags.beats = true;
      await staleBeat(node1.presence.nodeId);
      const closed = await node2!.presence.track('bob', -1);
      await beating(node1.presence.nodeId, false);
      for (let i = 0; i < 20 && !closed && said.length === 0; i++) await sleep(50);
      // The drop is the offline (bob's last connection was on node 1). Only had node 2
      // dropped node 1 before the close (a heartbeat in between), is the close the offline.
      expect({ closed, said }).toEqual(closed ? { closed, said: [] } : { closed, said: ['2:offline:bob:team'] });
    });

    it('says no online for a user still connected to a node that comes back while another node with them is stale', async () => {
      const { flags, said, node1, node2 } = await presenceNodes(2, { heartbeatMs: 100, nodeTimeoutMs: 3_000 });
      expect(await node1.presence.track('bob', 1, ['team'])).toBe(true);
      expect(await node2!.presence.track('bob', 1, ['team'])).toBe(false);
      // Node 2 drops node 1: bob is still on node 2, no offline.
      flags.beats = true;
      await staleBeat(node1.presence.nodeId);
      await beating(node1.presence.nodeId, false);
      // Node 2 goes stale too, and node 1 comes back before anyone dropped node 2.
      flags.beats2 = true;
      await staleBeat(node2!.presence.nodeId);
      flags.beats = false;
      await beating(node1.presence.nodeId, true);
      await sleep(300);
      // Nobody was told bob went offline: no online either.
      expect(said).toEqual([]);
    });

    it('says nothing for the users of a node that comes back after every node was cut off, later than the others', async () => {
      const { flags, said, node1, node2 } = await presenceNodes(2, { heartbeatMs: 100, nodeTimeoutMs: 600 });
      expect(await node1.presence.track('bob', 1, ['team'])).toBe(true);
      flags.beats = flags.beats2 = true;
      await sleep(900);
      // Node 2's connection is back first; node 1's a few heartbeats later, as clients
      // reconnect on their own schedules. Node 1 is no crashed node: bob stayed.
      flags.beats2 = false;
      await beating(node2!.presence.nodeId, true);
      await sleep(350);
      flags.beats = false;
      await beating(node1.presence.nodeId, true);
      await sleep(300);
      expect(said).toEqual([]);
      expect(await node2!.presence.onlineUsers()).toEqual(['bob']);
    });

    it('says offline for the users of a process restarted with the same nodeId before it was dropped', async () => {
      const { flags, said, node1 } = await presenceNodes(2, { heartbeatMs: 100, nodeTimeoutMs: 3_000 });
      expect(await node1.presence.track('bob', 1, ['team'])).toBe(true);
      // Node 1 crashes (it writes nothing more) and is restarted at once, with its id.
      flags.down = flags.beats = true;
      const [redis, subscriber] = [client(SHARED_PORT), client(SHARED_PORT)];
      owned.push(redis, subscriber);
      const restarted = new RedisBackplane({ redis, subscriber, prefix, nodeId: node1.presence.nodeId, heartbeatMs: 100, nodeTimeoutMs: 3_000, commandTimeoutMs: 1_000 });
      await restarted.start({
        message: () => undefined,
        membership: () => undefined,
        reconnected: () => undefined,
        presence: (event, users) => said.push(...users.map(({ user, rooms }) => ['3', event, user, ...rooms].join(':'))),
        error: () => undefined,
      });
      started.push(restarted);
      for (let i = 0; i < 20 && said.length === 0; i++) await sleep(50);
      expect(await restarted.presence.onlineUsers()).toEqual([]);
      expect(said).toEqual(['3:offline:bob:team']);
    });

    it.each([
      ['says offline for a last close whose write ran in Redis but whose reply was lost', 1, -1],
      ['says online for a first open whose write ran in Redis but whose reply was lost', 0, 1],
    ] as const)('%s', async (_name, opened, delta) => {
      const { flags, node1 } = await presenceNodes(1, { heartbeatMs: 100, nodeTimeoutMs: 3_000 });
      if (opened) expect(await node1.presence.track('bob', 1)).toBe(true);
      flags.loseNext = true;
      // Answered by the next heartbeat's settle.
      expect(await node1.presence.track('bob', delta)).toBe(true);
      expect(await node1.presence.onlineUsers()).toEqual(opened ? [] : ['bob']);
    });

    it('counts its users again and says offline after its event loop stalled until its hash expired', async () => {
      // One process, so nobody drops it: its record stays, its hash (PEXPIRE 2x the timeout) goes.
      const { node1 } = await presenceNodes(1, { heartbeatMs: 100, nodeTimeoutMs: 300 });
      expect(await node1.presence.track('bob', 1)).toBe(true);
      const until = Date.now() + 900;
      while (Date.now() < until) {
        // The event loop is blocked: no heartbeat.
      }
      await sleep(400);
      expect(await node1.presence.onlineUsers()).toEqual(['bob']);
      expect(await node1.presence.track('bob', -1)).toBe(true);
    });
  });

  describe('a subscribe that fails', () => {
    const owned: Redis[] = [];
    afterEach(() => {
      for (const connection of owned.splice(0)) connection.disconnect();
    });

    /** A key prefix of its own, and a command, a subscriber and an admin connection closed after the test. */
    function connections(): { prefix: string; redis: Redis; subscriber: Redis; adminRedis: Redis } {
      const connections = { prefix: `${FILE_PREFIX}:${++testCount}`, redis: client(SHARED_PORT), subscriber: client(SHARED_PORT), adminRedis: admin(SHARED_PORT) };
      owned.push(connections.redis, connections.subscriber, connections.adminRedis);
      return connections;
    }

    it('fails a history read Redis does not answer within commandTimeoutMs', async () => {
      const { prefix, redis, subscriber, adminRedis } = connections();
      let stalled = false;
      // The command connection, but a read sent while `stalled` is never answered, as with
      // a Redis that stopped answering without closing the connection.
      const stalling = (real: Method): Method => (...args: never[]) => (stalled ? new Promise(() => {}) : real(...args));
      const hanging = intercepted(intercepted(redis, 'get', stalling), 'xrange', stalling);
      const node = new RedisBackplane({ redis: hanging, subscriber, prefix, heartbeatMs: 100, commandTimeoutMs: 300 });
      await node.start({ message: () => undefined, membership: () => undefined, reconnected: () => undefined, presence: () => undefined, error: () => undefined });
      try {
        await node.history.append({ room: 'r', id: 'm1', from: null, data: 1, ts: 1 });
        expect(await node.history.since('r', 0)).toMatchObject([{ id: 'm1', seq: 1 }]);
        stalled = true;
        const started = Date.now();
        await expect(node.history.latestSeq('r')).rejects.toThrow('latestSeq timed out after 300 ms');
        await expect(node.history.since('r', 0)).rejects.toThrow('timed out after 300 ms');
        expect(Date.now() - started).toBeLessThan(2_000);
      } finally {
        stalled = false;
        await node.close();
        await deleteKeys(adminRedis, prefix);
      }
    });

    it('is not subscribed again when the subscriber reconnects', async () => {
      const { prefix, redis, subscriber, adminRedis } = connections();
      let failNext = false;
      // The subscriber, but its next SSUBSCRIBE fails as one sent while it reconnects would.
      const flaky = intercepted(subscriber, 'ssubscribe', (ssubscribe) => (...channels: string[]) => {
        if (!failNext) return (ssubscribe as Redis['ssubscribe'])(...channels);
        failNext = false;
        return Promise.reject(new Error('Connection is closed.'));
      });
      const node = new RedisBackplane({ redis, subscriber: flaky, prefix, heartbeatMs: 100, commandTimeoutMs: 1_000 });
      await node.start({ message: () => undefined, membership: () => undefined, reconnected: () => undefined, presence: () => undefined, error: () => undefined });
      try {
        failNext = true;
        await expect(node.subscribe('lost')).rejects.toThrow('Connection is closed');
        await node.subscribe('kept');
        const ready = new Promise((resolve) => subscriber.once('ready', resolve));
        subscriber.disconnect(true);
        await ready;
        const counts = async () => (await adminRedis.call('PUBSUB', 'SHARDNUMSUB', `${prefix}:room:lost`, `${prefix}:room:kept`)) as (string | number)[];
        for (let waited = 0; (await counts())[3] !== 1 && waited < 2_000; waited += 20) await new Promise((r) => setTimeout(r, 20));
        expect(await counts()).toEqual([`${prefix}:room:lost`, 0, `${prefix}:room:kept`, 1]);
      } finally {
        await node.close();
        await deleteKeys(adminRedis, prefix);
      }
    });
  });

  describe('one Redis publish per broadcast', () => {
    afterEach(async () => {
      await closeClients();
      await closeAll();
    });

    it('costs one SPUBLISH whatever the number of members and processes', async () => {
      const f = fixture(SHARED_PORT, 5_000);
      const table = new MembershipTable({ big: Array.from({ length: 20 }, (_, i) => `u${i}`) });
      const servers: TestServer[] = [];
      for (let i = 0; i < 3; i++) servers.push(await startServer({ membership: table, backplane: f.node() }));
      const clients = await Promise.all(
        Array.from({ length: 20 }, async (_, i) => TestClient.connect(servers[i % 3]!.url, await tokenFor(`u${i}`))),
      );
      const monitor = admin(SHARED_PORT);
      // PUBSUB SHARDNUMSUB tells how many processes listen on the room's sharded channel: all three.
      const channel = `${FILE_PREFIX}:${testCount}:room:big`;
      const [, listeners] = (await monitor.call('PUBSUB', 'SHARDNUMSUB', channel)) as [string, number];
      expect(listeners).toBe(3);
      const receivedBy = new Promise<number>((resolve) => {
        const spy = admin(SHARED_PORT);
        void spy.ssubscribe(channel);
        let count = 0;
        spy.on('smessage', () => count++);
        setTimeout(() => {
          spy.disconnect();
          resolve(count);
        }, 500);
      });
      await new Promise((resolve) => setTimeout(resolve, 100));
      await clients[0]!.request({ type: 'publish', room: 'big', data: 'one' });
      expect(await receivedBy).toBe(1);
      for (const c of clients.slice(1)) await c.next('message');
      monitor.disconnect();
      await closeClients();
      await closeAll();
      await f.cleanup();
    });
  });

  describe('Redis restarted mid-stream', () => {
    let child: ChildProcess | undefined;
    let dir: string | undefined;

    afterEach(async () => {
      await closeClients();
      await closeAll();
      child?.kill('SIGKILL');
      child = undefined;
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    async function freePort(): Promise<number> {
      const server = createServer();
      await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
      const address = server.address();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      if (typeof address !== 'object' || address === null) throw new Error('no port');
      return address.port;
    }

    async function startRedis(port: number, data: string, persistent = true): Promise<ChildProcess> {
      // Its own server, never the shared one. An append-only file synced on every write is
      // what makes "acknowledged" mean "kept" when Redis is killed; without persistence a
      // restart loses the streams, and the epoch tells resuming clients so.
      const persistence = persistent ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no'];
      const proc = spawn('redis-server', ['--port', String(port), '--bind', HOST, '--save', '', ...persistence, '--dir', data], { stdio: 'ignore' });
      for (let i = 0; i < 100 && !(await reachable(port)); i++) await new Promise((resolve) => setTimeout(resolve, 50));
      if (!(await reachable(port))) throw new Error('redis-server did not start');
      return proc;
    }

    it('fails publishes during the outage to the publisher, and loses no acknowledged message', async () => {
      const port = await freePort();
      dir = mkdtempSync(join(tmpdir(), 'roomwire-redis-'));
      child = await startRedis(port, dir);
      const f = fixture(port, 5_000);
      const table = new MembershipTable({ chat: ['alice', 'bob', 'carol'] });
      const n1 = await startServer({ membership: table, backplane: f.node() });
      const n2 = await startServer({ membership: table, backplane: f.node() });
      const alice = await TestClient.connect(n1.url, await tokenFor('alice'));
      const bob = await TestClient.connect(n2.url, await tokenFor('bob'));
      const acked: number[] = [];
      const publish = async (n: number): Promise<boolean> => {
        const reply = await alice.request({ type: 'publish', room: 'chat', data: n });
        if (reply.type === 'ack') {
          acked.push(n);
          return true;
        }
        expect(reply).toMatchObject({ type: 'error', code: 'internal', room: 'chat' });
        expect(String(reply.message)).toMatch(/backplane is unavailable or slow/);
        return false;
      };
      for (let n = 1; n <= 5; n++) expect(await publish(n)).toBe(true);

      child.kill('SIGKILL');
      await new Promise((resolve) => child!.once('exit', resolve));
      let failures = 0;
      for (let n = 6; n <= 8; n++) if (!(await publish(n))) failures++;
      expect(failures).toBe(3);
      await expect(n2.manager.broadcast('chat', 'server during outage')).rejects.toMatchObject({ name: 'RoomwireError', code: 'internal' });

      child = await startRedis(port, dir);
      // Bounded: the clients reconnect within a few hundred ms.
      let n = 9;
      for (let attempt = 0; attempt < 100; attempt++) {
        if (await publish(n)) break;
        n++;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      for (let m = n + 1; m <= n + 5; m++) expect(await publish(m)).toBe(true);

      // Bob stayed connected: he gets every acknowledged message, once, in seq order.
      await bob.until((frames) => frames.filter((fr) => fr.type === 'message').length >= acked.length, 5_000, 'the acked messages');
      await bob.quiet(200);
      expect(bob.of('message').map((m) => m.data)).toEqual(acked);
      expect(bob.of('message').map((m) => m.seq)).toEqual(acked.map((_, i) => i + 1));

      // A client that resumes afterwards gets everything acknowledged, from the stream.
      const carol = await TestClient.connect(n2.url, await tokenFor('carol'));
      carol.send({ type: 'resume', rooms: { chat: 0 }, epoch: carol.welcome.epoch, ref: 'r' });
      expect(await carol.next('resumed')).toMatchObject({ rooms: { chat: { replayed: acked.length } } });
      expect(carol.of('message').map((m) => m.data)).toEqual(acked);

      await closeClients();
      await closeAll();
      await f.cleanup();
    }, 30_000);

    it('after a restart that lost the data, reconnects clients and answers their resume with history_gap', async () => {
      const port = await freePort();
      dir = mkdtempSync(join(tmpdir(), 'roomwire-redis-'));
      child = await startRedis(port, dir, false);
      const f = fixture(port, 5_000);
      const table = new MembershipTable({ chat: ['alice', 'bob'] });
      const n1 = await startServer({ membership: table, backplane: f.node() });
      const n2 = await startServer({ membership: table, backplane: f.node() });
      const alice = await TestClient.connect(n1.url, await tokenFor('alice'));
      let bob = await TestClient.connect(n2.url, await tokenFor('bob'));
      const oldEpoch = bob.welcome.epoch as string;
      for (let n = 1; n <= 3; n++) expect(await alice.request({ type: 'publish', room: 'chat', data: n })).toMatchObject({ type: 'ack', seq: n });
      await bob.until((frames) => frames.filter((fr) => fr.type === 'message').length === 3);

      child.kill('SIGKILL');
      await new Promise((resolve) => child!.once('exit', resolve));
      child = await startRedis(port, dir, false);
      // Bob's process notices the new numbering once its subscriber is back.
      await bob.closed();
      expect(bob.closeCode).toBe(1001);

      bob = await TestClient.connect(n2.url, await tokenFor('bob'));
      expect(bob.welcome.epoch).not.toBe(oldEpoch);
      expect(await bob.request({ type: 'resume', rooms: { chat: 3 }, epoch: oldEpoch })).toMatchObject({ type: 'error', code: 'history_gap', room: 'chat' });
      await closeClients();
      await closeAll();
      await f.cleanup();
    }, 30_000);

    it('notices a restart that lost the data also when the command connection comes back long after the subscriber', async () => {
      const port = await freePort();
      dir = mkdtempSync(join(tmpdir(), 'roomwire-redis-'));
      child = await startRedis(port, dir, false);
      // Node 2's command connection retries every 3 s, longer than its commandTimeoutMs:
      // the epoch cannot be read when its subscriber is back.
      const laggard = new Redis({ host: HOST, port, enableOfflineQueue: false, autoResendUnfulfilledCommands: false, retryStrategy: () => 3_000, maxRetriesPerRequest: 1 });
      const connections = [laggard, client(port), client(port), client(port)];
      const [, subscriber2, commands1, subscriber1] = connections as [Redis, Redis, Redis, Redis];
      const options = { prefix: `${FILE_PREFIX}:${++testCount}`, nodeTimeoutMs: 5_000, heartbeatMs: 100, commandTimeoutMs: 1_000 };
      const table = new MembershipTable({ chat: ['alice', 'bob'] });
      const n1 = await startServer({ membership: table, backplane: new RedisBackplane({ redis: commands1, subscriber: subscriber1, ...options }) });
      const n2 = await startServer({ membership: table, backplane: new RedisBackplane({ redis: laggard, subscriber: subscriber2, ...options }) });
      try {
        const alice = await TestClient.connect(n1.url, await tokenFor('alice'));
        const bob = await TestClient.connect(n2.url, await tokenFor('bob'));
        expect(await alice.request({ type: 'publish', room: 'chat', data: 1 })).toMatchObject({ type: 'ack', seq: 1 });
        await bob.next('message');
        child.kill('SIGKILL');
        await new Promise((resolve) => child!.once('exit', resolve));
        child = await startRedis(port, dir, false);
        // The room stays busy: its new seqs soon pass the old ones, so only the epoch can
        // tell node 2 that they are another numbering.
        for (let n = 0; n < 60 && bob.closeCode === undefined; n++) {
          await n1.manager.broadcast('chat', `new ${n}`).catch(() => undefined);
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
        expect(bob.closeCode).toBe(1001);
      } finally {
        await closeClients();
        await closeAll();
        for (const connection of connections) connection.disconnect();
      }
    }, 30_000);
  });

  describe('closing while Redis is unreachable', () => {
    const connections: Redis[] = [];
    afterEach(() => {
      for (const connection of connections.splice(0)) connection.disconnect();
    });

    /** A TCP relay to the shared Redis that can be cut, as a network failure would. */
    async function relay(): Promise<{ port: number; cut(): void }> {
      const links = new Set<import('node:net').Socket>();
      const server = createServer((inbound) => {
        const outbound = netConnect(SHARED_PORT, HOST);
        links.add(inbound).add(outbound);
        inbound.pipe(outbound).pipe(inbound);
        inbound.on('error', () => inbound.destroy());
        outbound.on('error', () => outbound.destroy());
      });
      await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
      const address = server.address();
      if (typeof address !== 'object' || address === null) throw new Error('no port');
      return {
        port: address.port,
        cut() {
          server.close();
          for (const link of links) link.destroy();
        },
      };
    }

    it('close() is bounded by commandTimeoutMs with a subscriber of your own that queues offline', async () => {
      const link = await relay();
      const redis = client(link.port);
      // Commands queue while disconnected, until Redis is back (as BullMQ asks of its own connections).
      const subscriber = new Redis({ host: HOST, port: link.port, retryStrategy: () => 100, maxRetriesPerRequest: null });
      connections.push(redis, subscriber);
      for (const connection of [redis, subscriber]) connection.on('error', () => undefined);
      const backplane = new RedisBackplane({ redis, subscriber, prefix: `${FILE_PREFIX}:unreachable`, commandTimeoutMs: 300 });
      await backplane.start({ message: () => undefined, membership: () => undefined, reconnected: () => undefined, presence: () => undefined, error: () => undefined });
      await backplane.subscribe('room');
      link.cut();
      await new Promise((resolve) => setTimeout(resolve, 50));
      const started = Date.now();
      const closed = await Promise.race([backplane.close().then(() => true), new Promise<false>((resolve) => setTimeout(() => resolve(false), 3_000))]);
      expect(closed, 'close() settled').toBe(true);
      expect(Date.now() - started).toBeLessThan(1_500);
    });

    it('the manager closes a backplane that never started, so its connections stop reconnecting', async () => {
      const server = createServer();
      await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
      const address = server.address();
      if (typeof address !== 'object' || address === null) throw new Error('no port');
      // Nothing listens there any more: Redis is down when the process starts.
      await new Promise<void>((resolve) => server.close(() => resolve()));
      const redis = client(address.port);
      connections.push(redis);
      redis.on('error', () => undefined);
      const backplane = new RedisBackplane({ redis, prefix: `${FILE_PREFIX}:never-started`, commandTimeoutMs: 200, closeClients: true });
      const subscriber = (backplane as unknown as { subscriber: Redis }).subscriber;
      connections.push(subscriber);
      const { RoomManager } = await import('../../src/index.js');
      const manager = new RoomManager({ authenticate: () => ({ id: 'x' }), membership: { roomsOf: () => [], membersOf: () => [] }, backplane });
      const phases: string[] = [];
      manager.on('error', (_error, context) => phases.push(context.phase));
      await new Promise((resolve) => setTimeout(resolve, 400));
      expect(phases).toContain('backplane.start');
      await manager.close();
      // Nothing keeps reconnecting (and holding the process open) once the manager closed.
      let reconnects = 0;
      for (const connection of [redis, subscriber]) connection.on('reconnecting', () => reconnects++);
      phases.length = 0;
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(reconnects, 'reconnects after close()').toBe(0);
      expect(phases, 'errors reported after close()').toEqual([]);
    });
  });
});

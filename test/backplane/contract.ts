import { afterEach, describe, expect, it } from 'vitest';
import { RoomwireError, type Backplane, type RoomManagerOptions } from '../../src/index.js';
import { TestClient, closeClients, type Frame } from '../helpers/client.js';
import { MembershipTable, closeAll, startServer, tokenFor, type TestServer } from '../helpers/server.js';

/** One cluster for one test: nodes share rooms, seqs, history and presence. */
export interface BackplaneFixture {
  /** A backplane for one more process of this cluster. */
  node(): Backplane;
  /** Stops a node as a crashed process would: no heartbeat, no cleanup, nothing more sent. */
  crash(node: Backplane): void | Promise<void>;
  /** The fixture's node timeout: a crashed node's users stop counting as online within it. */
  readonly nodeTimeoutMs: number;
  /** Removes what the cluster left behind (keys in Redis). */
  cleanup(): Promise<void>;
}

interface Node {
  server: TestServer;
  backplane: Backplane;
}

const messages = (client: TestClient): Frame[] => client.of('message');

/**
 * The backplane contract: what a client observes when rooms span three RoomManagers on
 * three ports. Every backplane implementation runs it.
 */
export function backplaneContract(name: string, setup: () => Promise<BackplaneFixture>): void {
  describe(`${name}: the backplane contract`, () => {
    let fixture: BackplaneFixture | undefined;

    afterEach(async () => {
      await closeClients();
      await closeAll();
      await fixture?.cleanup();
      fixture = undefined;
    });

    async function cluster(table: MembershipTable, count = 3, options: Partial<RoomManagerOptions> = {}): Promise<Node[]> {
      fixture = await setup();
      const nodes: Node[] = [];
      for (let i = 0; i < count; i++) {
        const backplane = fixture.node();
        nodes.push({ backplane, server: await startServer({ membership: table, backplane, publishRate: false, ...options }) });
      }
      return nodes;
    }

    async function connect(node: Node, user: string): Promise<TestClient> {
      return TestClient.connect(node.server.url, await tokenFor(user));
    }

    /** On a cluster of three: alice publishes `once` (cid `c-1`) into `chat` on the first node, and that connection closes; bob is on the third. */
    async function publishedOnce(table: MembershipTable): Promise<{ n1: Node; n2: Node; bob: TestClient; ack: Frame }> {
      const [n1, n2, n3] = await cluster(table);
      const first = await connect(n1!, 'alice');
      const bob = await connect(n3!, 'bob');
      const ack = await first.request({ type: 'publish', room: 'chat', data: 'once', cid: 'c-1' });
      await first.close();
      return { n1: n1!, n2: n2!, bob, ack };
    }

    it('delivers to every participant on every node exactly once, the publisher excepted', async () => {
      const table = new MembershipTable({ team: ['a', 'b', 'c', 'd', 'e'], other: ['z'] });
      const [n1, n2, n3] = await cluster(table);
      const clients = [await connect(n1!, 'a'), await connect(n2!, 'b'), await connect(n3!, 'c'), await connect(n3!, 'd'), await connect(n1!, 'b')];
      const outsider = await connect(n2!, 'z');
      const acks: Frame[] = [];
      for (const [i, client] of clients.entries()) acks.push(await client.request({ type: 'publish', room: 'team', data: i }));
      await n2!.server.manager.broadcast('team', 'from the server');
      const total = clients.length + 1;
      for (const [i, client] of clients.entries()) {
        await client.until((frames) => frames.filter((f) => f.type === 'message').length >= total - 1, 5_000, `client ${i}'s messages`);
      }
      await clients[0]!.quiet(300);
      for (const [i, client] of clients.entries()) {
        const got = messages(client);
        expect(got.map((m) => m.seq)).toEqual([1, 2, 3, 4, 5, 6].filter((seq) => seq !== acks[i]!.seq));
        expect(new Set(got.map((m) => m.id)).size).toBe(got.length);
      }
      expect(acks.map((ack) => ack.seq)).toEqual([1, 2, 3, 4, 5]);
      expect(messages(outsider)).toEqual([]);
    });

    it('keeps each room in seq order under concurrent publishes from all three nodes', async () => {
      const table = new MembershipTable({ race: ['p1', 'p2', 'p3', 'watcher'] });
      const nodes = await cluster(table);
      const publishers = await Promise.all(nodes.map((node, i) => connect(node, `p${i + 1}`)));
      const watchers = await Promise.all(nodes.map((node) => connect(node, 'watcher')));
      const perPublisher = 25;
      const all = publishers.flatMap((client) =>
        Array.from({ length: perPublisher }, (_, n) => {
          client.send({ type: 'publish', room: 'race', data: n });
          return n;
        }),
      );
      const broadcasts = nodes.flatMap((node) => Array.from({ length: 5 }, (_, n) => node.server.manager.broadcast('race', `server ${n}`)));
      await Promise.all(broadcasts);
      const total = all.length + broadcasts.length;
      for (const watcher of watchers) {
        await watcher.until((frames) => frames.filter((f) => f.type === 'message').length >= total, 10_000, 'every message');
        expect(messages(watcher).map((m) => m.seq)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
      }
      for (const publisher of publishers) {
        await publisher.until((frames) => frames.filter((f) => f.type === 'ack').length === perPublisher, 10_000, 'its acks');
        await publisher.until((frames) => frames.filter((f) => f.type === 'message').length >= total - perPublisher, 10_000, 'the others');
        const seqs = messages(publisher).map((m) => m.seq as number);
        expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
        expect(seqs).toHaveLength(total - perPublisher);
      }
    });

    it('applies addMember and removeMember made on one node on the others', async () => {
      const table = new MembershipTable({ team: ['alice', 'bob'] });
      const [n1, n2, n3] = await cluster(table);
      const alice = await connect(n1!, 'alice');
      const carol = await connect(n3!, 'carol');
      const bob = await connect(n2!, 'bob');
      expect(carol.welcome.rooms).toEqual([]);
      await alice.request({ type: 'publish', room: 'team', data: 'before carol' });

      table.add('team', 'carol');
      await n1!.server.manager.addMember('team', 'carol');
      expect(await carol.next('joined')).toMatchObject({ room: 'team', seq: 1 });
      await bob.request({ type: 'publish', room: 'team', data: 'hello carol' });
      expect(await carol.next('message')).toMatchObject({ seq: 2, data: 'hello carol', from: 'bob' });

      table.remove('team', 'carol');
      await n2!.server.manager.removeMember('team', 'carol');
      expect(await carol.next('left')).toEqual({ type: 'left', room: 'team' });
      await alice.request({ type: 'publish', room: 'team', data: 'after carol' });
      await bob.next('message', (m) => m.data === 'after carol');
      expect(await carol.quiet(200)).toEqual([]);
      expect(messages(carol)).toHaveLength(1);
    });

    it('delivers the broadcast made right after addMember to the added user on another node, once', async () => {
      // The usual "alice added carol" message: published as soon as addMember resolves,
      // while carol's node may still be subscribing the room.
      const table = new MembershipTable({ team: ['alice'] });
      const [n1, n2] = await cluster(table, 2);
      const alice = await connect(n1!, 'alice');
      const carol = await connect(n2!, 'carol');
      await alice.request({ type: 'publish', room: 'team', data: 'before carol' });
      table.add('team', 'carol');
      await n1!.server.manager.addMember('team', 'carol');
      await n1!.server.manager.broadcast('team', 'carol joined');
      expect(await carol.next('joined')).toEqual({ type: 'joined', room: 'team', seq: 1 });
      expect(await carol.next('message')).toMatchObject({ seq: 2, data: 'carol joined' });
      await alice.request({ type: 'publish', room: 'team', data: 'hello carol' });
      await carol.next('message', (m) => m.seq === 3);
      expect(await carol.quiet(200)).toEqual([]);
      expect(messages(carol).map((m) => m.seq)).toEqual([2, 3]);
      expect(carol.of('joined')).toHaveLength(1);
    });

    it('keeps out a user whose removal on one node raced their addition on another', async () => {
      // The application's writes: added (node 1's route), then removed (node 2's route).
      // Node 1's notice reaches node 2 after node 2's own removal.
      const table = new MembershipTable({ team: ['alice', 'bob'] });
      const [n1, n2] = await cluster(table, 2);
      const alice = await connect(n1!, 'alice');
      const dave = await connect(n2!, 'dave');
      table.add('team', 'dave');
      const adding = n1!.server.manager.addMember('team', 'dave');
      table.remove('team', 'dave');
      await n2!.server.manager.removeMember('team', 'dave');
      await adding;
      expect(await dave.quiet(300)).toEqual([]);
      expect(n2!.server.manager.connectionsOf('dave')[0]?.rooms).toEqual([]);
      expect(await dave.request({ type: 'resume', rooms: { team: 0 } })).toMatchObject({ type: 'error', code: 'forbidden' });
      await alice.request({ type: 'publish', room: 'team', data: 'after both' });
      expect(await dave.quiet(300)).toEqual([]);
    });

    it('brings in a participant whose only connection is on a node that does not receive the room', async () => {
      // carol became a participant after she connected, and nobody called addMember: the
      // node she is on has no reason to receive the room. The broadcast finds her.
      const table = new MembershipTable({ team: ['alice', 'bob'] });
      const [n1, n2, n3] = await cluster(table);
      const alice = await connect(n1!, 'alice');
      const bob = await connect(n2!, 'bob');
      const carol = await connect(n3!, 'carol');
      expect(carol.welcome.rooms).toEqual([]);
      table.add('team', 'carol');

      await alice.request({ type: 'publish', room: 'team', data: 'first' });
      expect(await carol.next('joined')).toEqual({ type: 'joined', room: 'team', seq: 0 });
      expect(await carol.next('message')).toMatchObject({ room: 'team', seq: 1, data: 'first', from: 'alice' });
      await bob.request({ type: 'publish', room: 'team', data: 'second' });
      expect(await carol.next('message', (m) => m.seq === 2)).toMatchObject({ data: 'second' });
      await carol.quiet(200);
      expect(messages(carol).map((m) => m.seq)).toEqual([1, 2]);
      expect(carol.of('joined')).toHaveLength(1);
    });

    it('reaches a participant at its room limit on a node that does not receive the room, once', async () => {
      // bob and carol may be in two rooms each. bob's roomsOf lists team past his limit;
      // carol becomes a participant later, and nobody calls addMember. Neither can enter
      // team, so the fallback sends them its messages, from their node, which receives the
      // room for them.
      const table = new MembershipTable({ x: ['bob', 'carol'], y: ['bob', 'carol'], team: ['alice', 'bob'] });
      const [n1, n2] = await cluster(table, 2, { maxRoomsPerConnection: 2 });
      const alice = await connect(n1!, 'alice');
      const bob = await connect(n2!, 'bob');
      const carol = await connect(n2!, 'carol');
      expect(bob.welcome.rooms).toEqual(['x', 'y']);
      await alice.request({ type: 'publish', room: 'team', data: 'first' });
      await n1!.server.manager.broadcast('team', 'second');
      expect(await bob.next('message')).toMatchObject({ room: 'team', seq: 1, data: 'first', from: 'alice' });
      expect(await bob.next('message')).toMatchObject({ room: 'team', seq: 2, data: 'second' });

      table.add('team', 'carol');
      await n1!.server.manager.invalidate('team');
      await alice.request({ type: 'publish', room: 'team', data: 'finds carol' });
      expect(await carol.next('message')).toMatchObject({ room: 'team', seq: 3, data: 'finds carol' });
      await n1!.server.manager.broadcast('team', 'fourth');
      for (const client of [bob, carol]) await client.next('message', (m) => m.seq === 4);
      await bob.quiet(200);
      expect(messages(bob).map((m) => m.seq)).toEqual([1, 2, 3, 4]);
      expect(messages(carol).map((m) => m.seq)).toEqual([3, 4]);
      for (const client of [bob, carol]) expect(client.of('joined')).toEqual([]);
    });

    it('finds a participant added after the room was cached, once the cache expires', async () => {
      const table = new MembershipTable({ team: ['alice', 'bob'] });
      const [n1, , n3] = await cluster(table, 3, { membershipTtlMs: 300 });
      const alice = await connect(n1!, 'alice');
      const carol = await connect(n3!, 'carol');
      await alice.request({ type: 'publish', room: 'team', data: 'before' });
      table.add('team', 'carol');
      await new Promise((resolve) => setTimeout(resolve, 400));
      await alice.request({ type: 'publish', room: 'team', data: 'after' });
      expect(await carol.next('joined')).toEqual({ type: 'joined', room: 'team', seq: 1 });
      expect(await carol.next('message')).toMatchObject({ seq: 2, data: 'after' });
      expect(await carol.quiet(200)).toEqual([]);
      expect(messages(carol)).toHaveLength(1);
    });

    it('sends presence once per user for the whole cluster', async () => {
      const table = new MembershipTable({ team: ['alice', 'bob', 'carol'] });
      const [n1, n2, n3] = await cluster(table, 3, { presence: true });
      const alice = await connect(n1!, 'alice');
      const bob = await connect(n2!, 'bob');
      const presence = (client: TestClient): Frame[] => client.of('presence');
      const online = { type: 'presence', room: 'team', user: 'carol', event: 'online' };
      const offline = { ...online, event: 'offline' };

      const carolOn3 = await connect(n3!, 'carol');
      for (const client of [alice, bob]) expect(await client.next('presence', (f) => f.user === 'carol')).toEqual(online);
      const carolOn1 = await connect(n1!, 'carol');
      await carolOn3.close();
      await alice.quiet(300);
      for (const client of [alice, bob]) expect(presence(client).filter((f) => f.user === 'carol')).toEqual([online]);

      await carolOn1.close();
      for (const client of [alice, bob]) await client.next('presence', (f) => f.user === 'carol' && f.event === 'offline');
      await alice.quiet(200);
      for (const client of [alice, bob]) expect(presence(client).filter((f) => f.user === 'carol')).toEqual([online, offline]);
      expect(presence(carolOn1).filter((f) => f.user === 'carol')).toEqual([]);
    });

    it('sends offline to the rooms of the user\'s connections on every node, not only the last one\'s', async () => {
      const table = new MembershipTable({ team: ['alice', 'carol'] });
      table.canJoinRooms.add('lobby');
      const [n1, , n3] = await cluster(table, 3, { presence: true });
      const carolOn1 = await connect(n1!, 'carol');
      const alice = await connect(n1!, 'alice');
      const dave = await connect(n3!, 'dave');
      await dave.request({ type: 'join', room: 'lobby' });
      // A second connection of carol, on another node, joins a room the first is not in, and closes.
      const carolOn3 = await connect(n3!, 'carol');
      await carolOn3.request({ type: 'join', room: 'lobby' });
      await carolOn3.close();
      await dave.quiet(200);
      // Her last connection closes on n1: dave, on n3 in lobby, hears it once; alice in team too.
      await carolOn1.close();
      const offline = { type: 'presence', user: 'carol', event: 'offline' };
      expect(await dave.next('presence', (f) => f.user === 'carol')).toEqual({ ...offline, room: 'lobby' });
      expect(await alice.next('presence', (f) => f.user === 'carol' && f.event === 'offline')).toEqual({ ...offline, room: 'team' });
      await dave.quiet(200);
      expect(dave.of('presence').filter((f) => f.user === 'carol')).toEqual([{ ...offline, room: 'lobby' }]);
      expect(alice.of('presence').filter((f) => f.user === 'carol' && f.event === 'offline')).toEqual([{ ...offline, room: 'team' }]);
    });

    it('replays the missed messages when a client resumes on another node', async () => {
      const table = new MembershipTable({ chat: ['alice', 'bob'] });
      const [n1, n2, n3] = await cluster(table);
      const alice = await connect(n1!, 'alice');
      let bob = await connect(n2!, 'bob');
      for (const n of [1, 2]) await alice.request({ type: 'publish', room: 'chat', data: n });
      await bob.until((frames) => frames.filter((f) => f.type === 'message').length === 2);
      const epoch = bob.welcome.epoch as string | undefined;
      await bob.close();
      for (const n of [3, 4, 5]) await alice.request({ type: 'publish', room: 'chat', data: n });

      bob = await connect(n3!, 'bob');
      expect(bob.welcome.epoch).toBe(epoch);
      bob.send({ type: 'resume', rooms: { chat: 2 }, ...(epoch === undefined ? {} : { epoch }), ref: 'r' });
      expect(await bob.next('resumed')).toEqual({ type: 'resumed', rooms: { chat: { replayed: 3 } }, ref: 'r' });
      expect(messages(bob).map((m) => m.data)).toEqual([3, 4, 5]);
      await alice.request({ type: 'publish', room: 'chat', data: 6 });
      expect(await bob.next('message', (m) => m.seq === 6)).toMatchObject({ data: 6 });
      expect(await bob.quiet(150)).toEqual([]);
    });

    it('delivers a publish retried with its cid on another node once, with the first ack', async () => {
      // The client resends an unacknowledged publish after it reconnects, and a load
      // balancer may send it to any node.
      const { n2, bob, ack } = await publishedOnce(new MembershipTable({ chat: ['alice', 'bob'] }));
      const again = await connect(n2, 'alice');
      const repeat = await again.request({ type: 'publish', room: 'chat', data: 'once', cid: 'c-1' });
      expect(repeat).toEqual({ ...ack, ref: repeat.ref });
      // Nothing took a seq: the next publish follows the first directly.
      expect(await again.request({ type: 'publish', room: 'chat', data: 'next', cid: 'c-2' })).toMatchObject({ type: 'ack', seq: (ack.seq as number) + 1 });
      await bob.next('message', (m) => m.data === 'next');
      expect(messages(bob).map((m) => m.data)).toEqual(['once', 'next']);
      // The same cid from another user is another message.
      const other = await bob.request({ type: 'publish', room: 'chat', data: 'bob', cid: 'c-1' });
      expect(other).toMatchObject({ type: 'ack', seq: (ack.seq as number) + 2 });
    });

    it('answers a cid retried on another node after the user left the room with the first ack, and refuses a new one', async () => {
      // The ack was lost, and the user stopped being a participant before the retry: the
      // message was delivered, so the retry gets its ack, not forbidden.
      const table = new MembershipTable({ chat: ['alice', 'bob'] });
      const { n1, n2, bob, ack } = await publishedOnce(table);
      table.remove('chat', 'alice');
      await n1.server.manager.removeMember('chat', 'alice');
      const again = await connect(n2, 'alice');
      expect(again.welcome.rooms).toEqual([]);
      const repeat = await again.request({ type: 'publish', room: 'chat', data: 'once', cid: 'c-1' });
      expect(repeat).toEqual({ ...ack, ref: repeat.ref });
      expect(await again.request({ type: 'publish', room: 'chat', data: 'new', cid: 'c-2' })).toMatchObject({ type: 'error', code: 'forbidden' });
      // A refused cid is not kept: once back in the room, the same cid publishes.
      table.add('chat', 'alice');
      await n2.server.manager.addMember('chat', 'alice');
      expect(await again.request({ type: 'publish', room: 'chat', data: 'new', cid: 'c-2' })).toMatchObject({ type: 'ack', seq: (ack.seq as number) + 1 });
      await bob.next('message', (m) => m.data === 'new');
      expect(messages(bob).map((m) => m.data)).toEqual(['once', 'new']);
    });

    it('runs onPublish once for a cid retried on another node while the first attempt is in it', async () => {
      const table = new MembershipTable({ chat: ['alice', 'bob'] });
      let calls = 0;
      let open!: () => void;
      const gate = new Promise<void>((resolve) => (open = resolve));
      const onPublish: RoomManagerOptions['onPublish'] = async ({ data }) => {
        calls++;
        if (calls === 1) await gate;
        return data;
      };
      const [n1, n2, n3] = await cluster(table, 3, { onPublish });
      const first = await connect(n1!, 'alice');
      const again = await connect(n2!, 'alice');
      const bob = await connect(n3!, 'bob');
      const answered = first.request({ type: 'publish', room: 'chat', data: 'slow', cid: 'c-slow' });
      await expect.poll(() => calls).toBe(1);
      const repeated = again.request({ type: 'publish', room: 'chat', data: 'slow', cid: 'c-slow' });
      expect(await again.quiet(300)).toEqual([]);
      open();
      const [ack, repeat] = await Promise.all([answered, repeated]);
      expect(ack).toMatchObject({ type: 'ack', seq: 1 });
      expect(repeat).toMatchObject({ type: 'ack', id: ack.id, seq: 1 });
      await bob.next('message');
      expect(await bob.quiet(200)).toEqual([]);
      expect(calls).toBe(1);
    });

    it('publishes a cid that onPublish refused when it is retried on another node', async () => {
      const table = new MembershipTable({ chat: ['alice', 'bob'] });
      let calls = 0;
      const onPublish: RoomManagerOptions['onPublish'] = ({ data }) => {
        if (++calls === 1) throw new RoomwireError('forbidden', 'not now');
        return data;
      };
      const [n1, n2, n3] = await cluster(table, 3, { onPublish });
      const first = await connect(n1!, 'alice');
      const bob = await connect(n3!, 'bob');
      expect(await first.request({ type: 'publish', room: 'chat', data: 'retry me', cid: 'c-r' })).toMatchObject({ type: 'error', code: 'forbidden' });
      const again = await connect(n2!, 'alice');
      expect(await again.request({ type: 'publish', room: 'chat', data: 'retry me', cid: 'c-r' })).toMatchObject({ type: 'ack', seq: 1 });
      expect(await bob.next('message')).toMatchObject({ seq: 1, data: 'retry me' });
      expect(calls).toBe(2);
    });

    it('recognises a cid whatever it holds, under an endless window, and not at all with the window off', async () => {
      const table = new MembershipTable({ 'r:1\n': ['alice'] });
      const onPublish: RoomManagerOptions['onPublish'] = ({ data }) => data;
      const [n1, n2] = await cluster(table, 2, { onPublish, dedupeWindowMs: Number.POSITIVE_INFINITY });
      const [a1, a2] = [await connect(n1!, 'alice'), await connect(n2!, 'alice')];
      const cid = 'm:1:x\n"]';
      const first = await a1.request({ type: 'publish', room: 'r:1\n', data: 1, cid });
      expect(await a2.request({ type: 'publish', room: 'r:1\n', data: 1, cid })).toMatchObject({ type: 'ack', id: first.id, seq: 1 });
      expect(await a2.request({ type: 'publish', room: 'r:1\n', data: 2, cid: '' })).toMatchObject({ type: 'ack', seq: 2 });
      expect(await a1.request({ type: 'publish', room: 'r:1\n', data: 2, cid: '' })).toMatchObject({ type: 'ack', seq: 2 });
      await closeClients();
      await closeAll();
      await fixture?.cleanup();

      const [m1, m2] = await cluster(new MembershipTable({ r: ['alice'] }), 2, { dedupeWindowMs: 0 });
      expect(await (await connect(m1!, 'alice')).request({ type: 'publish', room: 'r', data: 1, cid: 'c' })).toMatchObject({ seq: 1 });
      expect(await (await connect(m2!, 'alice')).request({ type: 'publish', room: 'r', data: 1, cid: 'c' })).toMatchObject({ seq: 2 });
    });

    it('holds a cid for one node at a time: claimed, lapsed, released, published', async () => {
      const [n1, n2] = await cluster(new MembershipTable({}), 2);
      // A connection's welcome waits for its node's backplane to have started.
      await Promise.all([connect(n1!, 'alice'), connect(n2!, 'bob')]);
      const [a, b] = [n1!.backplane, n2!.backplane];
      if (!a.cids || !b.cids) throw new Error('this backplane keeps no cids');
      expect(await a.cids.claim('k1', 300)).toEqual({ state: 'claimed' });
      expect(await a.cids.claim('k1', 300)).toEqual({ state: 'claimed' });
      const busy = await b.cids.claim('k1', 300);
      expect(busy.state === 'busy' && busy.retryMs > 0 && busy.retryMs <= 300).toBe(true);
      await b.cids.release('k1');
      expect((await b.cids.claim('k1', 300)).state).toBe('busy');
      await new Promise((resolve) => setTimeout(resolve, 350));
      expect(await b.cids.claim('k1', 300)).toEqual({ state: 'claimed' });
      await b.cids.release('k1');
      expect(await a.cids.claim('k1', 300)).toEqual({ state: 'claimed' });

      const cid = { key: 'k1', windowMs: 300 };
      const message = { room: 'direct', from: 'alice', data: 'x', ts: Date.now() };
      const first = await a.publish({ ...message, id: 'm1' }, cid);
      expect(await b.cids.claim('k1', 300)).toEqual({ state: 'published', id: 'm1', seq: first.seq });
      await a.cids.release('k1');
      expect(await b.publish({ ...message, id: 'm2' }, cid)).toMatchObject({ id: 'm1', seq: first.seq });
      expect(await b.publish({ ...message, id: 'm3' })).toMatchObject({ id: 'm3', seq: first.seq + 1 });
      await new Promise((resolve) => setTimeout(resolve, 350));
      expect(await b.publish({ ...message, id: 'm4' }, cid)).toMatchObject({ id: 'm4', seq: first.seq + 2 });
    });

    it('leaves out the connection a broadcast excepts, whichever node holds it', async () => {
      const table = new MembershipTable({ team: ['alice', 'bob', 'carol'] });
      const [n1, n2] = await cluster(table, 2);
      const alice = await connect(n1!, 'alice');
      const bob = await connect(n1!, 'bob');
      const carol = await connect(n2!, 'carol');
      const aliceId = alice.welcome.connectionId as string;
      // The HTTP request that caused it reached n2; alice's WebSocket is on n1.
      await n2!.server.manager.broadcast('team', 'one', { except: aliceId });
      await n1!.server.manager.broadcast('team', 'two', { except: aliceId });
      await n2!.server.manager.broadcast('team', 'three');
      for (const client of [bob, carol]) await client.until((frames) => frames.filter((f) => f.type === 'message').length === 3, 5_000, 'the broadcasts');
      await alice.until((frames) => frames.some((f) => f.type === 'message'), 5_000, 'the broadcast not excepted');
      await alice.quiet(200);
      expect(messages(alice).map((m) => m.data)).toEqual(['three']);
      expect(messages(bob).map((m) => m.data)).toEqual(['one', 'two', 'three']);
      expect(messages(carol).map((m) => m.data)).toEqual(['one', 'two', 'three']);
    });

    it('leaves the excepted connection out of a broadcast it is brought into the room for', async () => {
      const table = new MembershipTable({ team: ['alice', 'bob'] });
      const [n1, , n3] = await cluster(table);
      const alice = await connect(n1!, 'alice');
      const carol = await connect(n3!, 'carol');
      const carolTab = await connect(n3!, 'carol');
      table.add('team', 'carol');
      // carol posted it over HTTP from her first tab; the broadcast finds her a participant
      // and her node brings both tabs in, sending them the room's messages from it on.
      await n1!.server.manager.broadcast('team', 'hers', { except: carol.welcome.connectionId as string });
      expect(await carolTab.next('message')).toMatchObject({ seq: 1, data: 'hers' });
      await alice.request({ type: 'publish', room: 'team', data: 'next' });
      for (const tab of [carol, carolTab]) await tab.next('message', (m) => m.seq === 2);
      expect(messages(carol).map((m) => m.data)).toEqual(['next']);
      expect(messages(carolTab).map((m) => m.data)).toEqual(['hers', 'next']);
    });

    it('goes on when a node dies mid-stream, and stops counting its users as online', async () => {
      const table = new MembershipTable({ live: ['alice', 'bob', 'dave'] });
      const [n1, n2, n3] = await cluster(table);
      const alice = await connect(n1!, 'alice');
      const bob = await connect(n2!, 'bob');
      const dave = await connect(n3!, 'dave');
      await expect.poll(async () => (await n1!.backplane.presence.onlineUsers()).sort()).toEqual(['alice', 'bob', 'dave']);
      expect(await n2!.backplane.presence.nodesOf('dave')).toEqual([n3!.backplane.presence.nodeId]);

      for (let n = 1; n <= 5; n++) await alice.request({ type: 'publish', room: 'live', data: n });
      await fixture!.crash(n3!.backplane);
      dave.ws.terminate();
      const crashedAt = Date.now();
      for (let n = 6; n <= 10; n++) await alice.request({ type: 'publish', room: 'live', data: n });

      await bob.until((frames) => frames.filter((f) => f.type === 'message').length === 10);
      expect(messages(bob).map((m) => m.data)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      const timeout = fixture!.nodeTimeoutMs;
      await expect
        .poll(async () => (await n1!.backplane.presence.onlineUsers()).sort(), { timeout: timeout * 3, interval: 100 })
        .toEqual(['alice', 'bob']);
      expect(Date.now() - crashedAt).toBeLessThan(timeout * 3);
      expect(await n2!.backplane.presence.nodesOf('dave')).toEqual([]);
    });

    it('says offline, once and in their rooms, for the users of a node that crashed, unless they are on another node', async () => {
      const table = new MembershipTable({ team: ['alice', 'bob', 'carol', 'dave'], side: ['bob', 'dave'], other: ['erin', 'dave'] });
      const [n1, n2, n3] = await cluster(table, 3, { presence: true });
      const alice = await connect(n1!, 'alice');
      const bob = await connect(n2!, 'bob');
      await connect(n1!, 'carol');
      const carol = await connect(n3!, 'carol');
      const dave = await connect(n3!, 'dave');
      const seen = (client: TestClient): string[] => client.of('presence').map((f) => `${String(f.room)}:${String(f.user)}:${String(f.event)}`);
      await bob.until(() => seen(bob).includes('side:dave:online'));
      await alice.until(() => seen(alice).includes('team:dave:online'));

      await fixture!.crash(n3!.backplane);
      dave.ws.terminate();
      carol.ws.terminate();
      // Found by a survivor's heartbeat once n3's is older than the timeout.
      await bob.until(() => seen(bob).includes('side:dave:offline'), fixture!.nodeTimeoutMs * 4, 'the offline of a crashed node\'s user');
      await alice.until(() => seen(alice).includes('team:dave:offline'), 2_000, 'the offline in every room of the user');
      await alice.quiet(fixture!.nodeTimeoutMs);
      // Once, from one survivor; carol is still on n1, so she stays online.
      expect(seen(alice).filter((f) => f.includes('dave') || f.includes('carol'))).toEqual(['team:carol:online', 'team:dave:online', 'team:dave:offline']);
      expect(seen(bob).filter((f) => f.includes('dave') || f.includes('carol'))).toEqual(['team:carol:online', 'team:dave:online', 'side:dave:online', 'team:dave:offline', 'side:dave:offline']);
      expect((await n1!.backplane.presence.onlineUsers()).sort()).toEqual(['alice', 'bob', 'carol']);
    });
  });
}

import { afterEach, describe, expect, it } from 'vitest';
import { TestClient, closeClients } from '../helpers/client.js';
import { MembershipTable, closeAll, startServer, tokenFor } from '../helpers/server.js';

afterEach(async () => {
  await closeClients();
  await closeAll();
});

describe('smoke', () => {
  it('welcomes, auto-joins and delivers a publish', async () => {
    const table = new MembershipTable({ chat: ['alice', 'bob'] });
    const s = await startServer({ membership: table });
    const alice = await TestClient.connect(s.url, await tokenFor('alice'));
    const bob = await TestClient.connect(s.url, await tokenFor('bob'));
    expect(alice.welcome).toMatchObject({ protocol: 1, user: { id: 'alice' }, rooms: ['chat'] });
    const ack = await alice.request({ type: 'publish', room: 'chat', data: { text: 'hi' } });
    expect(ack).toMatchObject({ type: 'ack', room: 'chat', seq: 1 });
    const message = await bob.next('message');
    expect(message).toMatchObject({ room: 'chat', seq: 1, from: 'alice', data: { text: 'hi' }, id: ack.id });
  });
});

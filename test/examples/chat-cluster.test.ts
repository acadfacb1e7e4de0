import { connect as netConnect } from 'node:net';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { TestClient, closeClients } from '../helpers/client.js';
import { deleteKeys } from '../helpers/redis.js';
import { FRAMEWORKS, call, cleanUp, login, startChat, tempDatabase, wsUrl } from './harness.js';

// The example reads REDIS_URL and REDIS_PREFIX when it builds its RoomManager.
const REDIS_URL = 'redis://127.0.0.1:6379';
const PREFIX = `roomwire-chat-test:${process.pid}:${Date.now().toString(36)}`;

function redisUp(): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = netConnect(6379, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

const up = await redisUp();
if (!up) {
  const reason = 'Redis is not reachable on 127.0.0.1:6379';
  if (process.env.CI === 'true') throw new Error(`${reason}; the chat cluster test needs it in CI`);
  console.log(`skipping the chat cluster test: ${reason}`);
}

afterEach(async () => {
  await closeClients();
  await cleanUp();
  delete process.env.REDIS_URL;
  delete process.env.REDIS_PREFIX;
  const redis = new Redis(REDIS_URL);
  try {
    await deleteKeys(redis, PREFIX);
  } finally {
    redis.disconnect();
  }
});

describe.skipIf(!up)('the chat example on two processes sharing Redis (REDIS_URL)', () => {
  it('delivers a message posted on one server to a participant connected to the other, and resumes there', async () => {
    process.env.REDIS_URL = REDIS_URL;
    process.env.REDIS_PREFIX = PREFIX;
    const databasePath = tempDatabase();
    const [, startExpress] = FRAMEWORKS[0];
    const [, startFastify] = FRAMEWORKS[1];
    const a = await startChat(startExpress, { databasePath });
    const b = await startChat(startFastify, { databasePath });
    const aliceToken = await login(a, 'alice');
    const bobToken = await login(b, 'bob');
    const conversations = (await call(a, 'GET', '/api/v1/conversations', { token: aliceToken })).body as { id: string; title: string; room: string }[];
    const dm = conversations.find((c) => c.title === 'alice & bob')!;

    const bob = await TestClient.connect(wsUrl(b), bobToken);
    expect(bob.welcome.rooms).toContain(dm.room);
    const posted = await call(a, 'POST', `/api/v1/conversations/${dm.id}/messages`, { token: aliceToken, body: { content: 'across processes' } });
    expect(posted.status).toBe(201);
    const message = await bob.next('message');
    expect(message).toMatchObject({ room: dm.room, seq: 1, from: 'alice', data: { content: 'across processes', from: 'alice' } });

    // bob drops, alice writes twice more through server A's WebSocket, bob resumes on A.
    await bob.close();
    const alice = await TestClient.connect(wsUrl(a), aliceToken);
    for (const content of ['two', 'three']) {
      expect(await alice.request({ type: 'publish', room: dm.room, data: { content } })).toMatchObject({ type: 'ack' });
    }
    const again = await TestClient.connect(wsUrl(a), bobToken);
    again.send({ type: 'resume', rooms: { [dm.room]: 1 }, epoch: bob.welcome.epoch, ref: 'r' });
    await again.next('resumed');
    expect(again.of('message').map((m) => (m.data as { content: string }).content)).toEqual(['two', 'three']);
  });
});

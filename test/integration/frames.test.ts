import { afterEach, describe, expect, it } from 'vitest';
import { TestClient, closeClients } from '../helpers/client.js';
import { MembershipTable, closeAll, startServer, tokenFor } from '../helpers/server.js';

// The ws adapter writes each broadcast as one prebuilt frame; ws's own framing is used when
// permessage-deflate is negotiated. Both must produce frames any client reads, at every
// length encoding of RFC 6455 (7-bit, 16-bit and 64-bit payload lengths).
const BOUNDARIES = [0, 1, 125, 126, 127, 65_535, 65_536, 300_000];

describe.each([
  ['prebuilt frames', false],
  ['ws framing (permessage-deflate)', true],
])('ws adapter, %s', (_name, perMessageDeflate) => {
  afterEach(async () => {
    await closeClients();
    await closeAll();
  });

  it('delivers text frames of every length encoding, byte for byte, to every member', async () => {
    const table = new MembershipTable({ room: ['alice', 'bob', 'carol'] });
    const server = await startServer({ membership: table }, { perMessageDeflate });
    const clients = await Promise.all(['alice', 'bob', 'carol'].map(async (user) => TestClient.connect(server.url, await tokenFor(user))));
    const frameLength = (client: TestClient, seq: number): number => {
      const message = client.of('message').find((m) => m.seq === seq);
      return Buffer.byteLength(JSON.stringify(message));
    };
    // Which path the adapter takes: ws.send only with an extension negotiated.
    let wsSends = 0;
    for (const ws of server.adapter.clients) {
      const send = ws.send.bind(ws);
      ws.send = ((...args: Parameters<typeof ws.send>) => {
        wsSends++;
        send(...args);
      }) as typeof ws.send;
    }
    // Pad `data` so the whole message frame lands near each boundary, multi-byte characters included.
    for (const [i, target] of BOUNDARIES.entries()) {
      const data = target < 200 ? 'é'.repeat(target % 7) : 'x'.repeat(target - 120) + 'é€😀';
      await server.manager.broadcast('room', data);
      for (const client of clients) {
        const got = await client.next('message', (m) => m.seq === i + 1);
        expect(got.data).toBe(data);
      }
    }
    // The sizes around the 125/126 and 65,535/65,536 boundaries were actually crossed.
    const sizes = BOUNDARIES.map((_, i) => frameLength(clients[0]!, i + 1));
    expect(Math.max(...sizes)).toBeGreaterThan(65_536);
    expect(sizes.some((size) => size > 125 && size < 65_536)).toBe(true);
    // Acks, errors and pings interleave with broadcasts on the same socket in order.
    const [alice, bob] = clients;
    alice!.send({ type: 'ping', ref: 'p' });
    const ack = await bob!.request({ type: 'publish', room: 'room', data: 'after' });
    expect(ack).toMatchObject({ type: 'ack', seq: BOUNDARIES.length + 1 });
    expect(await alice!.next('pong')).toEqual({ type: 'pong', ref: 'p' });
    expect(await alice!.next('message', (m) => m.seq === BOUNDARIES.length + 1)).toMatchObject({ data: 'after' });
    expect(bob!.ws.extensions).toBe(perMessageDeflate ? 'permessage-deflate' : '');
    if (perMessageDeflate) expect(wsSends).toBeGreaterThan(BOUNDARIES.length * 3);
    else expect(wsSends).toBe(0);
  });
});

import type WebSocket from 'ws';
import { afterEach, describe, expect, it } from 'vitest';
import { client, opened, rawServer, teardown, until } from '../client/helpers.js';

afterEach(teardown);

/** Sends `frames` in one TCP write, as a busy server or a slow network delivers them. */
function sendTogether(socket: WebSocket, frames: object[]): void {
  const raw = (socket as unknown as { _socket: { cork(): void; uncork(): void } })._socket;
  raw.cork();
  for (const frame of frames) socket.send(JSON.stringify(frame));
  raw.uncork();
}

describe('chaos finding: a leave and a join of one room answered in one chunk', () => {
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

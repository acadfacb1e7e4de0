import { afterEach, describe, expect, it } from 'vitest';
import { TestClient, closeClients } from '../helpers/client.js';
import { MembershipTable, closeAll, startServer, tokenFor } from '../helpers/server.js';

afterEach(async () => {
  await closeClients();
  await closeAll();
});

// A core bug found while building the chat example, kept as a regression test over the
// raw protocol.
// PROTOCOL.md: "a room whose history no longer reaches back to seq + 1 gets history_gap";
// history-store.ts: "a client that resumes against a restarted process gets history_gap".
// With the default in-memory history, a restarted process numbers a room from 1 again, so
// a seq from the old process can look valid on the new one and the resume silently skips
// messages. The chat page protects itself (it refetches on every reconnect); a client that
// relies on `gap`, as the roomwire client documents, does not.
// The fix: `welcome.epoch` names the server's seq numbering, and a `resume` that sends
// back an epoch from another numbering gets `history_gap` for every room it had seen.
describe('core: resume after a server restart (in-memory history)', () => {
  it('answers a seq from the previous process with history_gap, not with a silent partial replay', async () => {
    const table = new MembershipTable({ chat: ['alice', 'bob'] });
    const before = await startServer({ membership: table });
    const bob = await TestClient.connect(before.url, await tokenFor('bob'));
    const epoch = bob.welcome.epoch;
    expect(typeof epoch).toBe('string');
    await before.manager.broadcast('chat', 'old 1');
    await before.manager.broadcast('chat', 'old 2');
    expect((await bob.next('message', (f) => f.seq === 2)).data).toBe('old 2');
    await before.close();

    // The new process gets two messages before bob is back: seq 1 and 2 again.
    const after = await startServer({ membership: table });
    await after.manager.broadcast('chat', 'new 1');
    await after.manager.broadcast('chat', 'new 2');
    const again = await TestClient.connect(after.url, await tokenFor('bob'));
    expect(again.welcome.epoch).not.toBe(epoch);
    const answer = await again.request({ type: 'resume', rooms: { chat: 2 }, epoch });
    const frames = [answer, ...(await again.quiet(100))];
    // Either a gap (the client refetches) or the two new messages; today bob gets
    // `resumed {chat: {replayed: 0}}` and never learns about "new 1" and "new 2".
    const gotGap = frames.some((f) => f.type === 'error' && f.code === 'history_gap');
    const replayed = frames.filter((f) => f.type === 'message').map((f) => f.data);
    expect(gotGap || replayed.join() === 'new 1,new 2', `bob got ${JSON.stringify(frames)}`).toBe(true);
  });
});

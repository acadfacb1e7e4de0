import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runCli, type CliOutput } from '../../examples/cli/cli.js';
import type { RunningChatServer } from '../../examples/chat/server.js';
import { TestClient, closeClients } from '../helpers/client.js';
import { FRAMEWORKS, call, cleanUp, login, startChat, wsUrl } from './harness.js';

afterEach(async () => {
  await closeClients();
  await cleanUp();
});

/** Collects what the CLI prints. */
function capture(): CliOutput & { lines: string[]; notes: string[]; frames(): { type: string; [key: string]: unknown }[] } {
  const lines: string[] = [];
  const notes: string[] = [];
  return {
    lines,
    notes,
    out: (line) => lines.push(line),
    err: (line) => notes.push(line),
    frames: () => lines.map((line) => JSON.parse(line) as { type: string }),
  };
}

async function until(check: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe.each(FRAMEWORKS)('chat CLI against %s', (_name, start) => {
  let server: RunningChatServer;
  beforeEach(async () => {
    server = await startChat(start);
  });

  it('listen prints one JSON line per frame until stopped', async () => {
    const output = capture();
    const controller = new AbortController();
    const exit = runCli(['listen', '--user', 'bob', '--url', server.url], output, controller.signal);
    await until(() => output.lines.length > 0, 'welcome');
    expect(output.frames()[0]).toMatchObject({ type: 'welcome', user: { id: 'bob' } });
    const posted = await call(server, 'POST', '/api/v1/conversations/1/messages', { token: await login(server, 'alice'), body: { content: 'to the cli' } });
    await until(() => output.frames().some((f) => f.type === 'message'), 'the message');
    expect(output.frames().find((f) => f.type === 'message')).toMatchObject({ room: 'conversation:1', from: 'alice', data: posted.body });
    controller.abort();
    expect(await exit).toBe(0);
  });

  it('send publishes with a cid, prints the ack and exits 0; the message is stored and delivered', async () => {
    const bob = await TestClient.connect(wsUrl(server), await login(server, 'bob'));
    const output = capture();
    expect(await runCli(['send', '--user', 'alice', '--room', '1', '--url', server.url, 'hi', 'from', 'the', 'cli'], output)).toBe(0);
    expect(output.frames().map((f) => f.type)).toEqual(['welcome', 'ack']);
    expect(await bob.next('message')).toMatchObject({ room: 'conversation:1', from: 'alice', data: { content: 'hi from the cli' } });
    const stored = await call(server, 'GET', '/api/v1/conversations/1/messages', { token: await login(server, 'bob') });
    expect(stored.body.map((m: { content: string }) => m.content)).toEqual(['hi from the cli']);
  });

  it('send with --token and a full room name; exits 1 on an error frame', async () => {
    const token = await login(server, 'carol');
    const ok = capture();
    expect(await runCli(['send', '--token', token, '--room', 'conversation:2', '--url', server.url, 'hey'], ok)).toBe(0);
    const refused = capture();
    expect(await runCli(['send', '--token', token, '--room', '1', '--url', server.url, 'let me in'], refused)).toBe(1);
    expect(refused.frames().at(-1)).toMatchObject({ type: 'error', code: 'forbidden' });
  });

  it('reports a refused upgrade, an unknown user and bad usage', async () => {
    const badToken = capture();
    expect(await runCli(['listen', '--token', 'nope', '--url', server.url], badToken)).toBe(1);
    expect(badToken.notes.join('\n')).toContain('upgrade refused: HTTP 401');
    const unknown = capture();
    expect(await runCli(['listen', '--user', 'mallory', '--url', server.url], unknown)).toBe(1);
    expect(unknown.notes.join('\n')).toContain('HTTP 401');
    const usage = capture();
    expect(await runCli(['send', '--user', 'alice', '--url', server.url], usage)).toBe(2);
    expect(await runCli(['shout'], capture())).toBe(2);
  });
});

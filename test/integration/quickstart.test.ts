import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { afterEach, expect, it } from 'vitest';
import { TestClient, closeClients } from '../helpers/client.js';

let child: ChildProcess | undefined;
afterEach(async () => {
  await closeClients();
  if (child && child.exitCode === null) {
    child.kill('SIGTERM');
    await once(child, 'exit');
  }
});

it('runs the README quick start as written', async () => {
  child = spawn(process.execPath, ['--import', 'tsx', 'examples/quickstart/server.ts'], { env: { ...process.env, PORT: '0' }, stdio: ['ignore', 'pipe', 'inherit'] });
  let output = '';
  const url = await new Promise<string>((resolve, reject) => {
    child!.stdout!.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      const match = /listening on (ws:\S+)\?user=alice/.exec(output);
      if (match) resolve(match[1]!);
    });
    child!.once('exit', (code) => reject(new Error(`quick start exited with ${code}: ${output}`)));
  });
  const alice = await TestClient.connect(`${url}?user=alice`, undefined);
  const bob = await TestClient.connect(`${url}?user=bob`, undefined);
  expect(alice.welcome.rooms).toEqual(['room:general']);
  await alice.request({ type: 'publish', room: 'room:general', data: 'hello bob' });
  expect(await bob.next('message')).toMatchObject({ from: 'alice', data: 'hello bob' });
});

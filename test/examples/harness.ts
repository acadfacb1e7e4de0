import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { pino } from 'pino';
import { startExpressChat } from '../../examples/express/server.js';
import { startFastifyChat } from '../../examples/fastify/server.js';
import type { RunningChatServer, StartOptions } from '../../examples/chat/server.js';

/** The secret every example server in the tests signs with. */
export const SECRET = 'chat-example-test-secret';

/** Both frameworks, for `describe.each`: the same suite must pass against each. */
export const FRAMEWORKS = [
  ['express', startExpressChat],
  ['fastify', startFastifyChat],
] as const;

export type StartChat = (options: StartOptions) => Promise<RunningChatServer>;

const leftovers = new Set<RunningChatServer>();
const tempDirs = new Set<string>();

/** Starts a chat server on 127.0.0.1, a free port, an in-memory database (unless given) and a silent logger. */
export async function startChat(start: StartChat, options: StartOptions = {}): Promise<RunningChatServer> {
  const server = await start({
    port: 0,
    host: '127.0.0.1',
    databasePath: ':memory:',
    jwtSecret: SECRET,
    logger: pino({ level: 'silent' }),
    ...options,
  });
  leftovers.add(server);
  const close = server.close.bind(server);
  return Object.assign(server, {
    close: () => {
      leftovers.delete(server);
      return close();
    },
  });
}

/** A database file in a fresh temporary folder, removed by {@link cleanUp}. */
export function tempDatabase(): string {
  const dir = mkdtempSync(join(tmpdir(), 'roomwire-chat-'));
  tempDirs.add(dir);
  return join(dir, 'chat.db');
}

/** Closes every server a test started and removes temporary databases. */
export async function cleanUp(): Promise<void> {
  await Promise.all([...leftovers].map((server) => server.close()));
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

/** The WebSocket URL of a running chat server. */
export function wsUrl(server: RunningChatServer): string {
  return `${server.url.replace(/^http/, 'ws')}/api/v1/ws/chat`;
}

/** An HTTP answer: status, content type and the parsed JSON body (undefined when empty). */
export interface Answer {
  status: number;
  type: string | null;
  body: any;
  text: string;
}

/** Calls the chat's HTTP API; `body` is sent as JSON unless `raw` is given. */
export async function call(
  server: RunningChatServer,
  method: string,
  path: string,
  options: { token?: string; body?: unknown; raw?: string; headers?: Record<string, string> } = {},
): Promise<Answer> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
  let payload: string | undefined;
  if (options.raw !== undefined) payload = options.raw;
  else if (options.body !== undefined) payload = JSON.stringify(options.body);
  if (payload !== undefined) headers['content-type'] ??= 'application/json';
  const response = await fetch(`${server.url}${path}`, { method, headers, ...(payload === undefined ? {} : { body: payload }) });
  const text = await response.text();
  let body: unknown;
  try {
    body = text === '' ? undefined : JSON.parse(text);
  } catch {
    body = undefined;
  }
  return { status: response.status, type: response.headers.get('content-type'), body, text };
}

/** Logs in as a seeded user through the demo login route and returns the token. */
export async function login(server: RunningChatServer, username: string): Promise<string> {
  const answer = await call(server, 'POST', '/api/v1/auth/login', { body: { username } });
  if (answer.status !== 200) throw new Error(`login as ${username} failed: ${answer.status} ${answer.text}`);
  return answer.body.token as string;
}

/** Signs a token the server did not issue. */
export function foreignToken(sub: string, secret = SECRET): Promise<string> {
  return new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setSubject(sub).setIssuedAt().setExpirationTime('1h').sign(new TextEncoder().encode(secret));
}

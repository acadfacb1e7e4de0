import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';
import { isMain } from '../chat/server.js';

const USAGE = `Listen to or send into a roomwire chat, printing each frame received as one JSON line.

Usage:
  npm run cli -- listen --user bob
  npm run cli -- send --user alice --room 2 "hi"

Options:
  --url URL       the chat server (default http://127.0.0.1:10000)
  --user NAME     log in as this demo user (POST /api/v1/auth/login)
  --token TOKEN   use this JWT instead of the demo login (a server of your own)
  --room ROOM     send: a room name, or a conversation id (2 means conversation:2)
  --path PATH     the WebSocket path (default /api/v1/ws/chat)

Frames go to stdout, one per line; everything else goes to stderr.
send exits 0 on the ack and 1 on an error frame.`;

/** Where the CLI writes: frames to `out`, notes to `err`. */
export interface CliOutput {
  out(line: string): void;
  err(line: string): void;
}

const consoleOutput: CliOutput = {
  out: (line) => process.stdout.write(`${line}\n`),
  err: (line) => process.stderr.write(`${line}\n`),
};

class CliError extends Error {}

async function loginToken(baseUrl: string, user: string): Promise<string> {
  let response: Response;
  try {
    response = await fetch(new URL('/api/v1/auth/login', baseUrl), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: user }),
    });
  } catch (error) {
    throw new CliError(`cannot reach ${baseUrl}: ${(error as Error).message}`);
  }
  const text = await response.text();
  if (!response.ok) throw new CliError(`login as ${user} failed: HTTP ${response.status} ${text}`);
  return (JSON.parse(text) as { token: string }).token;
}

/**
 * Opens the WebSocket and resolves once open; an HTTP refusal becomes a readable error.
 * Frames are buffered from the start: the server's `welcome` can arrive in the same
 * packet as the upgrade answer, before any later listener is attached.
 */
function open(url: string, token: string): Promise<{ ws: WebSocket; early: string[]; stopBuffering(): void }> {
  // The header keeps the token out of URLs and logs; the roomwire.v1 subprotocol says which protocol we speak.
  const ws = new WebSocket(url, ['roomwire.v1'], { headers: { authorization: `Bearer ${token}` } });
  const early: string[] = [];
  const buffer = (data: WebSocket.RawData) => early.push(data.toString());
  ws.on('message', buffer);
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve({ ws, early, stopBuffering: () => ws.off('message', buffer) }));
    ws.once('unexpected-response', (_request, response) => {
      let body = '';
      response.on('data', (chunk: Buffer) => (body += chunk.toString()));
      response.on('end', () => reject(new CliError(`upgrade refused: HTTP ${response.statusCode} ${body}`)));
    });
    ws.once('error', (error) => reject(new CliError(`cannot connect to ${url}: ${error.message}`)));
  });
}

function roomName(room: string): string {
  return /^\d+$/.test(room) ? `conversation:${room}` : room;
}

/**
 * Runs the CLI with `args` (what follows `npm run cli --`) and resolves with the exit code.
 * `listen` runs until `signal` aborts or the server closes the connection.
 */
export async function runCli(args: string[], output: CliOutput = consoleOutput, signal?: AbortSignal): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        url: { type: 'string', default: 'http://127.0.0.1:10000' },
        user: { type: 'string' },
        token: { type: 'string' },
        room: { type: 'string' },
        path: { type: 'string', default: '/api/v1/ws/chat' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (error) {
    output.err(`${(error as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [command, ...rest] = positionals;
  if (values.help || (command !== 'listen' && command !== 'send')) {
    output.err(USAGE);
    return values.help ? 0 : 2;
  }
  const text = rest.join(' ');
  if (command === 'send' && (!values.room || text === '')) {
    output.err(`send needs --room and a message\n\n${USAGE}`);
    return 2;
  }
  if (!values.token && !values.user) {
    output.err(`give --user (demo login) or --token\n\n${USAGE}`);
    return 2;
  }

  let opened: Awaited<ReturnType<typeof open>>;
  try {
    const token = values.token ?? (await loginToken(values.url, values.user!));
    const wsUrl = new URL(values.path, values.url);
    wsUrl.protocol = wsUrl.protocol === 'https:' ? 'wss:' : 'ws:';
    opened = await open(wsUrl.href, token);
    output.err(`connected to ${wsUrl.href}`);
  } catch (error) {
    if (!(error instanceof CliError)) throw error;
    output.err(error.message);
    return 1;
  }

  const { ws, early } = opened;
  return new Promise<number>((resolve) => {
    let code = 0;
    let stopped = false;
    const ref = `cli-${randomUUID().slice(0, 8)}`;
    const stop = () => {
      stopped = true;
      ws.close(1000, 'bye');
    };
    signal?.addEventListener('abort', stop, { once: true });
    const received = (line: string): void => {
      output.out(line);
      if (command !== 'send') return;
      const frame = JSON.parse(line) as { type?: string; ref?: string };
      if (frame.type === 'welcome') {
        // A cid makes a retried send idempotent on the server: it is stored once.
        ws.send(JSON.stringify({ type: 'publish', room: roomName(values.room!), data: { content: text }, cid: randomUUID(), ref }));
      } else if (frame.ref === ref && (frame.type === 'ack' || frame.type === 'error')) {
        code = frame.type === 'ack' ? 0 : 1;
        stop();
      }
    };
    // Swap the buffer for the real handler in one synchronous step, so no frame falls in between.
    opened.stopBuffering();
    ws.on('message', (data) => received(data.toString()));
    for (const line of early) received(line);
    ws.on('close', (closeCode, reason) => {
      signal?.removeEventListener('abort', stop);
      if (!stopped) {
        output.err(`connection closed: ${closeCode} ${reason.toString()}`);
        code = 1;
      }
      resolve(code);
    });
    ws.on('error', (error) => output.err(`socket error: ${error.message}`));
  });
}

if (isMain(import.meta.url)) {
  const controller = new AbortController();
  process.once('SIGINT', () => controller.abort());
  process.once('SIGTERM', () => controller.abort());
  process.exitCode = await runCli(process.argv.slice(2), consoleOutput, controller.signal);
}

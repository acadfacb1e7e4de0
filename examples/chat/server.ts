import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { WebSocketAdapter } from 'roomwire/ws';
import type { ChatApp, ChatAppOptions } from './app.js';

/** Options of a framework's `start` function. */
export interface StartOptions extends ChatAppOptions {
  /** 0 picks a free port (tests). @default 10000 */
  port?: number | undefined;
  /** @default {@link DEFAULT_HOST} */
  host?: string | undefined;
}

/** A chat server that is listening. */
export interface RunningChatServer {
  /** `http://host:port`, with the port actually bound. */
  readonly url: string;
  readonly chat: ChatApp;
  /** Closes WebSockets (1001), then the HTTP server, then the database. Idempotent. */
  close(): Promise<void>;
}

/** The default port, as the issue and the README say. */
export const DEFAULT_PORT = 10000;

/** Every IPv4 interface, so the demo is reachable in a container or on a PaaS; `HOST` narrows it. */
export const DEFAULT_HOST = '0.0.0.0';

/**
 * Wraps a listening server into {@link RunningChatServer}. Closing follows the order
 * the protocol implies: the manager first, so every client is told 1001 ("server shutting
 * down; reconnect elsewhere") and reconnects; then the framework's own close.
 */
export function running(chat: ChatApp, server: Server, adapter: WebSocketAdapter, closeHttp: () => Promise<void>): RunningChatServer {
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? (address.address === '::' ? 'localhost' : `[${address.address}]`) : address.address === '0.0.0.0' ? 'localhost' : address.address;
  let closing: Promise<void> | undefined;
  const shutdown = async (): Promise<void> => {
    await chat.manager.close();
    await adapter.close();
    await closeHttp();
    chat.close();
  };
  return {
    url: `http://${host}:${address.port}`,
    chat,
    close() {
      closing ??= shutdown();
      return closing;
    },
  };
}

/** True when the module with this `import.meta.url` is the script node (or tsx) was started with. */
export function isMain(moduleUrl: string): boolean {
  const script = process.argv[1];
  return script !== undefined && pathToFileURL(resolve(script)).href === moduleUrl;
}

/** A signal within this long of the first is the same Ctrl-C, relayed. */
const SECOND_SIGNAL_AFTER_MS = 1_000;

/**
 * Runs a chat server as a process: port from `PORT` (default 10000), database from
 * `DATABASE_PATH`, and a graceful stop on SIGTERM and SIGINT (a second signal, a second or more later,
 * exits at once).
 */
export async function runFromCommandLine(framework: string, start: (options: StartOptions) => Promise<RunningChatServer>): Promise<void> {
  const port = process.env.PORT === undefined || process.env.PORT === '' ? DEFAULT_PORT : Number(process.env.PORT);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`PORT must be a port number, not ${JSON.stringify(process.env.PORT)}`);
    process.exit(1);
  }
  const server = await start({ port, host: process.env.HOST || undefined });
  const { logger } = server.chat;
  logger.info({ url: server.url, framework, database: server.chat.db.path }, `chat on ${framework} listening on ${server.url}`);
  let stoppingSince: number | undefined;
  const stop = (signal: NodeJS.Signals): void => {
    if (stoppingSince !== undefined) {
      // Ctrl-C under `npm start` reaches this process twice at once: from the terminal
      // (to the whole process group) and relayed by npm's and tsx's processes. Only a
      // signal a person sent later is the second one.
      if (Date.now() - stoppingSince < SECOND_SIGNAL_AFTER_MS) return;
      logger.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stoppingSince = Date.now();
    logger.info({ signal }, 'shutting down: closing WebSockets, then the HTTP server');
    server.close().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

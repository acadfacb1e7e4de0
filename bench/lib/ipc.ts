import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** The repository root (bench/lib/../..). */
export const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** A request to a child: `id` pairs it with its reply. */
interface RequestEnvelope {
  id: number;
  body: unknown;
}

/** A child's answer to one request, or an event it reports on its own. */
type ChildEnvelope =
  | { id: number; ok: true; result: unknown }
  | { id: number; ok: false; error: string }
  | { event: string; [key: string]: unknown };

const live = new Set<ChildProcess>();

/** Kills every child still alive: called at the end of the run, also on error and on signals. */
export function killAllChildren(): void {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      // Already gone.
    }
  }
  live.clear();
}

export interface SpawnOptions {
  /** Node flags before the script. */
  nodeFlags?: string[];
  /** A name for error messages. */
  name: string;
  /** A command node runs under (`valgrind --tool=callgrind …`), before node itself. */
  wrapper?: string[] | undefined;
}

/**
 * A child process running a script with node (a bundle, or TypeScript with
 * `--import tsx` among the flags), with an IPC channel. It is started through `sh` so
 * `ulimit -n` can be raised to the hard limit first (10,000 sockets need 10,000
 * descriptors); `exec` keeps the child's pid the node process's.
 */
export class ChildHandle {
  readonly proc: ChildProcess;
  readonly name: string;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void; timer: NodeJS.Timeout }>();
  private readonly eventWaiters = new Map<string, ((event: Record<string, unknown>) => void)[]>();
  private readonly exited: Promise<number | null>;
  private exitCode: number | null | undefined;

  constructor(script: string, args: string[], options: SpawnOptions) {
    this.name = options.name;
    const node = [...(options.wrapper ?? []), process.execPath, ...(options.nodeFlags ?? []), script, ...args];
    this.proc = spawn('/bin/sh', ['-c', 'ulimit -n "$(ulimit -Hn)" 2>/dev/null || true; exec "$@"', 'sh', ...node], {
      cwd: ROOT,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      env: { ...process.env, NODE_ENV: 'production' },
    });
    live.add(this.proc);
    this.exited = new Promise((resolve) => {
      this.proc.once('exit', (code) => {
        live.delete(this.proc);
        this.exitCode = code;
        for (const { reject, timer } of this.pending.values()) {
          clearTimeout(timer);
          reject(new Error(`${this.name} exited (code ${String(code)}) before answering`));
        }
        this.pending.clear();
        resolve(code);
      });
    });
    this.proc.on('message', (raw) => this.onMessage(raw as ChildEnvelope));
  }

  get pid(): number {
    return this.proc.pid ?? -1;
  }

  get alive(): boolean {
    return this.exitCode === undefined;
  }

  private onMessage(message: ChildEnvelope): void {
    if ('event' in message) {
      const waiters = this.eventWaiters.get(message.event) ?? [];
      this.eventWaiters.delete(message.event);
      for (const waiter of waiters) waiter(message);
      return;
    }
    const entry = this.pending.get(message.id);
    if (!entry) return;
    this.pending.delete(message.id);
    clearTimeout(entry.timer);
    if (message.ok) entry.resolve(message.result);
    else entry.reject(new Error(`${this.name}: ${message.error}`));
  }

  /** Waits for the next event of this name, at most `timeoutMs`. */
  waitEvent<T>(event: string, timeoutMs: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.name}: no ${event} within ${timeoutMs} ms`)), timeoutMs);
      void this.exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`${this.name} exited (code ${String(code)}) before ${event}`));
      });
      const list = this.eventWaiters.get(event) ?? [];
      list.push((value) => {
        clearTimeout(timer);
        resolve(value as T);
      });
      this.eventWaiters.set(event, list);
    });
  }

  /** Sends one request and waits for its reply, at most `timeoutMs`. */
  request<T>(body: unknown, timeoutMs: number): Promise<T> {
    if (!this.alive) return Promise.reject(new Error(`${this.name} is not running`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${this.name}: no answer to ${JSON.stringify(body).slice(0, 80)} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject, timer });
      const envelope: RequestEnvelope = { id, body };
      this.proc.send(envelope);
    });
  }

  /** Asks the child to exit (so `--cpu-prof` writes its profile), then kills it after `timeoutMs`. */
  async stop(timeoutMs = 5_000): Promise<void> {
    if (!this.alive) return;
    try {
      this.proc.send({ id: 0, body: { cmd: 'exit' } } satisfies RequestEnvelope);
    } catch {
      // The channel is gone; the kill below ends it.
    }
    let timer: NodeJS.Timeout | undefined;
    const killed = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        this.proc.kill('SIGKILL');
        resolve();
      }, timeoutMs);
    });
    await Promise.race([this.exited.then(() => undefined), killed]);
    clearTimeout(timer);
    await this.exited;
  }
}

/**
 * The child side: answers each request with `handler`'s result. `{cmd: 'exit'}` ends the
 * process with code 0 (so `--cpu-prof` writes its profile); so does losing the parent.
 */
export function serveRequests(handler: (body: Record<string, unknown>) => unknown): void {
  const send = process.send?.bind(process);
  if (!send) throw new Error('this script is a child of bench/run.ts; start it with `npm run bench`');
  process.on('disconnect', () => process.exit(0));
  process.on('message', (raw) => {
    const { id, body } = raw as RequestEnvelope;
    const request = body as Record<string, unknown>;
    if (request.cmd === 'exit') process.exit(0);
    Promise.resolve()
      .then(() => handler(request))
      .then(
        (result) => send({ id, ok: true, result: result ?? null }),
        (error: unknown) => send({ id, ok: false, error: error instanceof Error ? error.stack ?? error.message : String(error) }),
      );
  });
}

/** Reports an event to the parent. */
export function reportEvent(event: string, fields: Record<string, unknown>): void {
  process.send?.({ event, ...fields });
}

import type { Connection, ConnectionHandlers, RoomManager } from '../../src/index.js';

/** An in-memory Connection: records frames, can be told to throw on send. */
export class FakeConnection implements Connection {
  readonly sent: string[] = [];
  bufferedAmount = 0;
  closedWith: { code: number; reason: string } | undefined;
  /** When true, every send throws, as a socket that is going away does. */
  failing = false;
  /** Sends left to fail before sending works again. */
  failNext = 0;
  /** When true, every send returns false, as a socket that is closing does. */
  closing = false;
  handlers!: ConnectionHandlers;

  send(text: string): boolean {
    if (this.closing) return false;
    if (this.failing) throw new Error('send failed');
    if (this.failNext > 0) {
      this.failNext--;
      throw new Error('send failed');
    }
    this.sent.push(text);
    return true;
  }

  close(code: number, reason: string): void {
    if (this.closedWith) return;
    this.closedWith = { code, reason };
    // A real transport reports the close back asynchronously.
    queueMicrotask(() => this.handlers?.closed(code, reason));
  }

  /** Every frame received, parsed. */
  get frames(): { type: string; [key: string]: unknown }[] {
    return this.sent.map((text) => JSON.parse(text) as { type: string; [key: string]: unknown });
  }

  of(type: string): { type: string; [key: string]: unknown }[] {
    return this.frames.filter((frame) => frame.type === type);
  }

  /** Sends a client frame into the manager. */
  receive(frame: unknown): void {
    this.handlers.message(typeof frame === 'string' ? frame : JSON.stringify(frame), false);
  }
}

/** Opens a fake connection for `user` and waits until it was welcomed. */
export async function openFake(manager: RoomManager, user: string): Promise<FakeConnection> {
  const connection = new FakeConnection();
  connection.handlers = manager.open(connection, { id: user });
  await connection.handlers.ready;
  return connection;
}

/** Lets queued promise callbacks and timers of 0 ms run. */
export function settle(ms = 0): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Waits until `conn` has received `count` message frames, or gives up after about a second. */
export async function untilMessages(conn: FakeConnection, count: number): Promise<void> {
  for (let i = 0; i < 100 && conn.of('message').length < count; i++) await settle(10);
}

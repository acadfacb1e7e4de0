import type { Connection, ConnectionHandlers, RoomManager } from 'roomwire';

/**
 * An in-memory Connection that only counts what it is sent, so a micro-benchmark
 * measures the manager, not the sink (test/helpers/fake-connection.ts keeps every frame,
 * which would grow without bound here).
 */
export class CountingConnection implements Connection {
  frames = 0;
  bytes = 0;
  bufferedAmount = 0;
  handlers!: ConnectionHandlers;
  /** Called with each `ack` or `error` frame, for publishers waiting on their answer. */
  onAnswer: ((text: string) => void) | undefined;

  send(text: string): void {
    this.frames++;
    this.bytes += text.length;
    if (this.onAnswer !== undefined && (text.startsWith('{"type":"ack"') || text.startsWith('{"type":"error"'))) this.onAnswer(text);
  }

  close(): void {}
}

/** Opens `count` counting connections for users u0… and waits until each was welcomed. */
export async function openMany(manager: RoomManager, count: number): Promise<CountingConnection[]> {
  const out: CountingConnection[] = [];
  for (let i = 0; i < count; i++) {
    const connection = new CountingConnection();
    connection.handlers = manager.open(connection, { id: `u${i}` });
    out.push(connection);
  }
  await Promise.all(out.map((c) => c.handlers.ready));
  return out;
}

/**
 * A publish from `publisher`, resolved when its ack is sent (the broadcast is done by
 * then); rejected when the answer is an error, so a refused publish cannot pass for a fast one.
 */
export function publishAndWaitForAck(publisher: CountingConnection, frame: string): Promise<void> {
  return new Promise((resolve, reject) => {
    publisher.onAnswer = (text) => {
      publisher.onAnswer = undefined;
      if (text.startsWith('{"type":"ack"')) resolve();
      else reject(new Error(`publish refused: ${text}`));
    };
    publisher.handlers.message(frame, false);
  });
}

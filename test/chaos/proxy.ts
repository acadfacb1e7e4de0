import { createServer, connect as netConnect, type AddressInfo, type Server, type Socket } from 'node:net';

/** The faults {@link ChaosProxy.fault} injects. */
export type FaultKind = 'cut' | 'cutMidFrame' | 'stall' | 'delay' | 'refuse';

/** One injected fault, for the event logs of a failed run. */
export interface FaultRecord {
  /** `Date.now()` when it was injected. */
  at: number;
  kind: FaultKind;
  /** The proxied connection it hit (not for `refuse`, which hits new connections). */
  pair?: number | undefined;
  /** How long it lasts (`stall`, `delay`, `refuse`). */
  ms?: number | undefined;
}

/**
 * One direction of a proxied connection: chunks go out in the order they came in, each
 * at its release time (a delay), none while the direction is stalled.
 */
class Pipe {
  private queue: { chunk: Buffer; at: number }[] = [];
  private timer: ReturnType<typeof setTimeout> | undefined;
  private lastAt = 0;
  private dead = false;
  /** Until then nothing is forwarded; chunks wait. */
  stalledUntil = 0;
  /** Until then each chunk is held a random 0 to `delayMaxMs` more (order kept). */
  delayUntil = 0;
  delayMaxMs = 0;
  /** Set: the next chunk is forwarded in part, then the whole connection is cut. */
  cutNext = false;

  constructor(
    private readonly to: Socket,
    private readonly rand: () => number,
    private readonly cut: () => void,
  ) {}

  push(chunk: Buffer): void {
    if (this.dead) return;
    const now = Date.now();
    const delay = now < this.delayUntil ? Math.floor(this.rand() * this.delayMaxMs) : 0;
    // Never before the chunk ahead of it: a TCP stream keeps its order.
    this.lastAt = Math.max(this.lastAt, now + delay);
    this.queue.push({ chunk, at: this.lastAt });
    this.pump();
  }

  /** Forwards every chunk that is due; arms one timer for the next one. */
  pump(): void {
    if (this.timer || this.dead) return;
    while (this.queue.length > 0) {
      if (this.to.destroyed) {
        this.queue = [];
        return;
      }
      const now = Date.now();
      const head = this.queue[0]!;
      const wait = Math.max(this.stalledUntil - now, head.at - now);
      if (wait > 0) {
        this.timer = setTimeout(() => {
          this.timer = undefined;
          this.pump();
        }, wait);
        return;
      }
      this.queue.shift();
      if (this.cutNext) {
        // Nothing may follow the partial chunk: a TCP stream never skips bytes.
        this.stop();
        if (head.chunk.length > 1) this.to.write(head.chunk.subarray(0, 1 + Math.floor(this.rand() * (head.chunk.length - 1))));
        // Let the partial write reach the kernel before the sockets are destroyed.
        setTimeout(this.cut, 5);
        return;
      }
      this.to.write(head.chunk);
    }
  }

  /** Ends every fault on this direction and forwards what waited. */
  calm(): void {
    this.stalledUntil = 0;
    this.delayUntil = 0;
    this.cutNext = false;
    this.lastAt = 0;
    for (const entry of this.queue) entry.at = 0;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.pump();
  }

  stop(): void {
    this.dead = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.queue = [];
  }
}

/** A client connection and its connection to the server, with a pipe each way. */
interface Pair {
  id: number;
  /** client → server */
  up: Pipe;
  /** server → client */
  down: Pipe;
  destroy(): void;
}

/**
 * A TCP proxy on 127.0.0.1 between WebSocket clients and one or more servers; each new
 * connection goes to a server picked at random. {@link ChaosProxy.fault} injects one
 * random fault:
 *
 * - `cut` (20 %): one connection is destroyed on both sides at once; data in flight is lost.
 * - `cutMidFrame` (20 %): in one direction of one connection, the next chunk is forwarded
 *   only in part (a WebSocket frame cut in the middle), then the connection is destroyed.
 * - `stall` (20 %): one connection forwards nothing for 0.5 to 3.5 heartbeats, in one
 *   direction or both, then all that waited at once: heartbeats time out, or nearly.
 * - `delay` (25 %): for 0.2 to 2.2 s each chunk of one connection, both ways, is held up
 *   to a random 0 to 300 ms more, order kept: a slow, jittery network.
 * - `refuse` (15 %): for 0.2 to 1.7 s every new connection is accepted and destroyed at
 *   once, so reconnect attempts fail.
 *
 * A close from either side is forwarded to the other (after the data before it).
 */
export class ChaosProxy {
  private readonly server: Server = createServer((client) => this.accept(client));
  private readonly pairs = new Map<number, Pair>();
  private nextId = 0;
  private refuseUntil = 0;
  /** Every fault injected, in order. */
  readonly faults: FaultRecord[] = [];
  /** How often each fault was injected, and `refused`: connections refused. */
  readonly counts: Record<string, number> = {};

  /**
   * @param targets ports of the servers on 127.0.0.1
   * @param rand the run's seeded random source: which fault, which connection, how long
   * @param heartbeatMs the servers' heartbeat, the unit of a stall
   */
  constructor(
    private readonly targets: readonly number[],
    private readonly rand: () => number,
    private readonly heartbeatMs: number,
  ) {}

  /** Listens on a free port of 127.0.0.1; resolves with the port. */
  async start(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return (this.server.address() as AddressInfo).port;
  }

  private count(kind: string): void {
    this.counts[kind] = (this.counts[kind] ?? 0) + 1;
  }

  private accept(client: Socket): void {
    client.on('error', () => {});
    if (Date.now() < this.refuseUntil) {
      this.count('refused');
      client.destroy();
      return;
    }
    const upstream = netConnect(this.targets[Math.floor(this.rand() * this.targets.length)]!, '127.0.0.1');
    upstream.on('error', () => {});
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const id = ++this.nextId;
    let closed = false;
    const destroy = (): void => {
      if (closed) return;
      closed = true;
      pair.up.stop();
      pair.down.stop();
      client.destroy();
      upstream.destroy();
      this.pairs.delete(id);
    };
    const pair: Pair = { id, up: new Pipe(upstream, this.rand, destroy), down: new Pipe(client, this.rand, destroy), destroy };
    this.pairs.set(id, pair);
    client.on('data', (chunk: Buffer) => pair.up.push(chunk));
    upstream.on('data', (chunk: Buffer) => pair.down.push(chunk));
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
    client.on('close', destroy);
    upstream.on('close', destroy);
  }

  /** Injects one random fault (see the class comment); a connection fault needs a live connection. */
  fault(): void {
    const now = Date.now();
    const r = this.rand();
    if (r >= 0.85) {
      const ms = Math.floor(200 + this.rand() * 1500);
      this.record({ at: now, kind: 'refuse', ms });
      this.refuseUntil = now + ms;
      return;
    }
    const live = [...this.pairs.values()];
    if (live.length === 0) return;
    const pair = live[Math.floor(this.rand() * live.length)]!;
    if (r < 0.2) {
      this.record({ at: now, kind: 'cut', pair: pair.id });
      pair.destroy();
    } else if (r < 0.4) {
      this.record({ at: now, kind: 'cutMidFrame', pair: pair.id });
      (this.rand() < 0.5 ? pair.up : pair.down).cutNext = true;
    } else if (r < 0.6) {
      const ms = Math.floor(this.heartbeatMs * (0.5 + this.rand() * 3));
      this.record({ at: now, kind: 'stall', pair: pair.id, ms });
      // 30 % client → server only, 30 % server → client only, 40 % both.
      const which = this.rand();
      if (which < 0.4 || which >= 0.7) pair.up.stalledUntil = now + ms;
      if (which >= 0.4) pair.down.stalledUntil = now + ms;
    } else {
      const ms = Math.floor(200 + this.rand() * 2000);
      this.record({ at: now, kind: 'delay', pair: pair.id, ms });
      for (const pipe of [pair.up, pair.down]) {
        pipe.delayUntil = now + ms;
        pipe.delayMaxMs = Math.floor(this.rand() * 300);
      }
    }
  }

  private record(fault: FaultRecord): void {
    this.count(fault.kind);
    this.faults.push(fault);
  }

  /** Ends every fault in progress: connections are accepted, and what waited is forwarded now. */
  calm(): void {
    this.refuseUntil = 0;
    for (const pair of this.pairs.values()) {
      pair.up.calm();
      pair.down.calm();
    }
  }

  /** Destroys every connection and stops listening. */
  async close(): Promise<void> {
    for (const pair of [...this.pairs.values()]) pair.destroy();
    if (!this.server.listening) return;
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

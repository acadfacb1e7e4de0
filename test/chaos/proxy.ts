import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';

/** One direction of a proxied connection: chunks in order, each released at its time, unless stalled. */
class Pipe {
  private queue: { chunk: Buffer; at: number }[] = [];
  private timer: ReturnType<typeof setTimeout> | undefined;
  stalledUntil = 0;
  delayUntil = 0;
  delayMaxMs = 0;
  /** Set: the next chunk is forwarded in part, then the whole pair is destroyed. */
  cutNext = false;
  private lastAt = 0;
  constructor(
    private readonly to: Socket,
    private readonly rand: () => number,
    private readonly onCut: () => void,
  ) {}

  private dead = false;

  push(chunk: Buffer): void {
    if (this.dead) return;
    const now = Date.now();
    const delay = now < this.delayUntil ? Math.floor(this.rand() * this.delayMaxMs) : 0;
    const at = Math.max(this.lastAt, now + delay);
    this.lastAt = at;
    this.queue.push({ chunk, at });
    this.pump();
  }

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
        this.cutNext = false;
        // Nothing more may follow the partial chunk: a TCP stream never skips bytes.
        this.dead = true;
        if (head.chunk.length > 1) {
          const part = 1 + Math.floor(this.rand() * (head.chunk.length - 1));
          this.to.write(head.chunk.subarray(0, part));
        }
        // Let the partial write reach the kernel first.
        setTimeout(() => this.onCut(), 5);
        this.queue = [];
        return;
      }
      this.to.write(head.chunk);
    }
  }

  stop(): void {
    this.dead = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.queue = [];
  }
}

export interface Pair {
  id: number;
  target: number;
  client: Socket;
  upstream: Socket;
  up: Pipe; // client -> server
  down: Pipe; // server -> client
  closed: boolean;
  destroy(): void;
}

export interface FaultLog {
  t: number;
  kind: string;
  pair?: number;
  ms?: number;
}

/** A TCP proxy on 127.0.0.1 that can cut, stall, delay and refuse connections. */
export class ChaosProxy {
  private server: Server | undefined;
  readonly pairs = new Map<number, Pair>();
  private nextId = 0;
  refuseUntil = 0;
  port = 0;
  readonly log: FaultLog[] = [];
  counts: Record<string, number> = {};

  constructor(
    private readonly targets: number[],
    private readonly rand: () => number,
  ) {}

  async start(): Promise<void> {
    this.server = createServer((client) => this.accept(client));
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
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
    const target = Math.floor(this.rand() * this.targets.length);
    const upstream = netConnect(this.targets[target]!, '127.0.0.1');
    upstream.on('error', () => {});
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const id = ++this.nextId;
    const pair: Pair = {
      id,
      target,
      client,
      upstream,
      closed: false,
      up: undefined as unknown as Pipe,
      down: undefined as unknown as Pipe,
      destroy: () => {
        if (pair.closed) return;
        pair.closed = true;
        pair.up.stop();
        pair.down.stop();
        client.destroy();
        upstream.destroy();
        this.pairs.delete(id);
      },
    };
    pair.up = new Pipe(upstream, this.rand, () => pair.destroy());
    pair.down = new Pipe(client, this.rand, () => pair.destroy());
    this.pairs.set(id, pair);
    client.on('data', (chunk: Buffer) => pair.up.push(chunk));
    upstream.on('data', (chunk: Buffer) => pair.down.push(chunk));
    // A close from either side ends both (after pending data: a graceful end is forwarded).
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
    client.on('close', () => pair.destroy());
    upstream.on('close', () => pair.destroy());
  }

  /** Injects one random fault. */
  fault(heartbeatMs: number): void {
    const r = this.rand();
    const live = [...this.pairs.values()];
    const pick = (): Pair | undefined => (live.length ? live[Math.floor(this.rand() * live.length)] : undefined);
    const now = Date.now();
    if (r < 0.2) {
      const p = pick();
      if (!p) return;
      this.count('cut');
      this.log.push({ t: now, kind: 'cut', pair: p.id });
      p.destroy();
    } else if (r < 0.4) {
      const p = pick();
      if (!p) return;
      this.count('cutMidFrame');
      this.log.push({ t: now, kind: 'cutMidFrame', pair: p.id });
      (this.rand() < 0.5 ? p.up : p.down).cutNext = true;
    } else if (r < 0.6) {
      const p = pick();
      if (!p) return;
      const ms = Math.floor(heartbeatMs * (0.5 + this.rand() * 3));
      this.count('stall');
      this.log.push({ t: now, kind: 'stall', pair: p.id, ms });
      const which = this.rand();
      if (which < 0.4 || which >= 0.7) p.up.stalledUntil = now + ms;
      if (which >= 0.4) p.down.stalledUntil = now + ms;
    } else if (r < 0.85) {
      const p = pick();
      if (!p) return;
      const ms = Math.floor(200 + this.rand() * 2000);
      this.count('delay');
      this.log.push({ t: now, kind: 'delay', pair: p.id, ms });
      for (const pipe of [p.up, p.down]) {
        pipe.delayUntil = now + ms;
        pipe.delayMaxMs = Math.floor(this.rand() * 300);
      }
    } else {
      const ms = Math.floor(200 + this.rand() * 1500);
      this.count('refuse');
      this.log.push({ t: now, kind: 'refuse', ms });
      this.refuseUntil = now + ms;
    }
  }

  async close(): Promise<void> {
    for (const p of [...this.pairs.values()]) p.destroy();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }
}

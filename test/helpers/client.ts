import WebSocket from 'ws';

/** A frame as the server sent it. */
export type Frame = { type: string; [key: string]: unknown };

const opened = new Set<TestClient>();

/**
 * A raw `ws` client that records every frame, so tests assert on exactly what a client
 * would observe.
 */
export class TestClient {
  readonly frames: Frame[] = [];
  closeCode: number | undefined;
  closeReason = '';
  private waiters: (() => void)[] = [];
  private closedPromise: Promise<void>;

  constructor(readonly ws: WebSocket) {
    opened.add(this);
    ws.on('message', (data, isBinary) => {
      this.frames.push(isBinary ? { type: '<binary>' } : (JSON.parse(data.toString()) as Frame));
      this.wake();
    });
    this.closedPromise = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeCode = code;
        this.closeReason = reason.toString();
        opened.delete(this);
        this.wake();
        resolve();
      });
    });
    ws.on('error', () => {});
  }

  /** Connects and waits for `welcome`. */
  static async connect(url: string, token: string | undefined, options: { protocols?: string[]; headers?: Record<string, string> } = {}): Promise<TestClient> {
    const target = token === undefined ? url : `${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`;
    const ws = new WebSocket(target, options.protocols ?? [], { headers: options.headers ?? {} });
    const client = new TestClient(ws);
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('unexpected-response', (_req, res) => reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode })));
      ws.once('error', reject);
    });
    await client.next('welcome');
    return client;
  }

  get welcome(): Frame {
    const frame = this.frames.find((f) => f.type === 'welcome');
    if (!frame) throw new Error('no welcome yet');
    return frame;
  }

  send(frame: unknown): void {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
  }

  /** Frames of a type (all of them by default). */
  of(type?: string): Frame[] {
    return type === undefined ? this.frames : this.frames.filter((f) => f.type === type);
  }

  /** Waits until `predicate` holds over the recorded frames. */
  async until(predicate: (frames: Frame[]) => boolean, timeoutMs = 5_000, what = 'condition'): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate(this.frames)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; frames: ${JSON.stringify(this.frames).slice(0, 2000)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Waits for the next frame of `type` (matching `match`) not yet returned by next(). */
  private consumed = new Set<Frame>();
  async next(type: string, match: (frame: Frame) => boolean = () => true, timeoutMs = 5_000): Promise<Frame> {
    const find = () => this.frames.find((f) => f.type === type && !this.consumed.has(f) && match(f));
    await this.until(() => find() !== undefined, timeoutMs, `a ${type} frame`);
    const frame = find()!;
    this.consumed.add(frame);
    return frame;
  }

  /** Sends a frame with a fresh ref and waits for the first reply carrying that ref. */
  private refs = 0;
  async request(frame: Record<string, unknown>): Promise<Frame> {
    const ref = `r${++this.refs}`;
    this.send({ ...frame, ref });
    return this.replyTo(ref);
  }

  /** The first not-yet-returned frame carrying `ref`. */
  async replyTo(ref: string): Promise<Frame> {
    const find = () => this.frames.find((f) => f.ref === ref && !this.consumed.has(f));
    await this.until(() => find() !== undefined, 5_000, `a reply to ${ref}`);
    const frame = find()!;
    this.consumed.add(frame);
    return frame;
  }

  /** Waits a little and returns what arrived: for asserting that nothing arrives. */
  async quiet(ms = 150): Promise<Frame[]> {
    const before = this.frames.length;
    await new Promise((resolve) => setTimeout(resolve, ms));
    return this.frames.slice(before);
  }

  close(code = 1000): Promise<void> {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(code);
    return this.closedPromise;
  }

  closed(): Promise<void> {
    return this.closedPromise;
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }
}

/** Closes every client a test opened. */
export async function closeClients(): Promise<void> {
  await Promise.all([...opened].map((client) => client.close()));
}

/** Attempts an upgrade and returns the HTTP status of the refusal (or 101). */
export function upgradeStatus(url: string, options: { protocols?: string[]; headers?: Record<string, string> } = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, options.protocols ?? [], { headers: options.headers ?? {} });
    ws.once('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0);
      res.resume();
      ws.terminate();
    });
    ws.once('open', () => {
      resolve(101);
      ws.close();
    });
    ws.once('error', (error) => reject(error));
  });
}

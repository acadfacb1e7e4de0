import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * `--perf`: Linux `perf` samples of each server's measured windows, sorted into where the
 * time goes (user and kernel apart, the main thread apart from V8's and libuv's helper
 * threads). A CPU profile (`--profile`) only sees JavaScript on the main thread; this
 * also sees the kernel's share of a socket write, the garbage collector and the compiler
 * threads. Servers run with `--perf-basic-prof` so perf can name JIT-compiled functions.
 */

/** Samples per second and thread. */
export const PERF_FREQUENCY = 999;

/**
 * Where a sample's time went: its innermost frame (self time), by whose code it is. A
 * JavaScript frame counts for the code V8 inlined into it too, so Node's stream write
 * machinery inlined into a server's send loop counts as the server's code.
 */
export const PERF_CATEGORIES = [
  "server's code (JS)",
  'ws and Node (JS)',
  'V8 builtins and runtime',
  'Node and libuv (C++)',
  'libc and other',
  'garbage collection, main thread',
  'kernel: socket writes',
  'kernel: socket reads',
  'kernel: other',
  'helper threads (GC, compiler)',
] as const;
export type PerfCategory = (typeof PERF_CATEGORIES)[number];
export type PerfSamples = Record<PerfCategory, number>;

/** Why `--perf` cannot run here, or undefined when it can. */
export function perfUnavailable(): string | undefined {
  if (process.platform !== 'linux') return 'perf is Linux only';
  try {
    execFileSync('perf', ['--version'], { stdio: 'ignore' });
  } catch {
    return 'the perf command is not installed (Debian: apt-get install linux-perf)';
  }
  return undefined;
}

/** A `perf record` of one process, from `start` until `stop`. */
export class PerfRecording {
  private proc: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  readonly file: string;

  constructor(
    readonly pid: number,
    name: string,
  ) {
    this.file = join(tmpdir(), `roomwire-bench-${process.pid}-${name}.perf.data`);
  }

  /** Starts recording after `delayMs` (the warm-up). */
  start(delayMs: number): void {
    this.timer = setTimeout(() => {
      const proc = spawn('perf', ['record', '-q', '-F', String(PERF_FREQUENCY), '-g', '-p', String(this.pid), '-o', this.file], { stdio: 'ignore' });
      this.proc = proc;
      this.exited = new Promise((resolve) => proc.once('exit', () => resolve()));
    }, delayMs);
  }

  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.proc?.kill('SIGINT');
    await this.exited;
  }

  /** The recorded samples by category (and the recording removed). */
  categorize(serverFile: RegExp): PerfSamples {
    const samples = emptySamples();
    let text = '';
    try {
      text = execFileSync('perf', ['script', '-i', this.file, '-F', 'tid,ip,sym'], { encoding: 'utf8', maxBuffer: 1 << 30, stdio: ['ignore', 'pipe', 'ignore'] });
    } catch {
      // No samples (the recording never started): an empty result.
    }
    for (const block of text.split('\n\n')) {
      const lines = block.split('\n').filter((line) => line.trim() !== '');
      const [head, ...frames] = lines;
      if (head === undefined || frames.length === 0) continue;
      samples[categoryOf(Number(head.trim().split(/\s+/)[0]) === this.pid, frames.map((f) => f.trim()), serverFile)]++;
    }
    rmSync(this.file, { force: true });
    rmSync(`${this.file}.old`, { force: true });
    return samples;
  }
}

export function emptySamples(): PerfSamples {
  return Object.fromEntries(PERF_CATEGORIES.map((c) => [c, 0])) as PerfSamples;
}

const GC = /Scaveng|MarkCompact|Heap::|Sweeper|IncrementalMarking|MinorMark/;

/** One sample: its thread, and its call chain from the innermost frame out ("ip symbol" each). */
function categoryOf(mainThread: boolean, frames: string[], serverFile: RegExp): PerfCategory {
  if (!mainThread) return 'helper threads (GC, compiler)';
  const symbol = (frame: string): string => frame.slice(frame.indexOf(' ') + 1);
  const isKernel = (frame: string): boolean => frame.startsWith('ffffffff');
  if (isKernel(frames[0] ?? '')) {
    // The system call is named by the first frame outside the kernel (libc's write, writev, read).
    const caller = symbol(frames.find((frame) => !isKernel(frame)) ?? '');
    if (/write/i.test(caller)) return 'kernel: socket writes';
    if (/read/i.test(caller)) return 'kernel: socket reads';
    return 'kernel: other';
  }
  if (frames.some((frame) => GC.test(frame))) return 'garbage collection, main thread';
  const self = symbol(frames[0] ?? '');
  if (self.startsWith('JS:')) return serverFile.test(self) ? "server's code (JS)" : 'ws and Node (JS)';
  if (self.startsWith('Builtins_') || self.startsWith('v8::')) return 'V8 builtins and runtime';
  if (self.startsWith('node::') || self.startsWith('uv_') || self.startsWith('uv__')) return 'Node and libuv (C++)';
  return 'libc and other';
}

/** Where a server under `--perf` writes the log V8 keeps for `--perf-basic-prof` (`%p`: its pid). */
export function v8LogPattern(): string {
  return join(tmpdir(), 'roomwire-bench-%p.v8.log');
}

/** The symbol map node writes for perf under `--perf-basic-prof`, and V8's log: removed once read. */
export function removePerfFiles(pid: number): void {
  rmSync(join('/tmp', `perf-${pid}.map`), { force: true });
  rmSync(v8LogPattern().replace('%p', String(pid)), { force: true });
}

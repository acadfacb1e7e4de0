import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Linux `perf` samples of the servers' measured windows. Every window is sampled (without
 * call graphs) to split the server's CPU time into user and kernel time: the kernel's own
 * split in /proc is tick-sampled, and its ticks fall in step with the load (see "How it
 * measures" in docs/benchmarks.md). `--perf` samples with call graphs and sorts the
 * samples into where the time goes (user and kernel apart, the main thread apart from
 * V8's and libuv's helper threads). A CPU profile (`--profile`) only sees JavaScript on
 * the main thread; this also sees the kernel's share of a socket write, the garbage
 * collector and the compiler threads. Servers run with `--perf-basic-prof` so perf can
 * name JIT-compiled functions.
 */

/** Samples per second and thread, for `--perf`'s recordings with call chains. */
export const PERF_FREQUENCY = 999;

/**
 * Samples per second and thread for a window's user/system split (no call chains): a
 * small-rooms window's 0.7 s of server CPU is 3,700 to 4,700 samples, so the user share is
 * known to a little over 2%, where 999 a second left it at 5 to 6% (binomial: the user
 * share is about a third).
 */
export const SPLIT_FREQUENCY = 4999;

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

/** A recording's samples by category, and its main thread's user-space samples by innermost function. */
export interface CategorizedSamples {
  categories: PerfSamples;
  /** Self samples per function ({@link functionName}), user space of the main thread only. */
  functions: Map<string, number>;
}

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

/** Microseconds on the machine's monotonic clock, as `process.hrtime` gives them. */
export interface WindowUs {
  start: number;
  end: number;
}

/**
 * How one process's samples in a window split: by CPU mode and by thread. Every sample
 * stands for the same CPU time (perf samples each thread every 1/999 s of the time it
 * runs), so `user / samples` is the share of the process's CPU time spent in user space.
 */
export interface PerfSplit {
  samples: number;
  /** Samples in user space, any thread. */
  user: number;
  /** Samples of the main thread (the event loop), and of those the ones in user space. */
  main: number;
  mainUser: number;
}

/**
 * A `perf record` of one process (all its threads), from `start` until `stop`, with
 * sample times on the monotonic clock so a window can be cut out of it afterwards.
 * `callGraph` adds the call chains that `categorizeRecording` needs; without them a
 * recording costs the process less and only serves `split`.
 */
export class PerfRecording {
  private proc: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  readonly file: string;

  constructor(
    readonly pid: number,
    name: string,
    readonly callGraph: boolean,
  ) {
    this.file = join(tmpdir(), `roomwire-bench-${process.pid}-${name}.perf.data`);
  }

  start(): void {
    // Without build-ids and BPF events, perf stops within milliseconds of SIGINT, where it
    // took about a second after a busy window (symbols are found by path, on this machine).
    const args = ['record', '-q', '--no-buildid', '--no-bpf-event', '-e', 'cpu-clock', '-F', String(this.callGraph ? PERF_FREQUENCY : SPLIT_FREQUENCY), '-k', 'mono', ...(this.callGraph ? ['-g'] : []), '-p', String(this.pid), '-o', this.file];
    const proc = spawn('perf', args, { stdio: 'ignore' });
    this.proc = proc;
    this.exited = new Promise((resolve) => {
      proc.once('exit', () => resolve());
      proc.once('error', () => resolve());
    });
  }

  async stop(): Promise<void> {
    this.proc?.kill('SIGINT');
    await this.exited;
  }

  /** The samples of `window`, by mode and thread. */
  split(window: WindowUs): PerfSplit {
    const split: PerfSplit = { samples: 0, user: 0, main: 0, mainUser: 0 };
    // Addresses only: a symbol directory with nothing in it keeps perf from reading the
    // binaries' symbol tables (node's is large), 40 ms a window instead of 0.8 s, same output.
    for (const line of perfScript(this.file, ['-G', '-F', 'tid,time,ip', `--symfs=${NO_SYMBOLS}`]).split('\n')) {
      const [tid, time, ip] = line.trim().split(/\s+/);
      if (ip === undefined || !inWindow(time, window)) continue;
      const user = !isKernelAddress(ip);
      const main = Number(tid) === this.pid;
      split.samples++;
      if (user) split.user++;
      if (main) split.main++;
      if (main && user) split.mainUser++;
    }
    return split;
  }

  remove(): void {
    removeRecording(this.file);
  }
}

/** The samples of `window` in the recording `file` of process `pid`, by category and by function (a recording with call graphs). */
export function categorizeRecording(file: string, pid: number, window: WindowUs, serverFile: RegExp): CategorizedSamples {
  const categories = emptySamples();
  const functions = new Map<string, number>();
  for (const block of perfScript(file, ['-F', 'tid,time,ip,sym']).split('\n\n')) {
    const lines = block.split('\n').filter((line) => line.trim() !== '');
    const [head, ...frames] = lines;
    if (head === undefined || frames.length === 0) continue;
    const [tid, time] = head.trim().split(/\s+/);
    if (!inWindow(time, window)) continue;
    const chain = frames.map((f) => f.trim());
    const mainThread = Number(tid) === pid;
    categories[categoryOf(mainThread, chain, serverFile)]++;
    const self = chain[0] ?? '';
    if (mainThread && !isKernelAddress(self)) {
      const name = functionName(self);
      functions.set(name, (functions.get(name) ?? 0) + 1);
    }
  }
  return { categories, functions };
}

/**
 * A frame's function, comparable across servers and runs: no address, no V8 tier marker
 * (`*` optimized, `^` baseline, `~` interpreted), no directory before `node_modules/`
 * or the bench's bundles, no column.
 */
export function functionName(frame: string): string {
  const symbol = frame.slice(frame.indexOf(' ') + 1).replace(/ \(.*\)$/, '');
  return symbol
    .replace(/^JS:[*^~]?/, 'JS:')
    .replace(/(file:\/\/)?\S*\/(node_modules\/\.cache\/roomwire-bench\/|node_modules\/)/, '')
    .replace(/(:\d+):\d+$/, '$1');
}

export function removeRecording(file: string): void {
  rmSync(file, { force: true });
  rmSync(`${file}.old`, { force: true });
}

/** A directory that does not exist, for `perf script --symfs` where no symbol is needed. */
const NO_SYMBOLS = join(tmpdir(), 'roomwire-bench-no-symbols');

/** `perf script` of a recording; empty when there is none (the recording never started). */
function perfScript(file: string, fields: string[]): string {
  try {
    return execFileSync('perf', ['script', '-i', file, ...fields], { encoding: 'utf8', maxBuffer: 1 << 30, stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return '';
  }
}

/** perf prints a sample's time as seconds with a colon after: "835.007940:". */
function inWindow(time: string | undefined, window: WindowUs): boolean {
  const us = Number.parseFloat(time ?? '') * 1e6;
  return us >= window.start && us <= window.end;
}

/** x86-64 and arm64 kernels live in the top of the address space: 16 hex digits from ffff. */
function isKernelAddress(ip: string): boolean {
  const end = ip.indexOf(' ');
  return ip.startsWith('ffff') && (end === -1 ? ip.length : end) === 16;
}

export function emptySamples(): PerfSamples {
  return Object.fromEntries(PERF_CATEGORIES.map((c) => [c, 0])) as PerfSamples;
}

const GC = /Scaveng|MarkCompact|Heap::|Sweeper|IncrementalMarking|MinorMark/;

/** One sample: its thread, and its call chain from the innermost frame out ("ip symbol" each). */
function categoryOf(mainThread: boolean, frames: string[], serverFile: RegExp): PerfCategory {
  if (!mainThread) return 'helper threads (GC, compiler)';
  const symbol = (frame: string): string => frame.slice(frame.indexOf(' ') + 1);
  if (isKernelAddress(frames[0] ?? '')) {
    // The system call is named by the first frame outside the kernel (libc's write, writev, read).
    const caller = symbol(frames.find((frame) => !isKernelAddress(frame)) ?? '');
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

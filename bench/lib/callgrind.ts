import { execFile, execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

/**
 * `--callgrind`: the servers run under Valgrind's callgrind, which counts the instructions
 * each one executes in user space (every thread: V8's garbage collector and compiler
 * threads too) over exactly the measured window. A count does not move with the
 * machine's other load, CPU frequency or cache contention the way CPU time does: the same
 * code measures within a few percent of itself from run to run, where a 6 s window of CPU
 * time moves by a tenth. Instructions are not time (a cache miss costs no instruction),
 * so this sits beside the CPU-time figures, not in their place.
 *
 * Under callgrind a server runs about 60 times slower, so the load is scaled down
 * (`CALLGRIND_SCALE`) and the warm-up and the window scaled up by as much: every
 * window holds as many publishes as the plain run's, and the JIT compiler, which
 * counts calls, sees the same warm-up. What happens per second rather than per message
 * (timers, the heartbeat sweep, the membership cache's expiry) weighs that many times
 * more per delivery here.
 */

/**
 * Node flags of every server under callgrind: the young generation's two halves fixed at
 * 32 MiB each, the size V8 grows them to within the first seconds of a plain run, for
 * every server. V8 sizes them by the allocation rate per millisecond of wall-clock time,
 * and shrinks them to 1 MiB when that falls below 1 MB/s: under Valgrind, 60 times
 * slower, a server can cross that line at any moment of its window, and then it collects
 * ten times as often for the rest of it, at a cost no plain run pays. In one run that
 * happened to roomwire's server and not to the bare loop's: 44 scavenges in the window
 * against 7, and 900 more instructions per delivery in the garbage collector.
 */
export const CALLGRIND_NODE_FLAGS: readonly string[] = ['--min-semi-space-size=32'];

/** Per scenario: the load divided by this, the warm-up and window multiplied by it. */
export const CALLGRIND_SCALE: Readonly<Record<string, number>> = { 'small rooms': 10, 'big room': 20 };

/** The scale of a scenario (10 for one not listed). */
export function callgrindScale(scenario: string): number {
  return CALLGRIND_SCALE[scenario] ?? 10;
}

/**
 * Where an instruction was: its function, by whose code it is. JIT-compiled JavaScript
 * has no symbol under callgrind (an address), so it counts as one category.
 */
export const CALLGRIND_CATEGORIES = [
  'JavaScript (JIT-compiled)',
  'V8 builtins',
  'V8 runtime and API',
  'V8 JSON',
  'garbage collection',
  'V8 compiler and parser',
  'Node and libuv (C++)',
  'libc and other',
] as const;
export type CallgrindCategory = (typeof CALLGRIND_CATEGORIES)[number];

/** A window's instructions: in all, by category, and by function (JIT-compiled code left out). */
export interface InstructionCounts {
  total: number;
  categories: Record<CallgrindCategory, number>;
  functions: Map<string, number>;
}

const execFileAsync = promisify(execFile);

/** Why `--callgrind` cannot run here, or undefined when it can. */
export function callgrindUnavailable(): string | undefined {
  for (const [tool, args] of [
    ['valgrind', ['--version']],
    ['callgrind_control', ['--version']],
    ['callgrind_annotate', ['--version']],
  ] as const) {
    try {
      execFileSync(tool, args, { stdio: 'ignore' });
    } catch (error) {
      // Present is enough: callgrind_annotate --version exits with 255.
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return `${tool} not found (Debian: apt-get install valgrind)`;
    }
  }
  return undefined;
}

/**
 * The command a server runs under: callgrind with instrumentation off until the window
 * (the start, the connections and the warm-up run at Valgrind's plain speed), JIT code
 * checked for changes (`--smc-check`), and its messages in a log file next to the dumps.
 */
export function callgrindCommand(dir: string, label: string): string[] {
  return [
    'valgrind',
    '--tool=callgrind',
    '--instr-atstart=no',
    '--smc-check=all-non-file',
    `--callgrind-out-file=${join(dir, `${label}.%p`)}`,
    `--log-file=${join(dir, `${label}.%p.log`)}`,
  ];
}

async function control(pid: number, args: string[]): Promise<void> {
  await execFileAsync('callgrind_control', [...args, String(pid)], { timeout: 120_000 });
}

/** Zeroes the server's counters and switches counting on: the window starts. */
export async function startCounting(pid: number): Promise<void> {
  await control(pid, ['--zero']);
  await control(pid, ['--instr=on']);
}

/** Switches counting off and writes what the window counted to a dump file. */
export async function stopCounting(pid: number): Promise<void> {
  await control(pid, ['--instr=off']);
  await control(pid, ['--dump=window']);
}

/** The newest dump of a server (`<label>.<pid>.<n>`), or undefined. */
export function latestDump(dir: string, label: string, pid: number): string | undefined {
  const prefix = `${label}.${pid}.`;
  const parts = readdirSync(dir)
    .filter((name) => name.startsWith(prefix) && /^\d+$/.test(name.slice(prefix.length)))
    .map((name) => Number(name.slice(prefix.length)));
  return parts.length === 0 ? undefined : join(dir, `${prefix}${Math.max(...parts)}`);
}

/** The category of one function as callgrind_annotate names it (`file:function [object]`). */
export function categoryOf(name: string): CallgrindCategory {
  if (/^\?\?\?:0x[0-9a-f]+\b/.test(name)) return 'JavaScript (JIT-compiled)';
  if (name.includes('Builtins_')) return 'V8 builtins';
  if (/Json/.test(name)) return 'V8 JSON';
  if (/compiler::|maglev::|Maglev|Turbofan|Parser|Scanner|Compile|interpreter::|Bytecode|baseline::/.test(name)) return 'V8 compiler and parser';
  if (/Scaveng|Mark|Sweep|heap::|Heap::|Evacuat|GlobalHandles|IterateObjectCache|RootVisitor|Concurrent|BodyDescriptor|RememberedSet|SlotSet|MemoryAllocator|PagedSpace|NewSpace|ArrayBufferSweeper|Compactor|Safepoint/.test(name)) {
    return 'garbage collection';
  }
  if (/node::|\buv_|uv__|libuv/.test(name)) return 'Node and libuv (C++)';
  if (/v8::/.test(name)) return 'V8 runtime and API';
  return 'libc and other';
}

/** The instructions a dump counted, by category and function (callgrind_annotate's self counts). */
export function readDump(file: string): InstructionCounts {
  const text = readFileSync(file, 'utf8');
  const totals = /^(?:totals|summary):\s*(\d+)/m.exec(text);
  const total = totals ? Number(totals[1]) : 0;
  const annotated = execFileSync('callgrind_annotate', ['--inclusive=no', '--threshold=100', file], { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024 });
  return countFunctions(annotated, total);
}

/** Sorts callgrind_annotate's rows (`  1,234 ( 0.5%)  file:function [object]`) into categories. */
export function countFunctions(annotated: string, total: number): InstructionCounts {
  const categories = Object.fromEntries(CALLGRIND_CATEGORIES.map((c) => [c, 0])) as Record<CallgrindCategory, number>;
  const functions = new Map<string, number>();
  let counted = 0;
  for (const line of annotated.split('\n')) {
    const row = /^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.+)$/.exec(line);
    if (!row || row[2]!.includes('PROGRAM TOTALS')) continue;
    const count = Number(row[1]!.replaceAll(',', ''));
    const name = row[2]!.trim();
    const category = categoryOf(name);
    categories[category] += count;
    counted += count;
    if (category !== 'JavaScript (JIT-compiled)') functions.set(name, (functions.get(name) ?? 0) + count);
  }
  // Rows below callgrind_annotate's threshold (none at 100%) would be the remainder: the categories hold the total.
  if (total > counted) categories['libc and other'] += total - counted;
  return { total: Math.max(total, counted), categories, functions };
}

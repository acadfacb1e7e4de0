import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/** CPU time of one process, split as the kernel accounts it. */
export interface CpuTimes {
  /** Time in user space: JavaScript, V8, libuv, the library's own work. */
  userMs: number;
  /** Time in the kernel on the process's behalf: here mostly loopback TCP. */
  systemMs: number;
}

/** Machine-wide CPU counters, all cores summed. */
export interface MachineTimes {
  busyMs: number;
  totalMs: number;
}

function clockTicks(): number {
  try {
    const value = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isFinite(value) && value > 0 ? value : 100;
  } catch {
    return 100;
  }
}

/** Kernel clock ticks per second, the unit of /proc's CPU counters. */
export const CLK_TCK = clockTicks();
const MS_PER_TICK = 1000 / CLK_TCK;

/** utime and stime of a process from /proc/<pid>/stat (fields 14 and 15); null once it is gone. */
export function readProcessCpu(pid: number): CpuTimes | null {
  return readStat(`/proc/${pid}/stat`);
}

/**
 * The same for the process's main thread alone (/proc/<pid>/task/<pid>/stat): the
 * JavaScript event loop, without V8's helper threads (parallel scavenges, concurrent
 * marking, the optimizing compiler) and libuv's pool.
 */
export function readMainThreadCpu(pid: number): CpuTimes | null {
  return readStat(`/proc/${pid}/task/${pid}/stat`);
}

/**
 * Time on a CPU in ms, to the microsecond, from the scheduler's own count
 * (/proc/<pid>/task/<tid>/schedstat, first field, ns): of every thread of the process, or
 * of its main thread alone. /proc's utime and stime come in ticks of 10 ms, which in a 6 s
 * window is an error of a percent or two; this is what a split is applied to. Null where
 * the kernel keeps no schedstat.
 */
export function readRuntimeMs(pid: number, mainThreadOnly = false): number | null {
  try {
    const tids = mainThreadOnly ? [String(pid)] : readdirSync(`/proc/${pid}/task`);
    let ns = 0;
    for (const tid of tids) {
      let line: string;
      try {
        line = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8');
      } catch {
        continue; // a thread that ended between the listing and the read
      }
      const value = Number(line.split(' ', 1)[0]);
      if (!Number.isFinite(value)) return null;
      ns += value;
    }
    return ns / 1e6;
  } catch {
    return null;
  }
}

function readStat(path: string): CpuTimes | null {
  let stat: string;
  try {
    stat = readFileSync(path, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) may hold spaces; the fields after it are plain numbers.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return null;
  return { userMs: utime * MS_PER_TICK, systemMs: stime * MS_PER_TICK };
}

/** The machine's busy and total CPU time from the first line of /proc/stat. */
export function readMachineCpu(): MachineTimes | null {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
    const ticks = line.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    const total = ticks.slice(0, 8).reduce((a, b) => a + b, 0);
    const idle = (ticks[3] ?? 0) + (ticks[4] ?? 0);
    return { busyMs: (total - idle) * MS_PER_TICK, totalMs: total * MS_PER_TICK };
  } catch {
    return null;
  }
}

export function cpuDelta(before: CpuTimes | null, after: CpuTimes | null): CpuTimes {
  if (!before || !after) return { userMs: Number.NaN, systemMs: Number.NaN };
  return { userMs: after.userMs - before.userMs, systemMs: after.systemMs - before.systemMs };
}

export function machineDelta(before: MachineTimes | null, after: MachineTimes | null): MachineTimes {
  if (!before || !after) return { busyMs: Number.NaN, totalMs: Number.NaN };
  return { busyMs: after.busyMs - before.busyMs, totalMs: after.totalMs - before.totalMs };
}

/** This process's soft limit on open files, from /proc/self/limits; null when unknown. */
export function openFilesLimit(): number | null {
  try {
    const line = readFileSync('/proc/self/limits', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('Max open files'));
    const soft = line?.slice('Max open files'.length).trim().split(/\s+/)[0];
    if (soft === undefined) return null;
    return soft === 'unlimited' ? Number.POSITIVE_INFINITY : Number(soft);
  } catch {
    return null;
  }
}

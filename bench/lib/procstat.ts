/**
 * CPU time of processes from /proc/<pid>/stat (Linux): utime + stime, the
 * same measure for tandem's agents and PostgreSQL's own workers. A process
 * that exits between two samples loses the time it used in between; callers
 * are told which PIDs disappeared.
 */
import { readFileSync } from 'node:fs';

/** Clock ticks per second of /proc/<pid>/stat times (USER_HZ; 100 on every mainstream Linux build). */
export const CLOCK_TICKS_PER_SEC = 100;

/** utime and stime of one /proc/<pid>/stat line, in clock ticks. */
export function parseStatTicks(stat: string): { user: number; system: number } {
  // Field 2 (comm) may contain spaces and parentheses: fields after it start after the last ')'.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
  const user = Number(rest[11]);
  const system = Number(rest[12]);
  if (!Number.isFinite(user) || !Number.isFinite(system)) throw new Error(`unexpected /proc stat line: ${stat.slice(0, 120)}`);
  return { user, system };
}

/** CPU seconds used so far by one process (all its threads), user and system, or undefined when it is gone. */
export function cpuSeconds(pid: number): { user: number; system: number } | undefined {
  try {
    const t = parseStatTicks(readFileSync(`/proc/${pid}/stat`, 'utf8'));
    return { user: t.user / CLOCK_TICKS_PER_SEC, system: t.system / CLOCK_TICKS_PER_SEC };
  } catch {
    return undefined;
  }
}

/** A labelled set of processes whose CPU is measured together. */
export type PidGroups = Record<string, number[]>;

/** CPU seconds (user, system) per PID at one moment. */
export type CpuSample = Map<number, { user: number; system: number }>;

export function sampleCpu(groups: PidGroups): CpuSample {
  const out: CpuSample = new Map();
  for (const pids of Object.values(groups)) {
    for (const pid of pids) {
      const s = cpuSeconds(pid);
      if (s !== undefined) out.set(pid, s);
    }
  }
  return out;
}

/** CPU seconds each group used between two samples (total and the system part); PIDs new in `after` count from zero. */
export function cpuDelta(groups: PidGroups, before: CpuSample, after: CpuSample): { seconds: Record<string, number>; systemSeconds: Record<string, number>; vanished: number[] } {
  const seconds: Record<string, number> = {};
  const systemSeconds: Record<string, number> = {};
  const vanished: number[] = [];
  for (const [name, pids] of Object.entries(groups)) {
    let total = 0;
    let system = 0;
    for (const pid of pids) {
      const a = after.get(pid);
      const b = before.get(pid) ?? { user: 0, system: 0 };
      if (a === undefined) {
        if (before.has(pid)) vanished.push(pid);
        continue;
      }
      total += a.user - b.user + a.system - b.system;
      system += a.system - b.system;
    }
    seconds[name] = total;
    systemSeconds[name] = system;
  }
  return { seconds, systemSeconds, vanished };
}

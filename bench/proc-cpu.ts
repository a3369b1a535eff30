/**
 * CPU time of processes over an interval, from /proc (Linux), so the benchmark can say how busy
 * the client and each server process were during a measured phase, and how long their main
 * thread waited for a CPU (run queue). Elsewhere the figures are null.
 */

import { readFileSync } from "node:fs";

/** Linux's USER_HZ: /proc/<pid>/stat reports CPU time in these ticks per second (100 on every mainstream build). */
const USER_HZ = 100;

interface ProcTimes {
  /** User plus system CPU seconds of the whole process (all threads). */
  cpuSeconds: number;
  /** Seconds the main thread spent runnable but waiting for a CPU. */
  runQueueSeconds: number | undefined;
}

/** The process's CPU and run-queue times so far, or undefined when /proc cannot tell. */
export function procTimes(pid: number | "self"): ProcTimes | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) is in parentheses and may hold spaces: split after its closing one.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // Fields 14 and 15 (utime, stime) are at 11 and 12 once the first two are cut.
    const user = Number(fields[11]);
    const system = Number(fields[12]);
    if (!Number.isFinite(user) || !Number.isFinite(system)) return undefined;
    let runQueueSeconds: number | undefined;
    try {
      // schedstat: on-CPU ns, run-queue wait ns, timeslices (of the main thread).
      const wait = Number(readFileSync(`/proc/${pid}/schedstat`, "utf8").split(" ")[1]);
      runQueueSeconds = Number.isFinite(wait) ? wait / 1e9 : undefined;
    } catch {
      runQueueSeconds = undefined;
    }
    return { cpuSeconds: (user + system) / USER_HZ, runQueueSeconds };
  } catch {
    return undefined;
  }
}

/** One process's use of the machine over the interval, in % of the interval. */
export interface ProcUse {
  /** CPU time of all its threads (100 = one core busy). */
  cpu_pct: number | null;
  /** Time its main thread (the event loop) was ready to run but waited for a CPU. */
  run_queue_wait_pct: number | null;
}

/** A started measurement; `stop()` gives each process's use over the interval. */
export interface CpuMeter {
  stop(): Record<string, ProcUse>;
}

const pct = (a: number | undefined, b: number | undefined, seconds: number): number | null =>
  a === undefined || b === undefined ? null : Math.round((100 * (b - a)) / seconds);

/** Starts measuring the benchmark process itself (as "client") and the named processes. */
export function startCpuMeter(processes: Record<string, number | undefined>): CpuMeter {
  const start = performance.now();
  const named: [string, number | "self" | undefined][] = [["client", "self"], ...Object.entries(processes)];
  const before = named.map(([, pid]) => (pid === undefined ? undefined : procTimes(pid)));
  return {
    stop: () => {
      const seconds = (performance.now() - start) / 1000;
      const out: Record<string, ProcUse> = {};
      named.forEach(([name, pid], i) => {
        const a = before[i];
        const b = pid === undefined ? undefined : procTimes(pid);
        out[name] = { cpu_pct: pct(a?.cpuSeconds, b?.cpuSeconds, seconds), run_queue_wait_pct: pct(a?.runQueueSeconds, b?.runQueueSeconds, seconds) };
      });
      return out;
    },
  };
}

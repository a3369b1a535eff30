/**
 * Closed-loop load: `concurrency` loops, each issuing one call at a time for a fixed time, with a
 * warm-up run before the measured one. Latency is measured per call with performance.now().
 */

import { summarize, type PhaseSummary } from "./bench-stats.js";
import { startCpuMeter, type ProcUse } from "./proc-cpu.js";

/** Calls one phase records at most (8 bytes each); loops stop early past this. */
const OPS_PER_PHASE_MAX = 50_000_000;
/** Pause of a loop after a failed call, so a broken target is not hammered in a tight loop. */
const ERROR_PAUSE_MS = 10;

/** One call of loop `loop`; `seq` counts that loop's calls across warm-up and measurement. */
export type LoadCall = (loop: number, seq: number) => Promise<void>;

interface RunResult {
  latenciesMs: number[];
  errors: number;
  firstError: string | undefined;
  seconds: number;
}

async function run(concurrency: number, seconds: number, call: LoadCall, seqs: number[]): Promise<RunResult> {
  const latenciesMs: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const start = performance.now();
  const deadline = start + seconds * 1000;
  const loop = async (index: number): Promise<void> => {
    // Bounded by the deadline and by OPS_PER_PHASE_MAX.
    while (performance.now() < deadline && latenciesMs.length < OPS_PER_PHASE_MAX) {
      const seq = seqs[index]!++;
      const t0 = performance.now();
      try {
        await call(index, seq);
        latenciesMs.push(performance.now() - t0);
      } catch (e) {
        errors++;
        firstError ??= e instanceof Error ? e.message : String(e);
        await new Promise((r) => setTimeout(r, ERROR_PAUSE_MS));
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, (_, i) => loop(i)));
  return { latenciesMs, errors, firstError, seconds: (performance.now() - start) / 1000 };
}

export interface PhaseResult<T = unknown> {
  summary: PhaseSummary;
  /** The first failure's message, when calls failed. */
  firstError: string | undefined;
  /** CPU use and run-queue wait during the measured run: "client" (this process) and each named process. */
  cpu: Record<string, ProcUse>;
  /** What `sample` returned just before and just after the measured run. */
  samples: { before: T; after: T } | undefined;
}

/**
 * Runs `call` from `concurrency` loops for `warmupSeconds` (discarded), then for `seconds`
 * (measured). Each acknowledged call counts `eventsPerCall` events. The CPU use of this process
 * and of `processes` (name to PID) is measured over the measured run.
 */
export async function runPhase<T = unknown>(options: {
  concurrency: number;
  seconds: number;
  warmupSeconds: number;
  eventsPerCall: number;
  call: LoadCall;
  processes: Record<string, number | undefined>;
  /** Taken just before and just after the measured run (e.g. a scrape of the server's metrics). */
  sample?: () => Promise<T>;
}): Promise<PhaseResult<T>> {
  const seqs = Array.from({ length: options.concurrency }, () => 0);
  if (options.warmupSeconds > 0) {
    const warmup = await run(options.concurrency, options.warmupSeconds, options.call, seqs);
    // Nothing to measure: stop here with the reason rather than time failures.
    if (warmup.latenciesMs.length === 0 && warmup.errors > 0) throw new Error(`every call of the warm-up failed (${warmup.errors}); the first: ${warmup.firstError}`);
  }
  const before = await options.sample?.();
  const meter = startCpuMeter(options.processes);
  const r = await run(options.concurrency, options.seconds, options.call, seqs);
  const cpu = meter.stop();
  const after = await options.sample?.();
  const samples = options.sample === undefined ? undefined : { before: before as T, after: after as T };
  return { summary: summarize(r.latenciesMs, options.eventsPerCall, r.errors, r.seconds), firstError: r.firstError, cpu, samples };
}

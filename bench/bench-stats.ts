/**
 * Pure arithmetic of the cluster benchmark: percentiles over per-operation latencies, the summary
 * of one measured phase, and the comparison with etcd against the targets. No I/O, so it is unit
 * tested (test/bench/cluster-bench.test.ts).
 */

/** What one measured phase reached. Rates are per second of the phase's elapsed wall time. */
export interface PhaseSummary {
  /** Events acknowledged per second (one etcd put counts as one event). */
  events_per_s: number;
  /** Calls (appends or puts) acknowledged per second. */
  ops_per_s: number;
  /** Median latency of one call, in milliseconds. */
  p50_ms: number;
  /** 99th percentile latency of one call, in milliseconds. */
  p99_ms: number;
  /** Calls acknowledged. */
  ops: number;
  /** Events acknowledged (ops x events per call). */
  events: number;
  /** Calls that failed (not counted in ops, events or the latencies). */
  errors: number;
  /** Wall time of the phase, from the first call to the last answer. */
  seconds: number;
}

/** The benchmark's targets (the specification of `npm run bench -- cluster`). */
export const TARGETS = {
  /** Verity single-event appends/s divided by etcd puts/s, at least. */
  ratio_vs_etcd_min: 3,
  /** Verity single-event p99 divided by etcd's p99, at most (no worse than etcd). */
  p99_ratio_vs_etcd_max: 1,
  /** Events/s with 100-event batches, at least. */
  batch100_events_per_s_min: 150_000,
} as const;

/**
 * The nearest-rank percentile of an ascending array: the smallest value such that at least
 * `p` of the values are at or below it. 0 for an empty array.
 */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (!(p >= 0 && p <= 1)) throw new RangeError(`percentile ${p} is outside [0, 1]`);
  if (sorted.length === 0) return 0;
  const rank = Math.max(1, Math.ceil(p * sorted.length));
  return sorted[rank - 1]!;
}

export function round(n: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

/** Summarizes a phase: `latenciesMs` holds one entry per acknowledged call, in any order. */
export function summarize(latenciesMs: ArrayLike<number>, eventsPerOp: number, errors: number, seconds: number): PhaseSummary {
  if (!(seconds > 0)) throw new RangeError(`phase length ${seconds} s must be positive`);
  const sorted = Float64Array.from(latenciesMs).sort();
  const ops = sorted.length;
  return {
    events_per_s: Math.round((ops * eventsPerOp) / seconds),
    ops_per_s: Math.round(ops / seconds),
    p50_ms: round(percentile(sorted, 0.5), 3),
    p99_ms: round(percentile(sorted, 0.99), 3),
    ops,
    events: ops * eventsPerOp,
    errors,
    seconds: round(seconds, 3),
  };
}

export interface Comparison {
  /** Verity single-event events/s over etcd puts/s; null without etcd figures. */
  ratio_vs_etcd: number | null;
  /** Verity single-event p99 over etcd's p99; null without etcd figures. */
  p99_ratio_vs_etcd: number | null;
  met: {
    ratio_vs_etcd: boolean | null;
    p99_vs_etcd: boolean | null;
    batch100_events_per_s: boolean;
  };
}

/** Compares the phases with each other and with TARGETS. */
export function compare(verity: PhaseSummary, batch100: PhaseSummary, etcd: PhaseSummary | null): Comparison {
  const usable = etcd !== null && etcd.events_per_s > 0 && etcd.p99_ms > 0;
  // The verdicts use the exact ratios: rounding first would call 2.9999 "3x".
  const ratio = usable ? verity.events_per_s / etcd.events_per_s : null;
  const p99Ratio = usable ? verity.p99_ms / etcd.p99_ms : null;
  return {
    ratio_vs_etcd: ratio === null ? null : round(ratio, 3),
    p99_ratio_vs_etcd: p99Ratio === null ? null : round(p99Ratio, 3),
    met: {
      ratio_vs_etcd: ratio === null ? null : ratio >= TARGETS.ratio_vs_etcd_min,
      p99_vs_etcd: p99Ratio === null ? null : p99Ratio <= TARGETS.p99_ratio_vs_etcd_max,
      batch100_events_per_s: batch100.events_per_s >= TARGETS.batch100_events_per_s_min,
    },
  };
}

/** "met", "NOT met", or "n/a" (no etcd figures). */
export function verdict(met: boolean | null): string {
  return met === null ? "n/a" : met ? "met" : "NOT met";
}

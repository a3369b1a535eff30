/**
 * What the VerityDB leader's consensus loop did during a measured phase, from two scrapes of its
 * Prometheus /metrics (before and after): how many Ready batches it persisted and applied, how
 * long each took on average, how many entries one log write (one fdatasync) carried, and what
 * share of the phase the loop spent persisting and applying. This is the evidence for where an
 * append's time goes: in the loop (busy) or between its steps (waiting on peers, the network or
 * the scheduler).
 */

import { httpText } from "./bench-processes.js";

/** The metric samples this module reads, by `name{labels}` as Prometheus prints them. */
const SERIES = [
  "verity_log_entries_total",
  "verity_log_append_duration_seconds_sum",
  "verity_log_append_duration_seconds_count",
  'verity_consensus_duration_seconds_sum{phase="persist"}',
  'verity_consensus_duration_seconds_count{phase="persist"}',
  'verity_consensus_duration_seconds_sum{phase="apply"}',
  'verity_consensus_duration_seconds_count{phase="apply"}',
  'verity_write_duration_seconds_sum{status="OK"}',
  'verity_write_duration_seconds_count{status="OK"}',
] as const;

export type MetricsSnapshot = Partial<Record<(typeof SERIES)[number], number>>;

/** Picks SERIES out of Prometheus text exposition format. */
export function parseMetrics(text: string): MetricsSnapshot {
  const wanted = new Set<string>(SERIES);
  const out: MetricsSnapshot = {};
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const space = line.lastIndexOf(" ");
    const key = line.slice(0, space);
    if (wanted.has(key)) out[key as (typeof SERIES)[number]] = Number(line.slice(space + 1));
  }
  return out;
}

export async function scrape(metricsPort: number): Promise<MetricsSnapshot | undefined> {
  const text = await httpText(metricsPort, "/metrics");
  return text === undefined ? undefined : parseMetrics(text);
}

/** The leader's loop over one phase (null where a metric was missing). */
export interface LeaderPipeline {
  /** Log writes (group commits, one fdatasync each) per second. */
  log_writes_per_s: number | null;
  /** Raft entries per log write (one per event). */
  entries_per_log_write: number | null;
  /** Mean time of one log write, enqueue to durable, in ms. */
  log_write_ms: number | null;
  /** Ready batches that persisted something, per second, and their mean persist time in ms. */
  persist_per_s: number | null;
  persist_ms: number | null;
  /** Ready batches that applied committed entries, per second, and their mean apply time in ms. */
  apply_per_s: number | null;
  apply_ms: number | null;
  /** Share of the phase the loop spent persisting or applying, in %. */
  loop_busy_pct: number | null;
  /** Mean append latency the server measured (arrival to answer), in ms. */
  server_append_ms: number | null;
}

/** Compares two snapshots taken `seconds` apart. */
export function pipelineBetween(a: MetricsSnapshot, b: MetricsSnapshot, seconds: number): LeaderPipeline {
  const d = (k: (typeof SERIES)[number]): number | null => (a[k] === undefined || b[k] === undefined ? null : b[k]! - a[k]!);
  const div = (x: number | null, y: number | null, scale = 1): number | null => (x === null || y === null || y === 0 ? null : Math.round((scale * 1000 * x) / y) / 1000);
  const writes = d("verity_log_append_duration_seconds_count");
  const persistSum = d('verity_consensus_duration_seconds_sum{phase="persist"}');
  const applySum = d('verity_consensus_duration_seconds_sum{phase="apply"}');
  const persistCount = d('verity_consensus_duration_seconds_count{phase="persist"}');
  const applyCount = d('verity_consensus_duration_seconds_count{phase="apply"}');
  return {
    log_writes_per_s: div(writes, seconds),
    entries_per_log_write: div(d("verity_log_entries_total"), writes),
    log_write_ms: div(d("verity_log_append_duration_seconds_sum"), writes, 1000),
    persist_per_s: div(persistCount, seconds),
    persist_ms: div(persistSum, persistCount, 1000),
    apply_per_s: div(applyCount, seconds),
    apply_ms: div(applySum, applyCount, 1000),
    loop_busy_pct: persistSum === null || applySum === null ? null : div(persistSum + applySum, seconds, 100),
    server_append_ms: div(d('verity_write_duration_seconds_sum{status="OK"}'), d('verity_write_duration_seconds_count{status="OK"}'), 1000),
  };
}

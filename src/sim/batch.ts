/**
 * Runs many seeds and totals them: what the CLI prints and what the tests check. The batch trace
 * hash covers every seed's trace hash in order, so a replay of the batch is exact too.
 */

import { createHash } from "node:crypto";
import type { OracleName } from "./oracles.js";
import { runSeed, type FaultStats, type SeedResult } from "./simulator.js";

/** The `--json` object. */
export interface BatchSummary {
  seeds: number;
  events: number;
  violations: number;
  elections: number;
  commits: number;
  faults: FaultStats;
  trace_hash: string;
}

export interface BatchResult {
  readonly summary: BatchSummary;
  /** The first failing seed; the batch stops there. */
  readonly failure: SeedResult | undefined;
  readonly results: readonly SeedResult[];
}

export interface BatchOptions {
  /** Explicit seeds, or consecutive seeds from `from` while `until()` is false. */
  readonly seeds?: readonly number[];
  readonly from?: number;
  readonly until?: () => boolean;
  readonly voters: 3 | 5;
  readonly safetyDuration?: number | undefined;
  /** Oracles to switch off (to see which other oracle catches a bug). */
  readonly disabledOracles?: readonly OracleName[];
}

export async function runSeeds(options: BatchOptions): Promise<BatchResult> {
  const hash = createHash("sha256");
  const summary: BatchSummary = {
    seeds: 0, events: 0, violations: 0, elections: 0, commits: 0,
    faults: { partitions: 0, crashes: 0, lost_unsynced: 0, torn_writes: 0, pauses: 0, transfers: 0, membership_changes: 0, strikes: 0 },
    trace_hash: "",
  };
  const results: SeedResult[] = [];
  let failure: SeedResult | undefined;
  const next = seedSource(options);
  // Bounded by the seed list, or by `until` (the caller's time box).
  for (let seed = next(); seed !== undefined; seed = next()) {
    const result = await runSeed({ seed, voters: options.voters, safetyDuration: options.safetyDuration, disabledOracles: options.disabledOracles ?? [] });
    results.push(result);
    hash.update(`${seed}:${result.traceHash}\n`);
    summary.seeds++;
    summary.events += result.events;
    summary.elections += result.elections;
    summary.commits += result.commits;
    for (const key of Object.keys(summary.faults) as (keyof FaultStats)[]) summary.faults[key] += result.faults[key];
    if (result.violation !== undefined) {
      summary.violations++;
      failure = result;
      break;
    }
  }
  summary.trace_hash = hash.digest("hex");
  return { summary, failure, results };
}

function seedSource(options: BatchOptions): () => number | undefined {
  if (options.seeds !== undefined) {
    const seeds = options.seeds;
    let i = 0;
    return () => seeds[i++];
  }
  let seed = options.from ?? 1;
  const until = options.until ?? (() => true);
  return () => (until() ? undefined : seed++);
}

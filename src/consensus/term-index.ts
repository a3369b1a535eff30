/**
 * The term of every index of the whole log, kept as runs (terms change rarely, so this stays
 * small). The core answers every term lookup from here, so the vote check, the AppendEntries
 * consistency check and fast backtracking never need the disk.
 */

import { invariant } from "../errors.js";
import type { LogIndex, Term } from "../log/types.js";
import { TERM_RUNS_MAX } from "../limits.js";
import type { TermRun } from "./types.js";

export class TermIndex {
  /** Index just before the first entry the log holds (0 for a log that starts at 1). */
  private readonly baseIndex: LogIndex;
  /** Term of `baseIndex` (0 when baseIndex is 0; the snapshot's term after a restore). */
  private readonly baseTerm: Term;
  /**
   * Invariant: firstIndex strictly increasing, term strictly increasing, every firstIndex in
   * (baseIndex, lastIndex], and the first run (if any) starts at baseIndex + 1.
   */
  private readonly runs: TermRun[];
  private last: LogIndex;

  constructor(baseIndex: LogIndex, baseTerm: Term, lastIndex: LogIndex, runs: readonly TermRun[]) {
    invariant(lastIndex >= baseIndex, `log last index ${lastIndex} is before its base ${baseIndex}`);
    this.baseIndex = baseIndex;
    this.baseTerm = baseTerm;
    this.last = lastIndex;
    this.runs = [...runs];
    invariant(runs.length <= TERM_RUNS_MAX, "too many term runs");
    invariant((lastIndex === baseIndex) === (runs.length === 0), "term runs must cover exactly the log");
    let previous: TermRun | undefined;
    for (const run of this.runs) {
      invariant(run.firstIndex > baseIndex && run.firstIndex <= lastIndex, `term run at ${run.firstIndex} outside the log`);
      invariant(run.term >= baseTerm, `term run ${run.term} before the base term ${baseTerm}`);
      if (previous === undefined) invariant(run.firstIndex === baseIndex + 1, "the first term run must start the log");
      else invariant(run.firstIndex > previous.firstIndex && run.term > previous.term, "term runs must increase");
      previous = run;
    }
  }

  get firstIndex(): LogIndex {
    return (this.baseIndex + 1) as LogIndex;
  }

  get lastIndex(): LogIndex {
    return this.last;
  }

  get lastTerm(): Term {
    return this.termAt(this.last)!;
  }

  /** Term of `index`; undefined when `index` is outside [baseIndex, lastIndex]. */
  termAt(index: number): Term | undefined {
    if (index < this.baseIndex || index > this.last) return undefined;
    if (index === this.baseIndex) return this.baseTerm;
    const run = this.runs[this.runPosition(index)];
    invariant(run !== undefined, `no term run covers index ${index}`);
    return run.term;
  }

  /** First index in the log with the term of `index` (the conflict hint of a rejection). */
  firstIndexOfTermAt(index: LogIndex): LogIndex {
    invariant(index > this.baseIndex && index <= this.last, `index ${index} is outside the log`);
    return this.runs[this.runPosition(index)]!.firstIndex;
  }

  /** Last index whose term is `t`, or undefined when no entry has that term. */
  lastIndexOfTerm(t: Term): LogIndex | undefined {
    for (let i = this.runs.length - 1; i >= 0; i--) {
      const run = this.runs[i]!;
      if (run.term === t) {
        const next = this.runs[i + 1];
        return next === undefined ? this.last : ((next.firstIndex - 1) as LogIndex);
      }
      if (run.term < t) return undefined;
    }
    return undefined;
  }

  /** Notes one appended entry; must be lastIndex + 1 with a term no lower than the last. */
  append(index: LogIndex, t: Term): void {
    invariant(index === this.last + 1, `append at ${index} but the log ends at ${this.last}`);
    const lastRun = this.runs[this.runs.length - 1];
    const lastTerm = lastRun?.term ?? this.baseTerm;
    invariant(t >= lastTerm, `term ${t} after term ${lastTerm}: terms in the log never decrease`);
    if (lastRun === undefined || lastRun.term !== t) {
      invariant(this.runs.length < TERM_RUNS_MAX, `the term index is full (${TERM_RUNS_MAX} runs)`);
      this.runs.push({ firstIndex: index, term: t });
    }
    this.last = index;
  }

  /** Forgets every index >= `from`. */
  truncateFrom(from: LogIndex): void {
    invariant(from > this.baseIndex && from <= this.last + 1, `truncation at ${from} outside the log`);
    while (this.runs.length > 0 && this.runs[this.runs.length - 1]!.firstIndex >= from) this.runs.pop();
    this.last = (from - 1) as LogIndex;
  }

  /** A copy of the runs (for status and tests). */
  snapshotRuns(): TermRun[] {
    return [...this.runs];
  }

  /** Position of the last run starting at or before `index`. Precondition: baseIndex < index <= last. */
  private runPosition(index: number): number {
    let low = 0;
    let high = this.runs.length - 1;
    let found = -1;
    while (low <= high) {
      const middle = (low + high) >>> 1;
      if (this.runs[middle]!.firstIndex <= index) {
        found = middle;
        low = middle + 1;
      } else {
        high = middle - 1;
      }
    }
    return found;
  }
}

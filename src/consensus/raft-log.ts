/**
 * The core's synchronous view of the asynchronous disk log (src/log/segmented-log.ts): the term of
 * every index (TermIndex), the entries not yet durable, and a bounded cache of recent durable ones.
 * What is not in memory the core asks the driver to load (Ready.fetches); it never blocks on disk.
 */

import { invariant } from "../errors.js";
import type { LogEntry, LogIndex, Term } from "../log/types.js";
import { ENTRY_CACHE_BYTES_MAX, ENTRY_CACHE_ENTRIES_MAX } from "../limits.js";
import { TermIndex } from "./term-index.js";
import type { TermRun } from "./types.js";

/** Where the disk log stood when the core was built. */
export interface LogState {
  /** Index just before the first entry on disk (0 for a log starting at 1). */
  readonly baseIndex: LogIndex;
  /** Term of `baseIndex` (0 when it is 0). */
  readonly baseTerm: Term;
  readonly lastIndex: LogIndex;
  /** The term runs of the whole log on disk (SegmentedLog keeps exactly this). */
  readonly termRuns: readonly TermRun[];
}

export class RaftLog {
  readonly terms: TermIndex;
  /**
   * Entries in memory: indexes [windowFirst, lastIndex], in order.
   * Invariant: window[i].index === windowFirst + i; windowFirst <= stableIndex + 1 (every entry
   * that is not durable is in memory, since the disk does not have it yet).
   */
  private window: LogEntry[] = [];
  private windowFirst: LogIndex;
  private windowBytes = 0;
  /** Payload bytes of the window entries past `stableIndex` (the proposal limit checks it). */
  private unstableBytesValue = 0;
  /** Last index the driver acknowledged as durable. Invariant: stableIndex <= persistingIndex <= lastIndex. */
  private stableIndex: LogIndex;
  /** Last index handed out in a Ready for persistence (durable or being written). */
  private persistingIndex: LogIndex;
  /** Set when entries already handed out were replaced: the next Ready tells the driver to cut from here. */
  private pendingTruncateFrom: LogIndex | undefined;
  /** Highest committed index. Invariant: applied <= applying <= committed <= lastIndex; never decreases. */
  private committedIndex: LogIndex;
  /** Last index handed out to apply. */
  private applyingIndex: LogIndex;
  /** Last index the driver acknowledged as applied. */
  private appliedIndex: LogIndex;

  constructor(state: LogState, committed: LogIndex, applied: LogIndex) {
    this.terms = new TermIndex(state.baseIndex, state.baseTerm, state.lastIndex, state.termRuns);
    invariant(committed <= state.lastIndex, `commit ${committed} is past the log's last index ${state.lastIndex}`);
    invariant(applied <= committed, `applied ${applied} is past commit ${committed}`);
    invariant(applied >= state.baseIndex, `applied ${applied} is before the log's base ${state.baseIndex}`);
    this.windowFirst = (state.lastIndex + 1) as LogIndex;
    this.stableIndex = state.lastIndex;
    this.persistingIndex = state.lastIndex;
    this.committedIndex = committed;
    this.applyingIndex = applied;
    this.appliedIndex = applied;
  }

  get lastIndex(): LogIndex {
    return this.terms.lastIndex;
  }
  get lastTerm(): Term {
    return this.terms.lastTerm;
  }
  get committed(): LogIndex {
    return this.committedIndex;
  }
  get applied(): LogIndex {
    return this.appliedIndex;
  }
  get applying(): LogIndex {
    return this.applyingIndex;
  }
  get stable(): LogIndex {
    return this.stableIndex;
  }
  get unstableBytes(): number {
    return this.unstableBytesValue;
  }
  /** First index held in memory (lastIndex + 1 when none). */
  get cachedFrom(): LogIndex {
    return this.windowFirst;
  }

  termAt(index: number): Term | undefined {
    return this.terms.termAt(index);
  }

  /** Raft's up-to-date rule (section 5.4.1): a later last term wins, then a longer log. */
  isUpToDate(lastLogIndex: LogIndex, lastLogTerm: Term): boolean {
    return lastLogTerm > this.lastTerm || (lastLogTerm === this.lastTerm && lastLogIndex >= this.lastIndex);
  }

  matchTerm(index: LogIndex, t: Term): boolean {
    return this.terms.termAt(index) === t;
  }

  /** Appends entries that follow the last index (the leader's own proposals). */
  append(entries: readonly LogEntry[]): void {
    for (const entry of entries) {
      this.terms.append(entry.index, entry.term);
      this.window.push(entry);
      this.windowBytes += entry.payload.byteLength;
      this.unstableBytesValue += entry.payload.byteLength;
    }
  }

  /**
   * The follower's side of AppendEntries once `prevIndex` matched: skips entries it already holds,
   * cuts its log at the first conflict and appends the rest. Returns the index cut from, if any.
   */
  appendFromLeader(entries: readonly LogEntry[]): LogIndex | undefined {
    let position = 0;
    while (position < entries.length) {
      const entry = entries[position]!;
      if (entry.index > this.lastIndex || !this.matchTerm(entry.index, entry.term)) break;
      position++;
    }
    if (position === entries.length) return undefined;
    const first = entries[position]!;
    let cut: LogIndex | undefined;
    if (first.index <= this.lastIndex) {
      invariant(first.index > this.committedIndex, `the leader conflicts with committed entry ${first.index}`);
      this.truncateFrom(first.index);
      cut = first.index;
    }
    this.append(entries.slice(position));
    return cut;
  }

  /** Removes every index >= `from`; entries already handed to the driver are cut in the next Ready. */
  private truncateFrom(from: LogIndex): void {
    invariant(from > this.committedIndex, `refusing to truncate at ${from}: entries up to ${this.committedIndex} are committed`);
    this.terms.truncateFrom(from);
    if (from <= this.persistingIndex) {
      this.pendingTruncateFrom = Math.min(this.pendingTruncateFrom ?? from, from) as LogIndex;
      this.persistingIndex = (from - 1) as LogIndex;
      this.stableIndex = Math.min(this.stableIndex, from - 1) as LogIndex;
    }
    if (from < this.windowFirst) {
      this.window = [];
      this.windowFirst = from;
      this.windowBytes = 0;
    } else {
      const removed = this.window.splice(from - this.windowFirst);
      for (const entry of removed) this.windowBytes -= entry.payload.byteLength;
    }
    this.unstableBytesValue = 0;
    for (const entry of this.window) {
      if (entry.index > this.stableIndex) this.unstableBytesValue += entry.payload.byteLength;
    }
  }

  /** Entries [from, to) from memory, at most `bytesMax` of payload but at least one; undefined when not all held. */
  slice(from: LogIndex, to: LogIndex, bytesMax: number): LogEntry[] | undefined {
    invariant(from >= this.terms.firstIndex && to <= this.lastIndex + 1 && from <= to, `slice [${from}, ${to}) outside the log`);
    if (from < this.windowFirst) return undefined;
    const result: LogEntry[] = [];
    let bytes = 0;
    for (let index = from; index < to; index++) {
      const entry = this.window[index - this.windowFirst]!;
      if (result.length > 0 && bytes + entry.payload.byteLength > bytesMax) break;
      bytes += entry.payload.byteLength;
      result.push(entry);
    }
    return result;
  }

  /** The cut and the entries the next Ready hands out for persistence; marks them as being persisted. */
  takeUnpersisted(): { truncateFrom: LogIndex | undefined; entries: LogEntry[] } {
    const truncateFrom = this.pendingTruncateFrom;
    this.pendingTruncateFrom = undefined;
    const entries = this.window.slice(this.persistingIndex + 1 - this.windowFirst);
    this.persistingIndex = this.lastIndex;
    return { truncateFrom, entries };
  }

  hasUnpersisted(): boolean {
    return this.pendingTruncateFrom !== undefined || this.persistingIndex < this.lastIndex;
  }

  /**
   * The driver made entries up to `entry` durable. If the log was cut below it meanwhile, only the
   * part that still stands counts (the cut is in the next Ready).
   */
  stableTo(index: LogIndex, t: Term): void {
    const upTo = Math.min(index, this.persistingIndex) as LogIndex;
    if (upTo <= this.stableIndex) return;
    if (upTo === index) invariant(this.matchTerm(index, t), `stable entry ${index} changed term without a cut`);
    for (let i = this.stableIndex + 1; i <= upTo; i++) {
      const entry = this.window[i - this.windowFirst];
      invariant(entry !== undefined, `entry ${i} became durable but is not in memory`);
      this.unstableBytesValue -= entry.payload.byteLength;
    }
    this.stableIndex = upTo;
  }

  commitTo(index: LogIndex): boolean {
    if (index <= this.committedIndex) return false;
    invariant(index <= this.lastIndex, `commit ${index} past the last index ${this.lastIndex}`);
    this.committedIndex = index;
    return true;
  }

  /** Committed entries to apply next, from memory; undefined when the next one is not held (fetch it). */
  nextToApply(bytesMax: number): LogEntry[] | undefined {
    if (this.applyingIndex >= this.committedIndex) return [];
    return this.slice((this.applyingIndex + 1) as LogIndex, (this.committedIndex + 1) as LogIndex, bytesMax);
  }

  /** Marks entries up to `index` as handed out to apply. */
  applyingTo(index: LogIndex): void {
    invariant(index === this.applyingIndex || (index > this.applyingIndex && index <= this.committedIndex), `applying ${index} out of order`);
    this.applyingIndex = index;
  }

  appliedTo(index: LogIndex): void {
    invariant(index <= this.applyingIndex, `applied ${index} was never handed out (applying ${this.applyingIndex})`);
    if (index > this.appliedIndex) this.appliedIndex = index;
  }

  /** Drops the oldest cached entries past the cache bounds; only durable entries already handed out to apply. */
  evict(): void {
    const evictable = Math.min(this.stableIndex, this.applyingIndex);
    let drop = 0;
    let bytes = this.windowBytes;
    while (drop < this.window.length) {
      const entry = this.window[drop]!;
      const over = this.window.length - drop > ENTRY_CACHE_ENTRIES_MAX || bytes > ENTRY_CACHE_BYTES_MAX;
      if (!over || entry.index > evictable) break;
      bytes -= entry.payload.byteLength;
      drop++;
    }
    if (drop === 0) return;
    this.window.splice(0, drop);
    this.windowFirst = (this.windowFirst + drop) as LogIndex;
    this.windowBytes = bytes;
  }
}

/**
 * What a leader knows about one follower's log (etcd-io/raft tracker/progress.go), and the bounded
 * window of AppendEntries messages in flight to it (tracker/inflights.go).
 */

import { assertNever, invariant } from "../errors.js";
import type { LogIndex } from "../log/types.js";

/**
 * AppendEntries messages sent to one follower and not yet acknowledged, oldest first, bounded by
 * a count and by payload bytes. Acknowledging index i frees every message whose last index <= i.
 */
export class Inflights {
  readonly messagesMax: number;
  readonly bytesMax: number;
  /** Invariant: lastIndex strictly increasing; length <= messagesMax; totalBytes = sum of bytes. */
  private readonly queue: Array<{ lastIndex: LogIndex; bytes: number }> = [];
  private totalBytes = 0;

  constructor(messagesMax: number, bytesMax: number) {
    invariant(messagesMax >= 1 && bytesMax >= 1, "the in-flight window must allow one message");
    this.messagesMax = messagesMax;
    this.bytesMax = bytesMax;
  }

  get count(): number {
    return this.queue.length;
  }
  get bytes(): number {
    return this.totalBytes;
  }

  /** True when no further message may be sent. A single over-size message is allowed into an empty window. */
  full(): boolean {
    return this.queue.length >= this.messagesMax || (this.queue.length > 0 && this.totalBytes >= this.bytesMax);
  }

  add(lastIndex: LogIndex, bytes: number): void {
    invariant(!this.full(), "a message was sent into a full in-flight window");
    const newest = this.queue[this.queue.length - 1];
    invariant(newest === undefined || lastIndex > newest.lastIndex, "in-flight messages must carry increasing indexes");
    this.queue.push({ lastIndex, bytes });
    this.totalBytes += bytes;
  }

  /** Frees every message whose last index is <= `index`. */
  freeUpTo(index: LogIndex): void {
    let count = 0;
    while (count < this.queue.length && this.queue[count]!.lastIndex <= index) {
      this.totalBytes -= this.queue[count]!.bytes;
      count++;
    }
    this.queue.splice(0, count);
  }

  /** Frees the oldest message: a heartbeat answer proves the follower is alive, so one more may go. */
  freeFirst(): void {
    const first = this.queue.shift();
    if (first !== undefined) this.totalBytes -= first.bytes;
  }

  reset(): void {
    this.queue.length = 0;
    this.totalBytes = 0;
  }
}

export const ProgressState = {
  /** Unknown match: send one AppendEntries at a time, wait for its answer (or a heartbeat answer). */
  PROBE: "PROBE",
  /** Match known: stream AppendEntries optimistically, up to the in-flight window. */
  REPLICATE: "REPLICATE",
  /** Segments are being streamed to the follower (Ready.catchUps): no AppendEntries until it ends. */
  CATCH_UP: "CATCH_UP",
} as const;
export type ProgressState = (typeof ProgressState)[keyof typeof ProgressState];

export class Progress {
  /** Highest index known to be replicated on the follower. Invariant: match < next. */
  match: LogIndex;
  /** Next index to send. */
  next: LogIndex;
  state: ProgressState = ProgressState.PROBE;
  /** In PROBE: a message is out and no answer came yet, so nothing more is sent until one does. */
  probeSent = false;
  /** Heard from since the last check-quorum round. */
  recentActive = false;
  /** Waiting for the driver to load entries from `next` (a fetch is out). */
  fetchPending = false;
  readonly inflights: Inflights;

  constructor(next: LogIndex, messagesMax: number, bytesMax: number) {
    this.match = 0 as LogIndex;
    this.next = next;
    this.inflights = new Inflights(messagesMax, bytesMax);
  }

  /** True when no AppendEntries may be sent now. */
  isPaused(): boolean {
    switch (this.state) {
      case ProgressState.PROBE:
        return this.probeSent;
      case ProgressState.REPLICATE:
        return this.inflights.full();
      case ProgressState.CATCH_UP:
        return true;
      default:
        return assertNever(this.state);
    }
  }

  becomeProbe(): void {
    this.state = ProgressState.PROBE;
    this.probeSent = false;
    this.inflights.reset();
    this.next = (this.match + 1) as LogIndex;
  }

  becomeCatchUp(): void {
    this.state = ProgressState.CATCH_UP;
    this.probeSent = false;
    this.inflights.reset();
  }

  becomeReplicate(): void {
    this.state = ProgressState.REPLICATE;
    this.probeSent = false;
    this.inflights.reset();
    this.next = (this.match + 1) as LogIndex;
  }

  /**
   * The follower's log ends at `lastIndex`, below what it acknowledged: it lost entries (its data
   * directory was wiped or restored from a backup). Probe again from its real end.
   */
  lostEntries(lastIndex: LogIndex): void {
    this.match = lastIndex;
    this.becomeProbe();
  }

  /** The follower holds everything up to `index`. Returns false when that is old news. */
  maybeUpdate(index: LogIndex): boolean {
    this.probeSent = false;
    if (index <= this.match) return false;
    this.match = index;
    if (this.next <= index) this.next = (index + 1) as LogIndex;
    return true;
  }

  /** Notes a message sent with entries up to `lastIndex` (none: lastIndex = next - 1). */
  sentEntries(lastIndex: LogIndex, bytes: number, entryCount: number): void {
    switch (this.state) {
      case ProgressState.PROBE:
        this.probeSent = true;
        return;
      case ProgressState.REPLICATE:
        if (entryCount > 0) {
          this.inflights.add(lastIndex, bytes);
          this.next = (lastIndex + 1) as LogIndex;
        }
        return;
      case ProgressState.CATCH_UP:
        invariant(false, "AppendEntries sent to a follower being caught up by segment streaming");
        return;
      default:
        assertNever(this.state);
    }
  }
}

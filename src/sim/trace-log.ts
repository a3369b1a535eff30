/**
 * The trace of one seed: every line is hashed (the trace hash proves a replay is exact), and the
 * last few are kept for the failure report.
 */

import { createHash, type Hash } from "node:crypto";

export class TraceLog {
  private readonly hash: Hash = createHash("sha256");
  /** Ring buffer of the last `capacity` lines. */
  private readonly recent: string[] = [];
  private next = 0;

  constructor(private readonly capacity: number) {}

  add(line: string): void {
    this.hash.update(line);
    this.hash.update("\n");
    if (this.recent.length < this.capacity) this.recent.push(line);
    else this.recent[this.next] = line;
    this.next = (this.next + 1) % this.capacity;
  }

  /** The last lines, oldest first. */
  tail(): string[] {
    return this.recent.length < this.capacity ? [...this.recent] : [...this.recent.slice(this.next), ...this.recent.slice(0, this.next)];
  }

  /** Ends the trace: call once. */
  digest(): string {
    return this.hash.digest("hex");
  }
}

/**
 * The simulator's clock: a binary min-heap of events ordered by (virtual time, sequence number).
 * The sequence number is assigned at insertion, so two events at the same virtual time run in the
 * order they were scheduled: the heap never compares anything the PRNG did not decide.
 */

import { invariant } from "../errors.js";

export interface Scheduled<T> {
  readonly time: number;
  readonly sequence: number;
  readonly event: T;
}

export class EventHeap<T> {
  private readonly items: Scheduled<T>[] = [];
  private nextSequence = 0;

  /** Invariant: items.length <= capacity (STYLE.md section 3: every queue has a bound). */
  constructor(private readonly capacity: number) {}

  get size(): number {
    return this.items.length;
  }

  push(time: number, event: T): void {
    invariant(Number.isFinite(time) && time >= 0, `event time ${time} is not a non-negative number`);
    invariant(this.items.length < this.capacity, `the event heap is full (${this.capacity} events)`);
    const item: Scheduled<T> = { time, sequence: this.nextSequence++, event };
    const items = this.items;
    items.push(item);
    let i = items.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(item, items[parent]!)) break;
      items[i] = items[parent]!;
      i = parent;
    }
    items[i] = item;
  }

  peek(): Scheduled<T> | undefined {
    return this.items[0];
  }

  pop(): Scheduled<T> | undefined {
    const items = this.items;
    const top = items[0];
    if (top === undefined) return undefined;
    const last = items.pop()!;
    if (items.length === 0) return top;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= items.length) break;
      const right = left + 1;
      const child = right < items.length && before(items[right]!, items[left]!) ? right : left;
      if (!before(items[child]!, last)) break;
      items[i] = items[child]!;
      i = child;
    }
    items[i] = last;
    return top;
  }
}

function before<T>(a: Scheduled<T>, b: Scheduled<T>): boolean {
  return a.time < b.time || (a.time === b.time && a.sequence < b.sequence);
}

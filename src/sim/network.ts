/**
 * The simulated network: per directed link delay, loss, duplication and reordering, plus
 * partitions (sets of blocked directed links) and clogs (a link made very slow for a while).
 * It decides when each message arrives; the simulator turns that into delivery events.
 */

import type { Message } from "../consensus/types.js";
import { NODE_IDS, linkKey, type LinkParams } from "./params.js";
import type { RandomStream } from "./random-streams.js";

export const PartitionKind = {
  ISOLATE: "isolate",
  MAJORITY_MINORITY: "majority-minority",
  BRIDGE: "bridge",
  RING: "ring",
  ASYMMETRIC: "asymmetric",
} as const;
export type PartitionKind = (typeof PartitionKind)[keyof typeof PartitionKind];

export class SimNetwork {
  /** Directed links that drop everything. */
  private blocked = new Set<number>();
  /** Directed link -> extra delay while clogged. */
  private readonly clogs = new Map<number, number>();
  /** Directed link -> the arrival time of its last in-order message (links are FIFO unless a message is reordered). */
  private readonly lastArrival = new Map<number, number>();
  /** After healing for the liveness phase: no loss, no duplicates. */
  private calm = false;

  constructor(
    private readonly links: ReadonlyMap<number, LinkParams>,
    private readonly random: RandomStream,
  ) {}

  isBlocked(from: number, to: number): boolean {
    return this.blocked.has(linkKey(from, to));
  }

  /** The arrival times of `message` (none when lost, two when duplicated). */
  arrivals(message: Message, now: number): number[] {
    const key = linkKey(message.from, message.to);
    if (this.blocked.has(key)) return [];
    const link = this.links.get(key)!;
    if (!this.calm && this.random.chance(link.lossProbability)) return [];
    const copies = !this.calm && this.random.chance(link.duplicateProbability) ? 2 : 1;
    const times: number[] = [];
    for (let i = 0; i < copies; i++) {
      let at = now + this.random.between(link.delayMin, link.delayMax) + (this.clogs.get(key) ?? 0);
      if (this.calm || !this.random.chance(link.reorderProbability)) {
        at = Math.max(at, this.lastArrival.get(key) ?? 0);
        this.lastArrival.set(key, at);
      }
      times.push(at);
    }
    return times;
  }

  /** Replaces any partition with a new one of `kind`; returns a description for the trace. */
  partition(kind: PartitionKind): string {
    const ids = [...NODE_IDS];
    shuffle(ids, this.random);
    const blocked = new Set<number>();
    const cut = (a: readonly number[], b: readonly number[]) => {
      for (const x of a) {
        for (const y of b) {
          if (x === y) continue;
          blocked.add(linkKey(x, y));
          blocked.add(linkKey(y, x));
        }
      }
    };
    let description: string;
    switch (kind) {
      case PartitionKind.ISOLATE:
        cut([ids[0]!], ids.slice(1));
        description = `isolate ${ids[0]}`;
        break;
      case PartitionKind.MAJORITY_MINORITY: {
        const size = this.random.between(1, 2);
        cut(ids.slice(0, size), ids.slice(size));
        description = `split ${ids.slice(0, size).join(",")} | ${ids.slice(size).join(",")}`;
        break;
      }
      case PartitionKind.BRIDGE:
        // ids[0] sees both sides; the sides do not see each other.
        cut(ids.slice(1, 3), ids.slice(3));
        description = `bridge ${ids[0]} between ${ids.slice(1, 3).join(",")} and ${ids.slice(3).join(",")}`;
        break;
      case PartitionKind.RING:
        // Each node sees its two ring neighbours: a majority of five, no two the same.
        for (let i = 0; i < ids.length; i++) {
          for (let j = 0; j < ids.length; j++) {
            const distance = Math.min((i - j + ids.length) % ids.length, (j - i + ids.length) % ids.length);
            if (distance > 1) blocked.add(linkKey(ids[i]!, ids[j]!));
          }
        }
        description = `ring ${ids.join("-")}`;
        break;
      case PartitionKind.ASYMMETRIC: {
        const outbound = this.random.chance(0.5);
        for (const y of ids.slice(1)) blocked.add(outbound ? linkKey(ids[0]!, y) : linkKey(y, ids[0]!));
        description = `asymmetric ${ids[0]} ${outbound ? "cannot send" : "cannot receive"}`;
        break;
      }
    }
    this.blocked = blocked;
    return description;
  }

  /** Replaces any partition with one that cuts `node` off from every other node. */
  isolate(node: number): string {
    const blocked = new Set<number>();
    for (const other of NODE_IDS) {
      if (other === node) continue;
      blocked.add(linkKey(node, other));
      blocked.add(linkKey(other, node));
    }
    this.blocked = blocked;
    return `isolate ${node}`;
  }

  clog(from: number, to: number, extraDelay: number): void {
    this.clogs.set(linkKey(from, to), extraDelay);
  }

  unclog(from: number, to: number): void {
    this.clogs.delete(linkKey(from, to));
  }

  healPartition(): void {
    this.blocked = new Set();
  }

  /** Everything delivered from now on, in order, without loss: the liveness phase. */
  healAll(): void {
    this.blocked = new Set();
    this.clogs.clear();
    this.calm = true;
  }
}

function shuffle<T>(items: T[], random: RandomStream): void {
  for (let i = items.length - 1; i > 0; i--) {
    const j = random.nextBelow(i + 1);
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
}

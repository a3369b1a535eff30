/**
 * Independent PRNG streams derived from one seed. Each concern (fault rates, network, disk,
 * faults, clients, each core's election timer) draws from its own stream, so adding a draw in one
 * place does not reshuffle every other decision of the same seed.
 */

import { Xoshiro128StarStar, type Prng } from "../consensus/prng.js";

/** A stream with the helpers the simulator needs; never Math.random. */
export class RandomStream implements Prng {
  private readonly prng: Xoshiro128StarStar;

  constructor(seed: number, stream: number) {
    this.prng = new Xoshiro128StarStar(mix(seed, stream));
  }

  nextUint32(): number {
    return this.prng.nextUint32();
  }

  nextBelow(bound: number): number {
    return this.prng.nextBelow(bound);
  }

  /** Uniform in [0, 1). */
  fraction(): number {
    return this.prng.nextUint32() / 2 ** 32;
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return p > 0 && this.fraction() < p;
  }

  /** Uniform integer in [min, max]. */
  between(min: number, max: number): number {
    return min + this.prng.nextBelow(max - min + 1);
  }

  pick<T>(items: readonly T[]): T {
    return items[this.prng.nextBelow(items.length)]!;
  }

  /** With probability `enabled` a rate in [0, max), else 0 (swarm testing: some seeds turn a fault off). */
  swarm(enabled: number, max: number): number {
    return this.chance(enabled) ? this.fraction() * max : 0;
  }
}

/** Stream numbers; a new concern takes a new number. */
export const Stream = {
  PARAMS: 1,
  NETWORK: 2,
  DISK: 3,
  FAULTS: 4,
  CLIENTS: 5,
  CRASH: 6,
  /** Targeted nemeses (strikes). */
  STRIKES: 7,
  /** Core election timers: CORE + node id * 1000 + incarnation. */
  CORE: 100,
} as const;

/** A 32-bit hash of (seed, stream): nearby inputs give unrelated generator states. */
function mix(seed: number, stream: number): number {
  let h = Math.imul((seed >>> 0) ^ 0x9e3779b9, 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13) ^ Math.imul(stream >>> 0, 0xc2b2ae35), 0x27d4eb2f) >>> 0;
  h = Math.imul(h ^ (h >>> 16) ^ Math.floor(seed / 2 ** 32), 0x165667b1) >>> 0;
  return (h ^ (h >>> 15)) >>> 0;
}

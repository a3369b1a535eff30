/**
 * A small deterministic PRNG: xoshiro128** (Blackman and Vigna), seeded through splitmix32.
 * The consensus core takes one as an argument (STYLE.md section 1): the same seed gives the same
 * election timeouts, so a simulator run or a transcript replays exactly. Not for cryptography.
 */

/** The randomness the core needs; the simulator drives the same interface. */
export interface Prng {
  /** A uniformly distributed unsigned 32-bit integer. */
  nextUint32(): number;
  /** A uniformly distributed integer in [0, bound); `bound` is a positive safe integer up to 2^32. */
  nextBelow(bound: number): number;
}

/** One step of splitmix32: spreads a seed so that nearby seeds give unrelated states. */
function splitmix32(state: number): { state: number; value: number } {
  const next = (state + 0x9e3779b9) >>> 0;
  let z = next;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  z = (z ^ (z >>> 16)) >>> 0;
  return { state: next, value: z };
}

function rotateLeft(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

export class Xoshiro128StarStar implements Prng {
  /** Invariant: the four words are unsigned 32-bit and not all zero (the generator would stay at zero). */
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /** Seeds from any 32-bit number; equal seeds give equal sequences. */
  constructor(seed: number) {
    if (!Number.isSafeInteger(seed)) throw new RangeError(`PRNG seed must be a safe integer, got ${seed}`);
    let state = seed >>> 0;
    const words: number[] = [];
    for (let i = 0; i < 4; i++) {
      const step = splitmix32(state);
      state = step.state;
      words.push(step.value);
    }
    this.s0 = words[0]!;
    this.s1 = words[1]!;
    this.s2 = words[2]!;
    this.s3 = words[3]!;
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  nextUint32(): number {
    const result = Math.imul(rotateLeft(Math.imul(this.s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.s1 << 9) >>> 0;
    this.s2 = (this.s2 ^ this.s0) >>> 0;
    this.s3 = (this.s3 ^ this.s1) >>> 0;
    this.s1 = (this.s1 ^ this.s2) >>> 0;
    this.s0 = (this.s0 ^ this.s3) >>> 0;
    this.s2 = (this.s2 ^ t) >>> 0;
    this.s3 = rotateLeft(this.s3, 11);
    return result;
  }

  nextBelow(bound: number): number {
    if (!Number.isSafeInteger(bound) || bound <= 0 || bound > 2 ** 32) {
      throw new RangeError(`PRNG bound must be an integer in [1, 2^32], got ${bound}`);
    }
    // Rejection sampling: drop the top sliver of the range that would bias small results.
    const limit = 2 ** 32 - (2 ** 32 % bound);
    for (;;) {
      const x = this.nextUint32();
      if (x < limit) return x % bound;
    }
  }
}

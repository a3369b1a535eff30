/**
 * What one seed runs with. Swarm testing (TESTING.md section 2): every seed draws its own fault
 * probabilities, and turns some faults off entirely, so that rare combinations get seeds of
 * their own instead of being drowned in a uniform mix.
 */

import { RandomStream, Stream } from "./random-streams.js";

export interface LinkParams {
  readonly lossProbability: number;
  readonly duplicateProbability: number;
  /** Probability that a message ignores the link's FIFO order (it may overtake earlier ones). */
  readonly reorderProbability: number;
  readonly delayMin: number;
  readonly delayMax: number;
}

/** Mean virtual milliseconds between two faults of each kind (Infinity: never). */
export interface FaultIntervals {
  readonly partition: number;
  readonly clog: number;
  readonly crash: number;
  readonly pause: number;
  readonly transfer: number;
  readonly membership: number;
}

/**
 * Targeted nemeses (Jepsen's "partition the leader", TigerBeetle VOPR's crash timing): faults
 * aimed at the moments where Raft's subtle rules matter, which random faults almost never hit.
 * Each is a probability per occasion; swarm testing turns each off for some seeds.
 */
export interface StrikeParams {
  /** A node just became leader: strike it before its no-op can commit (figure 8's first half). */
  readonly onElection: number;
  /** A leader's commit index just advanced for the first time in its term: strike it at once. */
  readonly onFirstCommit: number;
  /** A node just granted a vote: crash it before its disk may have caught up, and restart it soon. */
  readonly onVoteGranted: number;
  /** A leader strike isolates the node (in-flight messages to and from it are lost) rather than crashing it. */
  readonly isolateProbability: number;
  /** Upper bound of the quick restart after a strike crash, in ticks of the node. */
  readonly restartTicksMax: number;
}

export interface SimParams {
  readonly seed: number;
  /** Voters at the start: nodes 1..voters. The other ids up to SIM_NODE_IDS_MAX are spare machines. */
  readonly voters: 3 | 5;
  readonly electionTicks: number;
  readonly heartbeatTicks: number;
  readonly entriesPerRpcMax: number;
  /** Virtual milliseconds per tick, per node (clock skew). */
  readonly tickPeriods: readonly number[];
  /** Per directed link, indexed from * 16 + to. */
  readonly links: ReadonlyMap<number, LinkParams>;
  readonly syncDelayMin: number;
  readonly syncDelayMax: number;
  /** MemoryFileSystem.crash: each pending write survives with this probability... */
  readonly crashKeepProbability: number;
  /** ...and one surviving write is torn with this one. */
  readonly crashTearProbability: number;
  readonly faults: FaultIntervals;
  readonly proposeInterval: number;
  readonly readInterval: number;
  /** Probability that a proposed payload is large (tens of KiB), which makes the log seal segments. */
  readonly bigPayloadProbability: number;
  /** Virtual milliseconds of the safety phase (faults on). */
  readonly safetyDuration: number;
  readonly strikes: StrikeParams;
}

export const NODE_IDS = [1, 2, 3, 4, 5] as const;

export function linkKey(from: number, to: number): number {
  return from * 16 + to;
}

/** How often a fault fires: `enabled` of seeds have it at all, then a mean interval in [min, min * 8). */
function interval(random: RandomStream, enabled: number, min: number): number {
  return random.chance(enabled) ? min * (1 + random.fraction() * 7) : Infinity;
}

export function drawParams(seed: number, voters: 3 | 5, safetyDuration: number): SimParams {
  const random = new RandomStream(seed, Stream.PARAMS);
  const electionTicks = random.between(6, 14);
  const heartbeatTicks = random.between(1, Math.max(1, Math.floor(electionTicks / 4)));
  const skew = random.swarm(0.6, 0.3);
  // Quarter milliseconds: sums of them are exact in floating point, so traces show clean times.
  const tickPeriods = NODE_IDS.map(() => Math.round(10 * (1 + (random.fraction() * 2 - 1) * skew) * 4) / 4);
  const loss = random.swarm(0.6, 0.25);
  const duplicate = random.swarm(0.4, 0.15);
  const reorder = random.swarm(0.5, 0.3);
  const delayMax = random.between(2, 30);
  const links = new Map<number, LinkParams>();
  for (const from of NODE_IDS) {
    for (const to of NODE_IDS) {
      if (from === to) continue;
      // Links differ: some are slower or lossier than others.
      const factor = 0.5 + random.fraction();
      links.set(linkKey(from, to), {
        lossProbability: Math.min(0.5, loss * factor),
        duplicateProbability: duplicate * factor,
        reorderProbability: reorder,
        delayMin: 1,
        delayMax: Math.max(2, Math.round(delayMax * factor)),
      });
    }
  }
  const syncDelayMax = random.between(1, 25);
  return {
    seed,
    voters,
    electionTicks,
    heartbeatTicks,
    entriesPerRpcMax: random.pick([1, 4, 16, 64, 256]),
    tickPeriods,
    links,
    syncDelayMin: 1,
    syncDelayMax,
    crashKeepProbability: random.fraction(),
    crashTearProbability: random.fraction(),
    faults: {
      partition: interval(random, 0.7, 400),
      clog: interval(random, 0.4, 500),
      crash: interval(random, 0.7, 500),
      pause: interval(random, 0.5, 600),
      transfer: interval(random, 0.5, 400),
      membership: interval(random, 0.6, 300),
    },
    proposeInterval: random.between(5, 50),
    readInterval: random.chance(0.8) ? random.between(5, 60) : Infinity,
    // Rare, because MemoryFileSystem copies a whole file on every sync: a few large payloads are
    // enough to make some seeds fill a 1 MiB segment and seal it.
    bigPayloadProbability: random.swarm(0.25, 0.01),
    safetyDuration,
    // Drawn last, so that every other parameter of a seed is what it was before strikes existed.
    strikes: {
      onElection: random.swarm(0.6, 0.8),
      onFirstCommit: random.swarm(0.6, 0.8),
      onVoteGranted: random.swarm(0.5, 0.6),
      isolateProbability: random.fraction(),
      restartTicksMax: random.between(1, 4) * electionTicks,
    },
  };
}

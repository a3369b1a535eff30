/**
 * Seeded random runs of the in-memory network: ticks, proposals, partitions, restarts, leadership
 * transfers and membership changes in random order, with the safety properties checked after every
 * step. Not the full simulator (TESTING.md section 2); a quick net under the transcripts. A failure
 * names the seed that reproduces it.
 */

import { describe, expect, it } from "vitest";
import { RecordKind, type LogEntry, type NodeId } from "../../src/log/types.js";
import { Xoshiro128StarStar } from "../../src/consensus/prng.js";
import type { MembershipChange } from "../../src/consensus/types.js";
import { DEFAULT_NODE_OPTIONS, Network, votersUpTo } from "./network.js";

const NODES = 5;
const STEPS = 600;
const SEEDS = 40;

function sameEntry(a: LogEntry, b: LogEntry): boolean {
  return a.index === b.index && a.term === b.term && a.kind === b.kind && a.payload.join(",") === b.payload.join(",");
}

function runSeed(seed: number): { terms: number; commit: number; config: { voters: readonly NodeId[]; learners: readonly NodeId[] } } {
  const prng = new Xoshiro128StarStar(seed);
  const network = new Network();
  // Nodes 1..4 are voters; node 5 starts outside and may be added as a learner and promoted.
  for (let id = 1; id <= NODES; id++) {
    network.addNode(id as NodeId, id <= 4 ? votersUpTo(4) : { voters: [], learners: [] }, {
      ...DEFAULT_NODE_OPTIONS,
      electionTicks: 5,
      entriesPerRpcMax: 1 + prng.nextBelow(4),
      inflightMessagesMax: 1 + prng.nextBelow(4),
      catchUpLagEntries: seed % 2 === 0 ? undefined : 2 + prng.nextBelow(5),
    });
  }
  const leaderOfTerm = new Map<number, NodeId>();
  const ids = network.ids();
  const pick = (): NodeId => ids[prng.nextBelow(ids.length)]!;
  let proposals = 0;

  for (let step = 0; step < STEPS; step++) {
    const roll = prng.nextBelow(100);
    if (roll < 45) {
      network.tick(pick(), 1);
    } else if (roll < 65) {
      const id = pick();
      network.with(id, (core) => core.propose([{ kind: RecordKind.EVENTS, tenant: "", payload: new Uint8Array([seed & 0xff, ++proposals & 0xff, proposals >> 8]) }]));
    } else if (roll < 72) {
      network.isolate(pick());
    } else if (roll < 80) {
      network.heal();
    } else if (roll < 83) {
      network.restart(pick());
    } else if (roll < 85) {
      network.with(pick(), (core) => core.transferLeader(pick()));
    } else if (roll < 88) {
      const types: Array<MembershipChange["type"]> = ["ADD_LEARNER", "PROMOTE_LEARNER", "REMOVE_NODE"];
      const change = { type: types[prng.nextBelow(3)]!, node: pick() } as MembershipChange;
      network.with(pick(), (core) => core.changeMembership(change));
    } else if (roll < 90) {
      network.with(pick(), (core) => core.readIndex(step));
    }
    // One round of Ready handling and delivery for every node, so messages interleave with faults.
    for (const id of ids) network.processReady(id);
    for (const id of ids) if (prng.nextBelow(4) !== 0) network.deliver(id);
    checkSafety(network, leaderOfTerm, seed, step);
    network.output = [];
  }
  // Liveness, loosely: after healing and enough ticks, every node in the configuration agrees.
  network.heal();
  for (let round = 0; round < 200; round++) {
    for (const id of ids) network.tick(id, 1);
    network.stabilize();
    network.output = [];
    checkSafety(network, leaderOfTerm, seed, STEPS + round);
  }
  const leaders = ids.filter((id) => network.node(id).core.status().role === "LEADER");
  expect(leaders.length, `seed ${seed}: leaders after healing`).toBeGreaterThanOrEqual(1);
  const leader = network.node(leaders[leaders.length - 1]!).core.status();
  // Everyone in the configuration has applied everything the leader committed.
  for (const id of [...leader.config.voters, ...leader.config.learners]) {
    expect(network.node(id).core.status().applied, `seed ${seed}: node ${id} applied`).toBe(leader.commit);
  }
  return { terms: leaderOfTerm.size, commit: leader.commit, config: leader.config };
}

function checkSafety(network: Network, leaderOfTerm: Map<number, NodeId>, seed: number, step: number): void {
  const where = `seed ${seed} step ${step}`;
  const ids = network.ids();
  for (const id of ids) {
    const status = network.node(id).core.status();
    if (status.role !== "LEADER") continue;
    const known = leaderOfTerm.get(status.term);
    if (known !== undefined && known !== id) throw new Error(`${where}: two leaders in term ${status.term}: ${known} and ${id}`);
    leaderOfTerm.set(status.term, id);
  }
  // State machine safety: applied sequences agree on their common prefix.
  for (let i = 0; i < ids.length; i++) {
    for (let j = i + 1; j < ids.length; j++) {
      const a = network.node(ids[i]!).applied;
      const b = network.node(ids[j]!).applied;
      const common = Math.min(a.length, b.length);
      for (let k = 0; k < common; k++) {
        if (!sameEntry(a[k]!, b[k]!)) throw new Error(`${where}: nodes ${ids[i]} and ${ids[j]} applied different entries at ${k + 1}`);
      }
    }
  }
  // Durable logs agree up to each pair's lower commit index.
  for (const id of ids) {
    const node = network.node(id);
    for (const other of ids) {
      if (other === id) continue;
      const peer = network.node(other);
      const upTo = Math.min(node.storage.hardState.commit, peer.storage.hardState.commit);
      for (let index = 1; index <= upTo; index++) {
        const x = node.storage.entries[index - 1];
        const y = peer.storage.entries[index - 1];
        if (x === undefined || y === undefined || !sameEntry(x, y)) throw new Error(`${where}: committed logs of ${id} and ${other} differ at ${index}`);
      }
    }
  }
}

describe("random network runs", () => {
  it(`keeps election safety and state machine safety over ${SEEDS} seeds`, () => {
    const summaries = [];
    for (let seed = 1; seed <= SEEDS; seed++) {
      try {
        summaries.push(runSeed(seed));
      } catch (error) {
        throw new Error(`seed ${seed}: ${String(error)}`, { cause: error });
      }
    }
    if (process.env["RANDOM_NETWORK_SUMMARY"] === "1") console.log(summaries.map((s) => JSON.stringify(s)).join("\n"));
    // The runs must exercise something: elections in many terms and commits everywhere.
    expect(summaries.every((s) => s.commit > 5)).toBe(true);
    expect(summaries.some((s) => s.terms > 3)).toBe(true);
  });
});

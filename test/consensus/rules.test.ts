/**
 * Focused tests of the rules that are easy to get subtly wrong: the vote up-to-date check, the
 * commit rule, the in-flight window, fast backtracking, the term index, fetches, restarts.
 */

import { describe, expect, it } from "vitest";
import { RecordKind, type LogEntry, type LogIndex, type NodeId, type Term } from "../../src/log/types.js";
import { RaftLog } from "../../src/consensus/raft-log.js";
import { TermIndex } from "../../src/consensus/term-index.js";
import { Inflights, Progress, ProgressState } from "../../src/consensus/progress.js";
import { Xoshiro128StarStar } from "../../src/consensus/prng.js";
import { RaftCore, nextAfterRejection } from "../../src/consensus/raft.js";
import { decodeConfig, encodeConfig, membershipConfig, quorumMatchIndex } from "../../src/consensus/membership.js";
import type { AppendResponse, Message } from "../../src/consensus/types.js";
import { DEFAULT_NODE_OPTIONS, Network, votersUpTo } from "./network.js";

const idx = (n: number) => n as LogIndex;
const trm = (n: number) => n as Term;
const nid = (n: number) => n as NodeId;

function entry(t: number, i: number, payload = "x"): LogEntry {
  return { term: trm(t), index: idx(i), kind: RecordKind.EVENTS, tenant: "", payload: new TextEncoder().encode(payload) };
}

/** A RaftLog holding entries with the given terms at indexes 1..n, all durable. */
function logWithTerms(terms: readonly number[], committed = 0): RaftLog {
  const log = new RaftLog({ baseIndex: idx(0), baseTerm: trm(0), lastIndex: idx(0), termRuns: [] }, idx(0), idx(0));
  log.append(terms.map((t, i) => entry(t, i + 1)));
  const last = terms.length;
  if (last > 0) log.stableTo(idx(last), trm(terms[last - 1]!));
  log.commitTo(idx(committed));
  return log;
}

/** A core for node `id` of voters 1..voters, restarted with the given durable log terms and commit. */
function coreWithLog(id: number, terms: readonly number[], commit: number, voters = 3, recoverUntil = 0): RaftCore {
  const runs: Array<{ firstIndex: LogIndex; term: Term }> = [];
  terms.forEach((t, i) => {
    if (runs[runs.length - 1]?.term !== t) runs.push({ firstIndex: idx(i + 1), term: trm(t) });
  });
  const lastTerm = terms[terms.length - 1] ?? 0;
  return new RaftCore(
    {
      id: nid(id), electionTicks: 10, heartbeatTicks: 1, preVote: false, checkQuorum: false,
      entriesPerRpcMax: 100, appendRpcBytesMax: 1 << 20, inflightMessagesMax: 8, inflightBytesMax: 1 << 20,
      prng: new Xoshiro128StarStar(id),
    },
    {
      hardState: { term: trm(lastTerm), vote: nid(0), commit: idx(commit) },
      log: { baseIndex: idx(0), baseTerm: trm(0), lastIndex: idx(terms.length), termRuns: runs },
      membership: [{ index: idx(0), config: votersUpTo(voters) }],
      appliedIndex: idx(commit),
      recoverUntilIndex: idx(recoverUntil),
    },
  );
}

function electedCluster(size: number, options = DEFAULT_NODE_OPTIONS): Network {
  const network = new Network();
  for (let id = 1; id <= size; id++) network.addNode(nid(id), votersUpTo(size), options);
  network.with(nid(1), (core) => core.campaign());
  network.stabilize();
  expect(network.node(nid(1)).core.status().role).toBe("LEADER");
  return network;
}

describe("vote: the up-to-date check", () => {
  const log = logWithTerms([1, 1, 2]);
  it("grants to a later last term even with a shorter log", () => {
    expect(log.isUpToDate(idx(1), trm(3))).toBe(true);
  });
  it("refuses an earlier last term even with a longer log", () => {
    expect(log.isUpToDate(idx(10), trm(1))).toBe(false);
  });
  it("on equal last terms, grants to a log at least as long", () => {
    expect(log.isUpToDate(idx(3), trm(2))).toBe(true);
    expect(log.isUpToDate(idx(4), trm(2))).toBe(true);
    expect(log.isUpToDate(idx(2), trm(2))).toBe(false);
  });
  it("a voter grants one vote per term, and a node whose log is behind gets none", () => {
    const network = new Network();
    network.addNode(nid(1), votersUpTo(3));
    const core = network.node(nid(1)).core;
    const vote = (from: number, lastIndex: number, lastTerm: number): Message => ({
      type: "VOTE", from: nid(from), to: nid(1), term: trm(5), lastLogIndex: idx(lastIndex), lastLogTerm: trm(lastTerm), leaderTransfer: false,
    });
    core.step(vote(2, 0, 0));
    core.step(vote(3, 0, 0));
    const ready = core.ready();
    expect(ready.hardState).toEqual({ term: 5, vote: 2, commit: 0 });
    expect(ready.messages.map((m) => (m.type === "VOTE_RESPONSE" ? [m.to, m.granted] : []))).toEqual([[2, true], [3, false]]);
  });
});

describe("rejoining with an empty log", () => {
  it("grants no vote and never campaigns until it holds the index its peers held, then takes its leader as its vote", () => {
    // Node 3 lost its disk; its peers held entries up to 4 when it came back.
    const core = coreWithLog(3, [], 0, 3, 4);
    const vote: Message = { type: "VOTE", from: nid(2), to: nid(3), term: trm(5), lastLogIndex: idx(0), lastLogTerm: trm(0), leaderTransfer: false };
    core.step(vote);
    let ready = core.ready();
    expect(ready.messages).toEqual([expect.objectContaining({ type: "VOTE_RESPONSE", to: 2, granted: false })]);
    expect(ready.hardState?.vote ?? 0).toBe(0);
    core.advance(ready);
    for (let t = 0; t < 40; t++) core.tick();
    expect(core.status().role).toBe("FOLLOWER"); // no campaign
    expect(core.hasReady() ? core.ready().messages.filter((m) => m.type === "VOTE" || m.type === "PRE_VOTE") : []).toEqual([]);
    // Node 1 leads term 6 and brings it up to index 4.
    const entries = [1, 2, 3, 4].map((i) => entry(6, i));
    core.step({ type: "APPEND", from: nid(1), to: nid(3), term: trm(6), prevIndex: idx(0), prevTerm: trm(0), entries, commit: idx(4) });
    ready = core.ready();
    core.advance(ready);
    // Recovered: it votes for its leader in this term, so it cannot vote for anyone else in it.
    expect(core.status()).toMatchObject({ term: 6, vote: 1, commit: 4 });
    core.step({ ...vote, term: trm(6), from: nid(2), lastLogIndex: idx(4), lastLogTerm: trm(6) });
    expect(core.ready().messages).toContainEqual(expect.objectContaining({ type: "VOTE_RESPONSE", to: 2, granted: false }));
  });
});

describe("a follower that lost its log", () => {
  it("is probed again from its real end, even below the match it once acknowledged", () => {
    const core = coreWithLog(1, [1, 1, 1, 1], 4);
    core.campaign();
    core.step({ type: "VOTE_RESPONSE", from: nid(2), to: nid(1), term: trm(2), granted: true });
    core.advance(core.ready()); // the no-op (index 5) is durable
    core.step({ type: "APPEND_RESPONSE", from: nid(2), to: nid(1), term: trm(2), success: true, matchIndex: idx(5) });
    expect(core.status().progress.find((p) => p.id === 2)!.match).toBe(5);
    core.advance(core.ready());
    // Node 2 comes back with an empty data directory: it rejects what follows its old match.
    core.step({ type: "APPEND_RESPONSE", from: nid(2), to: nid(1), term: trm(2), success: false, rejectedPrevIndex: idx(5), conflictTerm: trm(0), conflictIndex: idx(1) });
    expect(core.status().progress.find((p) => p.id === 2)!.match).toBe(0);
    // Entries 1..4 are on disk only: the leader asks its driver to load them, from index 1.
    const ready = core.ready();
    const appends = ready.messages.filter((m): m is Extract<Message, { type: "APPEND" }> => m.type === "APPEND" && m.to === 2);
    expect([...appends.map((m) => m.prevIndex + 1), ...ready.fetches.map((f) => f.from)]).toContain(1);
    expect(core.status().commit).toBe(5); // the commit index never moves back
  });

  it("says so on a heartbeat whose commit it does not hold, so an idle leader probes it (jepsen-lite bug 2b)", () => {
    const follower = coreWithLog(3, [], 0);
    follower.step({ type: "HEARTBEAT", from: nid(1), to: nid(3), term: trm(2), commit: idx(5), readRound: 0 });
    const sent = follower.ready().messages.filter((m) => m.to === 1);
    expect(sent).toContainEqual(expect.objectContaining({ type: "HEARTBEAT_RESPONSE" }));
    expect(sent).toContainEqual(expect.objectContaining({ type: "APPEND_RESPONSE", success: false, conflictTerm: 0, conflictIndex: 1 }));
    // A follower holding what the heartbeat commits answers with the heartbeat response only.
    const whole = coreWithLog(3, [1, 1, 1, 1, 1], 0);
    whole.step({ type: "HEARTBEAT", from: nid(1), to: nid(3), term: trm(2), commit: idx(5), readRound: 0 });
    expect(whole.ready().messages.filter((m) => m.type === "APPEND_RESPONSE")).toEqual([]);
    expect(whole.status().commit).toBe(5);
  });
});

describe("commit rule", () => {
  it("counts a quorum of match indexes", () => {
    const config = membershipConfig([nid(1), nid(2), nid(3), nid(4), nid(5)]);
    const matches = new Map([[1, 9], [2, 7], [3, 5], [4, 3], [5, 1]]);
    expect(quorumMatchIndex(config, (id) => idx(matches.get(id)!))).toBe(5);
  });

  it("a leader does not commit an earlier-term entry held by a majority (figure 8), only with one of its term", () => {
    // Node 1 restarts at term 1 with 1/1 (committed) and 1/2 (not), and wins term 2.
    const core = coreWithLog(1, [1, 1], 1);
    core.campaign();
    core.step({ type: "VOTE_RESPONSE", from: nid(2), to: nid(1), term: trm(2), granted: true });
    expect(core.status().role).toBe("LEADER");
    const ready = core.ready();
    expect(ready.entries.map((e) => [e.term, e.index, e.kind])).toEqual([[2, 3, RecordKind.NOOP]]);
    core.advance(ready); // the no-op is durable on the leader
    // Node 2 now holds 1/2: with the leader that is a majority of three, but 1/2 has term 1.
    core.step({ type: "APPEND_RESPONSE", from: nid(2), to: nid(1), term: trm(2), success: true, matchIndex: idx(2) });
    expect(core.status().commit).toBe(1);
    // Once 2/3 is on a majority, it commits, and 1/2 with it.
    core.step({ type: "APPEND_RESPONSE", from: nid(2), to: nid(1), term: trm(2), success: true, matchIndex: idx(3) });
    expect(core.status().commit).toBe(3);
  });

  it("a leader counts its own entries only once they are durable", () => {
    const core = coreWithLog(1, [], 0);
    core.campaign();
    core.step({ type: "VOTE_RESPONSE", from: nid(2), to: nid(1), term: trm(1), granted: true });
    core.step({ type: "APPEND_RESPONSE", from: nid(2), to: nid(1), term: trm(1), success: true, matchIndex: idx(1) });
    core.step({ type: "APPEND_RESPONSE", from: nid(3), to: nid(1), term: trm(1), success: true, matchIndex: idx(1) });
    expect(core.status().commit).toBe(1); // two followers are a quorum without the leader
    const single = coreWithLog(1, [], 0, 1);
    single.campaign();
    expect(single.status().role).toBe("LEADER");
    expect(single.status().commit).toBe(0); // alone, it must first persist its no-op
    single.advance(single.ready());
    expect(single.status().commit).toBe(1);
  });
});

describe("in-flight window", () => {
  it("is bounded by message count", () => {
    const inflights = new Inflights(3, 1_000_000);
    inflights.add(idx(1), 10);
    inflights.add(idx(2), 10);
    expect(inflights.full()).toBe(false);
    inflights.add(idx(3), 10);
    expect(inflights.full()).toBe(true);
    expect(() => inflights.add(idx(4), 10)).toThrow(/full in-flight window/);
    inflights.freeUpTo(idx(2));
    expect(inflights.count).toBe(1);
    expect(inflights.bytes).toBe(10);
    expect(inflights.full()).toBe(false);
  });

  it("is bounded by bytes, but lets one over-size message into an empty window", () => {
    const inflights = new Inflights(100, 50);
    inflights.add(idx(1), 80);
    expect(inflights.full()).toBe(true);
    inflights.freeUpTo(idx(1));
    inflights.add(idx(2), 30);
    expect(inflights.full()).toBe(false);
    inflights.add(idx(3), 30);
    expect(inflights.full()).toBe(true);
  });

  it("caps the pipeline to a follower that does not answer, and max_entries_per_rpc caps each message", () => {
    const options = { ...DEFAULT_NODE_OPTIONS, inflightMessagesMax: 4, entriesPerRpcMax: 2 };
    const network = electedCluster(3, options);
    network.isolate(nid(3));
    network.drop(nid(2), nid(1)); // node 2 receives but its answers are lost
    for (let i = 0; i < 30; i++) {
      const result = network.with(nid(1), (core) => core.propose([{ kind: RecordKind.EVENTS, tenant: "", payload: new Uint8Array([i + 1]) }]));
      expect(result.ok).toBe(true);
    }
    const ready = network.node(nid(1)).core.ready();
    const appends = ready.messages.filter((m): m is Extract<Message, { type: "APPEND" }> => m.type === "APPEND");
    for (const to of [2, 3]) {
      const toPeer = appends.filter((m) => m.to === to);
      expect(toPeer.length).toBe(4);
      for (const m of toPeer) expect(m.entries.length).toBeLessThanOrEqual(2);
    }
    const progress = network.node(nid(1)).core.status().progress.find((p) => p.id === 2)!;
    expect(progress.state).toBe(ProgressState.REPLICATE);
    expect(progress.inflightMessages).toBe(4);
  });
});

describe("fast backtracking", () => {
  const reject = (rejectedPrevIndex: number, conflictTerm: number, conflictIndex: number): AppendResponse & { success: false } => ({
    type: "APPEND_RESPONSE", from: nid(2), to: nid(1), term: trm(9), success: false,
    rejectedPrevIndex: idx(rejectedPrevIndex), conflictTerm: trm(conflictTerm), conflictIndex: idx(conflictIndex),
  });

  it("skips the follower's whole conflicting term when the leader does not have it", () => {
    // Leader: terms 1 1 1 4 4 5 5 6 6 6; follower: 1 1 1 2 2 2 3 3 3 3 (Raft paper figure 7, f).
    const leader = logWithTerms([1, 1, 1, 4, 4, 5, 5, 6, 6, 6]);
    expect(nextAfterRejection(leader, idx(0), reject(10, 3, 7))).toBe(7);
  });

  it("jumps past the leader's last entry of the conflict term when it has that term", () => {
    const leader = logWithTerms([1, 1, 1, 4, 4, 5, 5, 6, 6, 6]);
    // The follower holds 4 4 4 4 at 4..7; the leader's term 4 ends at 5.
    expect(nextAfterRejection(leader, idx(0), reject(7, 4, 4))).toBe(6);
  });

  it("a shorter follower log resumes right after its end", () => {
    const leader = logWithTerms([1, 1, 2, 2, 2]);
    expect(nextAfterRejection(leader, idx(0), reject(5, 0, 3))).toBe(3);
  });

  it("never goes below match + 1 or above the rejected index", () => {
    const leader = logWithTerms([1, 1, 2, 2, 2]);
    expect(nextAfterRejection(leader, idx(3), reject(5, 0, 1))).toBe(4);
    expect(nextAfterRejection(leader, idx(0), reject(2, 0, 9))).toBe(2);
  });

  it("a follower answers a mismatch with the first index of its conflicting term", () => {
    const network = new Network();
    network.addNode(nid(2), votersUpTo(3));
    const follower = network.node(nid(2)).core;
    follower.step({ type: "APPEND", from: nid(1), to: nid(2), term: trm(2), prevIndex: idx(0), prevTerm: trm(0), entries: [entry(1, 1), entry(2, 2), entry(2, 3), entry(2, 4)], commit: idx(1) });
    follower.advance(follower.ready());
    follower.step({ type: "APPEND", from: nid(3), to: nid(2), term: trm(3), prevIndex: idx(4), prevTerm: trm(3), entries: [], commit: idx(1) });
    const answer = follower.ready().messages.find((m) => m.to === 3);
    expect(answer).toMatchObject({ type: "APPEND_RESPONSE", success: false, rejectedPrevIndex: 4, conflictTerm: 2, conflictIndex: 2 });
  });
});

describe("truncation", () => {
  it("a follower never truncates at or below its commit index", () => {
    const log = logWithTerms([1, 1, 1], 2);
    expect(() => log.appendFromLeader([entry(2, 2)])).toThrow(/committed/);
  });

  it("a cut of entries already handed out is reported once, as TruncateFrom", () => {
    const network = new Network();
    network.addNode(nid(2), votersUpTo(3));
    const follower = network.node(nid(2)).core;
    follower.step({ type: "APPEND", from: nid(1), to: nid(2), term: trm(1), prevIndex: idx(0), prevTerm: trm(0), entries: [entry(1, 1), entry(1, 2), entry(1, 3)], commit: idx(1) });
    const first = follower.ready();
    // Before the driver acknowledges, a new leader overwrites index 2.
    follower.step({ type: "APPEND", from: nid(3), to: nid(2), term: trm(2), prevIndex: idx(1), prevTerm: trm(1), entries: [entry(2, 2)], commit: idx(1) });
    follower.advance(first);
    const second = follower.ready();
    expect(second.truncateFrom).toBe(2);
    expect(second.entries.map((e) => [e.term, e.index])).toEqual([[2, 2]]);
    follower.advance(second);
    expect(follower.status().lastIndex).toBe(2);
  });
});

describe("term index", () => {
  it("answers term lookups, first index of a term and last index of a term", () => {
    const terms = new TermIndex(idx(0), trm(0), idx(0), []);
    [1, 1, 3, 3, 3, 7].forEach((t, i) => terms.append(idx(i + 1), trm(t)));
    expect([0, 1, 2, 3, 4, 5, 6, 7].map((i) => terms.termAt(i))).toEqual([0, 1, 1, 3, 3, 3, 7, undefined]);
    expect(terms.firstIndexOfTermAt(idx(5))).toBe(3);
    expect(terms.lastIndexOfTerm(trm(3))).toBe(5);
    expect(terms.lastIndexOfTerm(trm(2))).toBeUndefined();
    terms.truncateFrom(idx(4));
    expect(terms.lastIndex).toBe(3);
    expect(terms.snapshotRuns()).toEqual([{ firstIndex: 1, term: 1 }, { firstIndex: 3, term: 3 }]);
  });

  it("refuses runs that do not describe the log", () => {
    expect(() => new TermIndex(idx(0), trm(0), idx(5), [{ firstIndex: idx(2), term: trm(1) }])).toThrow(/start the log/);
  });
});

describe("restart and fetch", () => {
  it("a restarted leader reloads entries it no longer holds from the driver, to apply and to replicate", () => {
    const network = electedCluster(3, { ...DEFAULT_NODE_OPTIONS, checkQuorum: false });
    network.isolate(nid(3));
    for (let i = 0; i < 5; i++) network.with(nid(1), (core) => core.propose([{ kind: RecordKind.EVENTS, tenant: "", payload: new Uint8Array([i + 1]) }]));
    network.stabilize();
    expect(network.node(nid(1)).core.status().commit).toBe(6);
    // Node 1 restarts with its projections at index 2; it holds no entries in memory.
    network.node(nid(1)).applied.length = 2;
    network.restart(nid(1));
    network.heal();
    network.with(nid(1), (core) => core.campaign());
    network.output = [];
    network.stabilize();
    const fetches = network.output.filter((line) => line.includes("Fetch:")).map((line) => line.trim());
    expect(fetches).toContain("Fetch: [3, 7)"); // to apply 3..6 again
    expect(fetches).toContain("Fetch: [2, 8)"); // to replicate to node 3, which has only 1/1
    expect(network.node(nid(1)).applied.map((e) => e.index)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(network.node(nid(3)).storage.entries.map((e) => e.index)).toEqual([1, 2, 3, 4, 5, 6, 7]);
  });
});

describe("membership encoding and PRNG", () => {
  it("round-trips a configuration", () => {
    const config = membershipConfig([nid(3), nid(1)], [nid(7)]);
    expect(decodeConfig(encodeConfig(config))).toEqual({ voters: [1, 3], learners: [7] });
  });

  it("the PRNG is deterministic per seed and stays in range", () => {
    const a = new Xoshiro128StarStar(42);
    const b = new Xoshiro128StarStar(42);
    const c = new Xoshiro128StarStar(43);
    const seqA = Array.from({ length: 8 }, () => a.nextUint32());
    expect(Array.from({ length: 8 }, () => b.nextUint32())).toEqual(seqA);
    expect(Array.from({ length: 8 }, () => c.nextUint32())).not.toEqual(seqA);
    for (let i = 0; i < 1000; i++) {
      const x = a.nextBelow(10);
      expect(x >= 0 && x < 10 && Number.isInteger(x)).toBe(true);
    }
  });

  it("election timeouts are randomized in [election, 2 * election)", () => {
    const network = new Network();
    network.addNode(nid(1), votersUpTo(3));
    const core: RaftCore = network.node(nid(1)).core;
    let ticks = 0;
    while (core.status().role === "FOLLOWER" && ticks < 100) {
      core.tick();
      ticks++;
    }
    expect(ticks).toBeGreaterThanOrEqual(10);
    expect(ticks).toBeLessThan(20);
  });
});

describe("progress", () => {
  it("a probe sends one message at a time; replicate pipelines", () => {
    const progress = new Progress(idx(5), 8, 1_000);
    expect(progress.isPaused()).toBe(false);
    progress.sentEntries(idx(6), 10, 2);
    expect(progress.isPaused()).toBe(true);
    progress.maybeUpdate(idx(6));
    progress.becomeReplicate();
    expect(progress.next).toBe(7);
    progress.sentEntries(idx(8), 10, 2);
    progress.sentEntries(idx(10), 10, 2);
    expect(progress.next).toBe(11);
    expect(progress.isPaused()).toBe(false);
  });
});

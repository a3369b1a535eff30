/**
 * The simulator's own parts: each oracle catches a hand-made violation, the simulator catches
 * bugs planted in the ports, the simulated disk loses what was in flight at a crash, and the event
 * heap orders by (time, sequence).
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { MemoryFileSystem } from "../../src/log/memory-fs.js";
import { EventHeap } from "../../src/sim/event-heap.js";
import { OracleName, Oracles, entryId, type EntryId } from "../../src/sim/oracles.js";
import { SimFileSystem } from "../../src/sim/sim-fs.js";
import { runSeed } from "../../src/sim/simulator.js";
import type { PlantedBugs } from "../../src/sim/sim-node.js";

const e = (term: number, text: string): EntryId => entryId({ term, kind: 2, tenant: "t", payload: Buffer.from(text) });

describe("each oracle catches a hand-made violation", () => {
  it("election safety: two leaders in one term", () => {
    const o = new Oracles();
    o.observeLeader(1, 5);
    o.observeLeader(1, 5);
    o.observeLeader(2, 6);
    expect(o.violation).toBeUndefined();
    o.observeLeader(3, 5);
    expect(o.violation?.oracle).toBe(OracleName.ELECTION_SAFETY);
  });

  it("log matching: same index and term, different entry", () => {
    const o = new Oracles();
    o.observeEntry(1, [e(1, "a")], 1);
    o.observeEntry(2, [e(1, "a")], 1);
    expect(o.violation).toBeUndefined();
    o.observeEntry(3, [e(1, "b")], 1);
    expect(o.violation?.oracle).toBe(OracleName.LOG_MATCHING);
  });

  it("log matching: same entry at the same index after a different predecessor", () => {
    const o = new Oracles();
    o.observeEntry(1, [e(1, "a"), e(3, "c")], 2);
    o.observeEntry(2, [e(2, "b"), e(3, "c")], 2);
    expect(o.violation?.oracle).toBe(OracleName.LOG_MATCHING);
  });

  it("state machine safety: a different entry committed or applied at a committed index", () => {
    const o = new Oracles();
    o.observeCommit(1, [e(1, "a"), e(1, "b")], 2, 1);
    o.observeApply(1, 0, 1, e(1, "a"));
    expect(o.violation).toBeUndefined();
    o.observeApply(2, 0, 1, e(1, "x"));
    expect(o.violation?.oracle).toBe(OracleName.STATE_MACHINE_SAFETY);
    const p = new Oracles();
    p.observeCommit(1, [e(1, "a"), e(1, "b")], 2, 1);
    p.observeCommit(2, [e(1, "a"), e(2, "z")], 2, 2);
    expect(p.violation?.oracle).toBe(OracleName.STATE_MACHINE_SAFETY);
  });

  it("state machine safety: applying out of order, or past the committed sequence", () => {
    const o = new Oracles();
    o.observeCommit(1, [e(1, "a"), e(1, "b")], 1, 1);
    o.observeApply(1, 0, 2, e(1, "b"));
    expect(o.violation?.oracle).toBe(OracleName.STATE_MACHINE_SAFETY);
    const p = new Oracles();
    p.observeCommit(1, [e(1, "a"), e(1, "b")], 1, 1);
    p.observeApply(1, 1, 2, e(1, "b"));
    expect(p.violation?.message).toMatch(/past the committed sequence/);
  });

  it("leader completeness: a later leader lacks an entry committed earlier; a deposed one may", () => {
    const o = new Oracles();
    o.observeCommit(1, [e(1, "a"), e(2, "b")], 2, 2);
    o.observeLeaderLog(2, 2, [e(1, "a")], 1); // the deposed leader of term 2 need not hold what term 2 committed
    expect(o.violation).toBeUndefined();
    o.observeLeaderLog(3, 3, [e(1, "a"), e(2, "b")], 2);
    expect(o.violation).toBeUndefined();
    o.observeLeaderLog(4, 4, [e(1, "a")], 1);
    expect(o.violation?.oracle).toBe(OracleName.LEADER_COMPLETENESS);
    const p = new Oracles();
    p.observeCommit(1, [e(1, "a"), e(2, "b")], 2, 2);
    p.observeLeaderLog(4, 4, [e(1, "a"), e(3, "other")], 2);
    expect(p.violation?.oracle).toBe(OracleName.LEADER_COMPLETENESS);
  });

  it("monotonic state: term back, vote changed within a term, commit back", () => {
    const cases = [
      [{ term: 5, vote: 1, commit: 3 }, { term: 4, vote: 1, commit: 3 }],
      [{ term: 5, vote: 1, commit: 3 }, { term: 5, vote: 2, commit: 3 }],
      [{ term: 5, vote: 1, commit: 3 }, { term: 5, vote: 1, commit: 2 }],
    ] as const;
    for (const [before, after] of cases) {
      const o = new Oracles();
      o.observeHardState(1, { term: 5, vote: 0, commit: 0 }, before);
      expect(o.violation).toBeUndefined();
      o.observeHardState(1, before, after);
      expect(o.violation?.oracle).toBe(OracleName.MONOTONIC_STATE);
    }
  });

  it("durability: a restart forgets a durable vote, term or entry", () => {
    const log = [e(1, "a"), e(1, "b")];
    const ok = new Oracles();
    ok.observeRecovery(1, { term: 3, vote: 2 }, { term: 4, vote: 0 }, log, [...log, e(1, "c")]);
    expect(ok.violation).toBeUndefined();
    const bad: Array<(o: Oracles) => void> = [
      (o) => o.observeRecovery(1, { term: 3, vote: 2 }, { term: 2, vote: 2 }, log, log),
      (o) => o.observeRecovery(1, { term: 3, vote: 2 }, { term: 3, vote: 1 }, log, log),
      (o) => o.observeRecovery(1, { term: 3, vote: 2 }, { term: 3, vote: 2 }, log, [log[0]!]),
      (o) => o.observeRecovery(1, { term: 3, vote: 2 }, { term: 3, vote: 2 }, log, [log[0]!, e(1, "x")]),
    ];
    for (const check of bad) {
      const o = new Oracles();
      check(o);
      expect(o.violation?.oracle).toBe(OracleName.DURABILITY);
    }
  });

  it("persist before send: a message in a term, or a granted vote, that is not durable yet", () => {
    const vote = (term: number, to: number, granted = true) => ({ type: "VOTE_RESPONSE", from: 1, to, term, granted }) as const;
    const ok = new Oracles();
    ok.observeSend(1, vote(5, 2) as never, { term: 5, vote: 2 });
    ok.observeSend(1, vote(4, 3) as never, { term: 5, vote: 2 }); // a later durable term covers an earlier vote
    ok.observeSend(1, vote(5, 3, false) as never, { term: 5, vote: 2 });
    ok.observeSend(1, { type: "PRE_VOTE", from: 1, to: 2, term: 6, lastLogIndex: 0, lastLogTerm: 0, leaderTransfer: false } as never, { term: 5, vote: 2 });
    ok.observeSend(1, { type: "PRE_VOTE_RESPONSE", from: 1, to: 2, term: 6, granted: true } as never, { term: 5, vote: 2 });
    expect(ok.violation).toBeUndefined();
    const bad: Array<(o: Oracles) => void> = [
      (o) => o.observeSend(1, vote(6, 2) as never, { term: 5, vote: 2 }),
      (o) => o.observeSend(1, vote(5, 3) as never, { term: 5, vote: 2 }),
      (o) => o.observeSend(1, vote(5, 3) as never, { term: 5, vote: 0 }),
      (o) => o.observeSend(1, { type: "HEARTBEAT", from: 1, to: 2, term: 6, commit: 0, readRound: 0 } as never, { term: 5, vote: 1 }),
    ];
    for (const check of bad) {
      const o = new Oracles();
      check(o);
      expect(o.violation?.oracle).toBe(OracleName.PERSIST_BEFORE_SEND);
    }
  });

  it("acknowledged writes: an acknowledgement of an entry that is not the committed one", () => {
    const o = new Oracles();
    o.observeCommit(1, [e(1, "a")], 1, 1);
    o.observeAcknowledged(1, e(1, "a"));
    expect(o.violation).toBeUndefined();
    o.observeAcknowledged(1, e(1, "mine"));
    expect(o.violation?.oracle).toBe(OracleName.ACKNOWLEDGED_LOST);
  });

  it("linearizable reads: a read index below a write acknowledged before the read began", () => {
    const o = new Oracles();
    o.observeRead(1, 7, 10, 10);
    expect(o.violation).toBeUndefined();
    o.observeRead(1, 8, 10, 9);
    expect(o.violation?.oracle).toBe(OracleName.LINEARIZABLE_READ);
  });

  it("can switch an oracle off, so tests show which other oracle catches a bug", () => {
    const o = new Oracles(new Set([OracleName.ELECTION_SAFETY]));
    o.observeLeader(1, 5);
    o.observeLeader(2, 5);
    expect(o.violation).toBeUndefined();
  });
});

/** Runs seeds until one reports a violation; the first violation found, or undefined. */
/** Seeds within which the crash-after-vote strike turns a vote answered before it was durable into two leaders. */
const SEEDS_FOR_VOTE_BUG = 30;

async function firstCatch(bugs: PlantedBugs, seedsMax: number, disabledOracles: OracleName[] = []) {
  for (let seed = 1; seed <= seedsMax; seed++) {
    const result = await runSeed({ seed, voters: 3, bugs, disabledOracles });
    if (result.violation !== undefined) return { seed, ...result.violation };
  }
  return undefined;
}

describe("the simulator catches bugs planted in the driver's ports", () => {
  it("a hard-state port that acknowledges term and vote without writing them", async () => {
    const caught = await firstCatch({ forgetVotes: true }, 20);
    expect(caught).toBeDefined();
  });

  it("a log port that acknowledges appends before they are durable", async () => {
    const caught = await firstCatch({ acknowledgeBeforeDurable: true }, 30);
    expect(caught).toBeDefined();
  });

  it("a hard-state port that resolves before the vote is durable: the driver answers a vote it may forget", async () => {
    const caught = await firstCatch({ answerBeforeVoteDurable: true }, 5);
    expect(caught?.oracle).toBe(OracleName.PERSIST_BEFORE_SEND);
  });

  it("the same bug with the persist-before-send oracle off: a crash right after a vote makes a consensus oracle see it", async () => {
    const caught = await firstCatch({ answerBeforeVoteDurable: true }, SEEDS_FOR_VOTE_BUG, [OracleName.PERSIST_BEFORE_SEND]);
    expect(caught).toBeDefined();
    // A consensus oracle, or the restart check that the saved term covers the log (the unwritten
    // term is found when the node comes back: "the saved term ... is below the log's last term").
    const consensus: string[] = [OracleName.ELECTION_SAFETY, OracleName.LOG_MATCHING, OracleName.LEADER_COMPLETENESS, OracleName.STATE_MACHINE_SAFETY];
    expect(consensus.includes(caught!.oracle) || (caught!.oracle === OracleName.NODE_FAILURE && /saved term \d+ is below the log's last term/.test(caught!.message)), JSON.stringify(caught)).toBe(true);
  });

  it("the same bug with the durability oracle off: a consensus oracle catches its consequences", async () => {
    // Since a leader re-replicates to a follower whose log ends below its match (it heals some of
    // this bug's damage), the first consensus violation comes later: seed 88 of 3 nodes.
    const caught = await firstCatch({ acknowledgeBeforeDurable: true }, 120, [OracleName.DURABILITY]);
    expect(caught).toBeDefined();
    expect(caught!.oracle).not.toBe(OracleName.DURABILITY);
  });
});

describe("SimFileSystem: durability completes when the simulator says so", () => {
  function harness() {
    const disk = new MemoryFileSystem();
    const pending: Array<() => void> = [];
    const fs = new SimFileSystem(disk, { scheduleDurability: (_node, complete) => void pending.push(complete), noteActivity: () => {} }, 1);
    return { disk, fs, pending };
  }

  it("an O_DSYNC write is in the page cache at once, durable only at its completion, lost by a crash before it", async () => {
    const { disk, fs, pending } = harness();
    await fs.mkdir("/d");
    const created = await fs.open("/d/f", "create-exclusive");
    await created.sync();
    await created.close();
    await fs.syncDir("/d");
    fs.timed = true;
    const handle = await fs.open("/d/f", "readwrite-dsync" as never);
    let done = false;
    const write = handle.write(Buffer.from("hello"), 0, 5, 0).then(() => void (done = true));
    await new Promise((r) => setImmediate(r));
    expect(done).toBe(false);
    expect(Buffer.from(disk.peek("/d/f")!).toString()).toBe("hello");
    expect(pending).toHaveLength(1);
    fs.kill();
    const report = disk.crash({ random: () => 0.99, keepProbability: 0 });
    expect(report.lostWrites).toBe(1);
    pending[0]!();
    await new Promise((r) => setImmediate(r));
    expect(done).toBe(false); // the dead process never sees its write complete
    expect(disk.peek("/d/f")!.length).toBe(0);
    void write;
  });

  it("a completed sync survives a crash", async () => {
    const { disk, fs, pending } = harness();
    await fs.mkdir("/d");
    const handle = await fs.open("/d/f", "create-exclusive");
    await fs.syncDir("/d");
    fs.timed = true;
    await handle.write(Buffer.from("kept"), 0, 4, 0);
    const synced = handle.datasync();
    pending.shift()!();
    await synced;
    fs.kill();
    disk.crash({ random: () => 0.5, keepProbability: 0 });
    expect(Buffer.from(disk.peek("/d/f")!).toString()).toBe("kept");
  });
});

describe("EventHeap", () => {
  it("pops in (time, insertion order)", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 20 }), { maxLength: 200 }), (times) => {
        const heap = new EventHeap<number>(1000);
        times.forEach((time, i) => heap.push(time, i));
        const popped: number[] = [];
        for (let item = heap.pop(); item !== undefined; item = heap.pop()) popped.push(item.event);
        const expected = times.map((time, i) => ({ time, i })).sort((a, b) => a.time - b.time || a.i - b.i).map((x) => x.i);
        expect(popped).toEqual(expected);
      }),
    );
  });
});

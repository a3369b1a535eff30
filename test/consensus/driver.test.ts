/**
 * The driver's ordering rules (src/consensus/driver.ts): nothing leaves before the state it depends
 * on is durable; truncation comes first; applying comes after persisting; a failed port stops it.
 * Run on the production SegmentedLog and DataDir over the in-memory file system.
 */
import { describe, expect, it } from "vitest";
import { MemoryFileSystem } from "../../src/log/memory-fs.js";
import { DataDir } from "../../src/log/data-dir.js";
import { RaftDriver, type HardStatePort, type LogStoragePort } from "../../src/consensus/driver.js";
import { RaftCore, type RaftConfig } from "../../src/consensus/raft.js";
import { Xoshiro128StarStar } from "../../src/consensus/prng.js";
import { Role, type Message } from "../../src/consensus/types.js";
import { RecordKind, type LogEntry, type LogIndex, type NodeId, type Term } from "../../src/log/types.js";
import { APPEND_RPC_BYTES_MAX, INFLIGHT_BYTES_MAX, INFLIGHT_MESSAGES_MAX } from "../../src/limits.js";

const n = (x: number) => x as NodeId;
const CLUSTER = "0f0e0d0c-0b0a-4908-8706-050403020100";

interface Node {
  dir: DataDir;
  driver: RaftDriver;
  sent: Message[];
  applied: LogEntry[];
  failures: unknown[];
}

function coreConfig(id: number): RaftConfig {
  return {
    id: n(id), electionTicks: 10, heartbeatTicks: 1, preVote: true, checkQuorum: true, entriesPerRpcMax: 100,
    appendRpcBytesMax: APPEND_RPC_BYTES_MAX, inflightMessagesMax: INFLIGHT_MESSAGES_MAX, inflightBytesMax: INFLIGHT_BYTES_MAX,
    prng: new Xoshiro128StarStar(id),
  };
}

/** A deferred gate: calls wait until `open()` is called. */
function gate(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((r) => (open = r));
  return { wait, open };
}

async function startNode(
  fs: MemoryFileSystem,
  id: number,
  voters: number[],
  wrap: { log?: (l: LogStoragePort) => LogStoragePort; hard?: (h: HardStatePort) => HardStatePort } = {},
): Promise<Node> {
  const dir = await DataDir.open({ path: `/n${id}`, fs, nodeId: id, clusterId: CLUSTER });
  const log = dir.log;
  const core = new RaftCore(coreConfig(id), {
    hardState: { term: dir.meta.term as Term, vote: dir.meta.vote as NodeId, commit: 0 as LogIndex },
    log: { baseIndex: (log.firstIndex - 1) as LogIndex, baseTerm: 0 as Term, lastIndex: log.lastIndex, termRuns: log.termRuns() },
    membership: [{ index: 0 as LogIndex, config: { voters: voters.map(n), learners: [] } }],
    appliedIndex: 0 as LogIndex,
  });
  const node: Node = { dir, driver: undefined as unknown as RaftDriver, sent: [], applied: [], failures: [] };
  node.driver = new RaftDriver(core, {
    log: wrap.log ? wrap.log(log) : log,
    hardState: wrap.hard ? wrap.hard(dir) : dir,
    transport: { send: (messages) => void node.sent.push(...messages) },
    stateMachine: { apply: (entries) => void node.applied.push(...entries) },
    observer: { onFailure: (e) => void node.failures.push(e) },
  });
  return node;
}

const voteRequest = (term: number): Message => ({
  type: "VOTE", from: n(2), to: n(1), term: term as Term, lastLogIndex: 0 as LogIndex, lastLogTerm: 0 as Term, leaderTransfer: false,
});

function appendRequest(term: number, entries: LogEntry[]): Message {
  return { type: "APPEND", from: n(2), to: n(1), term: term as Term, prevIndex: 0 as LogIndex, prevTerm: 0 as Term, entries, commit: 0 as LogIndex };
}

const entry = (index: number, term: number): LogEntry => ({
  index: index as LogIndex, term: term as Term, kind: RecordKind.EVENTS, tenant: "t", payload: Buffer.from(`e${index}`),
});

/** Ticks a single-node cluster until it leads (an election takes at most 2 x electionTicks ticks). */
async function electSelf(node: Node): Promise<void> {
  for (let i = 0; i < 40 && node.driver.raft.softState().role !== Role.LEADER; i++) {
    node.driver.tick();
    await settle(node);
  }
  expect(node.driver.raft.softState().role).toBe(Role.LEADER);
}

async function settle(node: Node): Promise<void> {
  for (let i = 0; i < 5; i++) {
    await node.driver.idle();
    await new Promise((r) => setImmediate(r));
  }
}

describe("RaftDriver ordering rules", () => {
  it("sends a vote only after term and vote are durable", async () => {
    const fs = new MemoryFileSystem();
    const g = gate();
    const node = await startNode(fs, 1, [1, 2, 3], {
      hard: (h) => ({ saveTermAndVote: async (t, v) => { await g.wait; await h.saveTermAndVote(t, v); } }),
    });
    node.driver.step(voteRequest(5));
    await new Promise((r) => setTimeout(r, 20));
    expect(node.sent).toEqual([]); // the vote is decided, but not durable yet: nothing may leave
    g.open();
    await settle(node);
    expect(node.sent).toMatchObject([{ type: "VOTE_RESPONSE", to: 2, term: 5, granted: true }]);
    expect(node.dir.meta).toMatchObject({ term: 5, vote: 2 });
  });

  it("acknowledges appended entries only after they are durable", async () => {
    const fs = new MemoryFileSystem();
    const g = gate();
    const node = await startNode(fs, 1, [1, 2, 3], {
      log: (l) => ({
        get firstIndex() { return l.firstIndex; },
        get lastIndex() { return l.lastIndex; },
        termRuns: () => l.termRuns(),
        append: async (entries) => { await g.wait; await l.append(entries); },
        read: (f, t, m) => l.read(f, t, m),
        truncateSuffix: (f, c) => l.truncateSuffix(f, c),
      }),
    });
    node.driver.step(appendRequest(1, [entry(1, 1), entry(2, 1)]));
    await new Promise((r) => setTimeout(r, 20));
    expect(node.sent.filter((m) => m.type === "APPEND_RESPONSE")).toEqual([]);
    g.open();
    await settle(node);
    expect(node.sent.filter((m) => m.type === "APPEND_RESPONSE")).toMatchObject([{ success: true, matchIndex: 2 }]);
  });

  it("what was sent survives a crash that drops every unsynced write", async () => {
    const fs = new MemoryFileSystem();
    const node = await startNode(fs, 1, [1, 2, 3]);
    node.driver.step(voteRequest(3));
    await settle(node);
    node.driver.step(appendRequest(3, [entry(1, 3), entry(2, 3), entry(3, 3)]));
    await settle(node);
    expect(node.sent.map((m) => m.type)).toEqual(["VOTE_RESPONSE", "APPEND_RESPONSE"]);
    fs.crash({ random: () => 0.5, keepProbability: 0 });
    const again = await DataDir.open({ path: "/n1", fs, nodeId: 1, clusterId: CLUSTER });
    expect(again.meta).toMatchObject({ term: 3, vote: 2 });
    expect(again.log.lastIndex).toBe(3);
    expect((await again.log.read(1, 4)).map((e) => Buffer.from(e.payload).toString())).toEqual(["e1", "e2", "e3"]);
  });

  it("truncates a conflicting uncommitted tail before appending the leader's entries", async () => {
    const fs = new MemoryFileSystem();
    const node = await startNode(fs, 1, [1, 2, 3]);
    node.driver.step(appendRequest(1, [entry(1, 1), entry(2, 1), entry(3, 1)]));
    await settle(node);
    // A new leader in term 2 holds a different entry at index 2.
    node.driver.step({ ...(appendRequest(2, [entry(2, 2)]) as Extract<Message, { type: "APPEND" }>), prevIndex: 1 as LogIndex, prevTerm: 1 as Term });
    await settle(node);
    expect(node.failures).toEqual([]);
    const log = node.dir.log;
    expect(log.lastIndex).toBe(2);
    expect(log.termAt(2)).toBe(2);
  });

  it("stops, sending nothing more, when the disk fails", async () => {
    const fs = new MemoryFileSystem();
    const node = await startNode(fs, 1, [1, 2, 3]);
    fs.failNext("datasync", "EIO");
    node.driver.step(appendRequest(1, [entry(1, 1)]));
    await settle(node);
    expect(node.failures).toHaveLength(1);
    expect(String(node.failures[0])).toMatch(/EIO/);
    expect(node.sent).toEqual([]);
    node.driver.step(voteRequest(9));
    await settle(node);
    expect(node.sent).toEqual([]);
  });
});

describe("a single-node cluster on the production log", () => {
  it("elects itself, commits and applies proposals, and finds them on disk after a restart", async () => {
    const fs = new MemoryFileSystem();
    const node = await startNode(fs, 1, [1]);
    await electSelf(node);
    const result = node.driver.input((core) =>
      core.propose([1, 2, 3].map((i) => ({ kind: RecordKind.EVENTS, tenant: "acme", payload: Buffer.from(`event ${i}`) }))),
    );
    expect(result.ok).toBe(true);
    await settle(node);
    const events = node.applied.filter((e) => e.kind === RecordKind.EVENTS);
    expect(events.map((e) => Buffer.from(e.payload).toString())).toEqual(["event 1", "event 2", "event 3"]);
    await node.driver.stop();
    await node.dir.close();
    const again = await DataDir.open({ path: "/n1", fs, nodeId: 1, clusterId: CLUSTER });
    expect(again.meta.term).toBeGreaterThanOrEqual(1);
    expect(again.meta.vote).toBe(1);
    const onDisk = await again.log.read(1, again.log.lastIndex + 1);
    expect(onDisk.filter((e) => e.kind === RecordKind.EVENTS).map((e) => Buffer.from(e.payload).toString())).toEqual([
      "event 1", "event 2", "event 3",
    ]);
  });
});

describe("restart from disk", () => {
  it("restarts after more membership changes than the core keeps in its history", async () => {
    const { startStateFromDisk } = await import("../../src/consensus/driver-start.js");
    const { MEMBERSHIP_HISTORY_MAX } = await import("../../src/limits.js");
    const fs = new MemoryFileSystem();
    const node = await startNode(fs, 1, [1]);
    await electSelf(node);
    const changes = MEMBERSHIP_HISTORY_MAX + 6;
    for (let i = 0; i < changes; i++) {
      const change = i % 2 === 0 ? ({ type: "ADD_LEARNER", node: n(2) } as const) : ({ type: "REMOVE_NODE", node: n(2) } as const);
      const result = node.driver.input((core) => core.changeMembership(change));
      expect(result.ok, JSON.stringify(result)).toBe(true);
      await settle(node);
    }
    expect(node.dir.meta.membership).toMatchObject({ voters: [1], learners: [] });
    await node.driver.stop();
    await node.dir.close();
    const dir = await DataDir.open({ path: "/n1", fs, nodeId: 1, clusterId: CLUSTER });
    const start = await startStateFromDisk(dir, { voters: [n(1)], learners: [] });
    expect(start.membership.length).toBeLessThanOrEqual(2);
    expect(start.hardState.commit).toBe(dir.meta.membership!.index);
    const core = new RaftCore(coreConfig(1), start);
    expect(core.currentConfig()).toEqual({ voters: [1], learners: [] });
  });
});

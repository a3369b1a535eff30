/**
 * A synchronous in-memory network that drives several consensus cores in one process (etcd-io/raft
 * `network` in raft_test.go), with a storage stand-in that makes each Ready durable at once.
 * Links can be cut, nodes isolated, and one direction dropped. Every step can be printed, which is
 * what the transcript tests compare.
 */

import { RecordKind, type LogEntry, type LogIndex, type NodeId, type Term } from "../../src/log/types.js";
import { assertNever, invariant } from "../../src/errors.js";
import { RaftCore, type RaftConfig, type RaftStartState } from "../../src/consensus/raft.js";
import { Xoshiro128StarStar } from "../../src/consensus/prng.js";
import { EMPTY_CONFIG, decodeConfig, describeConfig } from "../../src/consensus/membership.js";
import type { CatchUpRequest, HardState, MembershipAt, MembershipConfig, Message, Ready, ReadState, TermRun } from "../../src/consensus/types.js";
import { NO_NODE } from "../../src/consensus/types.js";
import {
  APPEND_RPC_BYTES_MAX,
  ENTRIES_PER_RPC_MAX_DEFAULT,
  INFLIGHT_BYTES_MAX,
  INFLIGHT_MESSAGES_MAX,
} from "../../src/limits.js";

/** Stands in for the segmented log plus meta/state.json: writes are durable the moment they happen. */
export class MemoryStorage {
  /** Invariant: entries[i].index === i + 1. */
  readonly entries: LogEntry[] = [];
  hardState: HardState = { term: 0 as Term, vote: NO_NODE, commit: 0 as LogIndex };

  get lastIndex(): LogIndex {
    return this.entries.length as LogIndex;
  }

  append(entries: readonly LogEntry[]): void {
    for (const entry of entries) {
      invariant(entry.index === this.entries.length + 1, `append of ${entry.index} after ${this.entries.length}`);
      invariant(entry.payload.byteLength > 0, "the log refuses empty payloads");
      const last = this.entries[this.entries.length - 1];
      invariant(last === undefined || entry.term >= last.term, "terms never decrease in the log");
      this.entries.push(entry);
    }
  }

  /** As SegmentedLog.truncateSuffix: refuses to cut at or below the durable commit index. */
  truncateSuffix(from: LogIndex): void {
    invariant(from > this.hardState.commit, `truncation at ${from} at or below commit ${this.hardState.commit}`);
    this.entries.length = Math.min(this.entries.length, from - 1);
  }

  read(from: LogIndex, to: LogIndex, bytesMax: number): LogEntry[] {
    const result: LogEntry[] = [];
    let bytes = 0;
    for (let index = from; index < to && index <= this.entries.length; index++) {
      const entry = this.entries[index - 1]!;
      if (result.length > 0 && bytes + entry.payload.byteLength > bytesMax) break;
      bytes += entry.payload.byteLength;
      result.push(entry);
    }
    return result;
  }

  termRuns(): TermRun[] {
    const runs: TermRun[] = [];
    for (const entry of this.entries) {
      const last = runs[runs.length - 1];
      if (last === undefined || last.term !== entry.term) runs.push({ firstIndex: entry.index, term: entry.term });
    }
    return runs;
  }

  /** What a restarted driver hands the core: the newest configuration at or below commit, then later ones. */
  membershipHistory(bootstrap: MembershipConfig): MembershipAt[] {
    const all: MembershipAt[] = [{ index: 0 as LogIndex, config: bootstrap }];
    for (const entry of this.entries) {
      if (entry.kind === RecordKind.MEMBERSHIP) all.push({ index: entry.index, config: decodeConfig(entry.payload) });
    }
    let start = 0;
    for (let i = 0; i < all.length; i++) if (all[i]!.index <= this.hardState.commit) start = i;
    return all.slice(start);
  }
}

export interface NodeOptions {
  preVote: boolean;
  checkQuorum: boolean;
  electionTicks: number;
  heartbeatTicks: number;
  entriesPerRpcMax: number;
  inflightMessagesMax: number;
  inflightBytesMax: number;
  /** RaftConfig.catchUpLagEntries. */
  catchUpLagEntries: number | undefined;
}

export const DEFAULT_NODE_OPTIONS: NodeOptions = {
  preVote: true,
  checkQuorum: true,
  electionTicks: 10,
  heartbeatTicks: 1,
  entriesPerRpcMax: ENTRIES_PER_RPC_MAX_DEFAULT,
  inflightMessagesMax: INFLIGHT_MESSAGES_MAX,
  inflightBytesMax: INFLIGHT_BYTES_MAX,
  catchUpLagEntries: undefined,
};

export interface SimNode {
  readonly id: NodeId;
  core: RaftCore;
  readonly storage: MemoryStorage;
  readonly options: NodeOptions;
  readonly bootstrap: MembershipConfig;
  /** Every entry applied, in order. */
  readonly applied: LogEntry[];
  readonly readStates: ReadState[];
}

export class Network {
  readonly nodes = new Map<NodeId, SimNode>();
  private readonly inboxes = new Map<NodeId, Message[]>();
  /** Undirected cuts, as "low-high". */
  private readonly cuts = new Set<string>();
  /** Directed drops, as "from->to". */
  private readonly drops = new Set<string>();
  /** Where the printed trace goes; the transcripts collect it, unit tests ignore it. */
  output: string[] = [];
  /** Pending core events, printed after the operation that caused them. */
  private events: string[] = [];

  addNode(id: NodeId, bootstrap: MembershipConfig, options: NodeOptions = DEFAULT_NODE_OPTIONS): SimNode {
    invariant(!this.nodes.has(id), `node ${id} exists`);
    const storage = new MemoryStorage();
    const node: SimNode = { id, core: undefined as unknown as RaftCore, storage, options, bootstrap, applied: [], readStates: [] };
    node.core = this.buildCore(node);
    this.nodes.set(id, node);
    this.inboxes.set(id, []);
    return node;
  }

  /** Rebuilds a node's core from its storage, as a process restart does; messages in flight to it are lost. */
  restart(id: NodeId): void {
    const node = this.node(id);
    node.core = this.buildCore(node);
    this.inboxes.set(id, []);
  }

  private buildCore(node: SimNode): RaftCore {
    const lastApplied = node.applied[node.applied.length - 1];
    const config: RaftConfig = {
      id: node.id,
      electionTicks: node.options.electionTicks,
      heartbeatTicks: node.options.heartbeatTicks,
      preVote: node.options.preVote,
      checkQuorum: node.options.checkQuorum,
      entriesPerRpcMax: node.options.entriesPerRpcMax,
      appendRpcBytesMax: APPEND_RPC_BYTES_MAX,
      inflightMessagesMax: node.options.inflightMessagesMax,
      inflightBytesMax: node.options.inflightBytesMax,
      catchUpLagEntries: node.options.catchUpLagEntries,
      prng: new Xoshiro128StarStar(node.id),
      onEvent: (line) => this.events.push(line),
    };
    const start: RaftStartState = {
      hardState: node.storage.hardState,
      log: { baseIndex: 0 as LogIndex, baseTerm: 0 as Term, lastIndex: node.storage.lastIndex, termRuns: node.storage.termRuns() },
      membership: node.storage.membershipHistory(node.bootstrap),
      appliedIndex: lastApplied?.index ?? (0 as LogIndex),
    };
    return new RaftCore(config, start);
  }

  node(id: NodeId): SimNode {
    const node = this.nodes.get(id);
    invariant(node !== undefined, `no node ${id}`);
    return node;
  }

  ids(): NodeId[] {
    return [...this.nodes.keys()].sort((a, b) => a - b);
  }

  // ---- faults ----

  cut(a: NodeId, b: NodeId): void {
    this.cuts.add(linkKey(a, b));
  }

  isolate(id: NodeId): void {
    for (const other of this.ids()) if (other !== id) this.cut(id, other);
  }

  /** Drops every message from `from` to `to` (one direction) until heal. */
  drop(from: NodeId, to: NodeId): void {
    this.drops.add(`${from}->${to}`);
  }

  heal(): void {
    this.cuts.clear();
    this.drops.clear();
  }

  private linkDown(from: NodeId, to: NodeId): boolean {
    return this.cuts.has(linkKey(from, to)) || this.drops.has(`${from}->${to}`) || !this.nodes.has(to);
  }

  // ---- driving ----

  /** Runs `action` on a node's core and prints the events it caused. */
  with<T>(id: NodeId, action: (core: RaftCore) => T): T {
    const result = action(this.node(id).core);
    this.flushEvents();
    return result;
  }

  /** Handles one Ready of node `id` as the driver will: persist, send, apply, advance. Returns false when idle. */
  processReady(id: NodeId): boolean {
    const node = this.node(id);
    if (!node.core.hasReady()) return false;
    const ready = node.core.ready();
    this.output.push(`> ${id} handling Ready`);
    for (const line of describeReady(ready)) this.output.push(`  ${line}`);
    this.persist(node, ready);
    for (const message of ready.messages) {
      if (this.linkDown(message.from, message.to)) this.output.push(`  dropped: ${describeMessage(message)}`);
      else this.inboxes.get(message.to)!.push(message);
    }
    this.apply(node, ready);
    node.core.advance(ready);
    for (const request of ready.fetches) node.core.entriesLoaded(request, node.storage.read(request.from, request.to, request.bytesMax));
    for (const request of ready.catchUps) this.streamSegments(node, request);
    this.flushEvents();
    return true;
  }

  /**
   * Stands in for segment streaming: copies the leader's entries [fromIndex, upToIndex] into the
   * follower's storage (keeping what the follower has committed: it is identical), rebuilds the
   * follower's core from its storage, and reports back to the leader.
   */
  private streamSegments(leader: SimNode, request: CatchUpRequest): void {
    if (this.linkDown(leader.id, request.to)) {
      this.output.push(`  catch-up of ${request.to} failed: link down`);
      leader.core.catchUpFinished(request.to, undefined);
      return;
    }
    const follower = this.node(request.to);
    const from = Math.max(request.fromIndex, follower.storage.hardState.commit + 1) as LogIndex;
    if (from <= follower.storage.lastIndex) follower.storage.truncateSuffix(from);
    const entries = leader.storage.read(from, (request.upToIndex + 1) as LogIndex, Number.MAX_SAFE_INTEGER);
    follower.storage.append(entries.filter((entry) => entry.index > follower.storage.lastIndex));
    this.output.push(`  streamed [${request.fromIndex}, ${request.upToIndex}] to ${request.to}; it restarts from its new log`);
    this.restart(request.to);
    leader.core.catchUpFinished(request.to, request.upToIndex);
  }

  private persist(node: SimNode, ready: Ready): void {
    if (ready.truncateFrom !== undefined) node.storage.truncateSuffix(ready.truncateFrom);
    node.storage.append(ready.entries);
    if (ready.hardState !== undefined) node.storage.hardState = ready.hardState;
  }

  private apply(node: SimNode, ready: Ready): void {
    for (const entry of ready.committedEntries) {
      const last = node.applied[node.applied.length - 1];
      invariant(entry.index === (last?.index ?? 0) + 1, `node ${node.id} applies ${entry.index} after ${last?.index ?? 0}`);
      invariant(entry.index <= node.storage.hardState.commit, "an entry applied before its commit was durable");
      node.applied.push(entry);
    }
    node.readStates.push(...ready.readStates);
  }

  /** Delivers every message waiting for node `id`, in order. Returns false when there were none. */
  deliver(id: NodeId): boolean {
    const inbox = this.inboxes.get(id)!;
    if (inbox.length === 0) return false;
    this.inboxes.set(id, []);
    this.output.push(`> ${id} receiving messages`);
    for (const message of inbox) {
      if (this.linkDown(message.from, message.to)) {
        this.output.push(`  dropped: ${describeMessage(message)}`);
        continue;
      }
      this.output.push(`  ${describeMessage(message)}`);
      this.node(id).core.step(message);
      this.flushEvents();
    }
    return true;
  }

  /** Processes Readies and delivers messages until nothing is left to do. */
  stabilize(ids: readonly NodeId[] = this.ids()): void {
    for (let round = 0; round < 1000; round++) {
      let busy = false;
      for (const id of ids) busy = this.processReady(id) || busy;
      for (const id of ids) busy = this.deliver(id) || busy;
      if (!busy) return;
    }
    throw new Error("the network did not stabilize within 1000 rounds");
  }

  /**
   * A leader ticks one election timeout (one check-quorum round); any other node ticks until its
   * randomized election timer fires (at most twice the election timeout).
   */
  tickElection(id: NodeId): void {
    const node = this.node(id);
    const ticks = node.options.electionTicks;
    if (node.core.status().role === "LEADER") {
      this.tick(id, ticks);
      return;
    }
    for (let i = 0; i < 2 * ticks; i++) {
      node.core.tick();
      const fired = this.events.some((line) => line.includes("election timeout"));
      this.flushEvents();
      if (fired) return;
    }
  }

  tick(id: NodeId, count: number): void {
    for (let i = 0; i < count; i++) this.with(id, (core) => core.tick());
  }

  private flushEvents(): void {
    for (const line of this.events) this.output.push(`INFO ${line}`);
    this.events = [];
  }

  /** A one-line summary of a node. */
  describeNode(id: NodeId): string[] {
    const status = this.node(id).core.status();
    const lines = [
      `${id}: ${status.role} term=${status.term} vote=${status.vote} lead=${status.leader} commit=${status.commit} ` +
        `applied=${status.applied} last=${status.lastTerm}/${status.lastIndex} ${describeConfig(status.config)}` +
        (status.leadTransferee === NO_NODE ? "" : ` transferring-to=${status.leadTransferee}`),
    ];
    for (const p of status.progress) {
      lines.push(`  ${p.id}: match=${p.match} next=${p.next} ${p.state} inflight=${p.inflightMessages}${p.recentActive ? " active" : ""}`);
    }
    return lines;
  }
}

function linkKey(a: NodeId, b: NodeId): string {
  return a < b ? `${a}-${b}` : `${b}-${a}`;
}

const decoder = new TextDecoder();

/** "term/index KIND payload", as etcd's transcripts print entries. */
export function describeEntry(entry: LogEntry): string {
  const head = `${entry.term}/${entry.index}`;
  switch (entry.kind) {
    case RecordKind.NOOP:
      return `${head} NOOP`;
    case RecordKind.MEMBERSHIP:
      return `${head} MEMBERSHIP ${describeConfig(decodeConfig(entry.payload))}`;
    case RecordKind.EVENTS:
      return `${head} EVENTS "${decoder.decode(entry.payload)}"`;
    default:
      return `${head} KIND${entry.kind} ${entry.payload.byteLength} bytes`;
  }
}

export function describeMessage(message: Message): string {
  const head = `${message.from}->${message.to} ${message.type} term=${message.term}`;
  switch (message.type) {
    case "PRE_VOTE":
    case "VOTE":
      return `${head} last=${message.lastLogTerm}/${message.lastLogIndex}${message.leaderTransfer ? " transfer" : ""}`;
    case "PRE_VOTE_RESPONSE":
    case "VOTE_RESPONSE":
      return `${head} ${message.granted ? "granted" : "rejected"}`;
    case "APPEND": {
      const entries = message.entries.length === 0 ? "" : ` entries=[${message.entries.map(describeEntry).join(", ")}]`;
      return `${head} prev=${message.prevTerm}/${message.prevIndex} commit=${message.commit}${entries}`;
    }
    case "APPEND_RESPONSE":
      return message.success
        ? `${head} match=${message.matchIndex}`
        : `${head} reject prev=${message.rejectedPrevIndex} conflict=${message.conflictTerm}/${message.conflictIndex}`;
    case "HEARTBEAT":
      return `${head} commit=${message.commit}${message.readRound > 0 ? ` round=${message.readRound}` : ""}`;
    case "HEARTBEAT_RESPONSE":
      return `${head}${message.readRound > 0 ? ` round=${message.readRound}` : ""}`;
    case "TIMEOUT_NOW":
      return head;
    default:
      return assertNever(message);
  }
}

export function describeReady(ready: Ready): string[] {
  const lines: string[] = [];
  if (ready.softState !== undefined) lines.push(`Lead:${ready.softState.leader} State:${ready.softState.role}`);
  if (ready.hardState !== undefined) {
    const hs = ready.hardState;
    lines.push(`HardState Term:${hs.term} Vote:${hs.vote} Commit:${hs.commit}`);
  }
  if (ready.truncateFrom !== undefined) lines.push(`TruncateFrom: ${ready.truncateFrom}`);
  if (ready.entries.length > 0) lines.push(`Entries: ${ready.entries.map(describeEntry).join(", ")}`);
  if (ready.committedEntries.length > 0) lines.push(`CommittedEntries: ${ready.committedEntries.map(describeEntry).join(", ")}`);
  for (const read of ready.readStates) {
    lines.push(read.ok ? `ReadState: request=${read.requestId} index=${read.index}` : `ReadState: request=${read.requestId} FAILED ${read.code}`);
  }
  for (const fetch of ready.fetches) lines.push(`Fetch: [${fetch.from}, ${fetch.to})`);
  for (const catchUp of ready.catchUps) lines.push(`CatchUp: ${catchUp.to} from ${catchUp.fromIndex} up to ${catchUp.upToIndex}`);
  if (ready.messages.length > 0) {
    lines.push("Messages:");
    for (const message of ready.messages) lines.push(describeMessage(message));
  }
  return lines;
}

/** Bootstrap configuration helper: voters 1..n. */
export function votersUpTo(n: number): MembershipConfig {
  const voters: NodeId[] = [];
  for (let id = 1; id <= n; id++) voters.push(id as NodeId);
  return { voters, learners: [] };
}

export { EMPTY_CONFIG };

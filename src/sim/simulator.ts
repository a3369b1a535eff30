/**
 * The deterministic simulator (TESTING.md section 2, STYLE.md section 7): the production RaftCore,
 * RaftDriver, DataDir and SegmentedLog of up to five machines in one process, on simulated disks
 * and a simulated network, all driven by one seed.
 *
 * Time is a heap of (virtual time, sequence) events: ticks, message deliveries, disk completions,
 * faults and client requests. After each event the simulator drains: the driver and the log are
 * asynchronous (promises, and one setImmediate in the log's group-commit writer), so it yields to
 * the real event loop until a whole turn passes in which no node touched a port or the disk. No
 * real I/O or timer is involved, and the microtask and immediate queues are FIFO, so the same
 * seed always runs the same code in the same order: the trace hash checks that.
 *
 * A seed runs a safety phase (faults on; oracles after every event), then a liveness phase:
 * everything healed and restarted, no new faults, and the cluster must commit a marker entry and
 * converge (same last index, commit and applied on every member) within a bounded number of ticks.
 */

import { Role, type Message, type MembershipChange, type ProposedEntry, type ReadState } from "../consensus/types.js";
import { invariant } from "../errors.js";
import { RecordKind, type LogEntry } from "../log/types.js";
import {
  SIM_DRAIN_ROUNDS_MAX,
  SIM_EVENTS_PER_SEED_MAX,
  SIM_HEAP_EVENTS_MAX,
  SIM_HELD_MESSAGES_MAX,
  SIM_LIVENESS_TICKS_MAX,
  SIM_MEMBERSHIP_CHANGES_MAX,
  SIM_TRACE_LINES,
} from "../limits.js";
import { EventHeap } from "./event-heap.js";
import { PartitionKind, SimNetwork } from "./network.js";
import { entryId, OracleName, Oracles, type EntryId, type Violation } from "./oracles.js";
import { NODE_IDS, drawParams, type SimParams } from "./params.js";
import { RandomStream, Stream } from "./random-streams.js";
import { SimNode, type NodeHost, type PlantedBugs } from "./sim-node.js";
import { TraceLog } from "./trace-log.js";

export interface FaultStats {
  partitions: number;
  crashes: number;
  lost_unsynced: number;
  torn_writes: number;
  pauses: number;
  transfers: number;
  membership_changes: number;
  /** Targeted nemeses that fired (params.ts StrikeParams). */
  strikes: number;
}

export interface SeedResult {
  readonly seed: number;
  readonly events: number;
  readonly virtualTime: number;
  readonly violation: Violation | undefined;
  /** Terms that had a leader. */
  readonly elections: number;
  /** Entries in the committed sequence. */
  readonly commits: number;
  readonly acknowledged: number;
  readonly reads: number;
  readonly faults: FaultStats;
  readonly traceHash: string;
  /** The last SIM_TRACE_LINES lines of the trace. */
  readonly trace: readonly string[];
}

export interface SeedOptions {
  readonly seed: number;
  readonly voters: 3 | 5;
  /** Virtual milliseconds of the safety phase; default SAFETY_DURATION_DEFAULT. */
  readonly safetyDuration?: number | undefined;
  /** Bugs to plant in the ports (tests of the oracles only). */
  readonly bugs?: PlantedBugs;
  /** Oracles to switch off (tests of the oracles only). */
  readonly disabledOracles?: readonly OracleName[];
}

/** Virtual milliseconds of faults per seed by default (about 1000 ticks of a node). */
export const SAFETY_DURATION_DEFAULT = 10_000;

type FaultKind = "partition" | "clog" | "crash" | "pause" | "transfer" | "membership";
const FAULT_KINDS: readonly FaultKind[] = ["partition", "clog", "crash", "pause", "transfer", "membership"];

type SimEvent =
  | { readonly kind: "tick"; readonly node: number }
  | { readonly kind: "deliver"; readonly message: Message }
  | { readonly kind: "durable"; readonly node: number; readonly complete: () => void }
  | { readonly kind: "fault"; readonly fault: FaultKind }
  | { readonly kind: "heal-partition"; readonly generation: number }
  | { readonly kind: "unclog"; readonly from: number; readonly to: number }
  | { readonly kind: "restart"; readonly node: number }
  | { readonly kind: "strike"; readonly strike: Strike }
  | { readonly kind: "resume"; readonly node: number }
  | { readonly kind: "propose" }
  | { readonly kind: "read" }
  | { readonly kind: "liveness" }
  | { readonly kind: "marker" };

/** A targeted fault against one node (params.ts StrikeParams). */
interface Strike {
  readonly node: number;
  readonly reason: "elected" | "first-commit" | "voted";
  /** Leader strikes: only while the node still leads this term. */
  readonly leaderTerm: number | undefined;
  readonly isolate: boolean;
}

/** What the strike nemesis tracks of a node that leads. */
interface Leadership {
  readonly term: number;
  readonly commitAtElection: number;
  committedInTerm: boolean;
}

interface Proposal {
  readonly node: number;
  readonly incarnation: number;
  readonly lastIndex: number;
  readonly last: EntryId;
  readonly marker: boolean;
}

interface PendingRead {
  readonly node: number;
  readonly incarnation: number;
  /** The highest index acknowledged to a client when the read began. */
  readonly floor: number;
}

export async function runSeed(options: SeedOptions): Promise<SeedResult> {
  const params = drawParams(options.seed, options.voters, options.safetyDuration ?? SAFETY_DURATION_DEFAULT);
  return new Simulator(params, options.bugs ?? {}, new Set(options.disabledOracles ?? [])).run();
}

export class Simulator implements NodeHost {
  readonly oracles: Oracles;
  private readonly heap = new EventHeap<SimEvent>(SIM_HEAP_EVENTS_MAX);
  private readonly nodes = new Map<number, SimNode>();
  private readonly held = new Map<number, SimEvent[]>();
  private readonly network: SimNetwork;
  private readonly traceLog = new TraceLog(SIM_TRACE_LINES);
  private readonly diskRandom: RandomStream;
  private readonly faultRandom: RandomStream;
  private readonly crashRandom: RandomStream;
  private readonly clientRandom: RandomStream;
  private readonly strikeRandom: RandomStream;
  /** Node -> the term it leads and what the strike nemesis saw of it. */
  private readonly leadership = new Map<number, Leadership>();
  private now = 0;
  private events = 0;
  /** Port and disk calls so far: the drain loop stops after a turn without any. */
  private activity = 0;
  private phase: "safety" | "liveness" = "safety";
  private finished = false;
  private partitionGeneration = 0;
  private livenessDeadline = 0;
  private readonly stats: FaultStats = {
    partitions: 0, crashes: 0, lost_unsynced: 0, torn_writes: 0, pauses: 0, transfers: 0, membership_changes: 0, strikes: 0,
  };
  // ---- Clients. ----
  private readonly proposals = new Map<string, Proposal>();
  private readonly reads = new Map<number, PendingRead>();
  private proposalCount = 0;
  private readCount = 0;
  private readsAnswered = 0;
  private acknowledged = 0;
  private leaderHint = 1;
  private marker: { state: "none" } | { state: "pending"; key: string; since: number } | { state: "acknowledged" } = { state: "none" };

  constructor(
    readonly params: SimParams,
    readonly bugs: PlantedBugs = {},
    disabledOracles: ReadonlySet<OracleName> = new Set(),
  ) {
    this.oracles = new Oracles(disabledOracles);
    this.network = new SimNetwork(params.links, new RandomStream(params.seed, Stream.NETWORK));
    this.diskRandom = new RandomStream(params.seed, Stream.DISK);
    this.faultRandom = new RandomStream(params.seed, Stream.FAULTS);
    this.crashRandom = new RandomStream(params.seed, Stream.CRASH);
    this.clientRandom = new RandomStream(params.seed, Stream.CLIENTS);
    this.strikeRandom = new RandomStream(params.seed, Stream.STRIKES);
    const voters = NODE_IDS.filter((id) => id <= params.voters);
    for (const id of NODE_IDS) {
      const bootstrap = id <= params.voters ? { voters, learners: [] } : { voters: [], learners: [] };
      this.nodes.set(id, new SimNode(id, bootstrap as never, this));
      this.held.set(id, []);
    }
  }

  async run(): Promise<SeedResult> {
    const onRejection = (reason: unknown) => this.fail(OracleName.NODE_FAILURE, `unhandled rejection: ${describeError(reason)}`);
    process.on("unhandledRejection", onRejection);
    try {
      this.trace(`seed ${this.params.seed}: ${this.params.voters} voters, election ${this.params.electionTicks} ticks, heartbeat ${this.params.heartbeatTicks}`);
      for (const node of this.nodes.values()) await this.startNode(node);
      this.schedule();
      await this.loop();
    } finally {
      process.off("unhandledRejection", onRejection);
    }
    return {
      seed: this.params.seed,
      events: this.events,
      virtualTime: this.now,
      violation: this.oracles.violation,
      elections: this.oracles.leaders.size,
      commits: this.oracles.committed.length,
      acknowledged: this.acknowledged,
      reads: this.readsAnswered,
      faults: { ...this.stats },
      traceHash: this.traceLog.digest(),
      trace: this.traceLog.tail(),
    };
  }

  // =================================================================== the loop

  private schedule(): void {
    for (const id of NODE_IDS) this.at(this.tickPeriod(id), { kind: "tick", node: id });
    for (const fault of FAULT_KINDS) this.scheduleFault(fault);
    this.at(this.clientRandom.between(0, 2 * this.params.proposeInterval), { kind: "propose" });
    if (this.params.readInterval !== Infinity) this.at(this.clientRandom.between(0, 2 * this.params.readInterval), { kind: "read" });
    this.at(this.params.safetyDuration, { kind: "liveness" });
  }

  private async loop(): Promise<void> {
    // Bounded by SIM_EVENTS_PER_SEED_MAX; the liveness phase ends the run by its deadline.
    while (!this.finished && this.oracles.violation === undefined) {
      const item = this.heap.pop();
      invariant(item !== undefined, "the event heap ran dry: ticks always reschedule");
      this.now = item.time;
      this.events++;
      if (this.events > SIM_EVENTS_PER_SEED_MAX) {
        this.fail(OracleName.LIVENESS, `more than ${SIM_EVENTS_PER_SEED_MAX} events (SIM_EVENTS_PER_SEED_MAX)`);
        return;
      }
      try {
        await this.handle(item.event);
      } catch (e) {
        this.fail(OracleName.NODE_FAILURE, `${item.event.kind}: ${describeError(e)}`);
      }
      await this.drain();
      this.checkNodes();
    }
  }

  /**
   * Yields to the event loop until a full turn passes without any port or disk call. The first
   * turn runs the microtasks of the event itself; any immediate they queue (the log's group-commit
   * writer) is queued after ours only if it was queued by work we count, so one quiet turn after
   * the first means every node is idle or waiting for a simulated disk completion.
   */
  private async drain(): Promise<void> {
    for (let round = 0; round < SIM_DRAIN_ROUNDS_MAX; round++) {
      const before = this.activity;
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (round >= 1 && this.activity === before) return;
    }
    this.fail(OracleName.LIVENESS, `a drain took more than ${SIM_DRAIN_ROUNDS_MAX} event-loop turns (SIM_DRAIN_ROUNDS_MAX)`);
  }

  private async handle(event: SimEvent): Promise<void> {
    switch (event.kind) {
      case "tick":
        return this.tick(event.node);
      case "deliver":
        return this.deliver(event);
      case "durable":
        return this.durableDone(event);
      case "fault":
        await this.fault(event.fault);
        if (this.phase === "safety") this.scheduleFault(event.fault);
        return;
      case "heal-partition":
        if (event.generation === this.partitionGeneration) {
          this.network.healPartition();
          this.trace(`${this.now} heal partition`);
        }
        return;
      case "unclog":
        this.network.unclog(event.from, event.to);
        return;
      case "restart": {
        const node = this.node(event.node);
        if (!node.up) await this.startNode(node);
        return;
      }
      case "resume":
        return this.resume(this.node(event.node));
      case "strike":
        return this.strike(event.strike);
      case "propose":
        if (this.phase !== "safety") return;
        this.propose(false);
        this.at(this.now + this.clientRandom.between(1, 2 * this.params.proposeInterval), { kind: "propose" });
        return;
      case "read":
        if (this.phase !== "safety") return;
        this.read();
        this.at(this.now + this.clientRandom.between(1, 2 * this.params.readInterval), { kind: "read" });
        return;
      case "liveness":
        return this.startLiveness();
      case "marker":
        return this.checkLiveness();
    }
  }

  // =================================================================== nodes, network, disk

  private tick(id: number): void {
    const node = this.node(id);
    if (node.up && !node.paused) this.guard(node, () => node.driver!.tick());
    this.at(this.now + this.tickPeriod(id), { kind: "tick", node: id });
  }

  private deliver(event: { readonly kind: "deliver"; readonly message: Message }): void {
    const message = event.message;
    const node = this.node(message.to);
    if (!node.up || this.network.isBlocked(message.from, message.to)) return;
    if (node.paused) {
      const held = this.held.get(node.id)!;
      if (held.length < SIM_HELD_MESSAGES_MAX) held.push(event);
      return;
    }
    this.trace(`${this.now} ${describeMessage(message)}`);
    this.guard(node, () => node.driver!.step(message));
  }

  private durableDone(event: { readonly kind: "durable"; readonly node: number; readonly complete: () => void }): void {
    const node = this.node(event.node);
    // A stopped process does not see its I/O complete until it runs again.
    if (node.up && node.paused) this.held.get(node.id)!.push(event);
    else event.complete();
  }

  private async startNode(node: SimNode): Promise<void> {
    this.held.set(node.id, []);
    try {
      await node.start();
    } catch (e) {
      this.fail(OracleName.NODE_FAILURE, `node ${node.id} failed to restart from its data dir: ${describeError(e)}`);
      return;
    }
    this.trace(`${this.now} start ${node.id} (incarnation ${node.incarnation})`);
  }

  private resume(node: SimNode): void {
    if (!node.up || !node.paused) return;
    node.paused = false;
    this.trace(`${this.now} resume ${node.id}`);
    const held = this.held.get(node.id)!;
    this.held.set(node.id, []);
    for (const event of held) this.at(this.now, event);
  }

  /** Runs an input against a node's driver; a throw is a bug in the code under test. */
  private guard<T>(node: SimNode, input: () => T): T | undefined {
    try {
      return input();
    } catch (e) {
      this.fail(OracleName.NODE_FAILURE, `node ${node.id}: ${describeError(e)}`);
      return undefined;
    }
  }

  /** The oracles that look at every node after every event. */
  private checkNodes(): void {
    for (const node of this.nodes.values()) {
      if (!node.up || node.driver === undefined) continue;
      const core = node.driver.raft;
      const hard = core.hardState();
      const next = { term: hard.term, vote: hard.vote, commit: hard.commit };
      this.oracles.observeHardState(node.id, node.seen, next);
      node.seen = next;
      const soft = core.softState();
      if (soft.role !== node.role) {
        this.trace(`${this.now}   ${node.id} is ${soft.role} in term ${hard.term}`);
        node.role = soft.role;
      }
      if (soft.role === Role.LEADER) {
        this.oracles.observeLeader(node.id, hard.term);
        this.oracles.observeLeaderLog(node.id, hard.term, node.accepted, core.status().lastIndex);
        this.watchLeader(node, hard.term, hard.commit);
      } else {
        this.leadership.delete(node.id);
      }
    }
  }

  // =================================================================== NodeHost

  scheduleDurability(node: number, complete: () => void): void {
    this.at(this.now + this.diskRandom.between(this.params.syncDelayMin, this.params.syncDelayMax), { kind: "durable", node, complete });
  }

  noteActivity(): void {
    this.activity++;
  }

  send(messages: readonly Message[]): void {
    for (const message of messages) {
      if (message.type === "VOTE_RESPONSE" && message.granted) this.maybeStrike(message.from, "voted", undefined, this.params.strikes.onVoteGranted);
      if (!this.nodes.has(message.to)) continue;
      for (const time of this.network.arrivals(message, this.now)) this.at(time, { kind: "deliver", message });
    }
  }

  trace(line: string): void {
    this.traceLog.add(line);
  }

  applied(node: SimNode, entry: LogEntry): void {
    const key = proposalKey(node.id, node.incarnation, entry.index);
    const proposal = this.proposals.get(key);
    if (proposal === undefined) return;
    this.proposals.delete(key);
    const id = entryId(entry);
    const ok = id.term === proposal.last.term && id.digest === proposal.last.digest;
    if (ok) {
      this.oracles.observeAcknowledged(entry.index, id);
      this.acknowledged++;
    }
    this.trace(`${this.now} client: proposal ending at ${entry.index} ${ok ? "acknowledged" : "failed (overwritten)"} by ${node.id}`);
    if (proposal.marker) this.marker = ok ? { state: "acknowledged" } : { state: "none" };
  }

  readStates(node: SimNode, states: readonly ReadState[]): void {
    for (const state of states) {
      const read = this.reads.get(state.requestId);
      if (read === undefined) continue;
      this.reads.delete(state.requestId);
      if (!state.ok) continue;
      this.readsAnswered++;
      this.oracles.observeRead(node.id, state.requestId, read.floor, state.index);
    }
  }

  failed(node: SimNode, error: unknown): void {
    this.fail(OracleName.NODE_FAILURE, `node ${node.id}'s driver stopped: ${describeError(error)}`);
  }

  // =================================================================== faults

  private scheduleFault(fault: FaultKind): void {
    const mean = this.params.faults[fault];
    if (mean === Infinity) return;
    this.at(this.now + 1 + this.faultRandom.between(0, Math.round(2 * mean)), { kind: "fault", fault });
  }

  private async fault(fault: FaultKind): Promise<void> {
    if (this.phase !== "safety") return;
    const random = this.faultRandom;
    switch (fault) {
      case "partition": {
        const kind = random.pick(Object.values(PartitionKind));
        const description = this.network.partition(kind);
        this.partitionGeneration++;
        this.stats.partitions++;
        this.trace(`${this.now} partition: ${description}`);
        this.at(this.now + random.between(50, 3000), { kind: "heal-partition", generation: this.partitionGeneration });
        return;
      }
      case "clog": {
        const from = random.pick(NODE_IDS);
        const to = random.pick(NODE_IDS.filter((id) => id !== from));
        this.network.clog(from, to, random.between(20, 1000));
        this.trace(`${this.now} clog ${from}->${to}`);
        this.at(this.now + random.between(50, 2000), { kind: "unclog", from, to });
        return;
      }
      case "crash": {
        const up = this.upNodes();
        if (up.length === 0) return;
        const node = random.pick(up);
        this.crash(node, random.between(10, 2000));
        return;
      }
      case "pause": {
        const running = this.upNodes().filter((node) => !node.paused);
        if (running.length === 0) return;
        const node = random.pick(running);
        node.paused = true;
        this.stats.pauses++;
        this.trace(`${this.now} pause ${node.id}`);
        this.at(this.now + random.between(20, 2000), { kind: "resume", node: node.id });
        return;
      }
      case "transfer":
        return this.transfer();
      case "membership":
        return this.changeMembership();
    }
  }

  private crash(node: SimNode, restartAfter: number): void {
    const report = node.crash(this.crashRandom);
    this.stats.crashes++;
    this.stats.lost_unsynced += report.lostWrites;
    this.stats.torn_writes += report.tornWrites;
    this.held.set(node.id, []);
    this.forgetClients(node.id);
    this.leadership.delete(node.id);
    this.trace(`${this.now} crash ${node.id}: lost ${report.lostWrites} unsynced writes, tore ${report.tornWrites}`);
    this.at(this.now + restartAfter, { kind: "restart", node: node.id });
  }

  // =================================================================== strikes (targeted nemeses)

  /**
   * Called after every event for a node that leads `term`: a new leader may be struck before its
   * no-op commits (a later-term entry it wrote survives only on it, an earlier-term entry it
   * replicated may be counted), and a leader whose commit just advanced for the first time in its
   * term may be struck at that very moment (figure 8: a leader that committed an earlier-term entry
   * by counting must not lose it to the node holding a conflicting later-term one).
   */
  private watchLeader(node: SimNode, term: number, commit: number): void {
    const seen = this.leadership.get(node.id);
    if (seen === undefined || seen.term !== term) {
      this.leadership.set(node.id, { term, commitAtElection: commit, committedInTerm: false });
      this.maybeStrike(node.id, "elected", term, this.params.strikes.onElection);
      return;
    }
    if (!seen.committedInTerm && commit > seen.commitAtElection) {
      seen.committedInTerm = true;
      this.maybeStrike(node.id, "first-commit", term, this.params.strikes.onFirstCommit);
    }
  }

  private maybeStrike(node: number, reason: Strike["reason"], leaderTerm: number | undefined, probability: number): void {
    if (this.phase !== "safety" || !this.strikeRandom.chance(probability)) return;
    const random = this.strikeRandom;
    const period = Math.ceil(this.tickPeriod(node));
    let delay: number;
    switch (reason) {
      // Within a few ticks, often at once: before the no-op is durable, sent or acknowledged.
      case "elected":
        delay = random.chance(0.4) ? 0 : random.between(1, 3 * period);
        break;
      // At once: the messages the leader sent with the commit are still in flight.
      case "first-commit":
        delay = random.chance(0.7) ? 0 : random.between(1, period);
        break;
      // Within the disk's sync delay: a correct node made the vote durable before answering.
      case "voted":
        delay = random.between(0, this.params.syncDelayMax);
        break;
    }
    const isolate = reason !== "voted" && random.chance(this.params.strikes.isolateProbability);
    this.at(this.now + delay, { kind: "strike", strike: { node, reason, leaderTerm, isolate } });
  }

  private strike(strike: Strike): void {
    if (this.phase !== "safety") return;
    const node = this.node(strike.node);
    if (!node.up || node.driver === undefined) return;
    if (strike.leaderTerm !== undefined) {
      const core = node.driver.raft;
      if (core.softState().role !== Role.LEADER || core.hardState().term !== strike.leaderTerm) return;
    }
    this.stats.strikes++;
    const random = this.strikeRandom;
    if (strike.isolate) {
      const description = this.network.isolate(node.id);
      this.partitionGeneration++;
      this.stats.partitions++;
      this.trace(`${this.now} strike (${strike.reason}): partition: ${description}`);
      this.at(this.now + random.between(50, 1500), { kind: "heal-partition", generation: this.partitionGeneration });
      return;
    }
    this.trace(`${this.now} strike (${strike.reason}) on ${node.id}`);
    this.crash(node, random.between(1, Math.ceil(this.params.strikes.restartTicksMax * this.tickPeriod(node.id))));
  }

  private transfer(): void {
    const leader = this.leader();
    if (leader === undefined) return;
    const voters = leader.driver!.raft.currentConfig().voters.filter((id) => id !== leader.id);
    if (voters.length === 0) return;
    const to = this.faultRandom.pick(voters);
    const result = this.guard(leader, () => leader.driver!.input((core) => core.transferLeader(to)));
    if (result?.ok !== true) return;
    this.stats.transfers++;
    this.trace(`${this.now} transfer leadership ${leader.id} -> ${to}`);
  }

  /** One single-server change that keeps 3 to 5 voters. */
  private changeMembership(): void {
    if (this.stats.membership_changes >= SIM_MEMBERSHIP_CHANGES_MAX) return;
    const leader = this.leader();
    if (leader === undefined) return;
    const config = leader.driver!.raft.currentConfig();
    const members = [...config.voters, ...config.learners];
    const options: MembershipChange[] = [];
    for (const id of NODE_IDS) {
      const node = id as never;
      if (!members.includes(node)) options.push({ type: "ADD_LEARNER", node });
    }
    for (const node of config.learners) {
      if (config.voters.length < 5) options.push({ type: "PROMOTE_LEARNER", node });
      options.push({ type: "REMOVE_NODE", node });
    }
    if (config.voters.length > 3) for (const node of config.voters) options.push({ type: "REMOVE_NODE", node });
    if (options.length === 0) return;
    const change = this.faultRandom.pick(options);
    const result = this.guard(leader, () => leader.driver!.input((core) => core.changeMembership(change)));
    if (result?.ok !== true) return;
    this.stats.membership_changes++;
    this.trace(`${this.now} membership: ${change.type} ${change.node} at index ${result.index} (leader ${leader.id})`);
  }

  // =================================================================== clients

  private propose(marker: boolean): string | undefined {
    const node = marker ? this.leader() : this.clientTarget();
    if (node === undefined) return undefined;
    const count = marker ? 1 : this.clientRandom.between(1, 3);
    const number = ++this.proposalCount;
    const entries: ProposedEntry[] = [];
    for (let i = 0; i < count; i++) {
      const big = !marker && this.clientRandom.chance(this.params.bigPayloadProbability);
      const text = `${marker ? "marker" : "p"}${number}.${i}`;
      const payload = big ? Buffer.alloc(this.clientRandom.between(16, 100) * 1024, text) : Buffer.from(text);
      entries.push({ kind: RecordKind.EVENTS, tenant: `t${number % 3}`, payload });
    }
    const result = this.guard(node, () => node.driver!.input((core) => core.propose(entries)));
    if (result === undefined) return undefined;
    if (!result.ok) {
      this.leaderHint = result.leaderHint !== 0 ? result.leaderHint : this.clientRandom.pick(NODE_IDS);
      return undefined;
    }
    const key = proposalKey(node.id, node.incarnation, result.lastIndex);
    const last = entryId({ ...entries[entries.length - 1]!, term: result.term });
    this.proposals.set(key, { node: node.id, incarnation: node.incarnation, lastIndex: result.lastIndex, last, marker });
    this.trace(`${this.now} client: ${node.id} accepted proposal ${number} at ${result.firstIndex}..${result.lastIndex} term ${result.term}`);
    return key;
  }

  private read(): void {
    const node = this.clientTarget();
    if (node === undefined) return;
    const requestId = ++this.readCount;
    this.reads.set(requestId, { node: node.id, incarnation: node.incarnation, floor: this.oracles.acknowledgedIndex });
    const result = this.guard(node, () => node.driver!.input((core) => core.readIndex(requestId)));
    if (result?.ok !== true) {
      this.reads.delete(requestId);
      if (result !== undefined && !result.ok) this.leaderHint = result.leaderHint !== 0 ? result.leaderHint : this.clientRandom.pick(NODE_IDS);
    }
  }

  /** The node a client talks to: mostly the last leader hint, sometimes any running node. */
  private clientTarget(): SimNode | undefined {
    const hinted = this.nodes.get(this.leaderHint);
    if (hinted !== undefined && hinted.up && !hinted.paused && this.clientRandom.chance(0.8)) return hinted;
    const running = this.upNodes().filter((node) => !node.paused);
    return running.length === 0 ? undefined : this.clientRandom.pick(running);
  }

  /** The node's process died: its clients get no answer (their writes may or may not commit). */
  private forgetClients(id: number): void {
    for (const [key, proposal] of this.proposals) if (proposal.node === id) this.proposals.delete(key);
    for (const [key, read] of this.reads) if (read.node === id) this.reads.delete(key);
    if (this.marker.state === "pending" && !this.proposals.has(this.marker.key)) this.marker = { state: "none" };
  }

  // =================================================================== liveness

  private async startLiveness(): Promise<void> {
    this.phase = "liveness";
    this.trace(`${this.now} liveness phase: heal everything, no more faults`);
    this.network.healAll();
    for (const node of this.nodes.values()) {
      if (!node.up) await this.startNode(node);
      else if (node.paused) this.resume(node);
    }
    this.livenessDeadline = this.now + SIM_LIVENESS_TICKS_MAX * Math.max(...this.params.tickPeriods);
    this.at(this.now, { kind: "marker" });
  }

  /** Proposes a marker until one is acknowledged, then waits for every member to converge. */
  private checkLiveness(): void {
    if (this.converged()) {
      this.trace(`${this.now} converged`);
      this.finished = true;
      return;
    }
    if (this.now > this.livenessDeadline) {
      this.fail(OracleName.LIVENESS, `no convergence within ${SIM_LIVENESS_TICKS_MAX} ticks after healing: ${this.describeNodes()}`);
      return;
    }
    const period = Math.max(...this.params.tickPeriods);
    const stale = this.marker.state === "pending" && this.now - this.marker.since > 4 * this.params.electionTicks * period;
    if (this.marker.state === "none" || stale) {
      const key = this.propose(true);
      if (key !== undefined) this.marker = { state: "pending", key, since: this.now };
    }
    this.at(this.now + 2 * period, { kind: "marker" });
  }

  private converged(): boolean {
    if (this.marker.state !== "acknowledged") return false;
    const leader = this.leader();
    if (leader === undefined) return false;
    const config = leader.driver!.raft.currentConfig();
    const base = leader.driver!.raft.status();
    const members: number[] = [...config.voters, ...config.learners];
    for (const id of members) {
      const node = this.node(id);
      if (!node.up || node.driver === undefined) return false;
      const status = node.driver.raft.status();
      if (status.lastIndex !== base.lastIndex || status.commit !== base.lastIndex || status.applied !== base.lastIndex) return false;
    }
    for (const proposal of this.proposals.values()) {
      // A member applied everything up to the last index, so its clients have their answers; a node
      // removed from the cluster no longer applies, and its clients time out.
      const live = this.node(proposal.node).incarnation === proposal.incarnation && members.includes(proposal.node);
      if (live && proposal.lastIndex <= base.lastIndex) {
        this.fail(OracleName.LIVENESS, `the proposal ending at ${proposal.lastIndex} at node ${proposal.node} never completed`);
        return false;
      }
    }
    return true;
  }

  // =================================================================== helpers

  private at(time: number, event: SimEvent): void {
    this.heap.push(time, event);
  }

  private fail(oracle: OracleName, message: string): void {
    const first = this.oracles.violation === undefined;
    this.oracles.fail(oracle, message);
    if (first && this.oracles.violation !== undefined) this.trace(`${this.now} VIOLATION ${oracle}: ${message}`);
  }

  private node(id: number): SimNode {
    const node = this.nodes.get(id);
    invariant(node !== undefined, `no node ${id}`);
    return node;
  }

  private tickPeriod(id: number): number {
    return this.params.tickPeriods[id - 1]!;
  }

  private upNodes(): SimNode[] {
    return [...this.nodes.values()].filter((node) => node.up);
  }

  /** The running leader with the highest term, if any. */
  private leader(): SimNode | undefined {
    let best: SimNode | undefined;
    let bestTerm = -1;
    for (const node of this.nodes.values()) {
      if (!node.up || node.paused || node.driver === undefined) continue;
      const core = node.driver.raft;
      if (core.softState().role !== Role.LEADER) continue;
      const term = core.hardState().term;
      if (term > bestTerm) {
        best = node;
        bestTerm = term;
      }
    }
    return best;
  }

  private describeNodes(): string {
    return [...this.nodes.values()]
      .map((node) => {
        if (!node.up || node.driver === undefined) return `${node.id}: down`;
        const s = node.driver.raft.status();
        return `${node.id}: ${s.role} term ${s.term} last ${s.lastIndex} commit ${s.commit} applied ${s.applied} voters (${s.config.voters.join(" ")}) learners (${s.config.learners.join(" ")})`;
      })
      .join("; ");
  }
}

function proposalKey(node: number, incarnation: number, lastIndex: number): string {
  return `${node}/${incarnation}/${lastIndex}`;
}

function describeMessage(m: Message): string {
  const head = `${m.from}->${m.to} ${m.type} t${m.term}`;
  switch (m.type) {
    case "APPEND":
      return `${head} prev ${m.prevTerm}/${m.prevIndex} entries ${m.entries.length} commit ${m.commit}`;
    case "APPEND_RESPONSE":
      return m.success ? `${head} match ${m.matchIndex}` : `${head} reject ${m.rejectedPrevIndex} hint ${m.conflictTerm}/${m.conflictIndex}`;
    case "PRE_VOTE":
    case "VOTE":
      return `${head} last ${m.lastLogTerm}/${m.lastLogIndex}${m.leaderTransfer ? " transfer" : ""}`;
    case "PRE_VOTE_RESPONSE":
    case "VOTE_RESPONSE":
      return `${head} ${m.granted ? "granted" : "rejected"}`;
    case "HEARTBEAT":
      return `${head} commit ${m.commit} round ${m.readRound}`;
    case "HEARTBEAT_RESPONSE":
      return `${head} round ${m.readRound}`;
    case "TIMEOUT_NOW":
      return head;
  }
}

export function describeError(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return String(e);
}

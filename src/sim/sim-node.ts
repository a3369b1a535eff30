/**
 * One simulated machine: its disk (a MemoryFileSystem that outlives crashes) and, while it is up,
 * one process: DataDir + SegmentedLog on a SimFileSystem, the production RaftCore and RaftDriver.
 *
 * The ports handed to the driver are thin wrappers that keep the shadows the oracles compare:
 * `accepted` (every entry handed to the log, in the order the driver handed them, minus cut
 * suffixes) and `durable` (what the log acknowledged as durable), plus the last durably saved term
 * and vote. A restart rebuilds the core from the data dir alone, as a real restart would: term and
 * vote from meta/state.json, the log's term runs, and the membership history from the log's
 * MEMBERSHIP entries; commit and applied start at 0 (the driver persists neither).
 */

import { RaftDriver, type DriverPorts, type LogStoragePort } from "../consensus/driver.js";
import { startStateFromDisk } from "../consensus/driver-start.js";
import { RaftCore } from "../consensus/raft.js";
import type { MembershipConfig, Message, ReadState } from "../consensus/types.js";
import { DataDir } from "../log/data-dir.js";
import { MemoryFileSystem } from "../log/memory-fs.js";
import type { SegmentedLog } from "../log/segmented-log.js";
import type { LogEntry, NodeId } from "../log/types.js";
import { APPEND_RPC_BYTES_MAX, INFLIGHT_BYTES_MAX, INFLIGHT_MESSAGES_MAX } from "../limits.js";
import { entryId, type EntryId, type HardStateSeen, type Oracles } from "./oracles.js";
import type { SimParams } from "./params.js";
import { RandomStream, Stream } from "./random-streams.js";
import { SimFileSystem, type DiskClock } from "./sim-fs.js";

export const SIM_CLUSTER_ID = "5e5e5e5e-0000-4000-8000-000000000001";
const DATA_DIR = "/data";

/**
 * Bugs the simulator can plant in the ports, to prove that the oracles catch what they claim to
 * (test/sim only; a real run plants none).
 */
export interface PlantedBugs {
  /** saveTermAndVote resolves without writing anything: a vote may be forgotten by a crash. */
  readonly forgetVotes?: boolean;
  /** The log's append resolves before the entries are durable: an acknowledged entry may be lost. */
  readonly acknowledgeBeforeDurable?: boolean;
  /**
   * saveTermAndVote resolves at once while the write goes on: the driver answers a vote request
   * before the vote is durable, and a crash may forget it (a driver that does not await the save).
   */
  readonly answerBeforeVoteDurable?: boolean;
}

/** What a node needs from the simulator. */
export interface NodeHost extends DiskClock {
  readonly oracles: Oracles;
  readonly params: SimParams;
  readonly bugs: PlantedBugs;
  send(messages: readonly Message[]): void;
  trace(line: string): void;
  applied(node: SimNode, entry: LogEntry): void;
  readStates(node: SimNode, states: readonly ReadState[]): void;
  failed(node: SimNode, error: unknown): void;
}

export class SimNode {
  /** The disk: survives crashes. */
  readonly disk = new MemoryFileSystem();
  /** Counts starts; 0 before the first. A port callback of an older incarnation is ignored. */
  incarnation = 0;
  up = false;
  paused = false;
  fs: SimFileSystem | undefined;
  dir: DataDir | undefined;
  driver: RaftDriver | undefined;
  /** Entries handed to the log: accepted[i - 1] is index i. */
  accepted: EntryId[] = [];
  /** Entries the log acknowledged durable. Invariant: a prefix of what `accepted` held when they were appended. */
  durable: EntryId[] = [];
  /** Set while a truncation is under way: a crash may or may not have completed it. */
  truncatingFrom: number | undefined;
  /** Term and vote that are durable in meta/state.json. */
  saved = { term: 0, vote: 0 };
  /** Entries applied since this incarnation started. */
  appliedCount = 0;
  /** The hard state the monotonicity oracle saw last in this incarnation. */
  seen: HardStateSeen = { term: 0, vote: 0, commit: 0 };
  role = "FOLLOWER";

  constructor(
    readonly id: number,
    /** The configuration this machine was installed with: the initial voters, or empty for a spare. */
    private readonly bootstrap: MembershipConfig,
    private readonly host: NodeHost,
  ) {}

  /** Starts a process on this machine: recovers the data dir (disk operations complete at once), builds core and driver. */
  async start(): Promise<void> {
    this.incarnation++;
    const host = this.host;
    const fs = new SimFileSystem(this.disk, host, this.id);
    const dir = await DataDir.open({ path: DATA_DIR, fs, nodeId: this.id, clusterId: SIM_CLUSTER_ID });
    const entries = await readWholeLog(dir.log);
    const recovered = entries.map(entryId);
    if (this.incarnation > 1) {
      const guaranteed = this.truncatingFrom === undefined ? this.durable : this.durable.slice(0, this.truncatingFrom - 1);
      host.oracles.observeRecovery(this.id, this.saved, dir.meta, guaranteed, recovered);
      const tornAt = dir.log.recovery.tornAt;
      host.trace(
        `  ${this.id}: recovered term ${dir.meta.term} vote ${dir.meta.vote}, ${recovered.length} entries (${this.durable.length} were durable)` +
          (tornAt === undefined ? "" : `, cut a torn tail at index ${tornAt.index}`),
      );
    }
    this.accepted = recovered;
    this.durable = recovered.slice();
    this.truncatingFrom = undefined;
    for (let i = 1; i <= recovered.length; i++) host.oracles.observeEntry(this.id, this.accepted, i);
    this.saved = { term: dir.meta.term, vote: dir.meta.vote };
    const core = new RaftCore(
      {
        id: this.id as NodeId,
        electionTicks: host.params.electionTicks,
        heartbeatTicks: host.params.heartbeatTicks,
        preVote: true,
        checkQuorum: true,
        entriesPerRpcMax: host.params.entriesPerRpcMax,
        appendRpcBytesMax: APPEND_RPC_BYTES_MAX,
        inflightMessagesMax: INFLIGHT_MESSAGES_MAX,
        inflightBytesMax: INFLIGHT_BYTES_MAX,
        prng: new RandomStream(host.params.seed, Stream.CORE + this.id * 1000 + this.incarnation),
        onEvent: (line) => host.trace(`  ${this.id}: ${line}`),
      },
      {
        // The production restart path: term and vote from meta, the committed configuration saved
        // there when it was applied, and the configurations after it in the log.
        ...(await startStateFromDisk(dir, this.bootstrap)),
      },
    );
    this.fs = fs;
    this.dir = dir;
    this.driver = new RaftDriver(core, this.ports(dir, this.incarnation));
    this.seen = { term: dir.meta.term, vote: dir.meta.vote, commit: 0 };
    this.appliedCount = 0;
    this.role = "FOLLOWER";
    this.up = true;
    this.paused = false;
    fs.timed = true;
  }

  /** Power loss: the process dies with whatever it had in flight; the disk keeps what MemoryFileSystem.crash keeps. */
  crash(random: RandomStream): { lostWrites: number; tornWrites: number } {
    this.fs?.kill();
    this.up = false;
    this.paused = false;
    this.driver = undefined;
    this.dir = undefined;
    const report = this.disk.crash({
      random: () => random.fraction(),
      keepProbability: this.host.params.crashKeepProbability,
      tearProbability: this.host.params.crashTearProbability,
    });
    return { lostWrites: report.lostWrites, tornWrites: report.tornWrites };
  }

  private ports(dir: DataDir, incarnation: number): DriverPorts {
    const host = this.host;
    const current = () => this.incarnation === incarnation && this.up;
    const inner = dir.log;
    const log: LogStoragePort = {
      get firstIndex() {
        return inner.firstIndex;
      },
      get lastIndex() {
        return inner.lastIndex;
      },
      termRuns: () => inner.termRuns(),
      append: (entries) => {
        host.noteActivity();
        const first = entries[0]?.index;
        if (first === undefined) return inner.append(entries);
        this.accepted.length = Math.min(this.accepted.length, first - 1);
        const ids = entries.map((e) => entryId(e));
        for (const [i, id] of ids.entries()) {
          this.accepted.push(id);
          host.oracles.observeEntry(this.id, this.accepted, first + i);
        }
        const appended = inner.append(entries);
        const done = host.bugs.acknowledgeBeforeDurable === true ? Promise.resolve() : appended;
        return done.then(() => {
          if (!current()) return;
          this.durable.length = Math.min(this.durable.length, first - 1);
          this.durable.push(...ids);
        });
      },
      read: (from, to, bytesMax) => {
        host.noteActivity();
        return inner.read(from, to, bytesMax);
      },
      truncateSuffix: (from, committed) => {
        host.noteActivity();
        this.accepted.length = Math.min(this.accepted.length, from - 1);
        this.truncatingFrom = from;
        return inner.truncateSuffix(from, committed).then(() => {
          if (!current()) return;
          this.durable.length = Math.min(this.durable.length, from - 1);
          this.truncatingFrom = undefined;
        });
      },
    };
    return {
      log,
      hardState: {
        saveTermAndVote: (term, vote) => {
          host.noteActivity();
          const save = host.bugs.forgetVotes === true ? Promise.resolve() : dir.saveTermAndVote(term, vote);
          const saved = save.then(() => {
            if (current()) this.saved = { term, vote };
          });
          if (host.bugs.answerBeforeVoteDurable !== true) return saved;
          saved.catch((e: unknown) => {
            if (current()) host.failed(this, e);
          });
          return Promise.resolve();
        },
        saveCommittedMembership: (index, voters, learners) => {
          host.noteActivity();
          return dir.saveCommittedMembership(index, voters, learners);
        },
      },
      transport: {
        send: (messages) => {
          host.noteActivity();
          if (!current()) return;
          for (const message of messages) host.oracles.observeSend(this.id, message, this.saved);
          host.send(messages);
        },
      },
      stateMachine: {
        apply: (entries) => {
          host.noteActivity();
          if (!current()) return;
          for (const entry of entries) {
            host.oracles.observeApply(this.id, this.appliedCount, entry.index, entryId(entry));
            this.appliedCount++;
            host.applied(this, entry);
          }
        },
      },
      observer: {
        onHardState: (state) => {
          if (current() && state.commit > 0) host.oracles.observeCommit(this.id, this.accepted, state.commit, state.term);
        },
        onReadStates: (states) => {
          if (current()) host.readStates(this, states);
        },
        onFailure: (error) => {
          if (current()) host.failed(this, error);
        },
      },
    };
  }
}

/** The whole log, in bounded reads. */
async function readWholeLog(log: SegmentedLog): Promise<LogEntry[]> {
  const entries: LogEntry[] = [];
  const last = log.lastIndex;
  // Bounded: every read returns at least one entry.
  for (let from = log.firstIndex as number; from <= last; ) {
    const batch = await log.read(from, last + 1, 16 * 1024 * 1024);
    if (batch.length === 0) break;
    entries.push(...batch);
    from += batch.length;
  }
  return entries;
}


/**
 * The Ready driver: the only place consensus meets I/O (STYLE.md sections 1 and 2). It is written
 * against small ports, so the server runs it on the real disk and network and the simulator runs
 * the same code on the in-memory file system and a simulated network.
 *
 * Ordering rules (each one is tested in test/consensus/driver.test.ts):
 *
 * 1. A truncation the core asks for happens before the entries that replace the cut ones are
 *    appended, and never at or below the commit index (the log refuses that too).
 * 2. The entries of a Ready and its hard state (term, vote) are durable BEFORE any message of that
 *    Ready is handed to the transport. So a vote is never granted, and an append is never
 *    acknowledged, before the promise it makes survives a crash. A changed term or vote is made
 *    durable before the entries, so the saved term is never below the log's last term. The one
 *    exception: a leader's APPEND and HEARTBEAT messages of an already durable term may leave
 *    first (they promise nothing about the leader's own log; etcd-io/raft allows the same).
 * 3. Committed entries are applied after rule 2 (they may include the entries just persisted), in
 *    index order, one Ready at a time.
 * 4. `advance` is called only after all of the above; the next Ready is taken only after that.
 *    Inputs (`step`, `tick`, `propose`, ...) may arrive at any time; their output waits for the
 *    next Ready.
 * 5. After any port fails, the driver stops: it takes no further Ready, sends nothing more, and
 *    reports the failure. A node that cannot persist must not keep talking (its promises would
 *    not survive); the process restarts and recovers from what is on disk.
 */

import { RecordKind, type LogEntry, type LogIndex, type NodeId } from "../log/types.js";
import { decodeConfig } from "./membership.js";
import { invariant } from "../errors.js";
import type { RaftCore } from "./raft.js";
import type { CatchUpRequest, FetchRequest, HardState, Message, ReadState, Ready, SoftState, TermRun } from "./types.js";

/** The log storage the driver persists to; `SegmentedLog` implements it. */
export interface LogStoragePort {
  readonly firstIndex: LogIndex;
  readonly lastIndex: LogIndex;
  termRuns(): readonly TermRun[];
  /** Resolves once the entries are durable (fsync mode). */
  append(entries: readonly { term: number; index: number; kind: number; tenant: string; payload: Uint8Array }[]): Promise<void>;
  /** Entries in [from, to), at most `maxBytes` of payload but at least one entry. */
  read(from: number, to: number, maxBytes: number): Promise<LogEntry[]>;
  /** Cuts every entry from `fromIndex` on; refuses fromIndex <= committedIndex. */
  truncateSuffix(fromIndex: number, committedIndex: number): Promise<void>;
}

/** Where term and vote are made durable (meta/state.json through `DataDir.saveTermAndVote`). */
export interface HardStatePort {
  saveTermAndVote(term: number, vote: number): Promise<void>;
  /**
   * Records a configuration once its MEMBERSHIP entry is applied (hence committed), so a restart
   * starts from it instead of every configuration in the log (see driver-start.ts).
   */
  saveCommittedMembership?(index: number, voters: readonly number[], learners: readonly number[]): Promise<void>;
}

/** Sends messages to peers. Delivery is best effort: it may drop, delay or reorder them. */
export interface TransportPort {
  send(messages: readonly Message[]): void;
}

/** Applies committed entries to the state machine (the projections), in index order. */
export interface StateMachinePort {
  apply(entries: readonly LogEntry[]): Promise<void> | void;
}

/** Everything the driver reports outward (status, metrics, waiting readers and proposers). */
export interface DriverObserver {
  onSoftState?(state: SoftState): void;
  onHardState?(state: HardState): void;
  onReadStates?(states: readonly ReadState[]): void;
  /** Committed entries, after they were applied. */
  onApplied?(entries: readonly LogEntry[]): void;
  /** A port failed; the driver has stopped. */
  onFailure?(error: unknown): void;
  /**
   * How long one Ready's phases took, in the driver's clock units: `persist` (truncate, term/vote,
   * entries: everything before its messages may leave) and `apply`.
   */
  onPhase?(phase: "persist" | "apply", duration: number): void;
}

/** The time source for phase durations (the server passes performance.now; the simulator its own clock). */
export interface DriverClock {
  now(): number;
}

/**
 * Streams whole committed segments to a follower that needs entries the leader's log no longer
 * holds (or is far behind); resolves with the last index sent, or undefined when it failed.
 * The server wires this to gRPC; without it, catch-up requests are answered as failed.
 */
export interface CatchUpPort {
  streamSegments(request: CatchUpRequest): Promise<LogIndex | undefined>;
}

export interface DriverPorts {
  log: LogStoragePort;
  hardState: HardStatePort;
  transport: TransportPort;
  stateMachine: StateMachinePort;
  catchUp?: CatchUpPort;
  observer?: DriverObserver;
  /** Needed only for `observer.onPhase`. */
  clock?: DriverClock;
}

export class RaftDriver {
  /** The loop currently draining Ready batches, if any. Invariant: at most one. */
  private loop: Promise<void> | undefined;
  private failure: unknown = undefined;
  private stopped = false;
  /** What is durable in meta/state.json; written only when term or vote changes. */
  private savedTerm: number;
  private savedVote: number;
  /** Highest commit index the driver has seen, the floor for truncations. */
  private commitIndex: number;
  /** Fetches being read from the log, by start index (the core bounds how many it asks for). */
  private readonly fetching = new Set<number>();

  constructor(
    private readonly core: RaftCore,
    private readonly ports: DriverPorts,
  ) {
    const hs = core.hardState();
    this.savedTerm = hs.term;
    this.savedVote = hs.vote;
    this.commitIndex = hs.commit;
  }

  /** The core, for read-only queries (status). Inputs go through the driver so it can run the loop. */
  get raft(): RaftCore {
    return this.core;
  }

  /** The failure that stopped the driver, if one did. */
  get failed(): unknown {
    return this.failure;
  }

  /** Feeds a message from a peer. */
  step(message: Message): void {
    if (this.stopped) return;
    this.core.step(message);
    this.kick();
  }

  /** One unit of logical time (the server's ticker or the simulator's clock calls this). */
  tick(): void {
    if (this.stopped) return;
    this.core.tick();
    this.kick();
  }

  /** Runs `input` against the core (propose, readIndex, transferLeader, changeMembership, campaign), then the loop. */
  input<T>(input: (core: RaftCore) => T): T {
    invariant(!this.stopped, "input after the driver stopped");
    const result = input(this.core);
    this.kick();
    return result;
  }

  /** Resolves when no Ready is being handled and none is waiting. */
  async idle(): Promise<void> {
    // Bounded: each pass waits for one loop, which ends when the core has nothing ready.
    while (this.loop !== undefined) await this.loop;
  }

  /** Stops taking Ready batches; what is in flight finishes. Idempotent. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.idle();
  }

  private kick(): void {
    if (this.stopped || this.loop !== undefined) return;
    this.loop = this.run().finally(() => {
      this.loop = undefined;
    });
  }

  private async run(): Promise<void> {
    // Bounded: every pass handles one Ready; the core produces output only in response to inputs.
    while (!this.stopped && this.core.hasReady()) {
      const ready = this.core.ready();
      try {
        await this.handle(ready);
      } catch (e) {
        this.stopped = true;
        this.failure = e;
        this.ports.observer?.onFailure?.(e);
        return;
      }
      this.core.advance(ready);
    }
  }

  private async handle(ready: Ready): Promise<void> {
    const { log, hardState, transport, stateMachine, observer } = this.ports;
    if (ready.softState !== undefined) observer?.onSoftState?.(ready.softState);
    const clock = this.ports.clock;
    const persistStarted = clock?.now();
    // Rule 2, the leader's exception (etcd-io/raft: "messages may be sent while entries from the
    // same batch are being persisted"): a leader's AppendEntries and heartbeats of a term that is
    // already durable may leave before its own copy of the entries is written, so the disk write
    // and the replication overlap. They promise nothing about this node's log: the core counts
    // its own entries towards a commit only once they are durable. Everything else (answers,
    // votes, messages of a term not yet durable) still waits.
    let messages = ready.messages;
    if (messages.length > 0 && ready.truncateFrom === undefined) {
      const early = messages.filter((m) => (m.type === "APPEND" || m.type === "HEARTBEAT") && m.term === this.savedTerm);
      if (early.length > 0) {
        transport.send(early);
        messages = messages.filter((m) => !early.includes(m));
      }
    }
    // Rule 1: cut before appending what replaces the cut entries.
    if (ready.truncateFrom !== undefined) await log.truncateSuffix(ready.truncateFrom, this.commitIndex);
    // Rule 2: term/vote and entries durable before any message leaves. A new term or vote is
    // made durable first, so that after any crash meta/state.json's term is at least the term of
    // every entry in the log (Raft's currentTerm >= lastLogTerm, which etcd keeps by writing both
    // in one WAL record). Term changes are rare, so the extra wait costs little.
    const hs = ready.hardState;
    if (hs !== undefined && (hs.term !== this.savedTerm || hs.vote !== this.savedVote)) {
      await hardState.saveTermAndVote(hs.term, hs.vote);
    }
    if (ready.entries.length > 0) await log.append(ready.entries);
    if (hs !== undefined) {
      this.savedTerm = hs.term;
      this.savedVote = hs.vote;
      this.commitIndex = Math.max(this.commitIndex, hs.commit);
      observer?.onHardState?.(hs);
    }
    if (persistStarted !== undefined && (ready.entries.length > 0 || hs !== undefined)) observer?.onPhase?.("persist", clock!.now() - persistStarted);
    if (messages.length > 0) transport.send(messages);
    // Rule 3: apply after persistence, in order.
    if (ready.committedEntries.length > 0) {
      const applyStarted = clock?.now();
      await stateMachine.apply(ready.committedEntries);
      const membership = ready.committedEntries.filter((e) => e.kind === RecordKind.MEMBERSHIP).at(-1);
      if (membership !== undefined && hardState.saveCommittedMembership !== undefined) {
        const config = decodeConfig(membership.payload);
        await hardState.saveCommittedMembership(membership.index, config.voters, config.learners);
      }
      if (applyStarted !== undefined) observer?.onPhase?.("apply", clock!.now() - applyStarted);
      observer?.onApplied?.(ready.committedEntries);
    }
    if (ready.readStates.length > 0) observer?.onReadStates?.(ready.readStates);
    for (const fetch of ready.fetches) this.startFetch(fetch);
    for (const request of ready.catchUps) this.startCatchUp(request);
  }

  /** Hands a catch-up to the streaming port; its outcome goes back to the core whenever it ends. */
  private startCatchUp(request: CatchUpRequest): void {
    const port = this.ports.catchUp;
    const done = port === undefined ? Promise.resolve(undefined) : port.streamSegments(request).catch(() => undefined);
    void done.then((lastIndexSent) => {
      if (this.stopped) return;
      this.core.catchUpFinished(request.to, lastIndexSent);
      this.kick();
    });
  }

  /** Reads entries the core no longer holds and hands them back; a failed read stops the driver. */
  private startFetch(fetch: FetchRequest): void {
    if (this.fetching.has(fetch.from)) return;
    this.fetching.add(fetch.from);
    const to = Math.min(fetch.to, this.ports.log.lastIndex + 1);
    const read = fetch.from >= to ? Promise.resolve([]) : this.ports.log.read(fetch.from, to, fetch.bytesMax);
    read.then(
      (entries) => {
        this.fetching.delete(fetch.from);
        if (this.stopped) return;
        this.core.entriesLoaded(fetch, entries);
        this.kick();
      },
      (e: unknown) => {
        this.fetching.delete(fetch.from);
        this.stopped = true;
        this.failure = e;
        this.ports.observer?.onFailure?.(e);
      },
    );
  }
}

/** The ids a message set is addressed to (for transports that batch per peer). */
export function recipients(messages: readonly Message[]): NodeId[] {
  return [...new Set(messages.map((m) => m.to))];
}

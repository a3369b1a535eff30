/**
 * The pure, synchronous Raft core (in the manner of etcd-io/raft `raft.go` and `rawnode.go`).
 *
 * Inputs: `step` (a message from a peer), `tick` (one unit of logical time), `propose`,
 * `readIndex`, `transferLeader`, `changeMembership`, `campaign`, and the answers to its requests to
 * the driver, `entriesLoaded` and `catchUpFinished`. Output: a `Ready`
 * batch (types.ts documents the order the driver must handle it in), acknowledged by `advance`.
 * No I/O, no timers, no wall clock; randomness only from the injected PRNG (STYLE.md section 1).
 *
 * Roles are step functions installed on role change (`stepFollower`, `stepCandidate`, `stepLeader`).
 * Membership takes effect when its entry is appended (membership.ts says why that is safe).
 */

import { ErrorCode, assertNever, invariant } from "../errors.js";
import { RecordKind, type LogEntry, type LogIndex, type NodeId, type Term } from "../log/types.js";
import {
  APPEND_RPC_BYTES_MAX,
  APPLY_BATCH_BYTES_MAX,
  ENTRIES_PER_RPC_MAX,
  FETCH_REQUESTS_MAX,
  MEMBERSHIP_HISTORY_MAX,
  OUTBOX_MESSAGES_MAX,
  PROPOSAL_ENTRIES_MAX,
  READ_INDEX_PENDING_MAX,
  RECORD_BYTES_MAX,
  TENANT_ID_BYTES_MAX,
  UNSTABLE_BYTES_MAX,
} from "../limits.js";
import {
  applyChange,
  decodeConfig,
  describeConfig,
  encodeConfig,
  isMember,
  isVoter,
  quorumMatchIndex,
  quorumSize,
} from "./membership.js";
import type { Prng } from "./prng.js";
import { Progress, ProgressState } from "./progress.js";
import { RaftLog, type LogState } from "./raft-log.js";
import {
  NO_NODE,
  Role,
  type Accepted,
  type AppendRequest,
  type AppendResponse,
  type CatchUpRequest,
  type ChangeResult,
  type FetchRequest,
  type HardState,
  type Heartbeat,
  type HeartbeatResponse,
  type MembershipAt,
  type MembershipChange,
  type MembershipConfig,
  type Message,
  type ProposeResult,
  type ProposedEntry,
  type ReadState,
  type Ready,
  type Refusal,
  type SoftState,
  type VoteRequest,
  type VoteResponse,
} from "./types.js";

/** Settings of one core. Tick counts are in calls to `tick()`; the server decides how long a tick is. */
export interface RaftConfig {
  readonly id: NodeId;
  /** A follower campaigns after a random timeout in [electionTicks, 2 * electionTicks). */
  readonly electionTicks: number;
  /** A leader sends heartbeats every `heartbeatTicks`. Invariant: heartbeatTicks < electionTicks. */
  readonly heartbeatTicks: number;
  /** Ask for pre-votes before bumping the term, so a node back from a partition cannot disrupt a leader. */
  readonly preVote: boolean;
  /** A leader not heard from a quorum within electionTicks steps down; followers honour a leader lease. */
  readonly checkQuorum: boolean;
  /** `max_entries_per_rpc`. */
  readonly entriesPerRpcMax: number;
  /** Payload bytes per AppendEntries at most (at least one entry is always sent). */
  readonly appendRpcBytesMax: number;
  /** AppendEntries in flight per follower at most. */
  readonly inflightMessagesMax: number;
  /** Payload bytes in flight per follower at most. */
  readonly inflightBytesMax: number;
  readonly prng: Prng;
  /**
   * A follower more than this many entries behind is caught up by segment streaming
   * (Ready.catchUps) rather than by AppendEntries; undefined: only when the entries are not in this
   * node's log at all.
   */
  readonly catchUpLagEntries?: number;
  /** Receives one line per notable event (elections, step-downs, truncations); for logs and transcripts. */
  readonly onEvent?: (line: string) => void;
}

/** What the core is built from at start (or restart): all of it read from disk by the driver. */
export interface RaftStartState {
  readonly hardState: HardState;
  readonly log: LogState;
  /**
   * The newest configuration at or below `hardState.commit` (index 0 for the bootstrap
   * configuration), then every configuration in the log after it, in index order. A new node
   * joining an existing cluster starts with `[{ index: 0, config: EMPTY_CONFIG }]` and learns the
   * configuration from the leader's log.
   */
  readonly membership: readonly MembershipAt[];
  /**
   * The last index applied to the state machine (the projections); entries after it are handed out
   * again. Invariant: appliedIndex <= hardState.commit. A driver that does not persist the commit
   * index may pass commit = appliedIndex: only committed entries are ever applied, and the rest of
   * the commit index is learned again from the leader.
   */
  readonly appliedIndex: LogIndex;
  /**
   * A node that rejoins with an empty log (its disk was lost) may have forgotten a vote it cast and
   * entries that counted towards a commit. Until its commit index reaches this index (the highest
   * log index any peer held when it rejoined) it grants no votes and never campaigns; then it
   * records the leader it follows as its vote for the current term. 0 or absent: a normal start.
   */
  readonly recoverUntilIndex?: LogIndex;
}

/** A snapshot of the core's state for status pages, metrics and tests. */
export interface RaftStatus {
  readonly id: NodeId;
  readonly role: Role;
  readonly term: Term;
  readonly vote: NodeId;
  readonly leader: NodeId;
  readonly commit: LogIndex;
  readonly applied: LogIndex;
  readonly lastIndex: LogIndex;
  readonly lastTerm: Term;
  readonly config: MembershipConfig;
  readonly leadTransferee: NodeId;
  readonly progress: ReadonlyArray<{
    readonly id: NodeId;
    readonly match: LogIndex;
    readonly next: LogIndex;
    readonly state: ProgressState;
    readonly inflightMessages: number;
    readonly inflightBytes: number;
    readonly recentActive: boolean;
  }>;
}

/** Messages a role step function handles; vote requests are answered before roles see anything. */
type RoleMessage = Exclude<Message, VoteRequest>;

interface PendingRead {
  readonly requestId: number;
  readonly index: LogIndex;
  /** Heartbeat round sent for this read; an answer to any round >= this one confirms it. */
  readonly round: number;
  readonly acks: Set<NodeId>;
}

/** The payload of the no-op a new leader appends: one byte, since the log refuses empty payloads. */
const NOOP_PAYLOAD = new Uint8Array([0]);

/** Checks the settings; the server turns a failure into a config error naming the key. */
export function validateRaftConfig(config: RaftConfig): string | undefined {
  if (!Number.isSafeInteger(config.id) || config.id <= 0) return `node id must be a positive integer, got ${config.id}`;
  if (!Number.isSafeInteger(config.heartbeatTicks) || config.heartbeatTicks < 1) return "heartbeat ticks must be >= 1";
  if (!Number.isSafeInteger(config.electionTicks) || config.electionTicks <= config.heartbeatTicks) {
    return "election ticks must be an integer greater than heartbeat ticks";
  }
  if (config.entriesPerRpcMax < 1 || config.entriesPerRpcMax > ENTRIES_PER_RPC_MAX) {
    return `max_entries_per_rpc must be in [1, ${ENTRIES_PER_RPC_MAX}], got ${config.entriesPerRpcMax}`;
  }
  if (config.appendRpcBytesMax < 1 || config.appendRpcBytesMax > APPEND_RPC_BYTES_MAX) {
    return `append bytes per message must be in [1, ${APPEND_RPC_BYTES_MAX}]`;
  }
  if (config.inflightMessagesMax < 1 || config.inflightBytesMax < 1) return "the in-flight window must allow one message";
  if (config.catchUpLagEntries !== undefined && (!Number.isSafeInteger(config.catchUpLagEntries) || config.catchUpLagEntries < 1)) {
    return `the catch-up lag must be a positive integer, got ${config.catchUpLagEntries}`;
  }
  return undefined;
}

export class RaftCore {
  readonly id: NodeId;
  private readonly config: RaftConfig;
  private readonly log: RaftLog;

  /** Invariant: never decreases. */
  private term: Term;
  /** Vote cast in `term`, or NO_NODE. */
  private vote: NodeId;
  /** The leader of `term` as far as this node knows, or NO_NODE. Invariant: role LEADER => lead === id. */
  private lead: NodeId = NO_NODE;
  private role: Role = Role.FOLLOWER;
  private stepRole: (message: RoleMessage) => void;

  /**
   * Configurations in the log: the newest at or below commit, then the later ones, in index order.
   * The last is the one in force. Invariant: 1 <= length <= MEMBERSHIP_HISTORY_MAX, indexes increasing.
   */
  private configs: MembershipAt[];

  /** Leader only: one entry per member other than this node. */
  private readonly progress = new Map<NodeId, Progress>();
  /** Candidate and pre-candidate only: the answers so far, voters only. */
  private readonly votes = new Map<NodeId, boolean>();

  /** Ticks since the last election-timer reset (follower, candidate) or the last check-quorum round (leader). */
  private electionElapsed = 0;
  private heartbeatElapsed = 0;
  /** In [electionTicks, 2 * electionTicks); drawn again at every role change. */
  private randomizedElectionTimeout = 0;
  /** Leader only: the node leadership is being handed to, or NO_NODE. Proposals are refused meanwhile. */
  private leadTransferee: NodeId = NO_NODE;

  /** Leader only: reads waiting for a quorum of heartbeat answers, oldest first. */
  private pendingReads: PendingRead[] = [];
  /** Leader only: reads that arrived before the leader committed an entry of its term. */
  private readsAwaitingTermCommit: number[] = [];
  /** The last heartbeat round issued for reads; heartbeats carry it. */
  private readRound = 0;

  // ---- Output waiting for the next Ready. ----
  private outbox: Message[] = [];
  private readStates: ReadState[] = [];
  private fetchesToSend: FetchRequest[] = [];
  /** At most one per follower (a follower in CATCH_UP gets no second request). */
  private catchUpsToSend: CatchUpRequest[] = [];
  /** Fetches handed to the driver and not yet answered, keyed by `from`. Bounded by FETCH_REQUESTS_MAX. */
  private readonly fetchesOutstanding = new Map<LogIndex, FetchRequest>();
  /** Entries the driver loaded for the apply path: they start at applying + 1. */
  private loadedForApply: LogEntry[] = [];
  /** Hard and soft state as of the last Ready, to report only changes. */
  private lastHardState: HardState;
  private lastSoftState: SoftState;
  /** The Ready handed out and not yet acknowledged. */
  private outstanding: Ready | undefined;
  /** While the commit index is below this (rejoining with an empty log), no votes and no campaigns. */
  private recoverUntil: number;

  constructor(config: RaftConfig, start: RaftStartState) {
    const problem = validateRaftConfig(config);
    invariant(problem === undefined, problem ?? "");
    invariant(start.membership.length >= 1 && start.membership.length <= MEMBERSHIP_HISTORY_MAX, "membership history size");
    for (let i = 1; i < start.membership.length; i++) {
      invariant(start.membership[i]!.index > start.membership[i - 1]!.index, "membership history must be in index order");
    }
    invariant(start.membership[0]!.index <= start.hardState.commit, "the oldest configuration given must be committed");
    this.id = config.id;
    this.config = config;
    this.log = new RaftLog(start.log, start.hardState.commit, start.appliedIndex);
    // The driver saves a new term before appending entries of it, so the saved term covers the log.
    invariant(
      start.hardState.term >= this.log.lastTerm,
      `the saved term ${start.hardState.term} is below the log's last term ${this.log.lastTerm}: meta/state.json is older than the log`,
    );
    this.term = start.hardState.term;
    this.vote = start.hardState.vote;
    this.configs = [...start.membership];
    this.recoverUntil = start.recoverUntilIndex ?? 0;
    this.lastHardState = start.hardState;
    this.lastSoftState = { role: this.role, leader: this.lead };
    this.stepRole = this.stepFollower;
    this.resetRandomizedElectionTimeout();
  }

  // =================================================================== inputs

  /** Handles one message from a peer. Stale, misaddressed and unknown-peer messages are answered or dropped. */
  step(message: Message): void {
    if (message.to !== this.id) {
      this.event(`dropped ${message.type} from ${message.from} addressed to ${message.to}`);
      return;
    }
    if (message.term > this.term) {
      if (!this.acceptHigherTerm(message)) return;
    } else if (message.term < this.term) {
      this.answerLowerTerm(message);
      return;
    }
    switch (message.type) {
      case "PRE_VOTE":
      case "VOTE":
        this.handleVoteRequest(message);
        return;
      case "PRE_VOTE_RESPONSE":
      case "VOTE_RESPONSE":
      case "APPEND":
      case "APPEND_RESPONSE":
      case "HEARTBEAT":
      case "HEARTBEAT_RESPONSE":
      case "TIMEOUT_NOW":
        this.stepRole(message);
        // A leader's APPEND or HEARTBEAT may have carried a rejoining node past its recovery index.
        if (this.recoverUntil !== 0 && (message.type === "APPEND" || message.type === "HEARTBEAT")) this.recovering();
        return;
      default:
        assertNever(message);
    }
  }

  /** Advances logical time by one tick. */
  tick(): void {
    switch (this.role) {
      case Role.LEADER:
        this.tickLeader();
        return;
      case Role.FOLLOWER:
      case Role.PRE_CANDIDATE:
      case Role.CANDIDATE:
        this.tickElection();
        return;
      default:
        assertNever(this.role);
    }
  }

  /** Starts an election now, as if the election timeout had fired (with pre-vote when configured). */
  campaign(): void {
    if (this.role === Role.LEADER) {
      this.event(`ignoring campaign: already leader at term ${this.term}`);
      return;
    }
    this.startCampaign(this.config.preVote ? "PRE_VOTE" : "VOTE", false);
  }

  /**
   * Appends client entries (leader only). They are committed once a quorum holds them; the caller
   * learns that from `committedEntries`. The server checks the configured `max_record_size` first;
   * here only the hard bounds are checked.
   */
  propose(entries: readonly ProposedEntry[]): ProposeResult {
    const refusal = this.refuseUnlessLeaderAndIdle();
    if (refusal !== undefined) return refusal;
    const problem = this.checkProposal(entries);
    if (problem !== undefined) return problem;
    const first = (this.log.lastIndex + 1) as LogIndex;
    this.appendAsLeader(entries);
    return { ok: true, term: this.term, firstIndex: first, lastIndex: this.log.lastIndex };
  }

  /**
   * Asks for a linearizable read point (leader only). The answer comes as a ReadState in a later
   * Ready, once a quorum confirmed this node is still leader (and it committed an entry of its term).
   */
  readIndex(requestId: number): Accepted {
    if (this.role !== Role.LEADER) return this.notLeader();
    if (this.pendingReads.length + this.readsAwaitingTermCommit.length >= READ_INDEX_PENDING_MAX) {
      return this.refusal(ErrorCode.QUOTA_EXCEEDED, `${READ_INDEX_PENDING_MAX} reads are already waiting (READ_INDEX_PENDING_MAX); retry shortly`);
    }
    if (!this.committedInCurrentTerm()) {
      this.readsAwaitingTermCommit.push(requestId);
      return { ok: true };
    }
    this.startReadRound([requestId]);
    return { ok: true };
  }

  /**
   * Hands leadership to voter `to`: once it holds the whole log it is told to campaign at once
   * (TIMEOUT_NOW). Proposals are refused meanwhile; the transfer is abandoned after an election timeout.
   */
  transferLeader(to: NodeId): Accepted {
    if (this.role !== Role.LEADER) return this.notLeader();
    if (to === this.id) return { ok: true };
    if (!isVoter(this.currentConfig(), to)) {
      return this.refusal(ErrorCode.INVALID_ARGUMENT, `node ${to} is not a voter of ${describeConfig(this.currentConfig())}; only a voter can lead`);
    }
    if (this.leadTransferee === to) return { ok: true };
    if (this.leadTransferee !== NO_NODE) this.abortLeaderTransfer("superseded");
    this.leadTransferee = to;
    this.electionElapsed = 0;
    this.event(`${this.id} starts transferring leadership to ${to} at term ${this.term}`);
    const progress = this.progress.get(to)!;
    if (progress.match === this.log.lastIndex) this.sendTimeoutNow(to);
    else this.sendAppends(to, true);
    return { ok: true };
  }

  /**
   * Proposes one membership change (leader only). Refused while another change is uncommitted,
   * before the leader committed an entry of its term (the single-server-change fix from the Raft
   * mailing list, 2015), during a leadership transfer, and when the new voters would not include a
   * quorum of caught-up, recently heard-from nodes.
   */
  changeMembership(change: MembershipChange): ChangeResult {
    const refusal = this.refuseUnlessLeaderAndIdle();
    if (refusal !== undefined) return refusal;
    if (!this.committedInCurrentTerm()) {
      return this.refusal(ErrorCode.UNAVAILABLE, `the leader has not committed an entry of term ${this.term} yet; retry shortly`);
    }
    const pending = this.configs[this.configs.length - 1]!;
    if (pending.index > this.log.committed) {
      return this.refusal(ErrorCode.FAILED_PRECONDITION, `the membership change at index ${pending.index} is not committed yet; retry when it is`);
    }
    const next = applyChange(pending.config, change);
    if (typeof next === "string") return this.refusal(ErrorCode.INVALID_ARGUMENT, `${change.type} refused: ${next}`);
    if (change.type !== "ADD_LEARNER") {
      const caughtUp = next.voters.filter((id) => this.isCaughtUp(id));
      const needed = quorumSize(next.voters.length);
      if (caughtUp.length < needed) {
        return this.refusal(
          ErrorCode.FAILED_PRECONDITION,
          `${change.type} of node ${change.node} refused: ${describeConfig(next)} would have ${caughtUp.length} caught-up voters ` +
            `(${caughtUp.join(" ") || "none"}), fewer than the quorum of ${needed}; wait for the nodes to catch up`,
        );
      }
    }
    this.appendAsLeader([{ kind: RecordKind.MEMBERSHIP, tenant: "", payload: encodeConfig(next) }]);
    return { ok: true, index: this.log.lastIndex };
  }

  /**
   * The answer to a FetchRequest: entries [request.from, ...) read from the log, or none if the
   * read failed (the core asks again later). Entries whose term no longer matches are ignored
   * (the log was cut meanwhile).
   */
  entriesLoaded(request: FetchRequest, entries: readonly LogEntry[]): void {
    this.fetchesOutstanding.delete(request.from);
    const valid: LogEntry[] = [];
    for (const [position, entry] of entries.entries()) {
      invariant(entry.index === request.from + position, "loaded entries must be consecutive from the request");
      if (!this.log.matchTerm(entry.index, entry.term)) break;
      valid.push(entry);
    }
    if (valid.length > 0 && request.from === this.log.applying + 1 && this.loadedForApply.length === 0) {
      this.loadedForApply = valid.filter((entry) => entry.index <= this.log.committed);
    }
    if (this.role !== Role.LEADER) return;
    for (const [id, progress] of this.progress) {
      if (!progress.fetchPending) continue;
      progress.fetchPending = false;
      if (valid.length > 0 && progress.next >= request.from && progress.next < request.from + valid.length) {
        this.sendAppendsFrom(id, valid);
      } else {
        this.sendAppends(id, false);
      }
    }
  }

  /**
   * The answer to a CatchUpRequest: the last index streamed to `to`, or undefined when streaming
   * failed. The leader resumes probing `to` from there (the follower confirms or corrects it).
   */
  catchUpFinished(to: NodeId, lastIndexSent: LogIndex | undefined): void {
    const progress = this.progress.get(to);
    if (this.role !== Role.LEADER || progress === undefined || progress.state !== ProgressState.CATCH_UP) return;
    progress.becomeProbe();
    if (lastIndexSent !== undefined && lastIndexSent > progress.match) {
      progress.next = (Math.min(lastIndexSent, this.log.lastIndex) + 1) as LogIndex;
    }
    this.event(`${this.id} finished catching up ${to} by segments ${lastIndexSent === undefined ? "(failed)" : `up to ${lastIndexSent}`}`);
    this.sendAppends(to, true);
  }

  // =================================================================== Ready

  /** True when `ready()` would return something to do. */
  hasReady(): boolean {
    invariant(this.outstanding === undefined, "hasReady while a Ready is outstanding: call advance first");
    this.prepareApply();
    return (
      this.outbox.length > 0 ||
      this.readStates.length > 0 ||
      this.fetchesToSend.length > 0 ||
      this.catchUpsToSend.length > 0 ||
      this.log.hasUnpersisted() ||
      this.loadedForApply.length > 0 ||
      (this.log.applying < this.log.committed && this.log.nextToApply(APPLY_BATCH_BYTES_MAX) !== undefined) ||
      !sameHardState(this.hardState(), this.lastHardState) ||
      !sameSoftState(this.softState(), this.lastSoftState)
    );
  }

  /** Takes the pending output. The driver handles it as types.ts `Ready` says, then calls `advance`. */
  ready(): Ready {
    invariant(this.outstanding === undefined, "ready() called twice without advance()");
    this.prepareApply();
    const hardState = this.hardState();
    const softState = this.softState();
    const { truncateFrom, entries } = this.log.takeUnpersisted();
    const committedEntries = this.takeCommittedEntries();
    const result: Ready = {
      softState: sameSoftState(softState, this.lastSoftState) ? undefined : softState,
      hardState: sameHardState(hardState, this.lastHardState) ? undefined : hardState,
      truncateFrom,
      entries,
      messages: this.outbox,
      committedEntries,
      readStates: this.readStates,
      fetches: this.fetchesToSend,
      catchUps: this.catchUpsToSend,
    };
    this.lastHardState = hardState;
    this.lastSoftState = softState;
    this.outbox = [];
    this.readStates = [];
    this.fetchesToSend = [];
    this.catchUpsToSend = [];
    this.outstanding = result;
    return result;
  }

  /** The driver handled `ready` completely (durable, sent, applied). */
  advance(ready: Ready): void {
    invariant(this.outstanding === ready, "advance() must be given the Ready last returned by ready()");
    this.outstanding = undefined;
    const lastEntry = ready.entries[ready.entries.length - 1];
    if (lastEntry !== undefined) this.log.stableTo(lastEntry.index, lastEntry.term);
    const lastApplied = ready.committedEntries[ready.committedEntries.length - 1];
    if (lastApplied !== undefined) this.log.appliedTo(lastApplied.index);
    this.log.evict();
    // The leader's own durable index counts toward commit only now (nothing counts before it is synced).
    if (this.role === Role.LEADER && this.maybeCommit()) this.broadcastAppend(true);
  }

  // =================================================================== queries

  hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.log.committed };
  }

  softState(): SoftState {
    return { role: this.role, leader: this.lead };
  }

  currentConfig(): MembershipConfig {
    return this.configs[this.configs.length - 1]!.config;
  }

  status(): RaftStatus {
    return {
      id: this.id,
      role: this.role,
      term: this.term,
      vote: this.vote,
      leader: this.lead,
      commit: this.log.committed,
      applied: this.log.applied,
      lastIndex: this.log.lastIndex,
      lastTerm: this.log.lastTerm,
      config: this.currentConfig(),
      leadTransferee: this.leadTransferee,
      progress: [...this.progress.entries()]
        .sort(([a], [b]) => a - b)
        .map(([id, p]) => ({
          id,
          match: p.match,
          next: p.next,
          state: p.state,
          inflightMessages: p.inflights.count,
          inflightBytes: p.inflights.bytes,
          recentActive: p.recentActive,
        })),
    };
  }

  // =================================================================== terms and votes

  /** A message with a higher term arrived. Returns false when it must be dropped (leader lease). */
  private acceptHigherTerm(message: Message): boolean {
    if (message.type === "PRE_VOTE" || message.type === "VOTE") {
      // Leader lease (Raft thesis section 4.2.3): while this node hears from a leader, it does not
      // help anyone depose it. A leadership transfer is the leader's own wish, so it passes.
      const inLease = this.config.checkQuorum && this.lead !== NO_NODE && this.electionElapsed < this.config.electionTicks;
      if (inLease && !message.leaderTransfer) {
        this.event(
          `${this.id} ignores ${message.type} from ${message.from} at term ${message.term}: leader ${this.lead} is in its lease`,
        );
        return false;
      }
    }
    if (message.type === "PRE_VOTE") return true; // a pre-vote never changes the receiver's term
    if (message.type === "PRE_VOTE_RESPONSE" && message.granted) return true; // granted for our future term
    const leader = message.type === "APPEND" || message.type === "HEARTBEAT" ? message.from : NO_NODE;
    this.event(`${this.id} sees term ${message.term} from ${message.from} (${message.type}) and becomes follower`);
    this.becomeFollower(message.term, leader);
    return true;
  }

  /** A message from an older term: tell a stale leader or pre-candidate about our term; drop the rest. */
  private answerLowerTerm(message: Message): void {
    if ((this.config.checkQuorum || this.config.preVote) && (message.type === "APPEND" || message.type === "HEARTBEAT")) {
      // A leader back from a partition would otherwise never learn it was deposed: with pre-vote
      // and check-quorum nobody campaigns against it at a higher term on its side.
      this.send({ type: "HEARTBEAT_RESPONSE", from: this.id, to: message.from, term: this.term, readRound: 0 });
    } else if (message.type === "PRE_VOTE") {
      this.send({ type: "PRE_VOTE_RESPONSE", from: this.id, to: message.from, term: this.term, granted: false });
    }
  }

  private handleVoteRequest(message: VoteRequest): void {
    const isPreVote = message.type === "PRE_VOTE";
    if (this.recovering()) {
      this.send({ type: isPreVote ? "PRE_VOTE_RESPONSE" : "VOTE_RESPONSE", from: this.id, to: message.from, term: this.term, granted: false });
      this.event(`${this.id} rejects ${message.type} from ${message.from} at term ${message.term}: rejoining with an empty log, it votes again once it holds index ${this.recoverUntil}`);
      return;
    }
    const canVote =
      this.vote === message.from ||
      (this.vote === NO_NODE && this.lead === NO_NODE) ||
      (isPreVote && message.term > this.term);
    const upToDate = this.log.isUpToDate(message.lastLogIndex, message.lastLogTerm);
    const granted = canVote && upToDate;
    const responseType = isPreVote ? "PRE_VOTE_RESPONSE" : "VOTE_RESPONSE";
    // A granted pre-vote answers in the term asked about, so the pre-candidate counts it.
    const responseTerm = granted ? message.term : this.term;
    this.send({ type: responseType, from: this.id, to: message.from, term: responseTerm, granted });
    if (!granted) {
      const why = canVote ? "its log is behind" : `already voted for ${this.vote} or follows ${this.lead}`;
      this.event(`${this.id} rejects ${message.type} from ${message.from} at term ${message.term}: ${why}`);
      return;
    }
    if (!isPreVote) {
      this.vote = message.from;
      this.electionElapsed = 0;
    }
  }

  // =================================================================== role changes

  private reset(newTerm: Term): void {
    if (newTerm !== this.term) {
      invariant(newTerm > this.term, `term ${newTerm} after ${this.term}: terms never decrease`);
      this.term = newTerm;
      this.vote = NO_NODE;
    }
    this.lead = NO_NODE;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.resetRandomizedElectionTimeout();
    this.leadTransferee = NO_NODE;
    this.votes.clear();
    this.progress.clear();
    this.failPendingReads();
  }

  private becomeFollower(newTerm: Term, leader: NodeId): void {
    this.reset(newTerm);
    this.role = Role.FOLLOWER;
    this.stepRole = this.stepFollower;
    this.lead = leader;
  }

  private becomePreCandidate(): void {
    invariant(this.role !== Role.LEADER, "a leader cannot become a pre-candidate");
    // A pre-candidate changes neither term nor vote; it only stops following.
    this.votes.clear();
    this.lead = NO_NODE;
    this.electionElapsed = 0;
    this.resetRandomizedElectionTimeout();
    this.role = Role.PRE_CANDIDATE;
    this.stepRole = this.stepCandidate;
    this.event(`${this.id} became pre-candidate at term ${this.term}`);
  }

  private becomeCandidate(): void {
    invariant(this.role !== Role.LEADER, "a leader cannot become a candidate");
    this.reset((this.term + 1) as Term);
    this.vote = this.id;
    this.role = Role.CANDIDATE;
    this.stepRole = this.stepCandidate;
    this.event(`${this.id} became candidate at term ${this.term}`);
  }

  private becomeLeader(): void {
    invariant(this.role === Role.CANDIDATE, "only a candidate becomes leader");
    this.reset(this.term);
    this.role = Role.LEADER;
    this.stepRole = this.stepLeader;
    this.lead = this.id;
    this.syncProgressWithConfig();
    this.event(`${this.id} became leader at term ${this.term}`);
    // The no-op: entries of earlier terms commit only with an entry of this term (figure 8).
    this.appendAsLeader([{ kind: RecordKind.NOOP, tenant: "", payload: NOOP_PAYLOAD }]);
  }

  private startCampaign(kind: "PRE_VOTE" | "VOTE", leaderTransfer: boolean): void {
    if (!isVoter(this.currentConfig(), this.id)) {
      this.event(`${this.id} is not a voter of ${describeConfig(this.currentConfig())} and does not campaign`);
      return;
    }
    if (this.recovering()) {
      this.event(`${this.id} does not campaign: rejoining with an empty log, it holds index ${this.log.committed} of ${this.recoverUntil}`);
      return;
    }
    if (kind === "PRE_VOTE") this.becomePreCandidate();
    else this.becomeCandidate();
    const campaignTerm = (kind === "PRE_VOTE" ? this.term + 1 : this.term) as Term;
    this.votes.set(this.id, true);
    for (const voter of this.currentConfig().voters) {
      if (voter === this.id) continue;
      this.send({
        type: kind,
        from: this.id,
        to: voter,
        term: campaignTerm,
        lastLogIndex: this.log.lastIndex,
        lastLogTerm: this.log.lastTerm,
        leaderTransfer,
      });
    }
    this.tallyVotes();
  }

  /** Counts the answers; wins or loses the (pre-)election when a quorum decided. */
  private tallyVotes(): void {
    const voters = this.currentConfig().voters;
    let granted = 0;
    let rejected = 0;
    for (const [id, vote] of this.votes) {
      if (!voters.includes(id)) continue;
      if (vote) granted++;
      else rejected++;
    }
    const needed = quorumSize(voters.length);
    if (granted >= needed) {
      if (this.role === Role.PRE_CANDIDATE) this.startCampaign("VOTE", false);
      else this.becomeLeader();
    } else if (rejected >= needed) {
      this.event(`${this.id} lost the ${this.role === Role.PRE_CANDIDATE ? "pre-vote" : "election"} at term ${this.term}`);
      this.becomeFollower(this.term, NO_NODE);
    }
  }

  // =================================================================== role step functions

  private stepFollower = (message: RoleMessage): void => {
    switch (message.type) {
      case "APPEND":
        this.electionElapsed = 0;
        this.lead = message.from;
        this.handleAppend(message);
        return;
      case "HEARTBEAT":
        this.electionElapsed = 0;
        this.lead = message.from;
        this.handleHeartbeat(message);
        return;
      case "TIMEOUT_NOW":
        this.event(`${this.id} got TIMEOUT_NOW from ${message.from} and campaigns at once`);
        this.startCampaign("VOTE", true);
        return;
      case "PRE_VOTE_RESPONSE":
      case "VOTE_RESPONSE":
      case "APPEND_RESPONSE":
      case "HEARTBEAT_RESPONSE":
        return; // late answers to a role this node no longer has
      default:
        assertNever(message);
    }
  };

  private stepCandidate = (message: RoleMessage): void => {
    switch (message.type) {
      case "APPEND":
        this.becomeFollower(message.term, message.from);
        this.handleAppend(message);
        return;
      case "HEARTBEAT":
        this.becomeFollower(message.term, message.from);
        this.handleHeartbeat(message);
        return;
      case "PRE_VOTE_RESPONSE":
      case "VOTE_RESPONSE":
        this.handleVoteResponse(message);
        return;
      case "TIMEOUT_NOW":
      case "APPEND_RESPONSE":
      case "HEARTBEAT_RESPONSE":
        return;
      default:
        assertNever(message);
    }
  };

  private stepLeader = (message: RoleMessage): void => {
    switch (message.type) {
      case "APPEND_RESPONSE":
        this.handleAppendResponse(message);
        return;
      case "HEARTBEAT_RESPONSE":
        this.handleHeartbeatResponse(message);
        return;
      case "APPEND":
      case "HEARTBEAT":
        invariant(false, `two leaders in term ${this.term}: ${this.id} and ${message.from}`);
        return;
      case "PRE_VOTE_RESPONSE":
      case "VOTE_RESPONSE":
      case "TIMEOUT_NOW":
        return;
      default:
        assertNever(message);
    }
  };

  private handleVoteResponse(message: VoteResponse): void {
    const expected = this.role === Role.PRE_CANDIDATE ? "PRE_VOTE_RESPONSE" : "VOTE_RESPONSE";
    if (message.type !== expected) return; // an answer to an earlier campaign
    if (!isVoter(this.currentConfig(), message.from)) return;
    this.votes.set(message.from, message.granted);
    this.tallyVotes();
  }

  // =================================================================== follower: replication

  private handleAppend(message: AppendRequest): void {
    const committed = this.log.committed;
    if (message.prevIndex < committed) {
      // Everything up to our commit index matches the leader already; resume after it.
      this.send({ type: "APPEND_RESPONSE", from: this.id, to: message.from, term: this.term, success: true, matchIndex: committed });
      return;
    }
    if (!this.log.matchTerm(message.prevIndex, message.prevTerm)) {
      this.rejectAppend(message);
      return;
    }
    const cut = this.log.appendFromLeader(message.entries);
    if (cut !== undefined) {
      this.event(`${this.id} truncates its log from index ${cut} (conflicts with leader ${message.from})`);
      this.dropConfigsFrom(cut);
    }
    for (const entry of message.entries) {
      if (entry.kind === RecordKind.MEMBERSHIP) this.noteConfigEntry(entry);
    }
    const lastNew = (message.prevIndex + message.entries.length) as LogIndex;
    this.commitTo(Math.min(message.commit, lastNew) as LogIndex);
    this.send({ type: "APPEND_RESPONSE", from: this.id, to: message.from, term: this.term, success: true, matchIndex: lastNew });
  }

  private rejectAppend(message: AppendRequest): void {
    invariant(message.prevIndex > this.log.committed, `leader ${message.from} disagrees with committed index ${message.prevIndex}`);
    const lastIndex = this.log.lastIndex;
    const shorter = message.prevIndex > lastIndex;
    const conflictTerm = shorter ? (0 as Term) : this.log.termAt(message.prevIndex)!;
    const conflictIndex = shorter ? ((lastIndex + 1) as LogIndex) : this.log.terms.firstIndexOfTermAt(message.prevIndex);
    this.event(
      `${this.id} rejects APPEND from ${message.from} at prev ${message.prevTerm}/${message.prevIndex}: ` +
        (shorter ? `log ends at ${lastIndex}` : `has term ${conflictTerm} there, from index ${conflictIndex}`),
    );
    this.send({
      type: "APPEND_RESPONSE",
      from: this.id,
      to: message.from,
      term: this.term,
      success: false,
      rejectedPrevIndex: message.prevIndex,
      conflictTerm,
      conflictIndex,
    });
  }

  private handleHeartbeat(message: Heartbeat): void {
    const lastIndex = this.log.lastIndex;
    this.commitTo(Math.min(message.commit, lastIndex) as LogIndex);
    this.send({ type: "HEARTBEAT_RESPONSE", from: this.id, to: message.from, term: this.term, readRound: message.readRound });
    // A heartbeat's commit is never past what this node acknowledged. A log ending below it lost
    // entries (a wiped or restored data directory): say where it ends, as a rejection would, so the
    // leader probes from there. Without this an idle leader, with nothing new to send, sends only
    // heartbeats and the node is never brought back until the next write (jepsen-lite bug 2b).
    if (message.commit > lastIndex) {
      this.event(`${this.id} holds entries only up to ${lastIndex}, below the commit ${message.commit} its leader ${message.from} believes it acknowledged: it lost entries`);
      this.send({
        type: "APPEND_RESPONSE",
        from: this.id,
        to: message.from,
        term: this.term,
        success: false,
        rejectedPrevIndex: message.commit,
        conflictTerm: 0 as Term,
        conflictIndex: (lastIndex + 1) as LogIndex,
      });
    }
  }

  // =================================================================== leader: replication

  /** Assigns term and indexes, appends, notes a membership entry, and sends to followers. */
  private appendAsLeader(proposed: readonly ProposedEntry[]): void {
    let index = this.log.lastIndex;
    const entries: LogEntry[] = proposed.map((entry) => ({
      term: this.term,
      index: ++index as LogIndex,
      kind: entry.kind,
      tenant: entry.tenant,
      payload: entry.payload,
    }));
    this.log.append(entries);
    for (const entry of entries) {
      if (entry.kind === RecordKind.MEMBERSHIP) this.noteConfigEntry(entry);
    }
    // A single-voter cluster commits once the entry is durable: see advance().
    this.broadcastAppend(false);
  }

  private broadcastAppend(sendIfEmpty: boolean): void {
    for (const id of [...this.progress.keys()].sort((a, b) => a - b)) this.sendAppends(id, sendIfEmpty);
  }

  /** Sends to one follower as much as its state and window allow: one message in PROBE, a pipeline in REPLICATE. */
  private sendAppends(to: NodeId, sendIfEmpty: boolean): void {
    let sent = this.maybeSendAppend(to, sendIfEmpty, undefined);
    while (sent && this.progress.get(to)?.state === ProgressState.REPLICATE) sent = this.maybeSendAppend(to, false, undefined);
  }

  /** Like sendAppends, but from entries the driver just loaded. */
  private sendAppendsFrom(to: NodeId, loaded: readonly LogEntry[]): void {
    let sent = this.maybeSendAppend(to, false, loaded);
    while (sent && this.progress.get(to)?.state === ProgressState.REPLICATE) sent = this.maybeSendAppend(to, false, loaded);
  }

  /**
   * Sends one APPEND to `to` if its progress allows. Entries come from memory or `loaded`; when
   * neither holds them, asks the driver to fetch them and sends nothing. Returns whether it sent.
   */
  private maybeSendAppend(to: NodeId, sendIfEmpty: boolean, loaded: readonly LogEntry[] | undefined): boolean {
    const progress = this.progress.get(to);
    invariant(progress !== undefined, `no progress for ${to}`);
    if (progress.isPaused() || progress.fetchPending) return false;
    const prevIndex = (progress.next - 1) as LogIndex;
    const prevTerm = this.log.termAt(prevIndex);
    if (prevTerm === undefined || this.laggingTooFar(progress)) {
      this.startCatchUp(to, progress);
      return false;
    }
    let entries: readonly LogEntry[] = [];
    const lastIndex = this.log.lastIndex;
    if (progress.next <= lastIndex) {
      const end = Math.min(progress.next + this.config.entriesPerRpcMax, lastIndex + 1) as LogIndex;
      const held = loaded === undefined ? this.log.slice(progress.next, end, this.config.appendRpcBytesMax) : sliceLoaded(loaded, progress.next, end, this.config.appendRpcBytesMax);
      if (held === undefined || held.length === 0) {
        if (loaded === undefined) this.requestFetch(progress, end);
        return false;
      }
      entries = held;
    }
    if (entries.length === 0 && !sendIfEmpty) return false;
    const last = entries.length === 0 ? prevIndex : entries[entries.length - 1]!.index;
    this.send({
      type: "APPEND",
      from: this.id,
      to,
      term: this.term,
      prevIndex,
      prevTerm,
      entries,
      commit: this.log.committed,
    });
    progress.sentEntries(last, payloadBytes(entries), entries.length);
    return true;
  }

  /**
   * In PROBE (where `next` is the follower's own hint), more than catchUpLagEntries behind in
   * committed entries: only those can be streamed, so a catch-up always ends past them.
   */
  private laggingTooFar(progress: Progress): boolean {
    const lag = this.config.catchUpLagEntries;
    return lag !== undefined && progress.state === ProgressState.PROBE && this.log.committed - progress.next + 1 > lag;
  }

  /** Hands a follower that AppendEntries cannot (or should not) reach to segment streaming. */
  private startCatchUp(to: NodeId, progress: Progress): void {
    progress.becomeCatchUp();
    this.catchUpsToSend.push({ to, fromIndex: progress.next, upToIndex: this.log.committed });
    this.event(`${this.id} catches up ${to} by streaming segments from index ${progress.next} (up to ${this.log.committed})`);
  }

  private requestFetch(progress: Progress, end: LogIndex): void {
    const from = progress.next;
    if (!this.fetchesOutstanding.has(from)) {
      if (this.fetchesOutstanding.size >= FETCH_REQUESTS_MAX) return; // retried on the next heartbeat answer
      const request: FetchRequest = { from, to: end, bytesMax: this.config.appendRpcBytesMax };
      this.fetchesOutstanding.set(from, request);
      this.fetchesToSend.push(request);
    }
    progress.fetchPending = true;
  }

  private handleAppendResponse(message: AppendResponse): void {
    const progress = this.progress.get(message.from);
    if (progress === undefined) {
      this.event(`${this.id} ignores APPEND_RESPONSE from ${message.from}: not a member`);
      return;
    }
    progress.recentActive = true;
    if (!message.success) {
      this.handleAppendRejection(message.from, progress, message);
      return;
    }
    const wasPaused = progress.isPaused();
    if (!progress.maybeUpdate(message.matchIndex)) return;
    switch (progress.state) {
      case ProgressState.PROBE:
        progress.becomeReplicate();
        break;
      case ProgressState.REPLICATE:
        progress.inflights.freeUpTo(message.matchIndex);
        break;
      case ProgressState.CATCH_UP:
        break; // an answer from before the streaming began; catchUpFinished resumes replication
      default:
        assertNever(progress.state);
    }
    // A follower that was paused missed the commit broadcasts meanwhile: tell it even with no entries.
    if (this.maybeCommit()) this.broadcastAppend(true);
    else this.sendAppends(message.from, wasPaused);
    if (this.role === Role.LEADER && message.from === this.leadTransferee && progress.match === this.log.lastIndex) {
      this.sendTimeoutNow(message.from);
    }
  }

  /** Fast backtracking: jump over a whole conflicting term at once, not one index per round trip. */
  private handleAppendRejection(from: NodeId, progress: Progress, message: AppendResponse & { success: false }): void {
    if (progress.state === ProgressState.CATCH_UP) return;
    // A log that ends below what the follower acknowledged: it lost entries (a wiped or restored
    // data directory). Without this, the rejection looks stale in REPLICATE, and a probe never goes
    // below match + 1: the follower would never be brought back. Lowering match only delays
    // commits (the commit index never moves back); a stale rejection costs one more probe.
    if (message.conflictTerm === 0 && message.conflictIndex - 1 < progress.match) {
      this.event(`${this.id} sees ${from}'s log end at ${message.conflictIndex - 1}, below its match ${progress.match}: it lost entries; probing from there`);
      progress.lostEntries((message.conflictIndex - 1) as LogIndex);
      this.sendAppends(from, false);
      return;
    }
    const stale =
      progress.state === ProgressState.REPLICATE
        ? message.rejectedPrevIndex <= progress.match
        : message.rejectedPrevIndex !== progress.next - 1;
    if (stale) return;
    progress.becomeProbe();
    progress.next = nextAfterRejection(this.log, progress.match, message);
    this.sendAppends(from, false);
  }

  private handleHeartbeatResponse(message: HeartbeatResponse): void {
    const progress = this.progress.get(message.from);
    if (progress === undefined) return;
    progress.recentActive = true;
    progress.probeSent = false;
    if (progress.state === ProgressState.REPLICATE && progress.inflights.full()) progress.inflights.freeFirst();
    // Even with nothing new to send, an empty APPEND probes a follower that lags: if the messages in
    // flight to it were lost, it rejects this one and the leader falls back to probing (etcd does the same).
    if (progress.match < this.log.lastIndex) this.sendAppends(message.from, true);
    if (message.readRound > 0 && isVoter(this.currentConfig(), message.from)) this.ackReads(message.from, message.readRound);
  }

  /** Commits the highest index a quorum holds, if it is of this term (Raft figure 8). */
  private maybeCommit(): boolean {
    const config = this.currentConfig();
    const candidate = quorumMatchIndex(config, (id) => (id === this.id ? this.log.stable : (this.progress.get(id)?.match ?? (0 as LogIndex))));
    if (candidate <= this.log.committed || this.log.termAt(candidate) !== this.term) return false;
    this.commitTo(candidate);
    return true;
  }

  private commitTo(index: LogIndex): void {
    if (!this.log.commitTo(index)) return;
    this.pruneConfigs();
    if (this.role !== Role.LEADER) return;
    if (this.readsAwaitingTermCommit.length > 0 && this.committedInCurrentTerm()) {
      const waiting = this.readsAwaitingTermCommit;
      this.readsAwaitingTermCommit = [];
      this.startReadRound(waiting);
    }
    const config = this.configs[this.configs.length - 1]!;
    if (!isVoter(config.config, this.id) && config.index <= this.log.committed) this.stepDownAfterRemoval();
  }

  /** The change removing this leader committed: tell followers, hand over to the most caught-up voter, step down. */
  private stepDownAfterRemoval(): void {
    this.broadcastAppend(true);
    const successor = [...this.progress.entries()]
      .filter(([id, p]) => isVoter(this.currentConfig(), id) && p.match === this.log.lastIndex)
      .sort(([a], [b]) => a - b)[0];
    if (successor !== undefined) this.send({ type: "TIMEOUT_NOW", from: this.id, to: successor[0], term: this.term });
    this.event(`${this.id} was removed from the cluster at index ${this.configs[this.configs.length - 1]!.index} and steps down`);
    this.becomeFollower(this.term, NO_NODE);
  }

  private sendTimeoutNow(to: NodeId): void {
    this.event(`${this.id} sends TIMEOUT_NOW to ${to}: it holds the whole log`);
    this.send({ type: "TIMEOUT_NOW", from: this.id, to, term: this.term });
  }

  private abortLeaderTransfer(why: string): void {
    this.event(`${this.id} abandons the leadership transfer to ${this.leadTransferee}: ${why}`);
    this.leadTransferee = NO_NODE;
  }

  // =================================================================== ticks

  /** True while rejoining with an empty log (see RaftStartState.recoverUntilIndex); ends itself once caught up. */
  private recovering(): boolean {
    if (this.recoverUntil === 0) return false;
    if (this.log.committed < this.recoverUntil) return true;
    // Caught up: the leader it follows is the one it would have voted for in this term.
    if (this.vote === NO_NODE && this.lead !== NO_NODE) this.vote = this.lead;
    this.event(`${this.id} holds index ${this.log.committed} >= ${this.recoverUntil}: recovered, it votes again`);
    this.recoverUntil = 0;
    return false;
  }

  private tickElection(): void {
    this.electionElapsed++;
    if (this.electionElapsed < this.randomizedElectionTimeout) return;
    this.electionElapsed = 0;
    if (!isVoter(this.currentConfig(), this.id)) return;
    this.event(`${this.id} election timeout at term ${this.term}`);
    this.startCampaign(this.config.preVote ? "PRE_VOTE" : "VOTE", false);
  }

  private tickLeader(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.config.electionTicks) {
      this.electionElapsed = 0;
      if (this.config.checkQuorum && !this.checkQuorumActive()) {
        this.event(`${this.id} has not heard from a quorum for ${this.config.electionTicks} ticks and steps down at term ${this.term}`);
        this.becomeFollower(this.term, NO_NODE);
        return;
      }
      if (this.leadTransferee !== NO_NODE) this.abortLeaderTransfer("timed out after an election timeout");
    }
    if (this.heartbeatElapsed >= this.config.heartbeatTicks) {
      this.heartbeatElapsed = 0;
      this.broadcastHeartbeat();
    }
  }

  /** True when a quorum of voters (this one included) was heard from since the last round; starts a new round. */
  private checkQuorumActive(): boolean {
    const voters = this.currentConfig().voters;
    let active = 0;
    for (const id of voters) {
      if (id === this.id || this.progress.get(id)?.recentActive === true) active++;
    }
    for (const progress of this.progress.values()) progress.recentActive = false;
    return active >= quorumSize(voters.length);
  }

  /** Heartbeats to every member. One not yet handed out to the same peer is replaced, so ticks without Readies do not pile them up. */
  private broadcastHeartbeat(): void {
    this.outbox = this.outbox.filter((message) => message.type !== "HEARTBEAT");
    for (const [id, progress] of [...this.progress.entries()].sort(([a], [b]) => a - b)) {
      const commit = Math.min(progress.match, this.log.committed) as LogIndex;
      this.send({ type: "HEARTBEAT", from: this.id, to: id, term: this.term, commit, readRound: this.readRound });
    }
  }

  // =================================================================== reads

  private startReadRound(requestIds: readonly number[]): void {
    this.readRound++;
    const acks = new Set<NodeId>();
    if (isVoter(this.currentConfig(), this.id)) acks.add(this.id);
    for (const requestId of requestIds) {
      this.pendingReads.push({ requestId, index: this.log.committed, round: this.readRound, acks: new Set(acks) });
    }
    this.broadcastHeartbeat();
    this.releaseConfirmedReads();
  }

  private ackReads(from: NodeId, round: number): void {
    for (const read of this.pendingReads) {
      if (read.round > round) break;
      read.acks.add(from);
    }
    this.releaseConfirmedReads();
  }

  /** Releases, in order, every read a quorum confirmed (earlier reads have every ack later ones have). */
  private releaseConfirmedReads(): void {
    const voters = this.currentConfig().voters;
    const needed = quorumSize(voters.length);
    let released = 0;
    for (const read of this.pendingReads) {
      const acks = [...read.acks].filter((id) => voters.includes(id)).length;
      if (acks < needed) break;
      this.readStates.push({ requestId: read.requestId, ok: true, index: read.index });
      released++;
    }
    this.pendingReads.splice(0, released);
  }

  private failPendingReads(): void {
    const ids = [...this.readsAwaitingTermCommit, ...this.pendingReads.map((read) => read.requestId)];
    for (const requestId of ids) {
      this.readStates.push({
        requestId,
        ok: false,
        code: ErrorCode.NOT_LEADER,
        message: `node ${this.id} lost leadership before confirming the read; retry at the new leader`,
      });
    }
    this.pendingReads = [];
    this.readsAwaitingTermCommit = [];
  }

  // =================================================================== membership

  private noteConfigEntry(entry: LogEntry): void {
    const newest = this.configs[this.configs.length - 1]!;
    if (entry.index <= newest.index) return; // already known (a resent entry)
    const config = decodeConfig(entry.payload);
    this.configs.push({ index: entry.index, config });
    invariant(this.configs.length <= MEMBERSHIP_HISTORY_MAX, "too many uncommitted membership configurations");
    this.event(`${this.id} applies membership ${describeConfig(config)} from index ${entry.index}`);
    if (this.role === Role.LEADER) this.syncProgressWithConfig();
  }

  /** A cut removed configuration entries: fall back to the one before them. */
  private dropConfigsFrom(cut: LogIndex): void {
    while (this.configs.length > 1 && this.configs[this.configs.length - 1]!.index >= cut) {
      const dropped = this.configs.pop()!;
      this.event(`${this.id} reverts membership from index ${dropped.index} to ${describeConfig(this.currentConfig())}`);
    }
    invariant(this.configs[this.configs.length - 1]!.index < cut, "the committed configuration was cut");
  }

  /** Forgets configurations superseded by a committed one. */
  private pruneConfigs(): void {
    while (this.configs.length > 1 && this.configs[1]!.index <= this.log.committed) this.configs.shift();
  }

  /** Leader: a progress for every member but itself, none for anyone else. */
  private syncProgressWithConfig(): void {
    const config = this.currentConfig();
    for (const id of [...config.voters, ...config.learners]) {
      if (id === this.id || this.progress.has(id)) continue;
      this.progress.set(id, new Progress((this.log.lastIndex + 1) as LogIndex, this.config.inflightMessagesMax, this.config.inflightBytesMax));
    }
    for (const id of [...this.progress.keys()]) {
      if (!isMember(config, id)) this.progress.delete(id);
    }
    if (this.leadTransferee !== NO_NODE && !isVoter(config, this.leadTransferee)) this.abortLeaderTransfer("no longer a voter");
    this.releaseConfirmedReads();
  }

  /** Holds the log up to the commit index and was heard from within the last check-quorum round. */
  private isCaughtUp(id: NodeId): boolean {
    if (id === this.id) return true;
    const progress = this.progress.get(id);
    return progress !== undefined && progress.recentActive && progress.match >= this.log.committed;
  }

  // =================================================================== helpers

  private committedInCurrentTerm(): boolean {
    return this.log.termAt(this.log.committed) === this.term;
  }

  private refuseUnlessLeaderAndIdle(): Refusal | undefined {
    if (this.role !== Role.LEADER) return this.notLeader();
    if (this.leadTransferee !== NO_NODE) {
      return this.refusal(ErrorCode.UNAVAILABLE, `leadership is being transferred to node ${this.leadTransferee}; retry there shortly`);
    }
    return undefined;
  }

  private checkProposal(entries: readonly ProposedEntry[]): Refusal | undefined {
    if (entries.length === 0 || entries.length > PROPOSAL_ENTRIES_MAX) {
      return this.refusal(ErrorCode.INVALID_ARGUMENT, `a proposal carries 1 to ${PROPOSAL_ENTRIES_MAX} entries (PROPOSAL_ENTRIES_MAX), got ${entries.length}`);
    }
    let bytes = 0;
    for (const entry of entries) {
      if (!Number.isInteger(entry.kind) || entry.kind < 1 || entry.kind > 255 || entry.kind === RecordKind.MEMBERSHIP) {
        return this.refusal(ErrorCode.INVALID_ARGUMENT, `entry kind ${entry.kind} cannot be proposed (1..255; membership goes through changeMembership)`);
      }
      if (entry.payload.byteLength === 0 || entry.payload.byteLength > RECORD_BYTES_MAX) {
        return this.refusal(ErrorCode.INVALID_ARGUMENT, `an entry payload must be 1 to ${RECORD_BYTES_MAX} bytes (RECORD_BYTES_MAX), got ${entry.payload.byteLength}`);
      }
      if (entry.tenant.length > TENANT_ID_BYTES_MAX) {
        return this.refusal(ErrorCode.INVALID_ARGUMENT, `a tenant id is at most ${TENANT_ID_BYTES_MAX} bytes (TENANT_ID_BYTES_MAX)`);
      }
      bytes += entry.payload.byteLength;
    }
    if (this.log.unstableBytes + bytes > UNSTABLE_BYTES_MAX) {
      return this.refusal(ErrorCode.QUOTA_EXCEEDED, `${this.log.unstableBytes} bytes are waiting to be written (UNSTABLE_BYTES_MAX is ${UNSTABLE_BYTES_MAX}); retry shortly`);
    }
    return undefined;
  }

  private notLeader(): Refusal {
    const hint = this.lead === NO_NODE ? "the leader is unknown (an election may be under way)" : `the leader is node ${this.lead}`;
    return this.refusal(ErrorCode.NOT_LEADER, `node ${this.id} is not the leader; ${hint}`);
  }

  private refusal(code: ErrorCode, message: string): Refusal {
    return { ok: false, code, message, leaderHint: this.lead };
  }

  /** Asks for entries to apply when the next one is neither cached nor loaded. */
  private prepareApply(): void {
    if (this.loadedForApply.length > 0 || this.log.applying >= this.log.committed) return;
    if (this.log.nextToApply(APPLY_BATCH_BYTES_MAX) !== undefined) return;
    const from = (this.log.applying + 1) as LogIndex;
    if (this.fetchesOutstanding.has(from) || this.fetchesOutstanding.size >= FETCH_REQUESTS_MAX) return;
    const request: FetchRequest = { from, to: (this.log.committed + 1) as LogIndex, bytesMax: APPLY_BATCH_BYTES_MAX };
    this.fetchesOutstanding.set(from, request);
    this.fetchesToSend.push(request);
  }

  private takeCommittedEntries(): LogEntry[] {
    let entries: LogEntry[];
    if (this.loadedForApply.length > 0) {
      entries = this.loadedForApply;
      this.loadedForApply = [];
    } else {
      entries = this.log.nextToApply(APPLY_BATCH_BYTES_MAX) ?? [];
    }
    const last = entries[entries.length - 1];
    if (last !== undefined) this.log.applyingTo(last.index);
    return entries;
  }

  private send(message: Message): void {
    if (this.outbox.length >= OUTBOX_MESSAGES_MAX) {
      this.event(`${this.id} drops ${message.type} to ${message.to}: ${OUTBOX_MESSAGES_MAX} messages wait for a Ready (OUTBOX_MESSAGES_MAX)`);
      return;
    }
    this.outbox.push(message);
  }

  private resetRandomizedElectionTimeout(): void {
    this.randomizedElectionTimeout = this.config.electionTicks + this.config.prng.nextBelow(this.config.electionTicks);
  }

  private event(line: string): void {
    this.config.onEvent?.(line);
  }
}

/**
 * Where to probe next after a rejection: past the leader's last entry of the follower's
 * conflicting term if the leader has that term, else the first index the follower holds of it.
 * Never below match + 1, never above the rejected index (so every rejection makes progress).
 */
export function nextAfterRejection(log: RaftLog, match: LogIndex, message: AppendResponse & { success: false }): LogIndex {
  let next: number = message.conflictIndex;
  if (message.conflictTerm > 0) {
    const leaderLast = log.terms.lastIndexOfTerm(message.conflictTerm);
    if (leaderLast !== undefined) next = leaderLast + 1;
  }
  return Math.max(match + 1, Math.min(next, message.rejectedPrevIndex)) as LogIndex;
}

function payloadBytes(entries: readonly LogEntry[]): number {
  let bytes = 0;
  for (const entry of entries) bytes += entry.payload.byteLength;
  return bytes;
}

/** Entries [from, end) out of a loaded run, at most `bytesMax` (at least one); undefined when `from` is outside it. */
function sliceLoaded(loaded: readonly LogEntry[], from: LogIndex, end: LogIndex, bytesMax: number): LogEntry[] | undefined {
  const first = loaded[0];
  if (first === undefined || from < first.index || from >= first.index + loaded.length) return undefined;
  const result: LogEntry[] = [];
  let bytes = 0;
  for (let index = from; index < end && index < first.index + loaded.length; index++) {
    const entry = loaded[index - first.index]!;
    if (result.length > 0 && bytes + entry.payload.byteLength > bytesMax) break;
    bytes += entry.payload.byteLength;
    result.push(entry);
  }
  return result;
}

function sameHardState(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
}

function sameSoftState(a: SoftState, b: SoftState): boolean {
  return a.role === b.role && a.leader === b.leader;
}

/**
 * The vocabulary of the consensus core: messages between cores, the state that must be durable,
 * and the Ready batch the driver takes, persists, sends, applies and acknowledges (STYLE.md section 1).
 */

import type { ErrorCode } from "../errors.js";
import type { LogEntry, LogIndex, NodeId, RecordKindByte, Term } from "../log/types.js";

/** "No node": no vote cast, no leader known. Never a real node id (those are positive). */
export const NO_NODE = 0 as NodeId;

/** What a node must have on disk before it sends any message of the Ready that carried it. */
export interface HardState {
  readonly term: Term;
  /** The node voted for in `term`, or NO_NODE. */
  readonly vote: NodeId;
  /** Highest index known committed. Invariant: commit <= the log's last index. */
  readonly commit: LogIndex;
}

export const Role = {
  FOLLOWER: "FOLLOWER",
  /** Asking for pre-votes: the term is not bumped until a quorum says it could win. */
  PRE_CANDIDATE: "PRE_CANDIDATE",
  CANDIDATE: "CANDIDATE",
  LEADER: "LEADER",
} as const;
export type Role = (typeof Role)[keyof typeof Role];

/** Volatile state the driver shows in metrics and status; never persisted. */
export interface SoftState {
  readonly role: Role;
  /** The leader this node believes in, or NO_NODE. */
  readonly leader: NodeId;
}

/** A cluster membership: who votes and who only receives the log. */
export interface MembershipConfig {
  /** Sorted ascending, no duplicates. Invariant: disjoint from `learners`. */
  readonly voters: readonly NodeId[];
  /** Sorted ascending, no duplicates. Learners receive the log but never vote or count for commit. */
  readonly learners: readonly NodeId[];
}

/** A membership configuration and the log index of the entry that introduced it (0: the bootstrap config). */
export interface MembershipAt {
  readonly index: LogIndex;
  readonly config: MembershipConfig;
}

/** One change at a time (Raft thesis section 4.1, single-server changes). */
export type MembershipChange =
  | { readonly type: "ADD_LEARNER"; readonly node: NodeId }
  | { readonly type: "PROMOTE_LEARNER"; readonly node: NodeId }
  | { readonly type: "REMOVE_NODE"; readonly node: NodeId };

/** An entry a client proposes; the leader assigns term and index. */
export interface ProposedEntry {
  readonly kind: RecordKindByte;
  readonly tenant: string;
  /** Never empty (the log refuses empty payloads). */
  readonly payload: Uint8Array;
}

interface MessageHeader {
  readonly from: NodeId;
  readonly to: NodeId;
  /** The sender's term; for PRE_VOTE, the term the sender would campaign in (its term + 1). */
  readonly term: Term;
}

/** Asks for a vote (or a pre-vote) with the sender's last log position, for the up-to-date check. */
export interface VoteRequest extends MessageHeader {
  readonly type: "PRE_VOTE" | "VOTE";
  readonly lastLogIndex: LogIndex;
  readonly lastLogTerm: Term;
  /** Set when the campaign follows a TIMEOUT_NOW: receivers ignore their leader lease. */
  readonly leaderTransfer: boolean;
}

export interface VoteResponse extends MessageHeader {
  readonly type: "PRE_VOTE_RESPONSE" | "VOTE_RESPONSE";
  readonly granted: boolean;
}

/** AppendEntries. `entries` follow `prevIndex` consecutively and may be empty (a commit update or a probe). */
export interface AppendRequest extends MessageHeader {
  readonly type: "APPEND";
  readonly prevIndex: LogIndex;
  readonly prevTerm: Term;
  readonly entries: readonly LogEntry[];
  /** The leader's commit index; the follower commits up to min(commit, last index it matched). */
  readonly commit: LogIndex;
}

/**
 * The answer to APPEND. On success `matchIndex` is the last index the follower now holds in
 * agreement with the leader. On rejection the follower did not hold `rejectedPrevIndex` with the
 * leader's term, and gives the hints for fast backtracking (Raft paper section 5.3, "the follower can
 * include the term of the conflicting entry and the first index it stores for that term").
 */
export type AppendResponse = MessageHeader & { readonly type: "APPEND_RESPONSE" } & (
  | { readonly success: true; readonly matchIndex: LogIndex }
  | {
      readonly success: false;
      /** The `prevIndex` of the rejected APPEND, so the leader can tell stale rejections apart. */
      readonly rejectedPrevIndex: LogIndex;
      /** Term of the follower's entry at `rejectedPrevIndex`; 0 when its log is shorter than that. */
      readonly conflictTerm: Term;
      /** First index of `conflictTerm` in the follower's log; its last index + 1 when the log is shorter. */
      readonly conflictIndex: LogIndex;
    }
);

/** Keeps followers from campaigning and carries a read-index round number (0: none). */
export interface Heartbeat extends MessageHeader {
  readonly type: "HEARTBEAT";
  /** min(leader commit, follower's match): never past what the follower is known to hold. */
  readonly commit: LogIndex;
  readonly readRound: number;
}

export interface HeartbeatResponse extends MessageHeader {
  readonly type: "HEARTBEAT_RESPONSE";
  readonly readRound: number;
}

/** Leadership transfer: the receiver campaigns at once, without pre-vote. */
export interface TimeoutNow extends MessageHeader {
  readonly type: "TIMEOUT_NOW";
}

export type Message =
  | VoteRequest
  | VoteResponse
  | AppendRequest
  | AppendResponse
  | Heartbeat
  | HeartbeatResponse
  | TimeoutNow;

export type MessageType = Message["type"];

/** The outcome of a `readIndex` request, in the order requests were made. */
export type ReadState =
  /** Leadership was confirmed: serve the read once the applied index reaches `index`. */
  | { readonly requestId: number; readonly ok: true; readonly index: LogIndex }
  /** The leader lost leadership before confirming it; the read must be retried (at the new leader). */
  | { readonly requestId: number; readonly ok: false; readonly code: ErrorCode; readonly message: string };

/**
 * Entries the core needs but no longer holds in memory: the driver reads [from, to) from the log
 * (at most `bytesMax` of payload, at least one entry) and hands them back with `entriesLoaded`.
 */
export interface FetchRequest {
  readonly from: LogIndex;
  /** Exclusive. */
  readonly to: LogIndex;
  readonly bytesMax: number;
}

/**
 * Bulk catch-up (DESIGN.md section 4): follower `to` lacks entries from `fromIndex` on that this
 * leader either no longer holds (its log starts later, e.g. after a restore) or that are too many to
 * send entry by entry (more than `RaftConfig.catchUpLagEntries`). The leader's driver streams whole
 * sealed, committed segments covering [fromIndex, upToIndex] to the follower (the peer gRPC
 * service's segment stream); the follower's driver installs them in its log and rebuilds its core
 * from disk (a new RaftCore from the new log state). The leader's driver then calls
 * `catchUpFinished(to, lastIndexSent)`, or `catchUpFinished(to, undefined)` when streaming failed;
 * until then the leader sends this follower heartbeats but no AppendEntries.
 */
export interface CatchUpRequest {
  readonly to: NodeId;
  readonly fromIndex: LogIndex;
  /** The leader's commit index when asked: only committed (hence immutable) segments are streamed. */
  readonly upToIndex: LogIndex;
}

/**
 * The output of the core. The driver must handle a Ready in this order:
 * 1. if `truncateFrom` is set, cut the log from that index (never at or below the commit index);
 * 2. append `entries` and write `hardState`, and make both durable;
 * 3. only then send `messages` (a vote or an acknowledgement must never precede its durability);
 * 4. apply `committedEntries` in order (they may include entries from step 2, hence after it);
 * 5. answer `readStates`, start `fetches` and `catchUps` (both answered later, at any time);
 * 6. call `advance(ready)`.
 * Calls to `step`, `tick`, `propose`, `entriesLoaded` and the like may arrive between `ready()` and
 * `advance()`; their output goes into the next Ready. Only `hasReady()` and `ready()` must wait for
 * `advance()`.
 */
export interface Ready {
  /** Present when role or leader changed since the last Ready. */
  readonly softState: SoftState | undefined;
  /** Present when term, vote or commit changed since the last Ready; durable before `messages` are sent. */
  readonly hardState: HardState | undefined;
  /**
   * Present when entries already handed out for persistence conflict with the leader: remove
   * every entry with index >= truncateFrom before appending `entries`. Always > commit.
   */
  readonly truncateFrom: LogIndex | undefined;
  /** Entries to append, with term and index assigned, consecutive; durable before `messages` are sent. */
  readonly entries: readonly LogEntry[];
  /** Messages to send after `entries` and `hardState` are durable. Delivery may fail or reorder. */
  readonly messages: readonly Message[];
  /** Committed entries to apply, in order, consecutive from the last applied index + 1. */
  readonly committedEntries: readonly LogEntry[];
  readonly readStates: readonly ReadState[];
  readonly fetches: readonly FetchRequest[];
  readonly catchUps: readonly CatchUpRequest[];
}

/** A refused request: what was wrong, what to do, and where the leader is (NO_NODE when unknown). */
export interface Refusal {
  readonly ok: false;
  readonly code: ErrorCode;
  readonly message: string;
  readonly leaderHint: NodeId;
}

/** The answer to `propose`: the term and indexes the leader assigned, or a refusal. */
export type ProposeResult =
  | { readonly ok: true; readonly term: Term; readonly firstIndex: LogIndex; readonly lastIndex: LogIndex }
  | Refusal;

/** The answer to `changeMembership`: the index of the MEMBERSHIP entry, or a refusal. */
export type ChangeResult = { readonly ok: true; readonly index: LogIndex } | Refusal;

/** The answer to `readIndex` and `transferLeader`: accepted (the outcome comes later), or a refusal. */
export type Accepted = { readonly ok: true } | Refusal;

/** One run of entries with one term in the log: every index from `firstIndex` to the next run's start. */
export interface TermRun {
  readonly firstIndex: LogIndex;
  readonly term: Term;
}

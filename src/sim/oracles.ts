/**
 * The simulator's safety oracles (TESTING.md section 2), checked after every event. Each method
 * takes what the simulator observed and records the first violation; none of them trusts the
 * code under test (they compare shadows the simulator keeps at the ports, not the core's state).
 *
 * Entries are identified by (term, digest of kind, tenant and payload). Log matching is checked
 * incrementally: every entry ever handed to any node's log for (index, term) must be the same
 * entry with the same predecessor term, which by induction makes the whole prefixes equal.
 */

import type { Message } from "../consensus/types.js";

/** An entry as the oracles see it. */
export interface EntryId {
  readonly term: number;
  readonly digest: number;
}

export interface Violation {
  readonly oracle: OracleName;
  readonly message: string;
}

export const OracleName = {
  ELECTION_SAFETY: "election-safety",
  LOG_MATCHING: "log-matching",
  LEADER_COMPLETENESS: "leader-completeness",
  STATE_MACHINE_SAFETY: "state-machine-safety",
  MONOTONIC_STATE: "monotonic-state",
  DURABILITY: "durability",
  PERSIST_BEFORE_SEND: "persist-before-send",
  ACKNOWLEDGED_LOST: "acknowledged-write-lost",
  LINEARIZABLE_READ: "linearizable-read",
  LIVENESS: "liveness",
  NODE_FAILURE: "node-failure",
} as const;
export type OracleName = (typeof OracleName)[keyof typeof OracleName];

/** FNV-1a over kind, tenant and payload: cheap, and enough to tell simulated entries apart. */
export function entryId(entry: { readonly term: number; readonly kind: number; readonly tenant: string; readonly payload: Uint8Array }): EntryId {
  return { term: entry.term, digest: digestOf(entry.kind, entry.tenant, entry.payload) };
}

/** Payload objects travel from proposer to log to messages to followers: hash each one once. */
const digests = new WeakMap<Uint8Array, { kind: number; tenant: string; digest: number }>();

function digestOf(kind: number, tenant: string, payload: Uint8Array): number {
  const cached = digests.get(payload);
  if (cached !== undefined && cached.kind === kind && cached.tenant === tenant) return cached.digest;
  const digest = fnv(kind, tenant, payload);
  digests.set(payload, { kind, tenant, digest });
  return digest;
}

function fnv(kind: number, tenant: string, p: Uint8Array): number {
  let h = 0x811c9dc5 ^ kind;
  h = Math.imul(h, 0x01000193);
  for (let i = 0; i < tenant.length; i++) h = Math.imul(h ^ tenant.charCodeAt(i), 0x01000193);
  for (let i = 0; i < p.length; i++) h = Math.imul(h ^ p[i]!, 0x01000193);
  h = Math.imul(h ^ p.length, 0x01000193);
  return h >>> 0;
}

function same(a: EntryId | undefined, b: EntryId | undefined): boolean {
  return a !== undefined && b !== undefined && a.term === b.term && a.digest === b.digest;
}

function show(e: EntryId | undefined): string {
  return e === undefined ? "nothing" : `term ${e.term} digest ${e.digest.toString(16)}`;
}

/** Per node incarnation: what the monotonicity oracle last saw. */
export interface HardStateSeen {
  term: number;
  vote: number;
  commit: number;
}

export class Oracles {
  /** The first violation; the run stops at it. */
  violation: Violation | undefined;
  /** term -> the node that led it. */
  readonly leaders = new Map<number, number>();
  /** (index, term) -> the entry and its predecessor's term, for every entry ever handed to a log. */
  private readonly entries = new Map<number, { id: EntryId; previousTerm: number }>();
  /** The committed sequence: committed[i - 1] is the entry committed at index i. Only grows. */
  readonly committed: EntryId[] = [];
  /** Term of the node that reported a commit -> the longest committed prefix reported in that term. */
  private readonly committedByTerm = new Map<number, number>();
  /** The highest index acknowledged to a client as committed. */
  acknowledgedIndex = 0;

  /** Oracles to ignore: tests switch off the direct ones to show the indirect ones catch the same bug. */
  constructor(private readonly disabled: ReadonlySet<OracleName> = new Set()) {}

  fail(oracle: OracleName, message: string): void {
    if (this.disabled.has(oracle)) return;
    this.violation ??= { oracle, message };
  }

  /** A node is leader of `term`: no other node may ever have been. */
  observeLeader(node: number, term: number): void {
    const known = this.leaders.get(term);
    if (known === undefined) this.leaders.set(term, node);
    else if (known !== node) this.fail(OracleName.ELECTION_SAFETY, `nodes ${known} and ${node} were both leader in term ${term}`);
  }

  /** `log` is a node's log (index i at log[i - 1]) and its entry at `index` was just handed to storage. */
  observeEntry(node: number, log: readonly EntryId[], index: number): void {
    const id = log[index - 1]!;
    const previousTerm = index === 1 ? 0 : log[index - 2]!.term;
    if (id.term < previousTerm) this.fail(OracleName.LOG_MATCHING, `node ${node}: term ${id.term} at index ${index} follows term ${previousTerm}`);
    const key = index * 2 ** 20 + id.term;
    const known = this.entries.get(key);
    if (known === undefined) {
      this.entries.set(key, { id, previousTerm });
      return;
    }
    if (!same(known.id, id) || known.previousTerm !== previousTerm) {
      this.fail(
        OracleName.LOG_MATCHING,
        `node ${node} holds ${show(id)} after term ${previousTerm} at index ${index}, another log holds ${show(known.id)} after term ${known.previousTerm}`,
      );
    }
  }

  /**
   * A node in term `term` reported commit index `commit` with `log` holding its entries: they join
   * the committed sequence. `term` bounds from above the term of the leader that committed them.
   */
  observeCommit(node: number, log: readonly EntryId[], commit: number, term: number): void {
    if (commit > log.length) {
      this.fail(OracleName.STATE_MACHINE_SAFETY, `node ${node} reports commit ${commit} but its log ends at ${log.length}`);
      return;
    }
    const overlap = Math.min(commit, this.committed.length);
    if (overlap > 0 && !same(log[overlap - 1], this.committed[overlap - 1])) {
      this.fail(
        OracleName.STATE_MACHINE_SAFETY,
        `node ${node} committed ${show(log[overlap - 1])} at index ${overlap}, but ${show(this.committed[overlap - 1])} was committed there`,
      );
      return;
    }
    for (let i = this.committed.length; i < commit; i++) this.committed.push(log[i]!);
    this.committedByTerm.set(term, Math.max(this.committedByTerm.get(term) ?? 0, commit));
  }

  /** How many entries are known committed by a leader of a term below `term` (leader completeness binds those). */
  committedBefore(term: number): number {
    let count = 0;
    for (const [t, length] of this.committedByTerm) if (t < term && length > count) count = length;
    return count;
  }

  /** A node applied `entry` as its `appliedCount + 1`-th entry since it started. */
  observeApply(node: number, appliedCount: number, index: number, id: EntryId): void {
    if (index !== appliedCount + 1) {
      this.fail(OracleName.STATE_MACHINE_SAFETY, `node ${node} applied index ${index} after applying ${appliedCount} entries`);
    } else if (index > this.committed.length) {
      this.fail(OracleName.STATE_MACHINE_SAFETY, `node ${node} applied index ${index}, past the committed sequence (${this.committed.length})`);
    } else if (!same(this.committed[index - 1], id)) {
      this.fail(OracleName.STATE_MACHINE_SAFETY, `node ${node} applied ${show(id)} at index ${index}, but ${show(this.committed[index - 1])} was committed there`);
    }
  }

  /**
   * The leader of `term` (its log as handed to storage so far; `lastIndex` in the core) must hold
   * every entry committed in an earlier term. A deposed leader that does not know it yet need not
   * hold what later leaders committed, hence not simply the whole committed sequence.
   */
  observeLeaderLog(node: number, term: number, log: readonly EntryId[], lastIndex: number): void {
    const committed = this.committedBefore(term);
    if (lastIndex < committed) {
      this.fail(OracleName.LEADER_COMPLETENESS, `leader ${node} of term ${term} has last index ${lastIndex}, but ${committed} entries are committed`);
      return;
    }
    const k = Math.min(committed, log.length);
    if (k > 0 && !same(log[k - 1], this.committed[k - 1])) {
      this.fail(OracleName.LEADER_COMPLETENESS, `leader ${node} of term ${term} holds ${show(log[k - 1])} at committed index ${k}, not ${show(this.committed[k - 1])}`);
    }
  }

  /** Term never decreases, a vote is never changed within a term, commit never decreases. */
  observeHardState(node: number, previous: HardStateSeen, next: HardStateSeen): void {
    if (next.term < previous.term) {
      this.fail(OracleName.MONOTONIC_STATE, `node ${node}: term went from ${previous.term} back to ${next.term}`);
    } else if (next.term === previous.term && previous.vote !== 0 && next.vote !== previous.vote) {
      this.fail(OracleName.MONOTONIC_STATE, `node ${node}: vote in term ${next.term} changed from ${previous.vote} to ${next.vote}`);
    }
    if (next.commit < previous.commit) {
      this.fail(OracleName.MONOTONIC_STATE, `node ${node}: commit went from ${previous.commit} back to ${next.commit}`);
    }
  }

  /**
   * After a crash: the recovered meta must hold at least the last term and vote that were durably
   * saved, and the recovered log must start with every entry that was durably appended (minus a
   * suffix whose truncation was under way).
   */
  observeRecovery(
    node: number,
    saved: { term: number; vote: number },
    recovered: { term: number; vote: number },
    durableLog: readonly EntryId[],
    recoveredLog: readonly EntryId[],
  ): void {
    if (recovered.term < saved.term) {
      this.fail(OracleName.DURABILITY, `node ${node} restarted with term ${recovered.term}, below the durably saved term ${saved.term}`);
    } else if (recovered.term === saved.term && saved.vote !== 0 && recovered.vote !== saved.vote) {
      this.fail(OracleName.DURABILITY, `node ${node} restarted with vote ${recovered.vote} in term ${saved.term}, but voted ${saved.vote} durably`);
    }
    if (recoveredLog.length < durableLog.length) {
      this.fail(OracleName.DURABILITY, `node ${node} restarted with ${recoveredLog.length} entries, but ${durableLog.length} were durable`);
      return;
    }
    for (let i = 1; i <= durableLog.length; i++) {
      if (!same(durableLog[i - 1], recoveredLog[i - 1])) {
        this.fail(OracleName.DURABILITY, `node ${node} restarted with ${show(recoveredLog[i - 1])} at index ${i}, where ${show(durableLog[i - 1])} was durable`);
        return;
      }
    }
  }

  /**
   * A node hands `message` to the network: the term and vote it speaks for must already be durable
   * on it (Raft section 5: servers persist before they answer; types.ts Ready: messages after the
   * hard state is durable). `saved` is the term and vote meta/state.json durably holds. A later
   * durable term covers a message of an earlier one: the node can never act in that term again.
   * A node that breaks this is one crash away from voting twice in a term, which election safety
   * sees only if the crash, the restart and a second candidate come at the right moments.
   *
   * Entries are not checked here: a message built from entries that a later cut removed in the
   * same Ready is harmless, and the durability and consensus oracles cover lost entries.
   */
  observeSend(node: number, m: Message, saved: { term: number; vote: number }): void {
    // A pre-vote asks for, and its answer grants, a term nobody has entered yet: nothing to persist.
    if (m.type === "PRE_VOTE" || m.type === "PRE_VOTE_RESPONSE") return;
    if (m.term > saved.term) {
      this.fail(OracleName.PERSIST_BEFORE_SEND, `node ${node} sent ${m.type} to ${m.to} in term ${m.term} while its durable term was ${saved.term}`);
    } else if (m.type === "VOTE_RESPONSE" && m.granted && m.term === saved.term && saved.vote !== m.to) {
      this.fail(OracleName.PERSIST_BEFORE_SEND, `node ${node} granted its vote in term ${m.term} to ${m.to}, but its durable vote in that term is ${saved.vote}`);
    }
  }

  /** A proposal was acknowledged to its client: it is committed at `index` as `id`. */
  observeAcknowledged(index: number, id: EntryId): void {
    if (!same(this.committed[index - 1], id)) {
      this.fail(OracleName.ACKNOWLEDGED_LOST, `a proposal acknowledged at index ${index} (${show(id)}) is not the committed entry ${show(this.committed[index - 1])}`);
    }
    this.acknowledgedIndex = Math.max(this.acknowledgedIndex, index);
  }

  /** A ReadIndex answer: it must cover every write acknowledged before the read began. */
  observeRead(node: number, requestId: number, acknowledgedAtStart: number, index: number): void {
    if (index < acknowledgedAtStart) {
      this.fail(
        OracleName.LINEARIZABLE_READ,
        `read ${requestId} at node ${node} got read index ${index}, but index ${acknowledgedAtStart} was acknowledged before the read began`,
      );
    }
  }
}

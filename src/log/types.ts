/**
 * Shared types of the log: the Raft log and the event log are one thing (DESIGN.md section 2).
 */

/** A position in the replicated log. The first entry ever written has index 1; 0 means "none". */
export type LogIndex = number & { readonly __brand: "LogIndex" };
/** A Raft term; the operations guide calls it the "view". 0 means "before any election". */
export type Term = number & { readonly __brand: "Term" };
/** A node's identity in the cluster; positive. */
export type NodeId = number & { readonly __brand: "NodeId" };

/** Brands a plain number as a log index, checking it is a non-negative safe integer. */
export function logIndex(n: number): LogIndex {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`not a log index: ${n}`);
  return n as LogIndex;
}

/** Brands a plain number as a term, checking it is a non-negative safe integer. */
export function term(n: number): Term {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`not a term: ${n}`);
  return n as Term;
}

/** Brands a plain number as a node id, checking it is a positive safe integer. */
export function nodeId(n: number): NodeId {
  if (!Number.isSafeInteger(n) || n <= 0) throw new RangeError(`not a node id: ${n}`);
  return n as NodeId;
}

/**
 * What kind of entry a record holds. The log stores the byte and never interprets it beyond
 * refusing 0 (a zero-filled region must never parse as a record). Higher layers own the meaning.
 */
export const RecordKind = {
  /** The empty entry a new leader appends at the start of its term. */
  NOOP: 1,
  /** A client's batch of events for one stream. */
  EVENTS: 2,
  /** A cluster membership change. */
  MEMBERSHIP: 3,
  /** Tenant, schema and projection administration. */
  ADMIN: 4,
} as const;

/** Any kind byte 1..255; see `RecordKind` for the ones VerityDB defines. */
export type RecordKindByte = number;

/** One entry of the log, as stored and as returned by reads. */
export interface LogEntry {
  readonly term: Term;
  readonly index: LogIndex;
  /** 1..255; 0 is never valid. */
  readonly kind: RecordKindByte;
  /** The tenant the entry belongs to; "" for cluster-level entries. At most TENANT_ID_BYTES_MAX bytes. */
  readonly tenant: string;
  /** The payload; never empty, at most the configured `max_record_size`. */
  readonly payload: Uint8Array;
}

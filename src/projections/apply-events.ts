/**
 * Deciding appends at apply time (docs/design/events.md). Pure and deterministic: every node feeds
 * the same committed entries in the same order and gets the same decisions, so stream versions,
 * expected-version checks and request-id deduplication agree everywhere without coordination.
 *
 * The caller (the state machine adapter) feeds every committed entry in log order: EVENTS entries
 * decoded, every other entry as `undefined` (it closes an open batch). The caller persists each
 * decision's effects together with `decidedThrough` in one transaction.
 */

import { ErrorCode, invariant } from "../errors.js";
import { EVENTS_PER_BATCH_MAX } from "../limits.js";

export type ExpectedVersion =
  | { readonly kind: "any" }
  | { readonly kind: "no-stream" }
  | { readonly kind: "exact"; readonly version: number };

/** One EVENTS log entry, decoded. */
export interface EventEntry {
  readonly position: number;
  readonly tenant: string;
  readonly stream: string;
  readonly eventId: string;
  readonly type: string;
  readonly data: Uint8Array;
  readonly metadata: Readonly<Record<string, string>>;
  readonly timestampMs: number;
  readonly batch: {
    /** "" when the client gave none: such a batch is never deduplicated. */
    readonly requestId: string;
    readonly count: number;
    readonly seq: number;
    /** Only on seq 0; absent means "any". */
    readonly expectedVersion: ExpectedVersion | undefined;
  };
}

/** What an append came to; stored under its request id so a retry gets the same answer. */
export type BatchOutcome =
  | {
      readonly ok: true;
      readonly firstPosition: number;
      readonly lastPosition: number;
      readonly firstVersion: number;
      readonly lastVersion: number;
    }
  | {
      readonly ok: false;
      readonly code: typeof ErrorCode.WRONG_EXPECTED_VERSION;
      readonly expected: ExpectedVersion;
      /** The stream's last version when the batch was decided; undefined when it had no events. */
      readonly actualVersion: number | undefined;
    }
  | {
      readonly ok: false;
      readonly code: typeof ErrorCode.NOT_FOUND;
      /** The tenant did not exist when the batch was decided. */
      readonly tenant: string;
    }
  | {
      readonly ok: false;
      readonly code: typeof ErrorCode.UNAVAILABLE;
      /** The cluster was read-only (`verity-admin cluster readonly on`) when the batch was decided. */
      readonly readOnly: string;
    };

/** The state the decisions depend on, as of the entries before the one being decided. */
export interface EventStateView {
  /** The stream's last version, or undefined when it has no events. */
  lastVersion(tenant: string, stream: string): number | undefined;
  /** The stored outcome of an earlier batch with this request id, if it is still remembered. */
  outcome(tenant: string, requestId: string): BatchOutcome | undefined;
  /** Whether the tenant was created (by an ADMIN entry before this one). */
  tenantExists(tenant: string): boolean;
  /** The reason of the cluster's write freeze, or undefined when writes are allowed. */
  readOnly(): string | undefined;
}

export type Decision =
  /** The batch's events join the stream with consecutive versions. */
  | {
      readonly kind: "appended";
      readonly tenant: string;
      readonly stream: string;
      readonly requestId: string;
      readonly events: ReadonlyArray<EventEntry & { readonly version: number }>;
      readonly outcome: BatchOutcome & { ok: true };
    }
  /** The expected version did not match: the entries are void, the failure is remembered. */
  | {
      readonly kind: "rejected";
      readonly tenant: string;
      readonly stream: string;
      readonly requestId: string;
      readonly positions: readonly [number, number];
      readonly outcome: BatchOutcome & { ok: false; code: typeof ErrorCode.WRONG_EXPECTED_VERSION };
    }
  /**
   * The tenant does not exist, or the cluster is read-only: the entries are void and nothing is
   * remembered (a retry once the tenant exists or writes resume appends).
   */
  | {
      readonly kind: "refused";
      readonly tenant: string;
      readonly stream: string;
      readonly positions: readonly [number, number];
      readonly outcome: BatchOutcome & { ok: false; code: typeof ErrorCode.NOT_FOUND | typeof ErrorCode.UNAVAILABLE };
    }
  /** A retry of a request id already decided: the entries are void, the first outcome stands. */
  | {
      readonly kind: "duplicate";
      readonly tenant: string;
      readonly requestId: string;
      readonly positions: readonly [number, number];
      readonly outcome: BatchOutcome;
    }
  /** A batch that never completed in the log (its leader failed mid-way): void, nothing remembered. */
  | { readonly kind: "void"; readonly positions: readonly [number, number]; readonly reason: string };

function checkExpected(expected: ExpectedVersion, actual: number | undefined): boolean {
  switch (expected.kind) {
    case "any":
      return true;
    case "no-stream":
      return actual === undefined;
    case "exact":
      return actual === expected.version;
  }
}

/** Buffers the entries of the batch being applied until it completes or is cut off. */
export class BatchAssembler {
  /** The open batch. Invariant: non-empty only with consecutive seq from 0, same batch fields. */
  private open: EventEntry[] = [];
  /** Every position up to this one is decided (0: none). Invariant: never decreases. */
  private decided: number;

  constructor(decidedThrough: number) {
    this.decided = decidedThrough;
  }

  /** Positions up to here are decided: what apply may record as its applied position. */
  get decidedThrough(): number {
    return this.decided;
  }

  /**
   * Feeds the committed entry at `position` (decoded when it is an EVENTS entry, else undefined).
   * Returns the decisions it completes, in log order.
   */
  next(position: number, entry: EventEntry | undefined, state: EventStateView): Decision[] {
    invariant(position > this.decided, `position ${position} fed after ${this.decided} was decided`);
    invariant(entry === undefined || entry.position === position, "entry position matches");
    const decisions: Decision[] = [];
    if (this.open.length > 0 && (entry === undefined || !this.continues(entry))) {
      decisions.push(this.voidOpen("the batch was cut off by a later entry before it completed"));
    }
    if (entry === undefined) {
      this.decided = position;
      return decisions;
    }
    if (this.open.length === 0) {
      const b = entry.batch;
      const wellFormed = b.seq === 0 && b.count >= 1 && b.count <= EVENTS_PER_BATCH_MAX;
      if (!wellFormed) {
        this.decided = position;
        decisions.push({ kind: "void", positions: [position, position], reason: `entry ${b.seq} of ${b.count} without its batch start` });
        return decisions;
      }
    }
    this.open.push(entry);
    if (this.open.length === entry.batch.count) decisions.push(this.decide(state));
    return decisions;
  }

  private continues(entry: EventEntry): boolean {
    const first = this.open[0]!;
    const last = this.open[this.open.length - 1]!;
    return (
      entry.position === last.position + 1 &&
      entry.batch.seq === last.batch.seq + 1 &&
      entry.batch.count === first.batch.count &&
      entry.batch.requestId === first.batch.requestId &&
      entry.tenant === first.tenant &&
      entry.stream === first.stream
    );
  }

  private voidOpen(reason: string): Decision {
    const first = this.open[0]!.position;
    const last = this.open[this.open.length - 1]!.position;
    this.open = [];
    this.decided = last;
    return { kind: "void", positions: [first, last], reason };
  }

  private decide(state: EventStateView): Decision {
    const batch = this.open;
    this.open = [];
    const first = batch[0]!;
    const last = batch[batch.length - 1]!;
    this.decided = last.position;
    const positions = [first.position, last.position] as const;
    const { tenant, stream } = first;
    const requestId = first.batch.requestId;
    if (!state.tenantExists(tenant)) {
      return { kind: "refused", tenant, stream, positions, outcome: { ok: false, code: ErrorCode.NOT_FOUND, tenant } };
    }
    const frozen = state.readOnly();
    if (frozen !== undefined) return { kind: "refused", tenant, stream, positions, outcome: { ok: false, code: ErrorCode.UNAVAILABLE, readOnly: frozen } };
    if (requestId !== "") {
      const earlier = state.outcome(tenant, requestId);
      if (earlier !== undefined) return { kind: "duplicate", tenant, requestId, positions, outcome: earlier };
    }
    const expected = first.batch.expectedVersion ?? { kind: "any" };
    const actual = state.lastVersion(tenant, stream);
    if (!checkExpected(expected, actual)) {
      return {
        kind: "rejected", tenant, stream, requestId, positions,
        outcome: { ok: false, code: ErrorCode.WRONG_EXPECTED_VERSION, expected, actualVersion: actual },
      };
    }
    const base = actual === undefined ? 0 : actual + 1;
    const events = batch.map((e, i) => ({ ...e, version: base + i }));
    return {
      kind: "appended", tenant, stream, requestId, events,
      outcome: { ok: true, firstPosition: first.position, lastPosition: last.position, firstVersion: base, lastVersion: base + batch.length - 1 },
    };
  }
}

/**
 * The node's state machine (the driver's StateMachinePort): committed entries go through the
 * BatchAssembler (apply-time decisions, docs/design/events.md) into the EventStore, one SQLite
 * transaction per applied run. It also settles what waits on apply:
 *
 * - appends proposed on this node, keyed by their first position and term: answered with the
 *   batch's outcome, or refused when the entries at their positions turn out to be another
 *   leader's (the batch never committed) or the batch was voided;
 * - readers waiting for the applied index to reach a read point, and subscribers waiting for new
 *   events. Both are bounded.
 */

import { RecordKind, type LogEntry } from "../log/types.js";
import type { StateMachinePort } from "../consensus/driver.js";
import { BatchAssembler, type BatchOutcome, type Decision } from "../projections/apply-events.js";
import { decodeAdminCommand, decodeEventRecord } from "../projections/event-codec.js";
import type { EventStore } from "../projections/event-store.js";
import { ErrorCode, QuotaExceededError, VerityError } from "../errors.js";

/** Appends waiting for their outcome, at most (more are refused with RESOURCE_EXHAUSTED). */
export const PENDING_APPENDS_MAX = 65_536;
/** Readers waiting for a read point to be applied, at most. */
export const APPLIED_WAITERS_MAX = 65_536;
/** Subscribers waiting for the next applied entries, at most. */
export const APPLY_LISTENERS_MAX = 10_000;

export interface AppendOutcome {
  readonly outcome: BatchOutcome;
  readonly deduplicated: boolean;
}

interface PendingAppend {
  readonly term: number;
  readonly first: number;
  resolve(outcome: AppendOutcome): void;
  reject(error: Error): void;
}

/** What an ADMIN entry came to when it was applied. */
export type CommandResult = { readonly ok: true; readonly position: number } | { readonly ok: false; readonly code: ErrorCode; readonly message: string };

interface PendingCommand {
  readonly term: number;
  resolve(result: CommandResult & { ok: true }): void;
  reject(error: Error): void;
}

/** What an append gets while the cluster is read-only. */
export function readOnlyError(reason: string): VerityError {
  return new VerityError(
    ErrorCode.UNAVAILABLE,
    `the cluster is read-only for maintenance${reason === "" ? "" : ` (${reason})`}: nothing was appended; reads and queries go on. Retry once an operator runs verity-admin cluster readonly off`,
  );
}

/** The error a failed batch outcome answers with. */
export function outcomeError(o: BatchOutcome & { ok: false }, stream: string): VerityError {
  switch (o.code) {
    case ErrorCode.WRONG_EXPECTED_VERSION: {
      const actual = o.actualVersion === undefined ? "has no events" : `is at version ${o.actualVersion}`;
      const expected = o.expected.kind === "exact" ? `version ${o.expected.version}` : o.expected.kind === "no-stream" ? "no stream" : "any";
      return new VerityError(ErrorCode.WRONG_EXPECTED_VERSION, `wrong expected version: stream "${stream}" ${actual}, the append expected ${expected}; read the stream and retry with its current version`);
    }
    case ErrorCode.NOT_FOUND:
      return new VerityError(ErrorCode.NOT_FOUND, `tenant "${o.tenant}" does not exist: create it first (verity-admin tenant create --tenant ${o.tenant})`);
    case ErrorCode.UNAVAILABLE:
      return readOnlyError(o.readOnly);
  }
}

interface AppliedWaiter {
  readonly index: number;
  resolve(): void;
}

export interface EventApplyLogger {
  warn(obj: object, msg: string): void;
}

export class EventStateMachine implements StateMachinePort {
  private readonly assembler: BatchAssembler;
  /** Every committed entry up to here has been fed (an open batch may still wait for its end). */
  private fed: number;
  private readonly pending = new Map<number, PendingAppend>();
  private readonly pendingCommands = new Map<number, PendingCommand>();
  private waiters: AppliedWaiter[] = [];
  private readonly listeners = new Set<() => void>();

  constructor(
    readonly store: EventStore,
    private readonly logger?: EventApplyLogger,
    private readonly onDecision?: (d: Decision) => void,
    /** A tenant's ADMIN command was applied (its projector has work). */
    private readonly onCommand?: (tenant: string) => void,
  ) {
    this.assembler = new BatchAssembler(store.appliedPosition);
    this.fed = store.appliedPosition;
  }

  /** The last committed index this node has applied (what `/status` calls applied_index). */
  get appliedIndex(): number {
    return this.fed;
  }

  apply(entries: readonly LogEntry[]): void {
    const decisions: Decision[] = [];
    const superseded: number[] = [];
    const commands: { index: number; term: number; tenant: string; result: CommandResult }[] = [];
    this.store.transaction(
      () => {
        for (const e of entries) {
          if (e.index <= this.fed) continue; // replayed after a restart: already in the store
          const waiting = this.pending.get(e.index);
          if (waiting !== undefined && waiting.term !== e.term) superseded.push(e.index);
          if (e.kind === RecordKind.ADMIN) {
            const result = this.applyAdmin(e);
            commands.push({ index: e.index, term: e.term, tenant: e.tenant, result });
          }
          const commandWaiting = this.pendingCommands.get(e.index);
          if (commandWaiting !== undefined && commandWaiting.term !== e.term) superseded.push(e.index);
          let decoded;
          if (e.kind === RecordKind.EVENTS) {
            decoded = decodeEventRecord(e.index, e.tenant, e.payload);
            if (decoded === undefined) this.logger?.warn({ position: e.index }, "an EVENTS entry does not decode; applied as void on every node");
          }
          for (const d of this.assembler.next(e.index, decoded, this.store)) {
            this.store.record(d);
            decisions.push(d);
          }
          this.fed = e.index;
        }
      },
      () => this.assembler.decidedThrough,
    );
    for (const index of superseded) {
      const why = "leadership changed before the entry committed, and another leader's entries replaced it: nothing was done; retry";
      this.settle(index, new VerityError(ErrorCode.UNAVAILABLE, `${why} (with the same request id)`));
      this.settleCommand(index, new VerityError(ErrorCode.UNAVAILABLE, why));
    }
    for (const c of commands) {
      if (c.tenant !== "") this.onCommand?.(c.tenant);
      this.settleCommand(c.index, c.result.ok ? c.result : new VerityError(c.result.code, c.result.message));
    }
    for (const d of decisions) {
      this.onDecision?.(d);
      if (d.kind === "void") {
        this.settle(d.positions[0], new VerityError(ErrorCode.UNAVAILABLE, "leadership changed while the batch was being replicated, so it was not appended; retry (with the same request id)"));
      } else if (d.kind === "rejected" || d.kind === "refused") {
        this.settle(d.positions[0], outcomeError(d.outcome, d.stream));
      } else if (d.kind === "duplicate") {
        this.settle(d.positions[0], { outcome: d.outcome, deduplicated: true });
      } else {
        this.settle(d.outcome.firstPosition, { outcome: d.outcome, deduplicated: false });
      }
    }
    if (this.waiters.length > 0) {
      const due = this.waiters.filter((w) => w.index <= this.fed);
      if (due.length > 0) {
        this.waiters = this.waiters.filter((w) => w.index > this.fed);
        for (const w of due) w.resolve();
      }
    }
    for (const listener of this.listeners) listener();
  }

  /**
   * Waits for the outcome of a batch this node proposed at [first, ...] in `term`. Refused at once
   * when PENDING_APPENDS_MAX appends are waiting; rejected after `timeoutMs` (outcome unknown).
   */
  awaitOutcome(term: number, first: number, timeoutMs: number): Promise<AppendOutcome> {
    if (this.pending.size >= PENDING_APPENDS_MAX) {
      return Promise.reject(new QuotaExceededError("PENDING_APPENDS_MAX", PENDING_APPENDS_MAX, `${PENDING_APPENDS_MAX} appends are already waiting to commit on this node (PENDING_APPENDS_MAX); retry shortly`));
    }
    return new Promise<AppendOutcome>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pending.get(first) !== entry) return;
        this.pending.delete(first);
        reject(new VerityError(ErrorCode.UNAVAILABLE, `the append was not committed within ${timeoutMs} ms (is a majority of the cluster up?); its outcome is unknown: retry with the same request id, which appends it at most once`));
      }, timeoutMs);
      const entry: PendingAppend = {
        term, first,
        resolve: (o) => {
          clearTimeout(timer);
          resolve(o);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.pending.set(first, entry);
    });
  }

  /** Decodes and applies one ADMIN entry: tenant creation here; schema and projection commands are queued for the tenant's projector. */
  private applyAdmin(e: LogEntry): CommandResult {
    const command = decodeAdminCommand(e.payload);
    if (command === undefined) return { ok: false, code: ErrorCode.INVALID_ARGUMENT, message: `the administration entry at position ${e.index} does not decode` };
    const tenant = e.tenant;
    if (command.kind === "setReadOnly") {
      this.store.setReadOnly(command.body.on, command.body.reason, e.index);
      return { ok: true, position: e.index };
    }
    if (command.kind === "createTenant") {
      if (this.store.tenantExists(tenant)) return { ok: false, code: ErrorCode.ALREADY_EXISTS, message: `tenant "${tenant}" exists already` };
      this.store.createTenant(tenant, e.index);
      return { ok: true, position: e.index };
    }
    if (!this.store.tenantExists(tenant)) {
      return { ok: false, code: ErrorCode.NOT_FOUND, message: `tenant "${tenant}" does not exist: create it first (verity-admin tenant create --tenant ${tenant})` };
    }
    this.store.addCommand(tenant, e.index, command.kind, JSON.stringify(command.body));
    return { ok: true, position: e.index };
  }

  /** Waits for the ADMIN entry this node proposed at `index` in `term` to be applied. */
  awaitCommand(term: number, index: number, timeoutMs: number): Promise<CommandResult & { ok: true }> {
    if (this.pendingCommands.size >= PENDING_APPENDS_MAX) {
      return Promise.reject(new QuotaExceededError("PENDING_APPENDS_MAX", PENDING_APPENDS_MAX, "too many administration commands are waiting; retry shortly"));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pendingCommands.get(index) !== entry) return;
        this.pendingCommands.delete(index);
        reject(new VerityError(ErrorCode.UNAVAILABLE, `the command was not committed within ${timeoutMs} ms (is a majority of the cluster up?); check with status before retrying`));
      }, timeoutMs);
      const entry: PendingCommand = {
        term,
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.pendingCommands.set(index, entry);
    });
  }

  private settleCommand(index: number, result: (CommandResult & { ok: true }) | Error): void {
    const p = this.pendingCommands.get(index);
    if (p === undefined) return;
    this.pendingCommands.delete(index);
    if (result instanceof Error) p.reject(result);
    else p.resolve(result);
  }

  private settle(first: number, result: AppendOutcome | Error): void {
    const p = this.pending.get(first);
    if (p === undefined) return;
    this.pending.delete(first);
    if (result instanceof Error) p.reject(result);
    else p.resolve(result);
  }

  /** Resolves once every committed entry up to `index` is applied; false after `timeoutMs`. */
  waitApplied(index: number, timeoutMs: number): Promise<boolean> {
    if (this.fed >= index) return Promise.resolve(true);
    if (this.waiters.length >= APPLIED_WAITERS_MAX) {
      return Promise.reject(new QuotaExceededError("APPLIED_WAITERS_MAX", APPLIED_WAITERS_MAX, `${APPLIED_WAITERS_MAX} reads are already waiting for this node to apply (APPLIED_WAITERS_MAX); retry shortly`));
    }
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        resolve(false);
      }, timeoutMs);
      const waiter: AppliedWaiter = {
        index,
        resolve: () => {
          clearTimeout(timer);
          resolve(true);
        },
      };
      this.waiters.push(waiter);
    });
  }

  /** Calls `listener` after every applied run until the returned function is called. */
  onApplied(listener: () => void): () => void {
    if (this.listeners.size >= APPLY_LISTENERS_MAX) {
      throw new QuotaExceededError("APPLY_LISTENERS_MAX", APPLY_LISTENERS_MAX, `${APPLY_LISTENERS_MAX} subscriptions are open on this node (APPLY_LISTENERS_MAX); close some or use another node`);
    }
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Refuses every waiting append (the node is stopping). */
  failPending(reason: string): void {
    for (const first of [...this.pending.keys()]) this.settle(first, new VerityError(ErrorCode.UNAVAILABLE, reason));
    for (const index of [...this.pendingCommands.keys()]) this.settleCommand(index, new VerityError(ErrorCode.UNAVAILABLE, reason));
    for (const w of this.waiters) w.resolve();
    this.waiters = [];
  }
}

/**
 * The data plane behind the Client gRPC service: appends (proposed here when this node leads,
 * forwarded to the leader otherwise), read points (ReadIndex for LINEARIZABLE reads, on the leader
 * or asked of it by a follower), and reading events: positions from the EventStore, bodies from
 * the log.
 */

import { randomUUID } from "node:crypto";
import type { RaftDriver, LogStoragePort } from "../consensus/driver.js";
import { Role, type ReadState } from "../consensus/types.js";
import { RecordKind, type NodeId } from "../log/types.js";
import { ErrorCode, InvalidArgumentError, QuotaExceededError, VerityError } from "../errors.js";
import { EVENTS_PER_BATCH_MAX, READ_INDEX_PENDING_MAX } from "../limits.js";
import type { ExpectedVersion } from "../projections/apply-events.js";
import { decodeEventRecord, encodeEventRecord, expectedFromProto } from "../projections/event-codec.js";
import type { IndexedEvent } from "../projections/event-store.js";
import { PENDING_APPENDS_MAX, outcomeError, readOnlyError, type EventStateMachine } from "./event-apply.js";
import { childSpan } from "./tracing.js";
import type { Span } from "@opentelemetry/api";
import type { PeerTransport } from "./peer-transport.js";
import type { Plain } from "./grpc-methods.js";
import { TENANT_ID_PATTERN } from "./setting-kinds.js";

/** How long an append waits to commit before it is answered "outcome unknown". */
export const APPEND_WAIT_MS = 10_000;
/** How long a read waits for its read point (ReadIndex) and for this node to apply up to it. */
export const READ_WAIT_MS = 5_000;
/** Events per Read / ReadAll answer when the request gives no limit, and at most. */
export const READ_LIMIT_DEFAULT = 1_000;
export const READ_LIMIT_MAX = 10_000;
/** Payload bytes per Read answer (at least one event is always sent). */
export const READ_RESPONSE_BYTES_MAX = 16 * 1024 * 1024;
/** Bounds on names and fields (docs/design/events.md). */
export const STREAM_NAME_BYTES_MAX = 256;
export const EVENT_ID_BYTES_MAX = 128;
export const EVENT_TYPE_BYTES_MAX = 256;
export const REQUEST_ID_BYTES_MAX = 128;
export const METADATA_ENTRIES_MAX = 64;
/** Positions closer than this are read from the log as one range. */
const READ_GAP_MAX = 64;

export interface ValidatedAppend {
  readonly tenant: string;
  readonly stream: string;
  readonly events: readonly { eventId: string; type: string; data: Uint8Array; metadata: Record<string, string> }[];
  readonly expected: ExpectedVersion | undefined;
  readonly requestId: string;
}

export interface AppendAnswer {
  firstPosition: number;
  lastPosition: number;
  firstVersion: number;
  lastVersion: number;
  deduplicated: boolean;
}

export interface ReadEvent {
  position: number;
  stream: string;
  version: number;
  eventId: string;
  type: string;
  data: Uint8Array;
  metadata: Record<string, string>;
  timestampMs: number;
}

export interface DataPlaneLimits {
  recordBytesMax: number;
  batchBytesMax: number;
}

const bytesOf = (s: string): number => Buffer.byteLength(s, "utf8");
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

export function checkTenant(tenant: string): string {
  if (!TENANT_ID_PATTERN.test(tenant)) {
    throw new InvalidArgumentError(`tenant "${tenant}" is not a valid tenant id: 1 to 64 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit`);
  }
  return tenant;
}

export function checkStream(stream: string): string {
  if (stream === "" || bytesOf(stream) > STREAM_NAME_BYTES_MAX || CONTROL.test(stream)) {
    throw new InvalidArgumentError(`stream "${stream.slice(0, 80)}" is not a valid stream name: 1 to ${STREAM_NAME_BYTES_MAX} bytes of UTF-8 without control characters`);
  }
  return stream;
}

/** Checks an AppendRequest (as decoded from protobuf) against the names' rules and the size limits. */
export function validateAppend(r: Plain, limits: DataPlaneLimits): ValidatedAppend {
  const tenant = checkTenant(String(r.tenant ?? ""));
  const stream = checkStream(String(r.stream ?? ""));
  const requestId = String(r.requestId ?? "");
  if (bytesOf(requestId) > REQUEST_ID_BYTES_MAX || CONTROL.test(requestId)) {
    throw new InvalidArgumentError(`request_id is longer than ${REQUEST_ID_BYTES_MAX} bytes or has control characters; use a UUID`);
  }
  const raw = (r.events ?? []) as Plain[];
  if (raw.length === 0) throw new InvalidArgumentError("the append has no events: send at least one");
  if (raw.length > EVENTS_PER_BATCH_MAX) {
    throw new QuotaExceededError("EVENTS_PER_BATCH_MAX", EVENTS_PER_BATCH_MAX, `the append has ${raw.length} events, more than ${EVENTS_PER_BATCH_MAX} per batch: split it into several appends`);
  }
  let total = 0;
  const events = raw.map((e, i) => {
    const type = String(e.type ?? "");
    if (type === "" || bytesOf(type) > EVENT_TYPE_BYTES_MAX || CONTROL.test(type)) {
      throw new InvalidArgumentError(`event ${i}: type "${type.slice(0, 80)}" must be 1 to ${EVENT_TYPE_BYTES_MAX} bytes without control characters`);
    }
    const eventId = String(e.eventId ?? "");
    if (bytesOf(eventId) > EVENT_ID_BYTES_MAX) throw new InvalidArgumentError(`event ${i}: event_id is longer than ${EVENT_ID_BYTES_MAX} bytes`);
    const metadata = (e.metadata ?? {}) as Record<string, string>;
    if (Object.keys(metadata).length > METADATA_ENTRIES_MAX) {
      throw new InvalidArgumentError(`event ${i}: ${Object.keys(metadata).length} metadata entries, more than ${METADATA_ENTRIES_MAX}`);
    }
    const data = (e.data ?? new Uint8Array(0)) as Uint8Array;
    const size = data.length + bytesOf(type) + bytesOf(eventId) + bytesOf(stream) + Object.entries(metadata).reduce((n, [k, v]) => n + bytesOf(k) + bytesOf(v), 0);
    if (size > limits.recordBytesMax) {
      throw new QuotaExceededError("limits.max_record_size", limits.recordBytesMax, `event ${i} is ${size} bytes, more than limits.max_record_size (${limits.recordBytesMax} bytes): store large payloads elsewhere and append a reference`);
    }
    total += size;
    return { eventId, type, data, metadata };
  });
  if (total > limits.batchBytesMax) {
    throw new QuotaExceededError("limits.max_batch_size", limits.batchBytesMax, `the batch is ${total} bytes, more than limits.max_batch_size (${limits.batchBytesMax} bytes): split it into several appends`);
  }
  return { tenant, stream, events, expected: expectedFromProto(r.expectedVersion), requestId };
}

export interface DataPlaneDeps {
  driver(): RaftDriver | undefined;
  readonly transport: PeerTransport;
  readonly stateMachine: EventStateMachine;
  readonly log: LogStoragePort;
  readonly limits: DataPlaneLimits;
  readonly nodeId: NodeId;
  /** `limits.max_streams_per_tenant`, checked on the leader before a new stream's first append. */
  readonly streamsPerTenantMax: number;
  onForwarded?(): void;
}

export class DataPlane {
  private nextReadId = 1;
  private readonly reads = new Map<number, { resolve(index: number): void; reject(e: Error): void }>();
  /** Traced appends waiting for their commit (only while tracing; bounded by PENDING_APPENDS_MAX). */
  private commitWatch: { index: number; committed(): void }[] = [];

  constructor(private readonly deps: DataPlaneDeps) {}

  private role(): { driver: RaftDriver; leader: NodeId; isLeader: boolean } {
    const driver = this.deps.driver();
    if (driver === undefined) throw new VerityError(ErrorCode.UNAVAILABLE, "the node is still starting; retry shortly");
    const s = driver.raft.softState();
    if (s.leader === 0) throw new VerityError(ErrorCode.UNAVAILABLE, "no leader is known yet (an election may be under way); retry shortly");
    return { driver, leader: s.leader, isLeader: s.role === Role.LEADER };
  }

  /** Appends here when this node leads, else forwards the request to the leader. */
  async append(request: Plain): Promise<AppendAnswer> {
    const validated = validateAppend(request, this.deps.limits);
    const { isLeader, leader } = this.role();
    if (isLeader) return this.appendAsLeader(validated);
    this.deps.onForwarded?.();
    const answer = await this.deps.transport.request(leader, "forwardAppend", request, APPEND_WAIT_MS + 2_000);
    return answer as unknown as AppendAnswer;
  }

  /** A forwarded append: this node must lead (a follower never forwards twice). */
  async appendForwarded(request: Plain): Promise<AppendAnswer> {
    const validated = validateAppend(request, this.deps.limits);
    const { isLeader, leader } = this.role();
    if (!isLeader) throw new VerityError(ErrorCode.NOT_LEADER, `node ${this.deps.nodeId} is no longer the leader (node ${leader} is); retry`);
    return this.appendAsLeader(validated);
  }

  private async appendAsLeader(a: ValidatedAppend): Promise<AppendAnswer> {
    const { driver } = this.role();
    const store = this.deps.stateMachine.store;
    const frozen = store.readOnly();
    if (frozen !== undefined) throw readOnlyError(frozen);
    const tenant = store.tenant(a.tenant);
    if (tenant === undefined) throw new VerityError(ErrorCode.NOT_FOUND, `tenant "${a.tenant}" does not exist: create it first (verity-admin tenant create --tenant ${a.tenant})`);
    if (tenant.streams >= this.deps.streamsPerTenantMax && store.lastVersion(a.tenant, a.stream) === undefined) {
      throw new QuotaExceededError(
        "limits.max_streams_per_tenant", this.deps.streamsPerTenantMax,
        `tenant "${a.tenant}" has ${tenant.streams} streams, limits.max_streams_per_tenant (${this.deps.streamsPerTenantMax}): append to an existing stream, or raise the limit on every node`,
      );
    }
    const timestampMs = Date.now();
    const count = a.events.length;
    const entries = a.events.map((e, seq) => ({
      kind: RecordKind.EVENTS,
      tenant: a.tenant,
      payload: encodeEventRecord({
        stream: a.stream, eventId: e.eventId === "" ? randomUUID() : e.eventId, type: e.type, data: e.data, metadata: e.metadata, timestampMs,
        batch: { requestId: a.requestId, count, seq, expectedVersion: seq === 0 ? a.expected : undefined },
      }),
    }));
    const prepare = childSpan("verity.consensus.prepare", { "verity.tenant": a.tenant, "verity.events": count });
    const proposed = driver.input((core) => core.propose(entries));
    if (!proposed.ok) {
      prepare?.end();
      throw new VerityError(proposed.code, proposed.message);
    }
    let commit: Span | undefined;
    if (prepare !== undefined && this.commitWatch.length < PENDING_APPENDS_MAX) {
      prepare.setAttribute("verity.position.last", proposed.lastIndex);
      this.commitWatch.push({
        index: proposed.lastIndex,
        committed: () => {
          prepare.end();
          commit = childSpan("verity.consensus.commit", { "verity.position.last": proposed.lastIndex });
        },
      });
    }
    let settled;
    try {
      settled = await this.deps.stateMachine.awaitOutcome(proposed.term, proposed.firstIndex, APPEND_WAIT_MS);
    } finally {
      prepare?.end();
      commit?.end();
    }
    const { outcome, deduplicated } = settled;
    if (!outcome.ok) throw outcomeError(outcome, a.stream);
    return { ...outcome, deduplicated };
  }

  /** The leader's linearizable read point (asked of the leader when this node follows). */
  async readIndex(): Promise<number> {
    const { driver, isLeader, leader } = this.role();
    if (!isLeader) {
      const answer = await this.deps.transport.request(leader, "readIndex", {}, READ_WAIT_MS);
      return Number(answer.index ?? 0);
    }
    if (this.reads.size >= READ_INDEX_PENDING_MAX) {
      throw new QuotaExceededError("READ_INDEX_PENDING_MAX", READ_INDEX_PENDING_MAX, `${READ_INDEX_PENDING_MAX} linearizable reads are already waiting; retry shortly or read with consistency LOCAL`);
    }
    const id = this.nextReadId++;
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.reads.delete(id)) reject(new VerityError(ErrorCode.UNAVAILABLE, `the leader could not confirm its leadership within ${READ_WAIT_MS} ms (is a majority up?); retry`));
      }, READ_WAIT_MS);
      this.reads.set(id, {
        resolve: (i) => {
          clearTimeout(timer);
          resolve(i);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      const accepted = driver.input((core) => core.readIndex(id));
      if (!accepted.ok) {
        this.reads.delete(id);
        clearTimeout(timer);
        reject(new VerityError(accepted.code, accepted.message));
      }
    });
  }

  /** The commit index moved (the driver's hard state): ends the prepare spans it covers. */
  onCommitted(commit: number): void {
    if (this.commitWatch.length === 0) return;
    const due = this.commitWatch.filter((w) => w.index <= commit);
    if (due.length === 0) return;
    this.commitWatch = this.commitWatch.filter((w) => w.index > commit);
    for (const w of due) w.committed();
  }

  /** The driver's ReadStates: answers the waiting read points. */
  onReadStates(states: readonly ReadState[]): void {
    for (const s of states) {
      const waiting = this.reads.get(s.requestId);
      if (waiting === undefined) continue;
      this.reads.delete(s.requestId);
      if (s.ok) waiting.resolve(s.index);
      else waiting.reject(new VerityError(s.code, s.message));
    }
  }

  /**
   * Makes this node's state fit to answer a read: LINEARIZABLE waits until it applied the
   * leader's read point; LOCAL answers at once. Returns the applied position and how far it
   * trails the commit index this node knows.
   */
  async barrier(linearizable: boolean): Promise<{ applied: number; lag: number }> {
    if (linearizable) {
      const index = await this.readIndex();
      const applied = await this.deps.stateMachine.waitApplied(index, READ_WAIT_MS);
      if (!applied) throw new VerityError(ErrorCode.UNAVAILABLE, `this node did not apply up to the read point ${index} within ${READ_WAIT_MS} ms (it is catching up); retry or use another endpoint`);
    }
    const applied = this.deps.stateMachine.appliedIndex;
    const commit = this.deps.driver()?.raft.hardState().commit ?? applied;
    return { applied, lag: Math.max(0, commit - applied) };
  }

  /** The bodies of indexed events, read from the log, in the order given (bounded by READ_RESPONSE_BYTES_MAX). */
  async load(rows: readonly IndexedEvent[]): Promise<ReadEvent[]> {
    const out: ReadEvent[] = [];
    let bytes = 0;
    let i = 0;
    // Bounded by rows.length: each pass reads one run of nearby positions.
    while (i < rows.length && (bytes < READ_RESPONSE_BYTES_MAX || out.length === 0)) {
      let j = i + 1;
      while (j < rows.length && rows[j]!.position > rows[j - 1]!.position && rows[j]!.position - rows[j - 1]!.position <= READ_GAP_MAX) j++;
      const run = rows.slice(i, j);
      const from = run[0]!.position;
      const to = run[run.length - 1]!.position + 1;
      const byPosition = new Map(run.map((r) => [r.position, r]));
      let next = from;
      // Bounded: each read returns at least one entry, so `next` advances.
      while (next < to) {
        const entries = await this.deps.log.read(next, to, READ_RESPONSE_BYTES_MAX);
        if (entries.length === 0) throw new VerityError(ErrorCode.INTERNAL, `the log has no entry at position ${next}, which the event index lists`);
        for (const e of entries) {
          const row = byPosition.get(e.index);
          if (row === undefined) continue;
          const decoded = decodeEventRecord(e.index, e.tenant, e.payload);
          if (decoded === undefined) throw new VerityError(ErrorCode.CORRUPTION, `the event at position ${e.index} does not decode although its checksum matched; run verity-admin log verify`);
          out.push({
            position: e.index, stream: row.stream, version: row.version, eventId: decoded.eventId, type: decoded.type,
            data: decoded.data, metadata: { ...decoded.metadata }, timestampMs: decoded.timestampMs,
          });
          bytes += decoded.data.length;
        }
        next = entries[entries.length - 1]!.index + 1;
      }
      i = j;
    }
    return out;
  }

  /** Fails every waiting read point (the node is stopping). */
  stop(): void {
    for (const r of this.reads.values()) r.reject(new VerityError(ErrorCode.UNAVAILABLE, "the node is stopping; retry on another endpoint"));
    this.reads.clear();
  }
}

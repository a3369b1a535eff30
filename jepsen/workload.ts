/**
 * The clients: logical processes, each pinned to one node, issuing appends (some with expected
 * versions), stream reads (LINEARIZABLE and LOCAL), projection queries and projection status
 * calls at the `--rate` the run asked for; and one tail subscription per tenant that moves to
 * another node when its node fails. Everything is recorded in the history.
 *
 * A process whose operation ended `info` (unknown outcome) is retired: its slot continues under
 * a new process number, as Jepsen does, so "one process, one operation at a time" holds in the
 * history. Half the time the new process sends the same request again (same request id, events
 * and expected version), which tests request-id deduplication across failures. Streams hold at most STREAM_EVENTS_MAX events; then a new stream takes the place of
 * the full one, so re-reading a stream stays cheap.
 */

import type { AppendResult as ClientAppendResult } from "../src/client/verity-client.js";
import {
  ACTIVE_STREAMS_PER_TENANT, EVENTS_PER_APPEND_MAX, READ_LIMIT, RETIRED_STREAMS_KEPT_MAX, SLOTS_PER_NODE, STREAM_EVENTS_MAX, SUB_BATCH_EVENTS_MAX,
  SUB_FLUSH_MS, SUB_RESTART_DELAY_MS, SUB_RESTARTS_MAX, SUBSCRIBERS_PER_TENANT, TENANTS,
} from "./constants.js";
import type { JepsenCluster, JepsenNode } from "./cluster.js";
import type {
  AppendResult, AppendValue, Consistency, DigestResult, Expected, History, QueryResult, ReadResult, SubEventTuple,
} from "./history.js";
import { classifyAppendError, readError } from "./outcome.js";
import type { Rng } from "./rng.js";

/** The event type the projection handles. */
export const EVENT_TYPE = "JepsenEvent";
/** The projection every tenant gets: one row per event, so the checker can fold the final log the same way. */
export const PROJECTION_TABLE = "jepsen_seen";
export const PROJECTION_MIGRATION =
  `CREATE TABLE ${PROJECTION_TABLE} (position INTEGER NOT NULL, stream TEXT NOT NULL, version INTEGER NOT NULL, event_id TEXT NOT NULL, tenant TEXT NOT NULL)`;
export const PROJECTION_DEFINITION = [
  `name = "${PROJECTION_TABLE}"`,
  "[[handlers]]",
  `event_type = "${EVENT_TYPE}"`,
  `sql = "INSERT INTO ${PROJECTION_TABLE} (position, stream, version, event_id, tenant) VALUES (:_position, :_stream, :_version, :id, :tenant)"`,
].join("\n");
const PROJECTION_QUERY =
  `SELECT COUNT(*), COALESCE(SUM(position), 0), COALESCE(SUM(version), 0), COALESCE(SUM(tenant <> :t), 0) FROM ${PROJECTION_TABLE}`;

/** How often the dispatcher runs. */
const DISPATCH_TICK_MS = 10;
/** Dispatch credit never piles up past this many operations (when every slot is busy). */
const DISPATCH_CREDIT_MAX = 10;
/** Operation mix (cumulative thresholds of one draw). */
const APPEND_SHARE = 0.5;
const READ_SHARE = 0.32;
const QUERY_SHARE = 0.08;
/** Of appends: with an exact expected version, or expecting no stream when the stream looks new. */
const EXPECTED_EXACT_PROBABILITY = 0.25;
/** After an unknown outcome: the chance that the same request is sent again, and how many more times at most. */
const RETRY_AFTER_INFO_PROBABILITY = 0.5;
const RETRIES_PER_REQUEST_MAX = 2;
/** Of reads: LINEARIZABLE (the rest LOCAL), and of a retired stream (re-reading old data). */
const LINEARIZABLE_PROBABILITY = 0.6;
const RETIRED_READ_PROBABILITY = 0.1;

interface Slot {
  readonly index: number;
  node: number;
  process: number;
  busy: boolean;
  /** Events this process appended (their ids are tenant/stream/process/seq). */
  seq: number;
}

interface TenantStreams {
  active: string[];
  retired: string[];
  next: number;
}

export interface WorkloadCounts {
  dispatched: number;
  /** Dispatch ticks that found every slot busy. */
  skipped: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function streamKey(tenant: string, stream: string): string {
  return `${tenant}/${stream}`;
}

export class Workload {
  private readonly slots: Slot[] = [];
  private nextProcess = 1;
  private readonly streams = new Map<string, TenantStreams>();
  /** The highest version known per stream (from acknowledgements and reads). */
  private readonly heads = new Map<string, number>();
  private readonly inflight = new Set<Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  private credit = 0;
  private readonly subscriptions = new AbortController();
  private readonly subscribers: Promise<void>[] = [];
  private nextSub = 1;
  readonly counts: WorkloadCounts = { dispatched: 0, skipped: 0 };

  constructor(
    private readonly cluster: JepsenCluster,
    private readonly history: History,
    private readonly rng: Rng,
    private readonly rate: number,
  ) {
    const members = cluster.members();
    for (let i = 0; i < SLOTS_PER_NODE * members.length; i++) {
      this.slots.push({ index: i, node: members[i % members.length]!.id, process: this.nextProcess++, busy: false, seq: 0 });
    }
    for (const t of TENANTS) {
      const s: TenantStreams = { active: [], retired: [], next: 0 };
      for (let i = 0; i < ACTIVE_STREAMS_PER_TENANT; i++) s.active.push(`s${s.next++}`);
      this.streams.set(t, s);
    }
  }

  start(): void {
    this.timer = setInterval(() => this.dispatch(), DISPATCH_TICK_MS);
    for (const tenant of TENANTS) {
      for (let i = 0; i < SUBSCRIBERS_PER_TENANT; i++) this.subscribers.push(this.subscribe(this.nextSub++, tenant));
    }
  }

  /** Stops issuing operations; waits up to `drainMs` for those in flight (the rest stay without completion: info). */
  async stop(drainMs: number): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    const drained = Promise.all([...this.inflight]);
    await Promise.race([drained, sleep(drainMs)]);
    this.subscriptions.abort();
    await Promise.race([Promise.all(this.subscribers), sleep(drainMs)]);
  }

  /** Every stream the workload ever used, per tenant. */
  allStreams(): Map<string, string[]> {
    const out = new Map<string, string[]>();
    for (const [t, s] of this.streams) out.set(t, Array.from({ length: s.next }, (_, i) => `s${i}`));
    return out;
  }

  private dispatch(): void {
    this.credit = Math.min(DISPATCH_CREDIT_MAX, this.credit + (this.rate * DISPATCH_TICK_MS) / 1000);
    // Bounded by DISPATCH_CREDIT_MAX.
    while (this.credit >= 1) {
      this.credit--;
      const free = this.slots.filter((s) => !s.busy);
      if (free.length === 0) {
        this.counts.skipped++;
        return;
      }
      const slot = this.rng.pick(free);
      const node = this.nodeFor(slot);
      if (node === undefined) return;
      slot.busy = true;
      this.counts.dispatched++;
      const run = this.runOp(slot, node).finally(() => {
        slot.busy = false;
        this.inflight.delete(run);
      });
      this.inflight.add(run);
    }
  }

  /** The slot's node, moved to a current member when its node left the cluster. */
  private nodeFor(slot: Slot): JepsenNode | undefined {
    const current = this.cluster.nodes.get(slot.node);
    if (current !== undefined && current.state !== "removed" && current.state !== "new") return current;
    const members = this.cluster.members();
    if (members.length === 0) return undefined;
    const n = members[slot.index % members.length]!;
    slot.node = n.id;
    return n;
  }

  private async runOp(slot: Slot, node: JepsenNode): Promise<void> {
    const roll = this.rng.next();
    const tenant = this.rng.pick(TENANTS);
    if (roll < APPEND_SHARE) return this.append(slot, node, tenant);
    if (roll < APPEND_SHARE + READ_SHARE) return this.read(slot, node, tenant);
    if (roll < APPEND_SHARE + READ_SHARE + QUERY_SHARE) return this.query(slot, node, tenant);
    return this.digest(slot, node, tenant);
  }

  private activeStream(tenant: string): string {
    return this.rng.pick(this.streams.get(tenant)!.active);
  }

  /** Replaces a full stream by a new one. */
  private noteHead(tenant: string, stream: string, version: number): void {
    const key = streamKey(tenant, stream);
    if (version <= (this.heads.get(key) ?? -1)) return;
    this.heads.set(key, version);
    const s = this.streams.get(tenant)!;
    const at = s.active.indexOf(stream);
    if (version + 1 >= STREAM_EVENTS_MAX && at >= 0) {
      s.active[at] = `s${s.next++}`;
      s.retired.push(stream);
      if (s.retired.length > RETIRED_STREAMS_KEPT_MAX) s.retired.shift();
    }
  }

  private async append(slot: Slot, node: JepsenNode, tenant: string): Promise<void> {
    const stream = this.activeStream(tenant);
    const key = streamKey(tenant, stream);
    const count = 1 + this.rng.int(EVENTS_PER_APPEND_MAX);
    const events = Array.from({ length: count }, () => `${tenant}/${stream}/${slot.process}/${slot.seq++}`);
    const head = this.heads.get(key);
    let expected: Expected = "any";
    if (this.rng.chance(EXPECTED_EXACT_PROBABILITY)) expected = head === undefined ? "no-stream" : head;
    const value: AppendValue = { tenant, stream, events, expected, requestId: `r-${slot.process}-${slot.seq}` };
    // Bounded: RETRIES_PER_REQUEST_MAX more tries of one request after an unknown outcome.
    for (let attempt = 0; attempt <= RETRIES_PER_REQUEST_MAX; attempt++) {
      const outcome = await this.appendOnce(slot, node, value);
      if (outcome !== "info" || !this.rng.chance(RETRY_AFTER_INFO_PROBABILITY)) return;
    }
  }

  /**
   * One append operation. After an unknown outcome the slot's process is retired; the caller may
   * send the same request again (same request id, events and expected version) as the next
   * process: the server must answer with the first try's result if it took effect, so the events
   * exist at most once either way.
   */
  private async appendOnce(slot: Slot, node: JepsenNode, value: AppendValue): Promise<"ok" | "fail" | "info"> {
    const { tenant, stream, events, expected, requestId } = value;
    const process = slot.process;
    const id = this.history.invoke(process, node.id, node.generation, "append", value);
    let r: ClientAppendResult;
    try {
      r = await this.cluster.clientFor(node).append({
        tenant, stream, requestId, expectedVersion: expected,
        events: events.map((eventId) => ({ type: EVENT_TYPE, eventId, data: { id: eventId, tenant } })),
      });
    } catch (e) {
      const c = classifyAppendError(e);
      this.history.complete(id, process, node.id, "append", c.type, { error: c.error });
      if (c.type === "info") slot.process = this.nextProcess++;
      return c.type;
    }
    const result: AppendResult = {
      firstVersion: r.firstVersion, lastVersion: r.lastVersion, firstPosition: r.firstPosition, lastPosition: r.lastPosition, deduplicated: r.deduplicated,
    };
    this.history.complete(id, process, node.id, "append", "ok", { result });
    this.noteHead(tenant, stream, r.lastVersion);
    return "ok";
  }

  private async read(slot: Slot, node: JepsenNode, tenant: string): Promise<void> {
    const s = this.streams.get(tenant)!;
    const stream = s.retired.length > 0 && this.rng.chance(RETIRED_READ_PROBABILITY) ? this.rng.pick(s.retired) : this.activeStream(tenant);
    const consistency: Consistency = this.rng.chance(LINEARIZABLE_PROBABILITY) ? "linearizable" : "local";
    const process = slot.process;
    const id = this.history.invoke(process, node.id, node.generation, "read", { tenant, stream, consistency });
    try {
      const r = await this.cluster.clientFor(node).read({ tenant, stream, fromVersion: 0, limit: READ_LIMIT, consistency });
      const result: ReadResult = { events: r.events.map((e) => [e.version, e.eventId, e.position]), appliedPosition: r.appliedPosition };
      this.history.complete(id, process, node.id, "read", "ok", { result });
      const last = r.events[r.events.length - 1];
      if (last !== undefined) this.noteHead(tenant, stream, last.version);
    } catch (e) {
      this.history.complete(id, process, node.id, "read", "fail", { error: readError(e) });
    }
  }

  private async query(slot: Slot, node: JepsenNode, tenant: string): Promise<void> {
    const consistency: Consistency = this.rng.chance(LINEARIZABLE_PROBABILITY) ? "linearizable" : "local";
    const process = slot.process;
    const id = this.history.invoke(process, node.id, node.generation, "query", { tenant, consistency });
    try {
      const r = await this.cluster.clientFor(node).query({ tenant, sql: PROJECTION_QUERY, params: { t: tenant }, consistency });
      const row = (r.rows[0] ?? []).map(Number);
      const result: QueryResult = {
        appliedPosition: r.appliedPosition, count: row[0] ?? 0, positionSum: row[1] ?? 0, versionSum: row[2] ?? 0, foreign: row[3] ?? 0,
      };
      this.history.complete(id, process, node.id, "query", "ok", { result });
    } catch (e) {
      this.history.complete(id, process, node.id, "query", "fail", { error: readError(e) });
    }
  }

  private async digest(slot: Slot, node: JepsenNode, tenant: string): Promise<void> {
    const process = slot.process;
    const id = this.history.invoke(process, node.id, node.generation, "digest", { tenant });
    try {
      const result = digestResult(await this.cluster.admin([node], "projectionStatus", { tenant }));
      this.history.complete(id, process, node.id, "digest", "ok", { result });
    } catch (e) {
      this.history.complete(id, process, node.id, "digest", "fail", { error: readError(e) });
    }
  }

  /** One logical subscription to a tenant from position 0, resumed on another node whenever it fails. */
  private async subscribe(sub: number, tenant: string): Promise<void> {
    const signal = this.subscriptions.signal;
    let next = 0;
    let buffer: SubEventTuple[] = [];
    let node = 0;
    const flush = (): void => {
      if (buffer.length === 0) return;
      this.history.sub(sub, tenant, node, buffer);
      buffer = [];
    };
    const timer = setInterval(flush, SUB_FLUSH_MS);
    try {
      for (let restart = 0; restart < SUB_RESTARTS_MAX && !signal.aborted; restart++) {
        const candidates = this.cluster.running();
        if (candidates.length === 0) {
          await sleep(SUB_RESTART_DELAY_MS);
          continue;
        }
        const target = this.rng.pick(candidates);
        flush();
        node = target.id;
        this.history.subStart(sub, tenant, node, next);
        const client = this.cluster.newClient(target);
        try {
          for await (const e of client.subscribe({ tenant, fromPosition: next, signal })) {
            buffer.push([e.position, e.stream, e.version, e.eventId]);
            next = e.position + 1;
            if (buffer.length >= SUB_BATCH_EVENTS_MAX) flush();
          }
        } catch (e) {
          flush();
          this.history.subError(sub, node, e instanceof Error ? e.message : String(e));
        } finally {
          client.close();
        }
        if (!signal.aborted) await sleep(SUB_RESTART_DELAY_MS);
      }
    } finally {
      clearInterval(timer);
      flush();
    }
  }
}

/** A ProjectionStatus answer as the history records it. */
export function digestResult(r: Record<string, unknown>): DigestResult {
  const projections = (r.projections ?? []) as Array<{ name?: string; state?: string }>;
  return {
    appliedPosition: Number(r.appliedPosition ?? 0),
    digest: String(r.digest ?? ""),
    notRunning: projections.filter((p) => p.state !== "running").map((p) => `${String(p.name)}: ${String(p.state)}${(p as { error?: string }).error ? ` (${(p as { error?: string }).error})` : ""}`),
  };
}

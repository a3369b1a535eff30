/**
 * The checker: a pure function of the history and the final state (final reads through every
 * node, the logs read after shutdown). Streams are independent, so every check is per stream or a
 * sweep over operations sorted by time: O(n log n) in all.
 *
 * Anomalies (the keys of `--json`):
 * - lost: an acknowledged append missing from the final log; an event once read (or delivered
 *   by a subscription) missing from the final log; an event a subscription skipped.
 * - duplicate: one event id at two versions or two positions; a subscription delivering an event twice.
 * - inconsistent_offset: two events at one (stream, version) or one position; an acknowledgement
 *   whose versions do not match its events; an event read in a stream it was not appended to;
 *   appends out of real-time order (A completed before B began, yet B's version or position is not
 *   after A's); an expected-version outcome that cannot be explained; a subscription out of order.
 * - aborted_read: an event read whose append definitely failed.
 * - unexpected: an event read that no operation ever tried to append.
 * - stale_read: a LINEARIZABLE read (or query) missing what completed before it began; LOCAL reads
 *   of one process on one node going backwards.
 * - divergence: a read that is not a dense range of versions from 0; final reads that differ
 *   between nodes or are not dense; logs that differ below the lowest commit index; a final read
 *   that failed; a cluster that did not settle after healing; damaged data a node accepted.
 * - projection_mismatch: different digests at one applied position; a projection's rows that are
 *   not the final log folded up to its applied position; applied positions going backwards; rows of
 *   another tenant; a projection not running; final digests that differ between nodes.
 */

import { ANOMALIES_KEPT_MAX, START_REFUSAL_WAIT_MS } from "./constants.js";
import type {
  AppendResult, AppendValue, CompleteLine, DigestResult, DigestValue, HistoryLine, InvokeLine, NemesisLine, NodeLine, OpError, OpKind, Outcome,
  QueryResult, QueryValue, ReadEventTuple, ReadResult, ReadValue, SubEventTuple,
} from "./history.js";

export const ANOMALY_KEYS = [
  "lost", "duplicate", "inconsistent_offset", "aborted_read", "stale_read", "divergence", "unexpected", "projection_mismatch",
] as const;
export type AnomalyKey = (typeof ANOMALY_KEYS)[number];

export interface Anomaly {
  /** What exactly was found (one of several per key). */
  kind: string;
  /** One sentence a person can act on. */
  explanation: string;
  [detail: string]: unknown;
}

/** What one node answered after the run. */
export interface FinalNode {
  node: number;
  /** Per tenant: every event in position order, as ReadAll returned it. */
  tenants: Record<string, SubEventTuple[]>;
  /** Per stream ("tenant/stream"): events in version order, as Read returned them. */
  streams: Record<string, ReadEventTuple[]>;
  /** Per tenant: the projection status and the projection query at the end. */
  projections: Record<string, { digest?: DigestResult; query?: QueryResult }>;
  /** The log read from disk after shutdown: [term, checksum] of each entry from index 1, and the commit index. */
  log?: { commitIndex: number; entries: Array<[term: number, checksum: number]> };
  /** Final reads that failed. */
  errors: string[];
}

export interface FinalState {
  nodes: FinalNode[];
  /** Whether every member agreed on one commit index, all applied, within the settle time. */
  settled: boolean;
  /** Why not, or other problems of the final phase. */
  problems: string[];
}

export interface CheckResult {
  valid: boolean;
  ops: number;
  ok: number;
  fail: number;
  info: number;
  /** Per anomaly key: the anomalies found (at most ANOMALIES_KEPT_MAX each). */
  anomalies: Record<AnomalyKey, Anomaly[]>;
  /** Per anomaly key: how many were found (may exceed what is kept). */
  counts: Record<AnomalyKey, number>;
  stats: { byKind: Record<string, { ok: number; fail: number; info: number }>; streams: number; finalEvents: number; subscriptionEvents: number };
}

/** One operation: its invocation and completion (an operation never completed is `info` with completion at +Infinity). */
export interface Op {
  id: number;
  process: number;
  node: number;
  gen: number;
  f: OpKind;
  value: InvokeLine["value"];
  invoke: number;
  complete: number;
  type: Outcome;
  result?: CompleteLine["result"];
  error?: OpError;
}

export function pairOperations(lines: readonly HistoryLine[]): Op[] {
  const ops = new Map<number, Op>();
  for (const l of lines) {
    if (l.type === "invoke") {
      ops.set(l.id, { id: l.id, process: l.process, node: l.node, gen: l.gen, f: l.f, value: l.value, invoke: l.time, complete: Infinity, type: "info" });
    } else if (l.type === "ok" || l.type === "fail" || l.type === "info") {
      const op = ops.get(l.id);
      if (op === undefined) continue;
      op.complete = l.time;
      op.type = l.type;
      if (l.result !== undefined) op.result = l.result;
      if (l.error !== undefined) op.error = l.error;
    }
  }
  return [...ops.values()].sort((a, b) => a.invoke - b.invoke || a.id - b.id);
}

class Anomalies {
  readonly found = Object.fromEntries(ANOMALY_KEYS.map((k) => [k, [] as Anomaly[]])) as Record<AnomalyKey, Anomaly[]>;
  readonly counts = Object.fromEntries(ANOMALY_KEYS.map((k) => [k, 0])) as Record<AnomalyKey, number>;

  add(key: AnomalyKey, anomaly: Anomaly): void {
    this.counts[key]++;
    if (this.found[key].length < ANOMALIES_KEPT_MAX) this.found[key].push(anomaly);
  }
}

const keyOf = (tenant: string, stream: string): string => `${tenant}/${stream}`;

/** The largest index i with sorted[i] < x, or -1. */
function lastBefore(sorted: readonly number[], x: number): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid]! < x) lo = mid + 1;
    else hi = mid;
  }
  return lo - 1;
}

/** Times and values, sorted by time, with the running maximum of the values: "the most seen before t". */
class MaxBefore {
  private readonly points: Array<{ time: number; value: number; source: string }> = [];
  private times: number[] = [];
  private maxima: Array<{ value: number; source: string }> = [];

  add(time: number, value: number, source: string): void {
    this.points.push({ time, value, source });
  }

  seal(): void {
    this.points.sort((a, b) => a.time - b.time);
    this.times = this.points.map((p) => p.time);
    let best = { value: -Infinity, source: "" };
    this.maxima = this.points.map((p) => (best = p.value > best.value ? { value: p.value, source: p.source } : best));
  }

  /** The largest value recorded at a time strictly before `t`. */
  before(t: number): { value: number; source: string } | undefined {
    const i = lastBefore(this.times, t);
    return i < 0 ? undefined : this.maxima[i];
  }
}

interface Placed {
  id: string;
  source: string;
}

/** Everything the checker derives before the individual checks run. */
class Context {
  readonly ops: Op[];
  readonly appends: Op[];
  /** The appends that carried each event id: one, or several sharing one request id (a retry after an unknown outcome). */
  readonly appendsByEvent = new Map<string, Op[]>();
  /** The first invocation of each request id: when the request could first have taken effect. */
  readonly requestStart = new Map<string, number>();
  readonly eventKey = new Map<string, string>();
  /** The reference final log (the first node's): per tenant in position order, per stream in version order. */
  readonly finalTenants = new Map<string, SubEventTuple[]>();
  readonly finalStreams = new Map<string, ReadEventTuple[]>();
  readonly finalById = new Map<string, { key: string; version: number; position: number }>();
  readonly subs = new Map<number, { tenant: string; from: number; events: Array<{ t: SubEventTuple; time: number }> }>();
  readonly nemesis: NemesisLine[] = [];
  readonly nodeLines: NodeLine[] = [];

  constructor(lines: readonly HistoryLine[], readonly final: FinalState) {
    this.ops = pairOperations(lines);
    this.appends = this.ops.filter((o) => o.f === "append");
    for (const op of this.appends) {
      const v = op.value as AppendValue;
      if (op.invoke < (this.requestStart.get(v.requestId) ?? Infinity)) this.requestStart.set(v.requestId, op.invoke);
      for (const id of v.events) {
        const list = this.appendsByEvent.get(id);
        if (list === undefined) this.appendsByEvent.set(id, [op]);
        else list.push(op);
        this.eventKey.set(id, keyOf(v.tenant, v.stream));
      }
    }
    for (const l of lines) {
      if (l.type === "sub-start" && !this.subs.has(l.sub)) this.subs.set(l.sub, { tenant: l.tenant, from: l.from, events: [] });
      else if (l.type === "sub") {
        const s = this.subs.get(l.sub);
        if (s !== undefined) for (const t of l.events) s.events.push({ t, time: l.time });
      } else if (l.type === "nemesis") this.nemesis.push(l);
      else if (l.type === "node") this.nodeLines.push(l);
    }
    const reference = referenceNode(final.nodes);
    if (reference !== undefined) {
      for (const [tenant, events] of Object.entries(reference.tenants)) {
        this.finalTenants.set(tenant, events);
        for (const [key, list] of streamsOf(tenant, events)) this.finalStreams.set(key, list);
        for (const [position, stream, version, id] of events) this.finalById.set(id, { key: keyOf(tenant, stream), version, position });
      }
    }
  }
}

/** The node whose final reads stand for "the final log": the lowest id among those whose reads all succeeded. */
function referenceNode(nodes: readonly FinalNode[]): FinalNode | undefined {
  const sorted = [...nodes].sort((a, b) => a.node - b.node);
  return sorted.find((n) => n.errors.length === 0) ?? sorted[0];
}

/** When an append could first have taken effect: its request's first invocation (a retry answered from a deduplicated earlier try took effect then). */
function effectiveInvoke(c: Context, op: Op): number {
  return c.requestStart.get((op.value as AppendValue).requestId) ?? op.invoke;
}

/**
 * Whether a request certainly never took effect: one of its tries was refused with a decided
 * status (a wrong expected version is decided at apply, with request-id deduplication), or every
 * try failed definitely. UNAVAILABLE "nothing proposed" covers only the try that got it.
 */
function neverApplied(ops: readonly Op[]): boolean {
  return ops.some((o) => o.type === "fail" && o.error?.code !== "UNAVAILABLE") || ops.every((o) => o.type === "fail");
}

/** Per stream, in position order: [version, id, position]. */
function streamsOf(tenant: string, events: readonly SubEventTuple[]): Map<string, ReadEventTuple[]> {
  const out = new Map<string, ReadEventTuple[]>();
  for (const [position, stream, version, id] of events) {
    const key = keyOf(tenant, stream);
    let list = out.get(key);
    if (list === undefined) out.set(key, (list = []));
    list.push([version, id, position]);
  }
  return out;
}

const describe = (op: Op): string => `op ${op.id} (process ${op.process}, node ${op.node}, ${op.f} ${op.type} at ${op.invoke.toFixed(0)}-${Number.isFinite(op.complete) ? op.complete.toFixed(0) : "?"} ms)`;

// ---- the checks ----

/** Final reads: dense, identical on every node, equal to direct stream reads; logs equal below the commit index. */
function checkFinal(c: Context, a: Anomalies): void {
  const f = c.final;
  if (f.nodes.length === 0) a.add("divergence", { kind: "no final reads", explanation: "no node answered the final reads, so nothing could be compared" });
  if (!f.settled) a.add("divergence", { kind: "did not settle", explanation: `after healing, the cluster did not converge: ${f.problems.join("; ")}` });
  const nodes = [...f.nodes].sort((x, y) => x.node - y.node);
  const reference = referenceNode(nodes);
  for (const n of nodes) {
    for (const e of n.errors) a.add("divergence", { kind: "final read failed", node: n.node, explanation: `node ${n.node} could not serve a final read: ${e}` });
    for (const [tenant, events] of Object.entries(n.tenants)) {
      let last = -1;
      for (const [position] of events) {
        if (position <= last) {
          a.add("divergence", { kind: "final log out of order", node: n.node, tenant, position, explanation: `node ${n.node}'s ReadAll of ${tenant} returned position ${position} after ${last}` });
          break;
        }
        last = position;
      }
      const derived = streamsOf(tenant, events);
      for (const [key, list] of derived) {
        const gap = list.findIndex(([version], i) => version !== i);
        if (gap >= 0) {
          a.add("divergence", { kind: "final log not dense", node: n.node, stream: key, at: gap, found: list[gap]![0], explanation: `node ${n.node}'s final log of ${key} has version ${list[gap]![0]} where version ${gap} belongs` });
        }
      }
      for (const [key, direct] of Object.entries(n.streams)) {
        if (!key.startsWith(`${tenant}/`)) continue;
        const fromAll = derived.get(key) ?? [];
        if (JSON.stringify(direct) !== JSON.stringify(fromAll)) {
          a.add("divergence", { kind: "stream read differs from ReadAll", node: n.node, stream: key, read: direct.length, readAll: fromAll.length, explanation: `node ${n.node}: Read of ${key} gives ${direct.length} events, ReadAll of ${tenant} gives ${fromAll.length} for it (or different ones)` });
        }
      }
    }
    if (reference !== undefined && n !== reference) compareNodes(reference, n, a);
  }
  compareLogs(nodes, a);
}

function compareNodes(ref: FinalNode, n: FinalNode, a: Anomalies): void {
  const tenants = new Set([...Object.keys(ref.tenants), ...Object.keys(n.tenants)]);
  for (const tenant of tenants) {
    const x = ref.tenants[tenant] ?? [];
    const y = n.tenants[tenant] ?? [];
    const length = Math.max(x.length, y.length);
    for (let i = 0; i < length; i++) {
      if (JSON.stringify(x[i]) !== JSON.stringify(y[i])) {
        a.add("divergence", {
          kind: "final logs differ", tenant, nodes: [ref.node, n.node], index: i, [`node${ref.node}`]: x[i] ?? null, [`node${n.node}`]: y[i] ?? null,
          explanation: `nodes ${ref.node} and ${n.node} disagree on ${tenant}'s event #${i}: ${JSON.stringify(x[i] ?? null)} vs ${JSON.stringify(y[i] ?? null)} (${x.length} vs ${y.length} events)`,
        });
        break;
      }
    }
  }
}

function compareLogs(nodes: readonly FinalNode[], a: Anomalies): void {
  const withLogs = nodes.filter((n) => n.log !== undefined);
  if (withLogs.length < 2) return;
  const lowest = Math.min(...withLogs.map((n) => n.log!.commitIndex));
  const ref = withLogs[0]!;
  for (const n of withLogs.slice(1)) {
    for (let i = 0; i < lowest; i++) {
      const x = ref.log!.entries[i];
      const y = n.log!.entries[i];
      if (x === undefined || y === undefined || x[0] !== y[0] || x[1] !== y[1]) {
        a.add("divergence", {
          kind: "logs differ below the commit index", index: i + 1, nodes: [ref.node, n.node], lowestCommit: lowest,
          explanation: `after shutdown, nodes ${ref.node} and ${n.node} hold different entries at index ${i + 1} (term, checksum ${JSON.stringify(x ?? null)} vs ${JSON.stringify(y ?? null)}), below the lowest commit index ${lowest}`,
        });
        break;
      }
    }
  }
}

/** Every observation of (stream, version) -> id and position -> id; one id at one place. */
function checkPlacement(c: Context, a: Anomalies): void {
  const byVersion = new Map<string, Placed>();
  const byPosition = new Map<number, Placed>();
  const idAt = new Map<string, Placed & { place: string }>();
  const idPosition = new Map<string, Placed & { position: number }>();
  const reportedVersion = new Set<string>();
  const reportedId = new Set<string>();
  const place = (key: string, version: number, id: string, position: number | undefined, source: string): void => {
    const owner = c.eventKey.get(id);
    if (owner !== undefined && owner !== key && !reportedId.has(`stream ${id}`)) {
      reportedId.add(`stream ${id}`);
      a.add("inconsistent_offset", { kind: "event in the wrong stream", eventId: id, appendedTo: owner, seenIn: key, source, explanation: `${source} shows event ${id} in ${key}, but it was appended to ${owner}` });
    }
    const vk = `${key}#${version}`;
    const had = byVersion.get(vk);
    if (had === undefined) byVersion.set(vk, { id, source });
    else if (had.id !== id && !reportedVersion.has(vk)) {
      reportedVersion.add(vk);
      a.add("inconsistent_offset", { kind: "two events at one version", stream: key, version, eventIds: [had.id, id], sources: [had.source, source], explanation: `${key} version ${version} is ${had.id} according to ${had.source} but ${id} according to ${source}` });
    }
    const prev = idAt.get(id);
    if (prev === undefined) idAt.set(id, { id, source, place: vk });
    else if (prev.place !== vk && !reportedId.has(id)) {
      reportedId.add(id);
      a.add("duplicate", { kind: "one event at two versions", eventId: id, places: [prev.place, vk], sources: [prev.source, source], explanation: `event ${id} is at ${prev.place} according to ${prev.source} and at ${vk} according to ${source}` });
    }
    if (position === undefined) return;
    const hp = byPosition.get(position);
    if (hp === undefined) byPosition.set(position, { id, source });
    else if (hp.id !== id && !reportedVersion.has(`p${position}`)) {
      reportedVersion.add(`p${position}`);
      a.add("inconsistent_offset", { kind: "two events at one position", position, eventIds: [hp.id, id], sources: [hp.source, source], explanation: `position ${position} holds ${hp.id} according to ${hp.source} but ${id} according to ${source}` });
    }
    const ip = idPosition.get(id);
    if (ip === undefined) idPosition.set(id, { id, source, position });
    else if (ip.position !== position && !reportedId.has(`p ${id}`)) {
      reportedId.add(`p ${id}`);
      a.add("duplicate", { kind: "one event at two positions", eventId: id, positions: [ip.position, position], sources: [ip.source, source], explanation: `event ${id} is at position ${ip.position} according to ${ip.source} and at ${position} according to ${source}` });
    }
  };
  for (const op of c.ops) {
    if (op.type !== "ok") continue;
    if (op.f === "append") {
      const v = op.value as AppendValue;
      const r = op.result as AppendResult;
      const key = keyOf(v.tenant, v.stream);
      if (r.lastVersion - r.firstVersion + 1 !== v.events.length) {
        a.add("inconsistent_offset", { kind: "acknowledgement covers the wrong number of versions", op: op.id, events: v.events.length, firstVersion: r.firstVersion, lastVersion: r.lastVersion, explanation: `${describe(op)} appended ${v.events.length} events but was acknowledged with versions ${r.firstVersion}..${r.lastVersion}` });
        continue;
      }
      v.events.forEach((id, i) => place(key, r.firstVersion + i, id, i === 0 ? r.firstPosition : i === v.events.length - 1 ? r.lastPosition : undefined, `the acknowledgement of op ${op.id}`));
    } else if (op.f === "read") {
      const v = op.value as ReadValue;
      for (const [version, id, position] of (op.result as ReadResult).events) place(keyOf(v.tenant, v.stream), version, id, position, `read op ${op.id}`);
    }
  }
  for (const [sub, s] of c.subs) {
    for (const { t: [position, stream, version, id] } of s.events) place(keyOf(s.tenant, stream), version, id, position, `subscription ${sub}`);
  }
  for (const n of c.final.nodes) {
    for (const [tenant, events] of Object.entries(n.tenants)) {
      for (const [position, stream, version, id] of events) place(keyOf(tenant, stream), version, id, position, `node ${n.node}'s final ReadAll`);
    }
  }
}

/** Reads are dense; nothing acknowledged or read is missing at the end; what is read was written, and not by a failed append. */
function checkReadsAndLoss(c: Context, a: Anomalies): void {
  const observed = new Map<string, string>();
  for (const op of c.ops) {
    if (op.type !== "ok") continue;
    if (op.f === "append") {
      const v = op.value as AppendValue;
      const r = op.result as AppendResult;
      v.events.forEach((id, i) => {
        if (!c.finalById.has(id)) {
          a.add("lost", { kind: "acknowledged append missing", op: op.id, eventId: id, stream: keyOf(v.tenant, v.stream), version: r.firstVersion + i, explanation: `${describe(op)} was acknowledged with ${id} at ${keyOf(v.tenant, v.stream)} version ${r.firstVersion + i}, and the final log does not have it` });
        }
      });
    } else if (op.f === "read") {
      const v = op.value as ReadValue;
      const events = (op.result as ReadResult).events;
      const gap = events.findIndex(([version], i) => version !== i);
      if (gap >= 0) {
        a.add("divergence", { kind: "read not dense", op: op.id, stream: keyOf(v.tenant, v.stream), at: gap, found: events[gap]![0], explanation: `${describe(op)} of ${keyOf(v.tenant, v.stream)} returned version ${events[gap]![0]} where version ${gap} belongs` });
      }
      for (const [, id] of events) if (!observed.has(id)) observed.set(id, `read op ${op.id}`);
    }
  }
  for (const [sub, s] of c.subs) for (const { t } of s.events) if (!observed.has(t[3])) observed.set(t[3], `subscription ${sub}`);
  for (const [id, source] of observed) {
    if (!c.finalById.has(id)) a.add("lost", { kind: "read event missing from the final log", eventId: id, source, explanation: `${source} returned event ${id}, which the final log does not have (a dirty or rolled-back read, or a lost write)` });
  }
  for (const n of c.final.nodes) for (const events of Object.values(n.tenants)) for (const t of events) if (!observed.has(t[3])) observed.set(t[3], `node ${n.node}'s final ReadAll`);
  for (const [id, source] of observed) {
    const ops = c.appendsByEvent.get(id);
    if (ops === undefined) a.add("unexpected", { kind: "event never written", eventId: id, source, explanation: `${source} returned event ${id}, which no operation ever tried to append` });
    else if (neverApplied(ops)) {
      const op = ops.find((o) => o.type === "fail" && o.error?.code !== "UNAVAILABLE") ?? ops[ops.length - 1]!;
      a.add("aborted_read", { kind: "event of a failed append", eventId: id, source, op: op.id, error: op.error, explanation: `${source} returned event ${id}, whose append ${describe(op)} failed definitely (${op.error?.code}: ${op.error?.message})${ops.length > 1 ? ` (one of ${ops.length} tries of its request id)` : ""}` });
    }
  }
}

/** Expected versions: an ok append landed right after the version it expected; a refusal had a moment to be right. */
function checkExpectedVersions(c: Context, a: Anomalies): void {
  // When each final version came to exist: not before its append was invoked (L), and no later than it was first seen (U).
  const firstSeen = new Map<string, number>();
  const see = (id: string, time: number): void => {
    if (time < (firstSeen.get(id) ?? Infinity)) firstSeen.set(id, time);
  };
  for (const op of c.ops) {
    if (op.type !== "ok") continue;
    if (op.f === "append") for (const id of (op.value as AppendValue).events) see(id, op.complete);
    if (op.f === "read") for (const [, id] of (op.result as ReadResult).events) see(id, op.complete);
  }
  for (const s of c.subs.values()) for (const { t, time } of s.events) see(t[3], time);
  const lower = (key: string, version: number): number | undefined => {
    const e = c.finalStreams.get(key)?.[version];
    if (e === undefined) return undefined;
    const ops = c.appendsByEvent.get(e[1]);
    return ops === undefined ? -Infinity : effectiveInvoke(c, ops[0]!);
  };
  const upper = (key: string, version: number): number | undefined => {
    const e = c.finalStreams.get(key)?.[version];
    return e === undefined ? undefined : (firstSeen.get(e[1]) ?? Infinity);
  };
  for (const op of c.appends) {
    const v = op.value as AppendValue;
    if (v.expected === "any") continue;
    const key = keyOf(v.tenant, v.stream);
    const e = v.expected === "no-stream" ? -1 : v.expected;
    if (op.type === "ok") {
      const r = op.result as AppendResult;
      if (r.firstVersion !== e + 1) {
        a.add("inconsistent_offset", { kind: "expected version not honoured", op: op.id, stream: key, expected: v.expected, firstVersion: r.firstVersion, explanation: `${describe(op)} expected ${key} at ${v.expected === "no-stream" ? "no stream" : `version ${e}`} and was acknowledged at version ${r.firstVersion}` });
      }
    } else if (op.type === "fail" && op.error?.code === "FAILED_PRECONDITION" && /wrong expected version|FAILED_PRECONDITION/.test(op.error.message)) {
      // Explainable when, at some moment of [invoke, complete], the stream may not have been at `e`:
      // version e did not exist yet, or version e+1 existed already.
      const start = effectiveInvoke(c, op);
      const eNotYet = e >= 0 && (upper(key, e) === undefined || start < upper(key, e)!);
      const nextAlready = lower(key, e + 1) !== undefined && lower(key, e + 1)! < op.complete;
      if (!eNotYet && !nextAlready) {
        a.add("inconsistent_offset", { kind: "wrong-expected-version refusal unexplained", op: op.id, stream: key, expected: v.expected, error: op.error.message, explanation: `${describe(op)} was refused for a wrong expected version, but ${key} was at ${v.expected === "no-stream" ? "no stream" : `version ${e}`} for its whole duration` });
      }
    }
  }
}

/** Appends that completed before another began come before it (per stream by version, globally by position). */
function checkRealTimeOrder(c: Context, a: Anomalies): void {
  // A retry answered from its request's earlier try took effect no later than that try: order by the request's start.
  const oks = c.appends.filter((o) => o.type === "ok").sort((x, y) => effectiveInvoke(c, x) - effectiveInvoke(c, y));
  const byComplete = [...oks].sort((x, y) => x.complete - y.complete);
  const versionMax = new Map<string, { version: number; op: Op }>();
  let positionMax: { position: number; op: Op } | undefined;
  let j = 0;
  for (const b of oks) {
    // Bounded: j only moves forward over byComplete.
    while (j < byComplete.length && byComplete[j]!.complete < effectiveInvoke(c, b)) {
      const done = byComplete[j++]!;
      const dv = done.value as AppendValue;
      const dr = done.result as AppendResult;
      const k = keyOf(dv.tenant, dv.stream);
      if (dr.lastVersion > (versionMax.get(k)?.version ?? -1)) versionMax.set(k, { version: dr.lastVersion, op: done });
      if (dr.lastPosition > (positionMax?.position ?? -1)) positionMax = { position: dr.lastPosition, op: done };
    }
    const bv = b.value as AppendValue;
    const br = b.result as AppendResult;
    const k = keyOf(bv.tenant, bv.stream);
    const before = versionMax.get(k);
    if (before !== undefined && br.firstVersion <= before.version) {
      a.add("inconsistent_offset", { kind: "real-time order (versions)", stream: k, earlier: before.op.id, later: b.id, explanation: `${describe(before.op)} completed at version ${before.version} before ${describe(b)} began, yet the later append got version ${br.firstVersion}` });
    }
    if (positionMax !== undefined && br.firstPosition <= positionMax.position) {
      a.add("inconsistent_offset", { kind: "real-time order (positions)", earlier: positionMax.op.id, later: b.id, explanation: `${describe(positionMax.op)} completed at position ${positionMax.position} before ${describe(b)} began, yet the later append got position ${br.firstPosition}` });
    }
  }
}

/** LINEARIZABLE reads see everything that completed before they began; LOCAL reads of one process on one node never go backwards. */
function checkStaleReads(c: Context, a: Anomalies): void {
  const seen = new Map<string, MaxBefore>();
  const tenantPositions = new Map<string, MaxBefore>();
  const track = (key: string): MaxBefore => {
    let m = seen.get(key);
    if (m === undefined) seen.set(key, (m = new MaxBefore()));
    return m;
  };
  for (const op of c.ops) {
    if (op.type !== "ok") continue;
    if (op.f === "append") {
      const v = op.value as AppendValue;
      const r = op.result as AppendResult;
      track(keyOf(v.tenant, v.stream)).add(op.complete, r.lastVersion, `the acknowledgement of ${describe(op)}`);
      let t = tenantPositions.get(v.tenant);
      if (t === undefined) tenantPositions.set(v.tenant, (t = new MaxBefore()));
      t.add(op.complete, r.lastPosition, `the acknowledgement of ${describe(op)}`);
    } else if (op.f === "read") {
      const v = op.value as ReadValue;
      const events = (op.result as ReadResult).events;
      if (events.length > 0) track(keyOf(v.tenant, v.stream)).add(op.complete, events[events.length - 1]![0], describe(op));
    }
  }
  for (const [sub, s] of c.subs) for (const { t, time } of s.events) track(keyOf(s.tenant, t[1])).add(time, t[2], `subscription ${sub}`);
  for (const m of seen.values()) m.seal();
  for (const m of tenantPositions.values()) m.seal();
  const localHeads = new Map<string, { head: number; op: Op }>();
  for (const op of c.ops) {
    if (op.type !== "ok") continue;
    if (op.f === "read") {
      const v = op.value as ReadValue;
      const key = keyOf(v.tenant, v.stream);
      const events = (op.result as ReadResult).events;
      const head = events.length - 1;
      if (v.consistency === "linearizable") {
        const before = seen.get(key)?.before(op.invoke);
        if (before !== undefined && head < before.value) {
          a.add("stale_read", { kind: "linearizable read missed a completed write", op: op.id, stream: key, head, expectedAtLeast: before.value, explanation: `${describe(op)} (LINEARIZABLE) saw ${key} up to version ${head}, but ${before.source} had seen version ${before.value} before the read began` });
        }
      } else {
        const lk = `${op.process}/${op.node}/${op.gen}/${key}`;
        const prev = localHeads.get(lk);
        if (prev !== undefined && head < prev.head) {
          a.add("stale_read", { kind: "local reads went backwards", op: op.id, stream: key, head, earlier: prev.op.id, earlierHead: prev.head, explanation: `process ${op.process} read ${key} on node ${op.node} up to version ${prev.head} (op ${prev.op.id}), then only up to ${head} (op ${op.id})` });
        }
        if (prev === undefined || head > prev.head) localHeads.set(lk, { head, op });
      }
    } else if (op.f === "query" && (op.value as QueryValue).consistency === "linearizable") {
      const v = op.value as QueryValue;
      const r = op.result as QueryResult;
      const before = tenantPositions.get(v.tenant)?.before(op.invoke);
      if (before !== undefined && r.appliedPosition < before.value) {
        a.add("stale_read", { kind: "linearizable query missed a completed write", op: op.id, tenant: v.tenant, appliedPosition: r.appliedPosition, expectedAtLeast: before.value, explanation: `${describe(op)} (LINEARIZABLE) answered at position ${r.appliedPosition}, but ${before.source} ended at position ${before.value} before the query began` });
      }
    }
  }
}

/** Subscriptions: in order, no event twice, none skipped (compared with the final log of the tenant). */
function checkSubscriptions(c: Context, a: Anomalies): void {
  for (const [sub, s] of c.subs) {
    if (s.events.length === 0) continue;
    const delivered = new Set<number>();
    const ids = new Set<string>();
    let last = -1;
    for (const { t: [position, , , id] } of s.events) {
      if (ids.has(id) || delivered.has(position)) {
        a.add("duplicate", { kind: "subscription delivered an event twice", sub, eventId: id, position, explanation: `subscription ${sub} (${s.tenant}) delivered event ${id} at position ${position} more than once` });
      } else if (position < last) {
        a.add("inconsistent_offset", { kind: "subscription out of order", sub, position, after: last, explanation: `subscription ${sub} (${s.tenant}) delivered position ${position} after position ${last}` });
      }
      ids.add(id);
      delivered.add(position);
      last = Math.max(last, position);
    }
    const final = c.finalTenants.get(s.tenant) ?? [];
    let skipped = 0;
    let first: SubEventTuple | undefined;
    for (const t of final) {
      if (t[0] < s.from || t[0] > last) continue;
      if (!delivered.has(t[0])) {
        skipped++;
        first ??= t;
      }
    }
    if (first !== undefined) {
      a.add("lost", { kind: "subscription skipped events", sub, tenant: s.tenant, skipped, firstSkipped: first, explanation: `subscription ${sub} (${s.tenant}) delivered up to position ${last} but skipped ${skipped} events of the final log, the first ${JSON.stringify(first)}` });
    }
  }
}

/** The final log of a tenant folded the way the projection folds it, up to a position. */
class Fold {
  private readonly positions: number[];
  private readonly sums: Array<{ count: number; positionSum: number; versionSum: number }>;

  constructor(events: readonly SubEventTuple[]) {
    this.positions = events.map((e) => e[0]);
    let acc = { count: 0, positionSum: 0, versionSum: 0 };
    this.sums = events.map((e) => (acc = { count: acc.count + 1, positionSum: acc.positionSum + e[0], versionSum: acc.versionSum + e[2] }));
  }

  /** The fold of the first `count` events, with the last one's position; undefined past the end. */
  prefix(count: number): { positionSum: number; versionSum: number; lastPosition: number } | undefined {
    if (count === 0) return { positionSum: 0, versionSum: 0, lastPosition: 0 };
    const s = this.sums[count - 1];
    return s === undefined ? undefined : { positionSum: s.positionSum, versionSum: s.versionSum, lastPosition: this.positions[count - 1]! };
  }

  upTo(position: number): { count: number; positionSum: number; versionSum: number } {
    const i = lastBefore(this.positions, position + 1);
    return i < 0 ? { count: 0, positionSum: 0, versionSum: 0 } : this.sums[i]!;
  }
}

function checkProjections(c: Context, a: Anomalies): void {
  const folds = new Map<string, Fold>();
  const foldOf = (tenant: string): Fold => {
    let f = folds.get(tenant);
    if (f === undefined) folds.set(tenant, (f = new Fold(c.finalTenants.get(tenant) ?? [])));
    return f;
  };
  const digests = new Map<string, { digest: string; source: string }>();
  const reported = new Set<string>();
  const digestSeen = (tenant: string, d: DigestResult, source: string): void => {
    const k = `${tenant}@${d.appliedPosition}`;
    const had = digests.get(k);
    if (had === undefined) digests.set(k, { digest: d.digest, source });
    else if (had.digest !== d.digest && !reported.has(k)) {
      reported.add(k);
      a.add("projection_mismatch", { kind: "different digests at one applied position", tenant, appliedPosition: d.appliedPosition, sources: [had.source, source], explanation: `${tenant}'s projections at position ${d.appliedPosition} have digest ${had.digest.slice(0, 12)} according to ${had.source} and ${d.digest.slice(0, 12)} according to ${source}` });
    }
    for (const p of d.notRunning) {
      const rk = `${tenant} ${p}`;
      if (reported.has(rk)) continue;
      reported.add(rk);
      a.add("projection_mismatch", { kind: "projection not running", tenant, projection: p, source, explanation: `${source}: ${tenant}'s projection ${p}` });
    }
  };
  const foldCheck = (tenant: string, q: QueryResult, source: string): void => {
    const fold = foldOf(tenant);
    if (q.foreign !== 0) a.add("projection_mismatch", { kind: "rows of another tenant", tenant, rows: q.foreign, source, explanation: `${source}: ${tenant}'s projection holds ${q.foreign} rows of another tenant` });
    // The rows must be the final log's first `count` events of the tenant, exactly (nothing lost, doubled or foreign)...
    const prefix = fold.prefix(q.count);
    if (prefix === undefined || prefix.positionSum !== q.positionSum || prefix.versionSum !== q.versionSum) {
      const want = fold.upTo(q.appliedPosition);
      a.add("projection_mismatch", { kind: "rows differ from the folded log", tenant, appliedPosition: q.appliedPosition, got: { count: q.count, positionSum: q.positionSum, versionSum: q.versionSum }, want, source, explanation: `${source}: ${tenant}'s projection has ${q.count} rows (position sum ${q.positionSum}, version sum ${q.versionSum}), which are not the first ${q.count} events of the final log; at its applied position ${q.appliedPosition} the log folds to ${want.count} rows (${want.positionSum}, ${want.versionSum})` });
      return;
    }
    // ... and the position the answer reports must be the position those rows stand for.
    const want = fold.upTo(q.appliedPosition);
    if (want.count !== q.count) {
      a.add("projection_mismatch", { kind: "query rows do not match the position it reports", tenant, appliedPosition: q.appliedPosition, rows: q.count, rowsAtPosition: want.count, lastRowPosition: prefix.lastPosition, source, explanation: `${source}: the answer says ${tenant}'s projections were at position ${q.appliedPosition} (${want.count} events), but its rows are the first ${q.count} events, up to position ${prefix.lastPosition}` });
    }
  };
  const progress = c.ops.filter((o) => o.type === "ok" && (o.f === "digest" || o.f === "query"));
  for (const op of progress) {
    const tenant = (op.value as DigestValue | QueryValue).tenant;
    if (op.f === "digest") digestSeen(tenant, op.result as DigestResult, describe(op));
    else foldCheck(tenant, op.result as QueryResult, describe(op));
  }
  // Applied positions per node (and data generation) and tenant never go backwards.
  const byComplete = [...progress].sort((x, y) => x.complete - y.complete);
  const highest = new Map<string, { position: number; op: Op }>();
  let j = 0;
  for (const b of progress) {
    // Bounded: j only moves forward.
    while (j < byComplete.length && byComplete[j]!.complete < b.invoke) {
      const done = byComplete[j++]!;
      const k = `${done.node}/${done.gen}/${(done.value as DigestValue).tenant}`;
      const p = (done.result as DigestResult | QueryResult).appliedPosition;
      if (p > (highest.get(k)?.position ?? -1)) highest.set(k, { position: p, op: done });
    }
    const h = highest.get(`${b.node}/${b.gen}/${(b.value as DigestValue).tenant}`);
    const p = (b.result as DigestResult | QueryResult).appliedPosition;
    if (h !== undefined && p < h.position) {
      a.add("projection_mismatch", { kind: "applied position went backwards", node: b.node, earlier: h.op.id, later: b.id, explanation: `on node ${b.node}, ${describe(h.op)} saw the projections at position ${h.position}, and the later ${describe(b)} at ${p}` });
    }
  }
  const finals = [...c.final.nodes].sort((x, y) => x.node - y.node);
  for (const n of finals) {
    for (const [tenant, p] of Object.entries(n.projections)) {
      if (p.digest !== undefined) digestSeen(tenant, p.digest, `node ${n.node}'s final status`);
      if (p.query !== undefined) foldCheck(tenant, p.query, `node ${n.node}'s final query`);
    }
  }
  // After settling every node's projections must cover every event of the tenant, with one digest.
  const tenants = new Set(finals.flatMap((n) => Object.keys(n.projections)));
  for (const tenant of tenants) {
    const total = (c.finalTenants.get(tenant) ?? []).length;
    const ends = finals.map((n) => ({ node: n.node, d: n.projections[tenant]?.digest })).filter((x) => x.d !== undefined);
    const covered = ends.map((x) => ({ ...x, events: foldOf(tenant).upTo(x.d!.appliedPosition).count }));
    const behind = covered.filter((x) => x.events !== total);
    const distinct = new Set(covered.map((x) => x.d!.digest));
    if (behind.length > 0 || distinct.size > 1) {
      a.add("projection_mismatch", {
        kind: "final digests differ", tenant, finals: covered.map((x) => ({ node: x.node, appliedPosition: x.d!.appliedPosition, events: x.events, digest: x.d!.digest })),
        explanation: `after settling, ${tenant}'s projections (${total} events in the final log) are not the same on every node: ${covered.map((x) => `node ${x.node} at ${x.d!.appliedPosition} (${x.events} events): ${x.d!.digest.slice(0, 12)}`).join(", ")}`,
      });
    }
  }
}

/** Damage the corrupt nemesis made that the docs say a node detects, but the node started on anyway. */
function checkDamageDetection(c: Context, a: Anomalies): void {
  for (const l of c.nemesis) {
    if (l.f !== "corrupt" || l.phase !== "end") continue;
    if (l.detail.mustDetect === true && l.detail.detected === false) {
      a.add("divergence", { kind: "damaged data accepted", fault: l.fault, detail: l.detail, explanation: `node ${String(l.detail.node)} started on a data directory with ${String(l.detail.damage)} in ${String(l.detail.file)} and did not refuse it` });
    }
  }
}

/** Nodes that refused to start after a crash, and nodes that exited when nothing stopped them. */
function checkNodeExits(c: Context, a: Anomalies): void {
  const corruptWindows = new Map<number, Array<[number, number]>>();
  const starts = new Map<number, number>();
  for (const l of c.nemesis) {
    if (l.f !== "corrupt") continue;
    if (l.phase === "start") starts.set(l.fault, l.time);
    else {
      const node = Number(l.detail.node);
      const list = corruptWindows.get(node) ?? [];
      list.push([starts.get(l.fault) ?? 0, l.time]);
      corruptWindows.set(node, list);
    }
  }
  const refusals = c.nodeLines.filter((l) => l.event === "refused-to-start");
  for (const l of refusals) {
    a.add("divergence", { kind: "node refused to start after a crash", node: l.node, time: l.time, detail: l.detail, explanation: `node ${l.node} would not start again after ${String(l.detail?.after)} (exit ${JSON.stringify(l.detail?.exit ?? null)}); a crash must leave a data directory the node recovers from. Its output is in nodes/node${l.node}.log` });
  }
  for (const l of c.nodeLines.filter((x) => x.event === "rejoin-stuck")) {
    const st = (l.detail?.status ?? undefined) as { state?: string; commit_index?: number; leader_id?: number } | undefined;
    const where = st === undefined ? "it did not answer /status" : `it was ${String(st.state)}, commit index ${String(st.commit_index)}, leader ${String(st.leader_id)}`;
    // "starting": it never formed or joined anything (its peers refused it); otherwise it joined and did not catch up.
    const kind = st?.state === "starting" ? "wiped node never rejoined" : "wiped node never caught up";
    a.add("divergence", { kind, node: l.node, time: l.time, detail: l.detail, explanation: `node ${l.node}, restarted with an empty data directory and its old id (the Single Node Failure procedure, ${String(l.detail?.why)}), had not caught up: ${where}; the harness replaced it with a new member. See nodes/node${l.node}.log` });
  }
  for (const l of c.nodeLines) {
    if (l.event !== "exit" || l.detail?.expected !== false) continue;
    const inCorrupt = (corruptWindows.get(l.node) ?? []).some(([s, e]) => l.time >= s && l.time <= e);
    const refused = refusals.some((r) => r.node === l.node && r.time >= l.time && r.time <= l.time + 2 * START_REFUSAL_WAIT_MS);
    if (inCorrupt || refused) continue;
    a.add("divergence", { kind: "node exited on its own", node: l.node, time: l.time, detail: l.detail, explanation: `node ${l.node} exited at ${l.time.toFixed(0)} ms (code ${String(l.detail.code)}, signal ${String(l.detail.signal)}) without being stopped; see nodes/node${l.node}.log` });
  }
}

export function check(lines: readonly HistoryLine[], final: FinalState): CheckResult {
  const c = new Context(lines, final);
  const a = new Anomalies();
  checkFinal(c, a);
  checkPlacement(c, a);
  checkReadsAndLoss(c, a);
  checkExpectedVersions(c, a);
  checkRealTimeOrder(c, a);
  checkStaleReads(c, a);
  checkSubscriptions(c, a);
  checkProjections(c, a);
  checkDamageDetection(c, a);
  checkNodeExits(c, a);
  const byKind: CheckResult["stats"]["byKind"] = {};
  for (const op of c.ops) {
    const k = (byKind[op.f] ??= { ok: 0, fail: 0, info: 0 });
    k[op.type]++;
  }
  const count = (t: Outcome): number => c.ops.filter((o) => o.type === t).length;
  return {
    valid: ANOMALY_KEYS.every((k) => a.counts[k] === 0),
    ops: c.ops.length, ok: count("ok"), fail: count("fail"), info: count("info"),
    anomalies: a.found, counts: a.counts,
    stats: {
      byKind, streams: c.finalStreams.size, finalEvents: [...c.finalTenants.values()].reduce((n, e) => n + e.length, 0),
      subscriptionEvents: [...c.subs.values()].reduce((n, s) => n + s.events.length, 0),
    },
  };
}

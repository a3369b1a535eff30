/**
 * The jepsen-lite checker on hand-made histories: a good one passes, and for every anomaly a bad
 * one is flagged under the right key (and kind). A checker that never complains proves nothing.
 */
import { describe, expect, it } from "vitest";
import { check, type AnomalyKey, type FinalNode, type FinalState } from "../../jepsen/checker.js";
import type { AppendResult, Expected, HistoryLine, QueryResult, ReadEventTuple, SubEventTuple } from "../../jepsen/history.js";

const T = "acme";

/** Builds histories: each operation gets an id, a process and explicit invoke/complete times. */
class H {
  readonly lines: HistoryLine[] = [];
  private nextId = 1;

  append(o: { process?: number; node?: number; stream?: string; events: string[]; expected?: Expected; at: [number, number]; ok?: AppendResult; fail?: string; info?: boolean; requestId?: string }): this {
    const id = this.nextId++;
    const process = o.process ?? id;
    const node = o.node ?? 1;
    this.lines.push({ type: "invoke", id, process, node, gen: 0, f: "append", time: o.at[0], value: { tenant: T, stream: o.stream ?? "s", events: o.events, expected: o.expected ?? "any", requestId: o.requestId ?? `r${id}` } });
    if (o.ok !== undefined) this.lines.push({ type: "ok", id, process, node, f: "append", time: o.at[1], result: o.ok });
    else if (o.fail !== undefined) this.lines.push({ type: "fail", id, process, node, f: "append", time: o.at[1], error: { code: o.fail, message: o.fail } });
    else if (o.info === true) this.lines.push({ type: "info", id, process, node, f: "append", time: o.at[1], error: { code: "UNAVAILABLE", message: "timeout" } });
    return this;
  }

  read(o: { process?: number; node?: number; stream?: string; consistency?: "linearizable" | "local"; at: [number, number]; events: ReadEventTuple[] }): this {
    const id = this.nextId++;
    const process = o.process ?? id;
    const node = o.node ?? 1;
    this.lines.push({ type: "invoke", id, process, node, gen: 0, f: "read", time: o.at[0], value: { tenant: T, stream: o.stream ?? "s", consistency: o.consistency ?? "linearizable" } });
    this.lines.push({ type: "ok", id, process, node, f: "read", time: o.at[1], result: { events: o.events, appliedPosition: 0 } });
    return this;
  }

  query(o: { node?: number; consistency?: "linearizable" | "local"; at: [number, number]; result: QueryResult }): this {
    const id = this.nextId++;
    const node = o.node ?? 1;
    this.lines.push({ type: "invoke", id, process: id, node, gen: 0, f: "query", time: o.at[0], value: { tenant: T, consistency: o.consistency ?? "linearizable" } });
    this.lines.push({ type: "ok", id, process: id, node, f: "query", time: o.at[1], result: o.result });
    return this;
  }

  digest(o: { node?: number; at: [number, number]; appliedPosition: number; digest: string }): this {
    const id = this.nextId++;
    const node = o.node ?? 1;
    this.lines.push({ type: "invoke", id, process: id, node, gen: 0, f: "digest", time: o.at[0], value: { tenant: T } });
    this.lines.push({ type: "ok", id, process: id, node, f: "digest", time: o.at[1], result: { appliedPosition: o.appliedPosition, digest: o.digest, notRunning: [] } });
    return this;
  }

  sub(sub: number, from: number, batches: Array<{ time: number; events: SubEventTuple[] }>): this {
    this.lines.push({ type: "sub-start", sub, tenant: T, node: 1, time: 0, from });
    for (const b of batches) this.lines.push({ type: "sub", sub, tenant: T, node: 1, time: b.time, events: b.events });
    return this;
  }
}

const ok = (firstVersion: number, lastVersion: number, firstPosition: number, lastPosition: number): AppendResult => ({ firstVersion, lastVersion, firstPosition, lastPosition, deduplicated: false });

/** A final node holding `events` ([position, stream, version, id]) for tenant acme. */
function finalNode(node: number, events: SubEventTuple[], extra: Partial<FinalNode> = {}): FinalNode {
  const streams: Record<string, ReadEventTuple[]> = {};
  for (const [position, stream, version, id] of events) (streams[`${T}/${stream}`] ??= []).push([version, id, position]);
  return { node, tenants: { [T]: events }, streams, projections: {}, errors: [], ...extra };
}

function finalOf(events: SubEventTuple[], nodes = [1, 2, 3]): FinalState {
  return { nodes: nodes.map((n) => finalNode(n, events)), settled: true, problems: [] };
}

/** The log every good history below ends with: stream s holds a0 at 0 (position 10), a1 at 1 (11), b0 at 2 (12). */
const GOOD_FINAL: SubEventTuple[] = [[10, "s", 0, "a0"], [11, "s", 1, "a1"], [12, "s", 2, "b0"]];

function good(): H {
  return new H()
    .append({ events: ["a0", "a1"], at: [0, 10], ok: ok(0, 1, 10, 11) })
    .read({ at: [11, 12], events: [[0, "a0", 10], [1, "a1", 11]] })
    .append({ events: ["b0"], expected: 1, at: [20, 30], ok: ok(2, 2, 12, 12) })
    .append({ events: ["c0"], expected: 1, at: [21, 31], fail: "FAILED_PRECONDITION" })
    .read({ consistency: "local", process: 50, at: [32, 33], events: [[0, "a0", 10], [1, "a1", 11], [2, "b0", 12]] })
    .sub(1, 0, [{ time: 40, events: [[10, "s", 0, "a0"], [11, "s", 1, "a1"], [12, "s", 2, "b0"]] }]);
}

function expectOnly(result: ReturnType<typeof check>, key: AnomalyKey, kind: string): void {
  const found = Object.entries(result.counts).filter(([, n]) => n > 0).map(([k]) => k);
  expect(found, JSON.stringify(result.anomalies, null, 1)).toEqual([key]);
  expect(result.anomalies[key].map((a) => a.kind)).toContain(kind);
  expect(result.valid).toBe(false);
}

describe("the jepsen-lite checker", () => {
  it("passes a good history", () => {
    const r = check(good().lines, finalOf(GOOD_FINAL));
    expect(r.anomalies).toEqual({ lost: [], duplicate: [], inconsistent_offset: [], aborted_read: [], stale_read: [], divergence: [], unexpected: [], projection_mismatch: [] });
    expect(r).toMatchObject({ valid: true, ops: 5, ok: 4, fail: 1, info: 0 });
  });

  it("passes unknown outcomes either way: an info append present or absent in the final log", () => {
    const h = good().append({ events: ["d0"], at: [50, 60], info: true }).append({ events: ["e0"], at: [50, 60], info: true });
    const r = check(h.lines, finalOf([...GOOD_FINAL, [13, "s", 3, "d0"]]));
    expect(r.valid, JSON.stringify(r.anomalies)).toBe(true);
    expect(r.info).toBe(2);
  });

  it("passes a request sent again after an unknown outcome, answered from its first try (deduplicated)", () => {
    // d0's first try times out; meanwhile e0 completes; the retry (same request id) is answered
    // with the first try's result, which took effect before e0: not a real-time order violation.
    const h = good()
      .append({ events: ["d0"], requestId: "rd", at: [50, 60], info: true })
      .append({ events: ["e0"], at: [52, 58], ok: ok(4, 4, 14, 14) })
      .append({ events: ["d0"], requestId: "rd", at: [61, 62], ok: { ...ok(3, 3, 13, 13), deduplicated: true } });
    const r = check(h.lines, finalOf([...GOOD_FINAL, [13, "s", 3, "d0"], [14, "s", 4, "e0"]]));
    expect(r.valid, JSON.stringify(r.anomalies)).toBe(true);
  });

  it("passes a retry that proposed nothing while its first try, unknown, did take effect", () => {
    const h = good()
      .append({ events: ["d0"], requestId: "rd", at: [50, 60], info: true })
      .append({ events: ["d0"], requestId: "rd", at: [61, 62], fail: "UNAVAILABLE" });
    const r = check(h.lines, finalOf([...GOOD_FINAL, [13, "s", 3, "d0"]]));
    expect(r.valid, JSON.stringify(r.anomalies)).toBe(true);
  });

  it("aborted_read: a request refused on a retry (decided) whose first try's events show up anyway", () => {
    const h = good()
      .append({ events: ["d0"], requestId: "rd", expected: 2, at: [50, 60], info: true })
      .append({ events: ["e0"], at: [61, 62], ok: ok(3, 3, 13, 13) })
      .append({ events: ["d0"], requestId: "rd", expected: 2, at: [63, 64], fail: "FAILED_PRECONDITION" });
    expectOnly(check(h.lines, finalOf([...GOOD_FINAL, [13, "s", 3, "e0"], [14, "s", 4, "d0"]])), "aborted_read", "event of a failed append");
  });

  it("lost: an acknowledged append missing from the final log", () => {
    const r = check(good().lines, finalOf(GOOD_FINAL.slice(0, 2)));
    expect(r.anomalies.lost.map((a) => a.kind)).toEqual(["acknowledged append missing", "read event missing from the final log"]);
    // Without b0 at version 2 the stream never moved past version 1, so the refusal of c0 (expecting 1) has no explanation either.
    expect(r.anomalies.inconsistent_offset.map((a) => a.kind)).toEqual(["wrong-expected-version refusal unexplained"]);
  });

  it("lost: an event once read that the final log no longer has", () => {
    const h = good().append({ events: ["d0"], at: [50, 60], info: true }).read({ at: [61, 62], events: [[0, "a0", 10], [1, "a1", 11], [2, "b0", 12], [3, "d0", 13]] });
    expectOnly(check(h.lines, finalOf(GOOD_FINAL)), "lost", "read event missing from the final log");
  });

  it("lost: a subscription that skipped an event", () => {
    const h = good().sub(2, 0, [{ time: 40, events: [[10, "s", 0, "a0"], [12, "s", 2, "b0"]] }]);
    expectOnly(check(h.lines, finalOf(GOOD_FINAL)), "lost", "subscription skipped events");
  });

  it("duplicate: one event at two versions", () => {
    const h = good().append({ events: ["d0"], at: [50, 60], ok: ok(3, 3, 13, 13) });
    expectOnly(check(h.lines, finalOf([...GOOD_FINAL, [13, "s", 3, "d0"], [14, "s", 4, "d0"]])), "duplicate", "one event at two versions");
  });

  it("duplicate: a subscription delivering an event twice", () => {
    const h = good().sub(2, 0, [{ time: 40, events: [[10, "s", 0, "a0"], [11, "s", 1, "a1"] ] }, { time: 41, events: [[11, "s", 1, "a1"], [12, "s", 2, "b0"]] }]);
    expectOnly(check(h.lines, finalOf(GOOD_FINAL)), "duplicate", "subscription delivered an event twice");
  });

  it("inconsistent_offset: two events acknowledged at one version", () => {
    const h = good().append({ events: ["d0"], at: [50, 60], ok: ok(2, 2, 13, 13) });
    const r = check(h.lines, finalOf([...GOOD_FINAL, [13, "s", 3, "d0"]]));
    expect(r.anomalies.inconsistent_offset.map((a) => a.kind)).toContain("two events at one version");
  });

  it("inconsistent_offset: appends out of real-time order", () => {
    // b completed before c began, yet c got the earlier version and position.
    const h = new H()
      .append({ events: ["b0"], at: [0, 10], ok: ok(1, 1, 11, 11) })
      .append({ events: ["c0"], at: [20, 30], ok: ok(0, 0, 10, 10) });
    expectOnly(check(h.lines, finalOf([[10, "s", 0, "c0"], [11, "s", 1, "b0"]])), "inconsistent_offset", "real-time order (versions)");
  });

  it("inconsistent_offset: an expected version that was not honoured", () => {
    const h = new H().append({ events: ["a0"], at: [0, 10], ok: ok(0, 0, 10, 10) }).append({ events: ["b0"], expected: 5, at: [20, 30], ok: ok(1, 1, 11, 11) });
    expectOnly(check(h.lines, finalOf([[10, "s", 0, "a0"], [11, "s", 1, "b0"]])), "inconsistent_offset", "expected version not honoured");
  });

  it("inconsistent_offset: a wrong-expected-version refusal while the stream was at that version the whole time", () => {
    const h = new H()
      .append({ events: ["a0"], at: [0, 10], ok: ok(0, 0, 10, 10) })
      .append({ events: ["b0"], expected: 0, at: [20, 30], fail: "FAILED_PRECONDITION" })
      .append({ events: ["c0"], at: [40, 50], ok: ok(1, 1, 11, 11) });
    expectOnly(check(h.lines, finalOf([[10, "s", 0, "a0"], [11, "s", 1, "c0"]])), "inconsistent_offset", "wrong-expected-version refusal unexplained");
  });

  it("aborted_read: an event of a definitely failed append is read", () => {
    const h = good().append({ events: ["d0"], at: [50, 60], fail: "INVALID_ARGUMENT" });
    expectOnly(check(h.lines, finalOf([...GOOD_FINAL, [13, "s", 3, "d0"]])), "aborted_read", "event of a failed append");
  });

  it("unexpected: an event nobody appended", () => {
    expectOnly(check(good().lines, finalOf([...GOOD_FINAL, [13, "s", 3, "ghost"]])), "unexpected", "event never written");
  });

  it("stale_read: a LINEARIZABLE read missing an append that completed before it began", () => {
    const h = good().read({ at: [35, 36], events: [[0, "a0", 10], [1, "a1", 11]] });
    expectOnly(check(h.lines, finalOf(GOOD_FINAL)), "stale_read", "linearizable read missed a completed write");
  });

  it("stale_read: LOCAL reads of one process on one node going backwards", () => {
    const h = good().read({ consistency: "local", process: 50, at: [34, 35], events: [[0, "a0", 10]] });
    expectOnly(check(h.lines, finalOf(GOOD_FINAL)), "stale_read", "local reads went backwards");
  });

  it("stale_read: a LINEARIZABLE projection query behind an append completed before it", () => {
    const h = good().query({ at: [35, 36], result: { appliedPosition: 11, count: 2, positionSum: 21, versionSum: 1, foreign: 0 } });
    expectOnly(check(h.lines, finalOf(GOOD_FINAL)), "stale_read", "linearizable query missed a completed write");
  });

  it("divergence: nodes with different final logs", () => {
    const final = finalOf(GOOD_FINAL);
    final.nodes[2] = finalNode(3, GOOD_FINAL.slice(0, 2));
    const r = check(good().lines, final);
    expect(r.anomalies.divergence.map((a) => a.kind)).toContain("final logs differ");
    expect(r.valid).toBe(false);
  });

  it("divergence: a read that is not a dense range of versions", () => {
    const h = good().read({ consistency: "local", at: [35, 36], events: [[0, "a0", 10], [2, "b0", 12]] });
    expectOnly(check(h.lines, finalOf(GOOD_FINAL)), "divergence", "read not dense");
  });

  it("divergence: logs on disk that differ below the lowest commit index", () => {
    const final = finalOf(GOOD_FINAL);
    final.nodes[0]!.log = { commitIndex: 3, entries: [[1, 100], [1, 101], [2, 102]] };
    final.nodes[1]!.log = { commitIndex: 3, entries: [[1, 100], [1, 101], [2, 102]] };
    final.nodes[2]!.log = { commitIndex: 2, entries: [[1, 100], [1, 999], [2, 102]] };
    expectOnly(check(good().lines, final), "divergence", "logs differ below the commit index");
  });

  it("divergence: a cluster that did not settle, damage accepted, a node that refused to start after a crash", () => {
    const h = good();
    h.lines.push({ type: "nemesis", fault: 1, f: "corrupt", phase: "start", time: 50, detail: { node: 2 } });
    h.lines.push({ type: "nemesis", fault: 1, f: "corrupt", phase: "end", time: 60, detail: { node: 2, damage: "flip-sealed", file: "log/00000000.segment", mustDetect: true, detected: false } });
    h.lines.push({ type: "node", node: 3, time: 70, event: "exit", detail: { code: 1, signal: null, expected: false } });
    h.lines.push({ type: "node", node: 3, time: 75, event: "refused-to-start", detail: { after: "lose-unsynced" } });
    const final = finalOf(GOOD_FINAL);
    final.settled = false;
    final.problems = ["commit indexes [5,6]"];
    const r = check(h.lines, final);
    expect(r.anomalies.divergence.map((a) => a.kind).sort()).toEqual(["damaged data accepted", "did not settle", "node refused to start after a crash"]);
  });

  it("projection_mismatch: two digests at one applied position, and rows that are not the folded log", () => {
    const h = good()
      .digest({ node: 1, at: [40, 41], appliedPosition: 12, digest: "aaaa" })
      .digest({ node: 2, at: [40, 41], appliedPosition: 12, digest: "bbbb" });
    expectOnly(check(h.lines, finalOf(GOOD_FINAL)), "projection_mismatch", "different digests at one applied position");
    const lostRow = good().query({ consistency: "local", at: [40, 41], result: { appliedPosition: 12, count: 2, positionSum: 22, versionSum: 2, foreign: 0 } });
    expectOnly(check(lostRow.lines, finalOf(GOOD_FINAL)), "projection_mismatch", "rows differ from the folded log");
    const ahead = good().query({ consistency: "local", at: [40, 41], result: { appliedPosition: 11, count: 3, positionSum: 33, versionSum: 3, foreign: 0 } });
    expectOnly(check(ahead.lines, finalOf(GOOD_FINAL)), "projection_mismatch", "query rows do not match the position it reports");
  });

  it("projection_mismatch: final digests that differ between nodes, applied positions going backwards", () => {
    const final = finalOf(GOOD_FINAL);
    final.nodes.forEach((n, i) => (n.projections[T] = { digest: { appliedPosition: 12, digest: i === 2 ? "zzzz" : "aaaa", notRunning: [] } }));
    const r = check(good().lines, final);
    expect(r.anomalies.projection_mismatch.map((a) => a.kind).sort()).toEqual(["different digests at one applied position", "final digests differ"]);
    const back = good().digest({ at: [40, 41], appliedPosition: 12, digest: "aaaa" }).digest({ at: [42, 43], appliedPosition: 11, digest: "bbbb" });
    expectOnly(check(back.lines, finalOf(GOOD_FINAL)), "projection_mismatch", "applied position went backwards");
  });
});

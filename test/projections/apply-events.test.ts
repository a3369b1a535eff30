import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { BatchAssembler, type BatchOutcome, type Decision, type EventEntry, type EventStateView, type ExpectedVersion } from "../../src/projections/apply-events.js";

/** The state a real adapter keeps in SQLite, in memory. */
class MemoryState implements EventStateView {
  versions = new Map<string, number>();
  outcomes = new Map<string, BatchOutcome>();
  lastVersion(tenant: string, stream: string): number | undefined {
    return this.versions.get(`${tenant}/${stream}`);
  }
  outcome(tenant: string, requestId: string): BatchOutcome | undefined {
    return this.outcomes.get(`${tenant}/${requestId}`);
  }
  tenantExists(tenant: string): boolean {
    return tenant !== "unknown";
  }
  readOnly(): string | undefined {
    return undefined;
  }
  apply(d: Decision): void {
    if (d.kind === "appended") {
      this.versions.set(`${d.tenant}/${d.stream}`, d.outcome.lastVersion);
      if (d.requestId !== "") this.outcomes.set(`${d.tenant}/${d.requestId}`, d.outcome);
    } else if (d.kind === "rejected" && d.requestId !== "") {
      this.outcomes.set(`${d.tenant}/${d.requestId}`, d.outcome);
    }
  }
}

interface Append {
  tenant: string;
  stream: string;
  count: number;
  requestId: string;
  expected: ExpectedVersion | undefined;
  /** How many of its entries made it into the committed log (count = all). */
  kept: number;
}

const appendArb = fc.record({
  tenant: fc.constantFrom("acme", "globex"),
  stream: fc.constantFrom("orders", "users", "audit"),
  count: fc.integer({ min: 1, max: 4 }),
  requestId: fc.oneof(fc.constant(""), fc.constantFrom("r1", "r2", "r3", "r4", "r5", "r6")),
  expected: fc.option(
    fc.oneof(
      fc.constant<ExpectedVersion>({ kind: "any" }),
      fc.constant<ExpectedVersion>({ kind: "no-stream" }),
      fc.integer({ min: 0, max: 6 }).map<ExpectedVersion>((version) => ({ kind: "exact", version })),
    ),
    { nil: undefined },
  ),
  cut: fc.boolean(),
  keptFraction: fc.double({ min: 0, max: 0.99, noNaN: true }),
}).map<Append>((a) => ({ ...a, kept: a.cut && a.count > 1 ? 1 + Math.floor(a.keptFraction * (a.count - 1)) : a.count }));

/** Lays the appends out as a committed log: each cut batch is followed by a new leader's no-op. */
function layOut(appends: Append[]): Array<EventEntry | undefined> {
  const log: Array<EventEntry | undefined> = [];
  let id = 0;
  for (const a of appends) {
    for (let seq = 0; seq < a.kept; seq++) {
      log.push({
        position: log.length + 1, tenant: a.tenant, stream: a.stream, eventId: `e${id++}`, type: "T",
        data: new Uint8Array([seq]), metadata: {}, timestampMs: 1000,
        batch: { requestId: a.requestId, count: a.count, seq, expectedVersion: seq === 0 ? a.expected : undefined },
      });
    }
    if (a.kept < a.count) log.push(undefined); // the no-op of the next leader's term
  }
  return log;
}

function run(log: Array<EventEntry | undefined>): { decisions: Decision[]; state: MemoryState; assembler: BatchAssembler } {
  const state = new MemoryState();
  const assembler = new BatchAssembler(0);
  const decisions: Decision[] = [];
  log.forEach((entry, i) => {
    for (const d of assembler.next(i + 1, entry, state)) {
      state.apply(d);
      decisions.push(d);
    }
  });
  return { decisions, state, assembler };
}

describe("BatchAssembler", () => {
  it("keeps stream versions dense, appends each request id once, voids cut batches, and is deterministic", () => {
    fc.assert(
      fc.property(fc.array(appendArb, { maxLength: 40 }), (appends) => {
        const log = layOut(appends);
        const { decisions, state, assembler } = run(log);
        // Deterministic: the same log gives the same decisions on another node.
        expect(run(log).decisions).toEqual(decisions);
        // Versions per stream: 0, 1, 2, ... in position order.
        const seen = new Map<string, number[]>();
        const appendedIds = new Set<string>();
        for (const d of decisions) {
          if (d.kind !== "appended") continue;
          const key = `${d.tenant}/${d.stream}`;
          seen.set(key, [...(seen.get(key) ?? []), ...d.events.map((e) => e.version)]);
          if (d.requestId !== "") {
            const k = `${d.tenant}/${d.requestId}`;
            expect(appendedIds.has(k), `request id ${k} appended twice`).toBe(false);
            appendedIds.add(k);
          }
          // An exact expected version means the batch landed right after it.
          const expected = d.events[0]!.batch.expectedVersion;
          if (expected?.kind === "exact") expect(d.outcome.firstVersion).toBe(expected.version + 1);
          if (expected?.kind === "no-stream") expect(d.outcome.firstVersion).toBe(0);
        }
        for (const [key, versions] of seen) {
          expect(versions, key).toEqual(versions.map((_, i) => i));
          expect(state.versions.get(key)).toBe(versions.length - 1);
        }
        // Every position is decided exactly once, in order.
        const covered: number[] = [];
        for (const d of decisions) {
          const [a, b] = d.kind === "appended" ? [d.outcome.firstPosition, d.outcome.lastPosition] : d.positions;
          for (let p = a; p <= b; p++) covered.push(p);
        }
        const eventPositions = log.flatMap((e) => (e === undefined ? [] : [e.position]));
        expect(covered).toEqual(eventPositions);
        expect(assembler.decidedThrough).toBe(log.length);
        // A batch that was cut never appends anything.
        for (const d of decisions) if (d.kind === "void") expect(d.reason).toMatch(/cut off/);
      }),
      { numRuns: 500, seed: 99 },
    );
  });

  it("answers a retry with the first outcome, success or failure", () => {
    const state = new MemoryState();
    const a = new BatchAssembler(0);
    const ev = (position: number, requestId: string, expected?: ExpectedVersion): EventEntry => ({
      position, tenant: "t", stream: "s", eventId: `e${position}`, type: "T", data: new Uint8Array(0), metadata: {}, timestampMs: 0,
      batch: { requestId, count: 1, seq: 0, expectedVersion: expected },
    });
    const feed = (e: EventEntry) => a.next(e.position, e, state).map((d) => (state.apply(d), d));
    const [first] = feed(ev(1, "req-1"));
    expect(first).toMatchObject({ kind: "appended", outcome: { ok: true, firstVersion: 0 } });
    const [retry] = feed(ev(2, "req-1"));
    expect(retry).toMatchObject({ kind: "duplicate", outcome: { ok: true, firstPosition: 1, firstVersion: 0 } });
    const [wrong] = feed(ev(3, "req-2", { kind: "exact", version: 7 }));
    expect(wrong).toMatchObject({ kind: "rejected", outcome: { ok: false, code: "WRONG_EXPECTED_VERSION", actualVersion: 0 } });
    const [wrongAgain] = feed(ev(4, "req-2", { kind: "exact", version: 0 }));
    expect(wrongAgain).toMatchObject({ kind: "duplicate", outcome: { ok: false } }); // the first answer stands
    expect(state.versions.get("t/s")).toBe(0);
  });

  it("exactly one of two concurrent appends with the same expected version wins", () => {
    const log: EventEntry[] = [1, 2].map((position) => ({
      position, tenant: "t", stream: "s", eventId: `e${position}`, type: "T", data: new Uint8Array(0), metadata: {}, timestampMs: 0,
      batch: { requestId: `client-${position}`, count: 1, seq: 0, expectedVersion: { kind: "no-stream" } },
    }));
    const { decisions } = run(log);
    expect(decisions.map((d) => d.kind)).toEqual(["appended", "rejected"]);
  });

  it("holds an incomplete batch open at the end of the committed log, then decides it", () => {
    const state = new MemoryState();
    const a = new BatchAssembler(0);
    const e = (seq: number): EventEntry => ({
      position: seq + 1, tenant: "t", stream: "s", eventId: `e${seq}`, type: "T", data: new Uint8Array(0), metadata: {}, timestampMs: 0,
      batch: { requestId: "r", count: 3, seq, expectedVersion: undefined },
    });
    expect(a.next(1, e(0), state)).toEqual([]);
    expect(a.next(2, e(1), state)).toEqual([]);
    expect(a.decidedThrough).toBe(0); // applied position waits for the batch
    const [d] = a.next(3, e(2), state);
    expect(d).toMatchObject({ kind: "appended", outcome: { firstPosition: 1, lastPosition: 3, lastVersion: 2 } });
    expect(a.decidedThrough).toBe(3);
  });
});

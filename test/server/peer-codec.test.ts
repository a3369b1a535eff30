import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { decodeRaftBatch, encodeRaftBatch } from "../../src/server/peer-codec.js";
import { protoType } from "../../src/server/proto.js";
import type { Message } from "../../src/consensus/types.js";
import type { LogEntry, LogIndex, NodeId, Term } from "../../src/log/types.js";

const id = fc.integer({ min: 1, max: 0xffff_ffff }).map((n) => n as NodeId);
const u53 = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER });
const idx = u53.map((n) => n as LogIndex);
const trm = u53.map((n) => n as Term);

const entries = (prev: number) =>
  fc.array(
    fc.record({ kind: fc.integer({ min: 1, max: 255 }), tenant: fc.string({ maxLength: 20 }), payload: fc.uint8Array({ minLength: 1, maxLength: 64 }) }),
    { maxLength: 5 },
  ).map((xs): LogEntry[] => xs.map((x, i) => ({ ...x, index: (prev + 1 + i) as LogIndex, term: 7 as Term, payload: Buffer.from(x.payload) })));

const message: fc.Arbitrary<Message> = fc.oneof(
  fc.record({ type: fc.constantFrom("PRE_VOTE" as const, "VOTE" as const), from: id, to: id, term: trm, lastLogIndex: idx, lastLogTerm: trm, leaderTransfer: fc.boolean() }),
  fc.record({ type: fc.constantFrom("PRE_VOTE_RESPONSE" as const, "VOTE_RESPONSE" as const), from: id, to: id, term: trm, granted: fc.boolean() }),
  fc.integer({ min: 0, max: 1_000_000 }).chain((prev) =>
    fc.record({
      type: fc.constant("APPEND" as const), from: id, to: id, term: fc.integer({ min: 7, max: 100 }).map((n) => n as Term),
      prevIndex: fc.constant(prev as LogIndex), prevTerm: trm, entries: entries(prev), commit: idx,
    }),
  ),
  fc.record({ type: fc.constant("APPEND_RESPONSE" as const), from: id, to: id, term: trm, success: fc.constant(true as const), matchIndex: idx }),
  fc.record({
    type: fc.constant("APPEND_RESPONSE" as const), from: id, to: id, term: trm, success: fc.constant(false as const),
    rejectedPrevIndex: idx, conflictTerm: trm, conflictIndex: idx,
  }),
  fc.record({ type: fc.constant("HEARTBEAT" as const), from: id, to: id, term: trm, commit: idx, readRound: u53 }),
  fc.record({ type: fc.constant("HEARTBEAT_RESPONSE" as const), from: id, to: id, term: trm, readRound: u53 }),
  fc.record({ type: fc.constant("TIMEOUT_NOW" as const), from: id, to: id, term: trm }),
) as fc.Arbitrary<Message>;

describe("peer codec", () => {
  it("round-trips every kind of Raft message, with 53-bit terms and indexes", () => {
    fc.assert(
      fc.property(fc.array(message, { maxLength: 8 }), (messages) => {
        const decoded = decodeRaftBatch(encodeRaftBatch(messages));
        expect(decoded).toEqual({ ok: true, messages });
      }),
      { numRuns: 500 },
    );
  });

  it("refuses malformed messages with a reason instead of passing them to the core", () => {
    const type = protoType("RaftBatch");
    const encode = (o: object) => type.encode(type.fromObject(o)).finish();
    const bad: Array<[object, RegExp]> = [
      [{ messages: [{ from: 0, to: 2, term: 1, timeoutNow: {} }] }, /from is 0/],
      [{ messages: [{ from: 1, to: 2, term: 1 }] }, /without a known body/],
      [{ messages: [{ from: 1, to: 2, term: "9007199254740993", timeoutNow: {} }] }, /not a safe/],
      [{ messages: [{ from: 1, to: 2, term: 1, append: { prevIndex: 5, entries: [{ index: 7, term: 1, kind: 2, payload: Buffer.from("x") }] } }] }, /index 7 where 6/],
      [{ messages: [{ from: 1, to: 2, term: 1, append: { prevIndex: 0, entries: [{ index: 1, term: 1, kind: 0, payload: Buffer.from("x") }] } }] }, /kind 0/],
      [{ messages: [{ from: 1, to: 2, term: 1, append: { prevIndex: 0, entries: [{ index: 1, term: 1, kind: 2 }] } }] }, /payload of 0 bytes/],
    ];
    for (const [o, why] of bad) {
      const r = decodeRaftBatch(encode(o));
      expect(r.ok).toBe(false);
      if (!r.ok) expect(r.reason).toMatch(why);
    }
  });

  it("never throws on random bytes, and whatever it accepts is well formed", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), (bytes) => {
        const r = decodeRaftBatch(bytes);
        if (r.ok) for (const m of r.messages) expect(m.from > 0 && m.to > 0).toBe(true);
      }),
      { numRuns: 1000 },
    );
  });
});

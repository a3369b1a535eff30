/**
 * Raft messages on the wire between nodes: src/consensus `Message` <-> `verity.v1.RaftBatch`
 * (proto/verity/v1/peer.proto). Decoding treats the bytes as untrusted: it never throws, and it
 * refuses anything that is not a well-formed message (ids, 53-bit safe numbers, consecutive
 * entries, kinds, tenant and payload sizes, counts) with a reason, so a bad peer or a damaged
 * frame can never reach the core.
 */

import type protobuf from "protobufjs";
import { ENTRIES_PER_RPC_MAX, RECORD_BYTES_MAX, TENANT_ID_BYTES_MAX } from "../limits.js";
import type { LogEntry, LogIndex, NodeId, Term } from "../log/types.js";
import { assertNever } from "../errors.js";
import type { Message } from "../consensus/types.js";
import { protoType } from "./proto.js";

/** Messages one RaftBatch carries at most. */
export const RAFT_BATCH_MESSAGES_MAX = 4096;

let batchType: protobuf.Type | undefined;
function raftBatch(): protobuf.Type {
  batchType ??= protoType("RaftBatch");
  return batchType;
}

type Wire = Record<string, unknown>;

function toWire(m: Message): Wire {
  const head = { from: m.from, to: m.to, term: m.term };
  switch (m.type) {
    case "PRE_VOTE":
    case "VOTE":
      return { ...head, vote: { preVote: m.type === "PRE_VOTE", lastLogIndex: m.lastLogIndex, lastLogTerm: m.lastLogTerm, leaderTransfer: m.leaderTransfer } };
    case "PRE_VOTE_RESPONSE":
    case "VOTE_RESPONSE":
      return { ...head, voteResponse: { preVote: m.type === "PRE_VOTE_RESPONSE", granted: m.granted } };
    case "APPEND":
      return {
        ...head,
        append: {
          prevIndex: m.prevIndex, prevTerm: m.prevTerm, commit: m.commit,
          entries: m.entries.map((e) => ({ term: e.term, index: e.index, kind: e.kind, tenant: e.tenant, payload: e.payload })),
        },
      };
    case "APPEND_RESPONSE":
      return m.success
        ? { ...head, appendResponse: { success: true, matchIndex: m.matchIndex } }
        : { ...head, appendResponse: { success: false, rejectedPrevIndex: m.rejectedPrevIndex, conflictTerm: m.conflictTerm, conflictIndex: m.conflictIndex } };
    case "HEARTBEAT":
      return { ...head, heartbeat: { commit: m.commit, readRound: m.readRound } };
    case "HEARTBEAT_RESPONSE":
      return { ...head, heartbeatResponse: { readRound: m.readRound } };
    case "TIMEOUT_NOW":
      return { ...head, timeoutNow: {} };
    default:
      return assertNever(m);
  }
}

export function encodeRaftBatch(messages: readonly Message[]): Uint8Array {
  const type = raftBatch();
  return type.encode(type.fromObject({ messages: messages.map(toWire) })).finish();
}

export type DecodeResult = { ok: true; messages: Message[] } | { ok: false; reason: string };

class Refused extends Error {}

/** A uint64 field (as the decimal string protobufjs gives with `longs: String`) as a safe integer. */
function u64(v: unknown, what: string): number {
  const n = v === undefined ? 0 : Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new Refused(`${what} ${String(v)} is not a safe non-negative integer`);
  return n;
}

function nodeOf(v: unknown, what: string): NodeId {
  const n = u64(v, what);
  if (n === 0) throw new Refused(`${what} is 0`);
  return n as NodeId;
}

function obj(v: unknown): Wire {
  return (v ?? {}) as Wire;
}

function entriesOf(a: Wire, prevIndex: number): LogEntry[] {
  const raw = (a.entries ?? []) as Wire[];
  if (raw.length > ENTRIES_PER_RPC_MAX) throw new Refused(`${raw.length} entries in one append (at most ${ENTRIES_PER_RPC_MAX})`);
  let last = 0;
  return raw.map((e, i) => {
    const index = u64(e.index, "entry index");
    const t = u64(e.term, "entry term");
    if (index !== prevIndex + 1 + i) throw new Refused(`entry index ${index} where ${prevIndex + 1 + i} was expected`);
    if (t < last) throw new Refused("entry terms go backwards");
    last = t;
    const kind = Number(e.kind ?? 0);
    if (!Number.isInteger(kind) || kind < 1 || kind > 255) throw new Refused(`entry kind ${kind}`);
    const tenant = String(e.tenant ?? "");
    if (Buffer.byteLength(tenant) > TENANT_ID_BYTES_MAX) throw new Refused("tenant id too long");
    const payload = (e.payload ?? new Uint8Array(0)) as Uint8Array;
    if (payload.length < 1 || payload.length > RECORD_BYTES_MAX) throw new Refused(`entry payload of ${payload.length} bytes`);
    return { index: index as LogIndex, term: t as Term, kind, tenant, payload };
  });
}

function fromWire(w: Wire): Message {
  const from = nodeOf(w.from, "from");
  const to = nodeOf(w.to, "to");
  const t = u64(w.term, "term") as Term;
  const head = { from, to, term: t };
  switch (w.body) {
    case "vote": {
      const v = obj(w.vote);
      return {
        ...head, type: v.preVote === true ? "PRE_VOTE" : "VOTE",
        lastLogIndex: u64(v.lastLogIndex, "last log index") as LogIndex, lastLogTerm: u64(v.lastLogTerm, "last log term") as Term,
        leaderTransfer: v.leaderTransfer === true,
      };
    }
    case "voteResponse": {
      const v = obj(w.voteResponse);
      return { ...head, type: v.preVote === true ? "PRE_VOTE_RESPONSE" : "VOTE_RESPONSE", granted: v.granted === true };
    }
    case "append": {
      const a = obj(w.append);
      const prevIndex = u64(a.prevIndex, "prev index");
      return {
        ...head, type: "APPEND", prevIndex: prevIndex as LogIndex, prevTerm: u64(a.prevTerm, "prev term") as Term,
        entries: entriesOf(a, prevIndex), commit: u64(a.commit, "commit") as LogIndex,
      };
    }
    case "appendResponse": {
      const a = obj(w.appendResponse);
      return a.success === true
        ? { ...head, type: "APPEND_RESPONSE", success: true, matchIndex: u64(a.matchIndex, "match index") as LogIndex }
        : {
            ...head, type: "APPEND_RESPONSE", success: false,
            rejectedPrevIndex: u64(a.rejectedPrevIndex, "rejected prev index") as LogIndex,
            conflictTerm: u64(a.conflictTerm, "conflict term") as Term,
            conflictIndex: u64(a.conflictIndex, "conflict index") as LogIndex,
          };
    }
    case "heartbeat": {
      const h = obj(w.heartbeat);
      return { ...head, type: "HEARTBEAT", commit: u64(h.commit, "commit") as LogIndex, readRound: u64(h.readRound, "read round") };
    }
    case "heartbeatResponse":
      return { ...head, type: "HEARTBEAT_RESPONSE", readRound: u64(obj(w.heartbeatResponse).readRound, "read round") };
    case "timeoutNow":
      return { ...head, type: "TIMEOUT_NOW" };
    default:
      throw new Refused(`message without a known body (${String(w.body)})`);
  }
}

/** Decodes a RaftBatch from a peer; never throws. */
export function decodeRaftBatch(bytes: Uint8Array): DecodeResult {
  try {
    const type = raftBatch();
    const decoded = type.toObject(type.decode(bytes), { longs: String, oneofs: true, defaults: false });
    const raw = (decoded.messages ?? []) as Wire[];
    if (raw.length > RAFT_BATCH_MESSAGES_MAX) return { ok: false, reason: `${raw.length} messages in one batch (at most ${RAFT_BATCH_MESSAGES_MAX})` };
    return { ok: true, messages: raw.map(fromWire) };
  } catch (e) {
    return { ok: false, reason: e instanceof Refused ? e.message : `not a RaftBatch: ${e instanceof Error ? e.message : String(e)}` };
  }
}

/**
 * Bulk catch-up (the driver's CatchUpPort, DESIGN.md section 4): a follower that is empty or more
 * than CATCH_UP_LAG_ENTRIES behind gets the committed entries it lacks over one CatchUp stream,
 * read from the leader's segments in APPEND-sized batches and sent without waiting for an
 * acknowledgement per batch (gRPC flow control and the follower's persist-then-read loop bound
 * what is in flight). Each batch is an ordinary APPEND of the leader's current term, so the
 * follower's core applies the same checks as to any AppendEntries; the follower answers with its
 * last index, from which the leader resumes normal replication.
 */

import type { CatchUpPort } from "../consensus/driver.js";
import type { CatchUpRequest, Message } from "../consensus/types.js";
import type { LogEntry, LogIndex, NodeId, Term } from "../log/types.js";
import type { PeerTransport } from "./peer-transport.js";

/** A follower further behind than this (in committed entries) is caught up by streaming. */
export const CATCH_UP_LAG_ENTRIES = 1_000;

export interface CatchUpLog {
  readonly firstIndex: number;
  termAt(index: number): Term | undefined;
  read(from: number, to: number, maxBytes: number): Promise<LogEntry[]>;
}

export interface CatchUpDeps {
  readonly nodeId: NodeId;
  readonly log: CatchUpLog;
  readonly transport: PeerTransport;
  /** The leader's current term, or undefined when it no longer leads (the stream stops). */
  leaderTerm(): Term | undefined;
  readonly entriesPerBatch: number;
  readonly bytesPerBatch: number;
  onStreamed?(to: NodeId, entries: number, bytes: number, ms: number): void;
  onFailed?(to: NodeId, reason: string): void;
}

export function catchUpPort(deps: CatchUpDeps): CatchUpPort {
  return { streamSegments: (request) => streamCatchUp(deps, request) };
}

async function streamCatchUp(deps: CatchUpDeps, request: CatchUpRequest): Promise<LogIndex | undefined> {
  const term = deps.leaderTerm();
  const from = request.fromIndex;
  if (term === undefined || from < deps.log.firstIndex || from < 1) return undefined;
  let prevTerm = from === 1 ? 0 : deps.log.termAt(from - 1);
  if (prevTerm === undefined) return undefined;
  const started = performance.now();
  let stream;
  try {
    stream = deps.transport.openCatchUp(request.to);
  } catch (e) {
    deps.onFailed?.(request.to, e instanceof Error ? e.message : String(e));
    return undefined;
  }
  let sent = 0;
  let bytes = 0;
  try {
    let next: number = from;
    // Bounded: each pass sends at least one entry, up to the commit index of the request.
    while (next <= request.upToIndex) {
      if (deps.leaderTerm() !== term) break;
      const entries = await deps.log.read(next, Math.min(request.upToIndex + 1, next + deps.entriesPerBatch), deps.bytesPerBatch);
      if (entries.length === 0) break;
      const last = entries[entries.length - 1]!;
      const append: Message = {
        type: "APPEND", from: deps.nodeId, to: request.to, term, prevIndex: (next - 1) as LogIndex, prevTerm: prevTerm as Term, entries,
        // Every streamed entry is committed.
        commit: last.index as LogIndex,
      };
      await stream.send([append]);
      sent += entries.length;
      bytes += entries.reduce((n, e) => n + e.payload.length, 0);
      prevTerm = last.term;
      next = last.index + 1;
    }
    const lastIndex = await stream.finish();
    deps.onStreamed?.(request.to, sent, bytes, performance.now() - started);
    return lastIndex as LogIndex;
  } catch (e) {
    stream.cancel();
    deps.onFailed?.(request.to, e instanceof Error ? ((e as { details?: string }).details ?? e.message) : String(e));
    return undefined;
  }
}

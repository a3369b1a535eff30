/**
 * Which failures are definite. An append that failed definitely did not happen (`fail`); one whose
 * outcome is unknown may have happened (`info`), and the checker treats it so. Getting this wrong
 * one way makes the checker cry wolf (an append recorded `fail` that did happen shows up as an
 * aborted read); the other way only weakens it. So a failure is definite only when:
 *
 * - its gRPC status is one the server returns only after deciding (docs/client.md): a wrong
 *   expected version (decided at apply, on every node alike), or a refusal before anything is
 *   proposed (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, RESOURCE_EXHAUSTED); or
 * - it is UNAVAILABLE and EVERY try the client library made says nothing was proposed: the
 *   library retries with the same request id, so one earlier try that may have reached a leader
 *   makes the whole call unknown.
 */

import * as grpc from "@grpc/grpc-js";
import { VerityClientError } from "../src/client/verity-client.js";
import type { OpError, Outcome } from "./history.js";

const DEFINITE_CODES = new Set<number>([
  grpc.status.INVALID_ARGUMENT, grpc.status.NOT_FOUND, grpc.status.PERMISSION_DENIED, grpc.status.RESOURCE_EXHAUSTED, grpc.status.FAILED_PRECONDITION,
  grpc.status.ALREADY_EXISTS, grpc.status.UNAUTHENTICATED,
]);

/** Messages the server (or gRPC, before sending) gives only when the request was never proposed. */
const NOTHING_PROPOSED = [
  /nothing was appended/,
  /no leader is known yet/,
  /the node is still starting/,
  /no connection to the leader \(node \d+\) from this node yet/,
  /is no longer the leader/,
  /No connection established/,
  /ECONNREFUSED/,
];

function tryNothingProposed(attempt: string): boolean {
  return NOTHING_PROPOSED.some((re) => re.test(attempt));
}

/** The outcome of a failed append, and how to record its error. */
export function classifyAppendError(e: unknown): { type: Outcome; error: OpError } {
  if (!(e instanceof VerityClientError)) {
    return { type: "info", error: { code: "CLIENT", message: e instanceof Error ? e.message : String(e) } };
  }
  const error = { code: e.codeName, message: e.message };
  if (DEFINITE_CODES.has(e.code)) return { type: "fail", error };
  if (e.code === grpc.status.UNAVAILABLE && e.attempts.length > 0 && e.attempts.every(tryNothingProposed)) {
    return { type: "fail", error: { code: "UNAVAILABLE", message: `nothing proposed on any try: ${e.attempts.join(" | ")}` } };
  }
  return { type: "info", error };
}

/** Reads, queries and status calls change nothing: any failure is a `fail`. */
export function readError(e: unknown): OpError {
  if (e instanceof VerityClientError) return { code: e.codeName, message: e.message };
  const code = (e as { code?: number }).code;
  return { code: typeof code === "number" ? (grpc.status[code] ?? String(code)) : "CLIENT", message: e instanceof Error ? e.message : String(e) };
}

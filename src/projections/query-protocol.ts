/**
 * The messages between a QueryPool (server side) and its worker processes (query-worker.ts).
 * Both sides are this package's own code, so a message of the wrong shape is a bug (INTERNAL),
 * never bad input. Errors cross as `{ code, message }` and are re-created as VerityError by the pool.
 */

import { ErrorCode } from "../errors.js";

/** A value a query binds to a named parameter. */
export type QueryParamValue = string | number | null;

/** One query, already validated and clamped by the pool. */
export interface QueryJob {
  /** Unique per pool; the answer carries it back. */
  readonly id: number;
  /** The tenant's projections database (chosen by the server, never by the client). */
  readonly dbPath: string;
  readonly sql: string;
  /** Named parameters, names without the leading ':'. */
  readonly params: Readonly<Record<string, QueryParamValue>>;
  /** Rows to return at most, 1 to the pool's rowsMax. */
  readonly limit: number;
  /** The database's raw 32-byte data key when it is encrypted (sqlite-encryption.ts); absent for a plaintext one. */
  readonly key?: Uint8Array | undefined;
}

/** The pool asks a worker to run one query; a worker runs one query at a time. */
export interface QueryRequestMessage {
  readonly type: "query";
  readonly job: QueryJob;
}

/** A worker started and waits for queries. */
export interface WorkerReadyMessage {
  readonly type: "ready";
}

/** The rows of a query; a blob value is `{ $base64 }`, integers past 2^53 lose precision. */
export interface QueryRows {
  readonly columns: string[];
  readonly rows: unknown[][];
  /** True when the query had more rows than `limit`. */
  readonly truncated: boolean;
  /** The projections' applied position in the same read snapshot as the rows (undefined: no bookkeeping table). */
  readonly position?: number | undefined;
}

/** A worker's answer to one query. */
export type WorkerAnswerMessage =
  | ({ readonly type: "answer"; readonly id: number; readonly ok: true } & QueryRows)
  | { readonly type: "answer"; readonly id: number; readonly ok: false; readonly code: ErrorCode; readonly message: string };

export type WorkerMessage = WorkerReadyMessage | WorkerAnswerMessage;

const errorCodes: ReadonlySet<string> = new Set(Object.values(ErrorCode));

/** True for one of VerityDB's error codes (a code from a worker is checked before it is trusted). */
export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === "string" && errorCodes.has(value);
}

/** True for a message of the shape a worker sends (checked on the pool's side). */
export function isWorkerMessage(value: unknown): value is WorkerMessage {
  if (typeof value !== "object" || value === null) return false;
  const m = value as Record<string, unknown>;
  if (m.type === "ready") return true;
  if (m.type !== "answer" || typeof m.id !== "number") return false;
  if (m.ok === true) return Array.isArray(m.columns) && Array.isArray(m.rows) && typeof m.truncated === "boolean";
  return m.ok === false && isErrorCode(m.code) && typeof m.message === "string";
}

/** True for a message of the shape the pool sends (checked on the worker's side). */
export function isQueryRequestMessage(value: unknown): value is QueryRequestMessage {
  if (typeof value !== "object" || value === null) return false;
  const m = value as Record<string, unknown>;
  if (m.type !== "query" || typeof m.job !== "object" || m.job === null) return false;
  const job = m.job as Record<string, unknown>;
  return typeof job.id === "number" && typeof job.dbPath === "string" && typeof job.sql === "string" &&
    typeof job.params === "object" && job.params !== null && typeof job.limit === "number" &&
    (job.key === undefined || (job.key instanceof Uint8Array && job.key.length === 32));
}

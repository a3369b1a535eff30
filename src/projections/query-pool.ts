/**
 * The query engine for per-tenant SQL projections: a fixed set of worker processes that run
 * read-only queries against tenants' projection databases, off the server's main thread.
 *
 * Guarantees:
 * - no SQLite work for a query happens on the calling thread; it only sends the query and receives
 *   the answer (at most QUERY_RESULT_BYTES_MAX), so a slow query never delays heartbeats;
 * - a query can never write, ATTACH a file, change or read a pragma, or load an extension
 *   (query-guard.ts, and the read-only `query_only` connection of query-runner.ts);
 * - a query that runs longer than `timeoutMs` is stopped by killing its worker, answered
 *   DEADLINE_EXCEEDED, and the worker is replaced; a worker that crashes is replaced and its query
 *   answered INTERNAL. Workers run one query at a time, so no other query is affected;
 * - queries wait in one FIFO queue of at most `queueMax`; past it `query` answers QUOTA_EXCEEDED;
 * - `close()` answers every waiting and running query UNAVAILABLE and stops every worker.
 *
 * Workers are processes, not threads: see query-worker.ts for why.
 */

import { setPriority } from "node:os";
import { fork, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ErrorCode, VerityError, invariant } from "../errors.js";
import { QUERY_ALLOWED } from "./query-guard.js";
import {
  QUERY_PARAMS_MAX,
  QUERY_PARAM_NAME_LENGTH_MAX,
  QUERY_PARAM_VALUE_BYTES_MAX,
  QUERY_QUEUE_MAX,
  QUERY_ROWS_MAX,
  QUERY_SQL_BYTES_MAX,
  QUERY_TIMEOUT_MS_MAX,
  QUERY_WORKERS_MAX,
  QUERY_WORKER_BOOT_FAILURES_MAX,
  QUERY_WORKER_HEAP_MIB_MAX,
  QUERY_WORKER_RESPAWN_DELAY_MS_MAX,
  QUERY_WORKER_RESPAWN_DELAY_MS_MIN,
} from "./query-limits.js";
import { isWorkerMessage, type QueryJob, type QueryParamValue, type WorkerMessage } from "./query-protocol.js";

export type { QueryParamValue } from "./query-protocol.js";

/** The scheduling priority (nice value) of query processes: below the node's own. */
export const QUERY_WORKER_NICE = 10;

/** How a pool runs. */
export interface QueryPoolOptions {
  /** Worker processes, 1 to QUERY_WORKERS_MAX (QUERY_WORKERS_DEFAULT is 2); one query runs on each at a time. */
  workers: number;
  /** `max_query_duration` in milliseconds, 1 to QUERY_TIMEOUT_MS_MAX; counted from when a worker starts the query. */
  timeoutMs: number;
  /** Rows one query returns at most, 1 to QUERY_ROWS_MAX; a request's `limit` is clamped to it. */
  rowsMax: number;
  /** Queries that may wait for a worker, 1 to QUERY_QUEUE_MAX (the default). */
  queueMax?: number;
}

/** One query. */
export interface QueryRequest {
  /** The tenant's projections database, chosen by the server (never by a client). */
  dbPath: string;
  /** One read-only statement: SELECT, WITH ... SELECT or VALUES. */
  sql: string;
  /** Named parameters: `{ id: 7 }` binds `:id` (also `@id`, `$id`). Names go without the ':'. */
  params: Record<string, string | number | null>;
  /** Rows at most: 1 or more, clamped to the pool's rowsMax; 0 means rowsMax. */
  limit: number;
  /**
   * The database's raw data key when it is encrypted (Projector.queryTarget); it goes to the worker
   * over the IPC channel with the query, never in argv or the environment, and is never logged.
   */
  key?: Buffer | undefined;
}

/** The answer to one query. */
export interface QueryResult {
  /** Column names, in order. */
  columns: string[];
  /** One array per row, values in column order; a blob is `{ "$base64": "..." }`. */
  rows: unknown[][];
  /** True when the query had more rows than the (clamped) limit. */
  truncated: boolean;
  /** The projections' applied position in the same read snapshot as the rows, when the database has one. */
  position?: number | undefined;
  /** Milliseconds from the call to the answer, waiting in the queue included. */
  ms: number;
}

/** What a pool is doing, for metrics and tests. */
export interface QueryPoolStats {
  /** Workers started and ready or busy. */
  readonly readyWorkers: number;
  readonly busyWorkers: number;
  readonly queuedQueries: number;
  /** Process ids of the current workers (those starting included). */
  readonly workerPids: readonly number[];
}

interface Waiting {
  readonly job: QueryJob;
  /** performance.now() when `query` was called. */
  readonly calledAt: number;
  readonly resolve: (result: QueryResult) => void;
  readonly reject: (error: VerityError) => void;
}

interface Running {
  readonly waiting: Waiting;
  readonly timer: NodeJS.Timeout;
}

type WorkerState = "starting" | "idle" | "busy" | "gone";

/** One worker process and the query it runs. */
interface WorkerSlot {
  readonly child: ChildProcess;
  /** Resolves when the process has exited (or never started). */
  readonly exited: Promise<void>;
  state: WorkerState;
  // Invariant: running !== undefined exactly when state === "busy".
  running: Running | undefined;
}

const PARAM_NAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** The compiled worker script: next to this module when built, or in dist/ when this module is TypeScript source. */
export function findQueryWorkerScript(): string {
  const beside = fileURLToPath(new URL("./query-worker.js", import.meta.url));
  if (existsSync(beside)) return beside;
  let dir = dirname(fileURLToPath(import.meta.url));
  // Bounded: the repository root is at most a few levels above src/projections.
  for (let level = 0; level < 6; level++) {
    const candidate = join(dir, "dist", "src", "projections", "query-worker.js");
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  throw new VerityError(
    ErrorCode.FAILED_PRECONDITION,
    `the query worker script query-worker.js is neither beside ${fileURLToPath(import.meta.url)} nor in dist/src/projections above it: run npm run build`,
  );
}

function formatDuration(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;
}

function checkWholeNumber(name: string, value: number, min: number, max: number): void {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new VerityError(ErrorCode.INVALID_ARGUMENT, `QueryPool ${name} must be a whole number from ${min} to ${max}, not ${value}`);
  }
}

function invalid(message: string): VerityError {
  return new VerityError(ErrorCode.INVALID_ARGUMENT, message);
}

/** Checks the parameters and returns a plain copy (nothing but own, well-named, bounded values). */
function checkParams(params: unknown): Record<string, QueryParamValue> {
  if (typeof params !== "object" || params === null || Array.isArray(params)) {
    throw invalid("the query's params must be an object of named parameters, such as { \"id\": 7 } for :id");
  }
  const entries = Object.entries(params as Record<string, unknown>);
  if (entries.length > QUERY_PARAMS_MAX) {
    throw invalid(`the query has ${entries.length} parameters, more than QUERY_PARAMS_MAX (${QUERY_PARAMS_MAX}): bind fewer`);
  }
  const copy: Record<string, QueryParamValue> = {};
  for (const [name, value] of entries) {
    if (name.length > QUERY_PARAM_NAME_LENGTH_MAX || !PARAM_NAME_PATTERN.test(name)) {
      throw invalid(
        `the parameter name ${JSON.stringify(name.slice(0, QUERY_PARAM_NAME_LENGTH_MAX + 1))} is not allowed: names are letters, digits and '_', ` +
          `at most ${QUERY_PARAM_NAME_LENGTH_MAX} characters, given without the leading ':' ("id" binds :id)`,
      );
    }
    if (typeof value === "string") {
      if (Buffer.byteLength(value, "utf8") > QUERY_PARAM_VALUE_BYTES_MAX) {
        throw invalid(`the parameter ${name} is longer than QUERY_PARAM_VALUE_BYTES_MAX (${QUERY_PARAM_VALUE_BYTES_MAX} bytes)`);
      }
    } else if (typeof value === "number") {
      if (!Number.isFinite(value)) throw invalid(`the parameter ${name} is ${value}: numbers must be finite`);
    } else if (value !== null) {
      throw invalid(`the parameter ${name} is a ${typeof value}: values are strings, numbers or null`);
    }
    copy[name] = value;
  }
  return copy;
}

export class QueryPool {
  private readonly workerCount: number;
  private readonly timeoutMs: number;
  private readonly rowsMax: number;
  private readonly queueMax: number;
  private readonly workerScript: string;
  // Invariant: slots.length === workerCount; a gone slot is replaced at once or after a respawn delay.
  private readonly slots: WorkerSlot[] = [];
  // Invariant: queue.length <= queueMax, FIFO.
  private readonly queue: Waiting[] = [];
  /** Workers being stopped or replaced that have not exited yet (close() waits for them). */
  private readonly retiring = new Set<Promise<void>>();
  private readonly respawnTimers = new Set<NodeJS.Timeout>();
  private nextJobId = 1;
  private closed = false;
  /** Workers that failed to start since one last started. */
  private bootFailures = 0;
  /** Set while workers keep failing to start: why queries are answered UNAVAILABLE. */
  private unavailableReason: string | undefined;

  constructor(options: QueryPoolOptions) {
    checkWholeNumber("workers", options.workers, 1, QUERY_WORKERS_MAX);
    checkWholeNumber("timeoutMs", options.timeoutMs, 1, QUERY_TIMEOUT_MS_MAX);
    checkWholeNumber("rowsMax", options.rowsMax, 1, QUERY_ROWS_MAX);
    const queueMax = options.queueMax ?? QUERY_QUEUE_MAX;
    checkWholeNumber("queueMax", queueMax, 1, QUERY_QUEUE_MAX);
    this.workerCount = options.workers;
    this.timeoutMs = options.timeoutMs;
    this.rowsMax = options.rowsMax;
    this.queueMax = queueMax;
    this.workerScript = findQueryWorkerScript();
    for (let index = 0; index < this.workerCount; index++) this.spawn(index);
  }

  /** Runs one query on a worker; rejects with VerityError (see the module comment for which codes). */
  query(request: QueryRequest): Promise<QueryResult> {
    const calledAt = performance.now();
    let job: QueryJob;
    try {
      job = this.jobOf(request);
    } catch (error) {
      return Promise.reject(error);
    }
    if (this.closed) return Promise.reject(this.closedError());
    if (this.unavailableReason !== undefined && !this.slots.some((slot) => slot.state === "idle" || slot.state === "busy")) {
      return Promise.reject(new VerityError(ErrorCode.UNAVAILABLE, this.unavailableReason));
    }
    if (this.queue.length >= this.queueMax) {
      return Promise.reject(new VerityError(
        ErrorCode.QUOTA_EXCEEDED,
        `${this.queue.length} queries are waiting for a query worker, the most QUERY_QUEUE_MAX (${this.queueMax}) allows: retry later, or make queries faster (WHERE, LIMIT, an index)`,
      ));
    }
    return new Promise<QueryResult>((resolve, reject) => {
      this.queue.push({ job, calledAt, resolve, reject });
      this.dispatch();
    });
  }

  /** Stops every worker; waiting and running queries are answered UNAVAILABLE. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    for (const timer of this.respawnTimers) clearTimeout(timer);
    this.respawnTimers.clear();
    // Bounded: the queue holds at most queueMax entries and takes none once closed.
    for (const waiting of this.queue.splice(0)) waiting.reject(this.closedError());
    for (const slot of this.slots) this.retire(slot, this.closedError());
    await Promise.all([...this.retiring]);
  }

  stats(): QueryPoolStats {
    return {
      readyWorkers: this.slots.filter((slot) => slot.state === "idle" || slot.state === "busy").length,
      busyWorkers: this.slots.filter((slot) => slot.state === "busy").length,
      queuedQueries: this.queue.length,
      workerPids: this.slots.filter((slot) => slot.state !== "gone" && slot.child.pid !== undefined).map((slot) => slot.child.pid!),
    };
  }

  private jobOf(request: QueryRequest): QueryJob {
    invariant(typeof request.dbPath === "string" && request.dbPath !== "", "a query names its projections database");
    if (typeof request.sql !== "string") throw invalid(`the query's sql must be a string: ${QUERY_ALLOWED}`);
    const sqlBytes = Buffer.byteLength(request.sql, "utf8");
    if (sqlBytes > QUERY_SQL_BYTES_MAX) {
      throw invalid(`the query's SQL is ${sqlBytes} bytes, more than QUERY_SQL_BYTES_MAX (${QUERY_SQL_BYTES_MAX}): shorten it`);
    }
    if (!Number.isSafeInteger(request.limit) || request.limit < 0) {
      throw invalid(`the query's limit must be a whole number, 0 (the server's maximum, ${this.rowsMax}) or more, not ${request.limit}`);
    }
    const limit = request.limit === 0 ? this.rowsMax : Math.min(request.limit, this.rowsMax);
    if (request.key !== undefined) invariant(request.key.length === 32, "a database key is 32 bytes");
    const key = request.key === undefined ? undefined : new Uint8Array(request.key);
    return { id: this.nextJobId++, dbPath: request.dbPath, sql: request.sql, params: checkParams(request.params), limit, key };
  }

  private closedError(): VerityError {
    return new VerityError(ErrorCode.UNAVAILABLE, "the query pool was closed (the server is shutting down): retry the query, on another node if this one stays down");
  }

  /** Hands waiting queries to idle workers, oldest first. */
  private dispatch(): void {
    // Bounded: each pass makes one idle worker busy or stops; there are workerCount workers.
    for (const slot of this.slots) {
      if (this.queue.length === 0) return;
      if (slot.state !== "idle") continue;
      const waiting = this.queue.shift()!;
      const timer = setTimeout(() => this.onTimeout(slot), this.timeoutMs);
      slot.state = "busy";
      slot.running = { waiting, timer };
      slot.child.send({ type: "query", job: waiting.job }, (error) => {
        // A failed send means the process is gone; its 'exit' answers the query.
        if (error !== null) slot.child.kill("SIGKILL");
      });
    }
  }

  private spawn(index: number): void {
    const child = fork(this.workerScript, [], {
      serialization: "advanced",
      execArgv: [`--max-old-space-size=${QUERY_WORKER_HEAP_MIB_MAX}`],
      stdio: ["ignore", "ignore", "inherit", "ipc"],
    });
    // Queries yield the CPU to the node's own work (Raft, apply) when both want it.
    if (child.pid !== undefined) {
      try {
        setPriority(child.pid, QUERY_WORKER_NICE);
      } catch {
        // Not permitted here: queries run at normal priority.
      }
    }
    let markExited: () => void = () => {};
    const exited = new Promise<void>((resolve) => (markExited = resolve));
    const slot: WorkerSlot = { child, exited, state: "starting", running: undefined };
    this.slots[index] = slot;
    child.on("message", (message: unknown) => this.onMessage(slot, message));
    child.once("exit", (code, signal) => {
      markExited();
      this.onExit(slot, index, code === null ? `signal ${signal ?? "unknown"}` : `exit code ${code}`);
    });
    child.on("error", (error) => {
      // Spawning failed (no 'exit' follows when there is no pid), or a kill or send failed.
      if (child.pid === undefined) markExited();
      this.onExit(slot, index, error.message);
    });
  }

  private onMessage(slot: WorkerSlot, message: unknown): void {
    invariant(isWorkerMessage(message), `a query worker sent a message of the wrong shape: ${JSON.stringify(message)?.slice(0, 200)}`);
    if (slot.state === "gone") return;
    const m: WorkerMessage = message;
    if (m.type === "ready") {
      invariant(slot.state === "starting", "a query worker says it is ready once");
      slot.state = "idle";
      this.bootFailures = 0;
      this.unavailableReason = undefined;
      this.dispatch();
      return;
    }
    const running = slot.running;
    invariant(slot.state === "busy" && running !== undefined && running.waiting.job.id === m.id, "a query worker answers the query it runs");
    clearTimeout(running.timer);
    slot.running = undefined;
    slot.state = "idle";
    const { waiting } = running;
    if (m.ok) {
      waiting.resolve({ columns: m.columns, rows: m.rows, truncated: m.truncated, position: m.position, ms: performance.now() - waiting.calledAt });
    } else {
      waiting.reject(new VerityError(m.code, m.message));
    }
    this.dispatch();
  }

  private onTimeout(slot: WorkerSlot): void {
    if (slot.state !== "busy") return;
    const index = this.slots.indexOf(slot);
    invariant(index !== -1, "a running query's worker is in the pool");
    this.retire(slot, new VerityError(
      ErrorCode.DEADLINE_EXCEEDED,
      `the query ran longer than max_query_duration (${formatDuration(this.timeoutMs)}): narrow it with WHERE or LIMIT, or add an index with a migration`,
    ));
    this.spawn(index);
  }

  /** Kills a worker on purpose, answering its query (if any) with `error`. */
  private retire(slot: WorkerSlot, error: VerityError): void {
    if (slot.state === "gone") return;
    const running = slot.running;
    slot.state = "gone";
    slot.running = undefined;
    if (running !== undefined) {
      clearTimeout(running.timer);
      running.waiting.reject(error);
    }
    // A reader killed mid-query leaves the database as it was (it never writes).
    slot.child.kill("SIGKILL");
    const exited = slot.exited;
    this.retiring.add(exited);
    void exited.then(() => this.retiring.delete(exited));
  }

  /** A worker stopped without being asked to: answer its query, then replace it. */
  private onExit(slot: WorkerSlot, index: number, how: string): void {
    if (slot.state === "gone") return;
    const wasStarting = slot.state === "starting";
    this.retire(slot, new VerityError(
      ErrorCode.INTERNAL,
      `the query worker stopped unexpectedly (${how}) while running the query: retry it; if it happens again, report a bug with the query and the server's stderr`,
    ));
    if (this.closed) return;
    if (!wasStarting) {
      this.spawn(index);
      return;
    }
    this.bootFailures++;
    if (this.bootFailures >= QUERY_WORKER_BOOT_FAILURES_MAX) {
      this.unavailableReason =
        `query workers fail to start (${this.bootFailures} in a row, the last: ${how}): retry later; the server's stderr says why (check ${this.workerScript})`;
      if (!this.slots.some((other) => other.state === "idle" || other.state === "busy")) {
        const reason = this.unavailableReason;
        // Bounded: at most queueMax waiting queries.
        for (const waiting of this.queue.splice(0)) waiting.reject(new VerityError(ErrorCode.UNAVAILABLE, reason));
      }
    }
    const delayMs = Math.min(QUERY_WORKER_RESPAWN_DELAY_MS_MAX, QUERY_WORKER_RESPAWN_DELAY_MS_MIN * 2 ** (this.bootFailures - 1));
    const timer = setTimeout(() => {
      this.respawnTimers.delete(timer);
      if (!this.closed) this.spawn(index);
    }, delayMs);
    this.respawnTimers.add(timer);
  }
}

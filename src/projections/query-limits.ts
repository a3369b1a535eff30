/**
 * Every bound of the projection query engine (query-guard, query-runner, query-worker,
 * query-pool), in one place, with their relationships asserted when this module loads
 * (STYLE.md section 3). They belong in src/limits.ts once that file is free to edit; they live
 * here so the query engine could be built without touching it.
 */

import { strict as assert } from "node:assert";

const KiB = 1024;
const MiB = 1024 * KiB;

// ---- Defaults (config values a caller may pass to QueryPool). ----

/** Query worker processes a pool runs when the caller has no setting of its own. */
export const QUERY_WORKERS_DEFAULT = 2;
/** `max_query_duration`: a query running longer is stopped and answered DEADLINE_EXCEEDED. */
export const QUERY_TIMEOUT_MS_DEFAULT = 30_000;
/** Rows a query returns at most when the caller has no setting of its own. */
export const QUERY_ROWS_MAX_DEFAULT = 10_000;
/** Queries that may wait for a free worker; past this `query` answers QUOTA_EXCEEDED. Also the default of `queueMax`. */
export const QUERY_QUEUE_MAX = 1024;

// ---- Hard bounds: no option may go past these. ----

/** Worker processes per pool, at most. */
export const QUERY_WORKERS_MAX = 64;
/** The largest `timeoutMs` accepted (one hour). */
export const QUERY_TIMEOUT_MS_MAX = 3_600_000;
/** The largest `rowsMax` accepted. */
export const QUERY_ROWS_MAX = 1_000_000;
/** Bytes of SQL text (UTF-8) one query may have. */
export const QUERY_SQL_BYTES_MAX = 100 * KiB;
/** Named parameters one query may bind. */
export const QUERY_PARAMS_MAX = 256;
/** Characters of one parameter name (without the leading ':'). */
export const QUERY_PARAM_NAME_LENGTH_MAX = 64;
/** Bytes (UTF-8) of one text parameter value. */
export const QUERY_PARAM_VALUE_BYTES_MAX = 64 * KiB;
/**
 * Bytes of one result, estimated as its JSON size. The answer crosses to the server's main thread
 * in one message whose decoding runs there, so this bounds the main thread's work per query too.
 */
export const QUERY_RESULT_BYTES_MAX = 16 * MiB;

/** Open read-only connections one worker keeps (least recently used are closed past this). */
export const QUERY_CONNECTIONS_MAX = 16;
/** JavaScript heap of one worker process (`--max-old-space-size`), in MiB. */
export const QUERY_WORKER_HEAP_MIB_MAX = 512;
/** Workers that fail to start in a row before queries are answered UNAVAILABLE (until one starts). */
export const QUERY_WORKER_BOOT_FAILURES_MAX = 3;
/** The first delay before a worker that failed to start is started again; it doubles per failure. */
export const QUERY_WORKER_RESPAWN_DELAY_MS_MIN = 50;
/** The longest delay between attempts to start a worker. */
export const QUERY_WORKER_RESPAWN_DELAY_MS_MAX = 5_000;
/** How often a worker checks that the server that started it is still alive. */
export const QUERY_WORKER_WATCHDOG_INTERVAL_MS = 1_000;

// ---- Relationships, checked when this module loads. ----
assert(QUERY_WORKERS_DEFAULT >= 1 && QUERY_WORKERS_DEFAULT <= QUERY_WORKERS_MAX);
assert(QUERY_TIMEOUT_MS_DEFAULT <= QUERY_TIMEOUT_MS_MAX);
assert(QUERY_ROWS_MAX_DEFAULT >= 1 && QUERY_ROWS_MAX_DEFAULT <= QUERY_ROWS_MAX);
assert(QUERY_QUEUE_MAX >= 1);
// A result fits in the worker's heap several times over (rows, their JSON estimate, the message).
assert(QUERY_RESULT_BYTES_MAX * 8 <= QUERY_WORKER_HEAP_MIB_MAX * MiB);
// All parameters of a query together stay far below the heap of the worker that binds them.
assert(QUERY_PARAMS_MAX * QUERY_PARAM_VALUE_BYTES_MAX * 8 <= QUERY_WORKER_HEAP_MIB_MAX * MiB);
assert(QUERY_WORKER_RESPAWN_DELAY_MS_MIN <= QUERY_WORKER_RESPAWN_DELAY_MS_MAX);
assert(QUERY_CONNECTIONS_MAX >= 1);

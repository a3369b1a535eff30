/**
 * The entry point of a query worker: a child process that QueryPool (query-pool.ts) starts with
 * `child_process.fork` and an IPC channel. It runs one query at a time (query-runner.ts) and
 * answers each with `{ type: "answer", id, ok, ... }`; errors cross as `{ code, message }`.
 *
 * Why a process and not a worker thread: `worker.terminate()` cannot stop a thread while it is
 * inside a native call, and one long SQLite step (an aggregate over a huge recursive CTE) is one
 * native call. better-sqlite3 does not expose sqlite3_interrupt, and its SQLite is built without
 * the progress callback, so the only way to stop such a query is to kill the process running it.
 *
 * Guarantees:
 * - it exits when the server goes away: on the IPC channel's 'disconnect' when idle, and through a
 *   watchdog thread (which runs while the main thread is stuck in SQLite) when the parent process
 *   is gone or the worker was re-parented;
 * - it never writes to stdout (the server's logs); a crash's stack trace goes to stderr.
 */

import { Worker } from "node:worker_threads";
import { ErrorCode, VerityError } from "../errors.js";
import { QUERY_WORKER_WATCHDOG_INTERVAL_MS } from "./query-limits.js";
import { isQueryRequestMessage, type WorkerMessage } from "./query-protocol.js";
import { ConnectionCache, runQuery } from "./query-runner.js";

/**
 * The watchdog thread's code (CommonJS, run with `eval`): it kills this process once the server
 * that started it is gone. A thread, because the main thread may be inside one long SQLite call.
 */
const WATCHDOG_SOURCE = `
const { workerData } = require("node:worker_threads");
const parentPid = workerData.parentPid;
function parentAlive() {
  if (process.ppid !== parentPid) return false;
  try { process.kill(parentPid, 0); return true; } catch (error) { return error.code === "EPERM"; }
}
setInterval(() => { if (!parentAlive()) process.kill(process.pid, "SIGKILL"); }, workerData.intervalMs);
`;

function send(message: WorkerMessage): void {
  // The channel is gone only when the server is; the 'disconnect' handler then ends this process.
  if (process.connected) process.send!(message);
}

function startWatchdog(): void {
  const watchdog = new Worker(WATCHDOG_SOURCE, {
    eval: true,
    workerData: { parentPid: process.ppid, intervalMs: QUERY_WORKER_WATCHDOG_INTERVAL_MS },
  });
  watchdog.unref();
}

function main(): void {
  if (process.send === undefined) {
    throw new Error("query-worker.js is started by QueryPool (child_process.fork with an IPC channel), not run directly");
  }
  const cache = new ConnectionCache();
  startWatchdog();
  process.on("disconnect", () => {
    cache.closeAll();
    process.exit(0);
  });
  process.on("message", (message: unknown) => {
    if (!isQueryRequestMessage(message)) {
      // The message is not shown: a query job may carry a database key.
      throw new VerityError(ErrorCode.INTERNAL, "invariant violated: a query worker got a message of the wrong shape");
    }
    const { job } = message;
    try {
      const rows = runQuery(cache, job);
      send({ type: "answer", id: job.id, ok: true, ...rows });
    } catch (error) {
      const failure = error instanceof VerityError
        ? error
        : new VerityError(ErrorCode.INTERNAL, `the query failed unexpectedly: ${error instanceof Error ? error.message : String(error)}`);
      send({ type: "answer", id: job.id, ok: false, code: failure.code, message: failure.message });
    }
  });
  send({ type: "ready" });
}

main();

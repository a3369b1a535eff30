/**
 * The streamer's loop: a pass whenever the log directory changes (a seal renames current.segment)
 * or STREAM_POLL_MS has passed, sooner while a sealed segment waits for its commit; failed passes
 * are retried with a doubling delay, and after UPLOAD_FAILURES_MAX in a row the run fails (its
 * supervisor restarts it; the manifest says where to resume). `--once` does what is ready and ends.
 */

import { watch, type FSWatcher } from "node:fs";
import { ErrorCode, VerityError } from "../errors.js";
import {
  COMMIT_POLL_MS,
  RETRY_DELAY_MS_MAX,
  RETRY_DELAY_MS_MIN,
  STREAM_POLL_MS,
  UPLOAD_FAILURES_MAX,
} from "./backup-limits.js";
import type { Streamer } from "./streamer.js";

/** How long `--once` waits for already-sealed segments to be committed before it ends. */
export const ONCE_COMMIT_WAIT_MS = 5_000;

export interface RunOptions {
  readonly once: boolean;
  /** Ends the run (SIGTERM, SIGINT): the upload in flight is aborted, the manifest is left as it is. */
  readonly signal: AbortSignal;
  /** The directory to watch for seals. */
  readonly logDir: string;
  /** A failed pass that will be retried. */
  readonly onRetry?: (error: VerityError, failuresInARow: number, delayMs: number) => void;
}

/** Errors that a retry cannot fix: the run stops at once. */
function isFatal(e: unknown): boolean {
  if (!(e instanceof VerityError)) return true;
  return e.code !== ErrorCode.UNAVAILABLE && e.code !== ErrorCode.IO_ERROR;
}

/** Runs passes until `signal` ends the run (or, with `once`, until nothing more is ready). */
export async function runStream(streamer: Streamer, options: RunOptions): Promise<void> {
  let wake: (() => void) | undefined;
  let watcher: FSWatcher | undefined;
  if (!options.once) {
    try {
      // Only renames of segment files (a seal); appends to current.segment change it constantly.
      watcher = watch(options.logDir, (event, name) => {
        if (event === "rename" && name !== null && name.endsWith(".segment")) wake?.();
      });
    } catch {
      watcher = undefined; // no inotify here: STREAM_POLL_MS polling alone
    }
  }
  const sleep = (ms: number): Promise<void> =>
    new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        options.signal.removeEventListener("abort", done);
        wake = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      wake = done;
      options.signal.addEventListener("abort", done, { once: true });
    });
  const onceUntil = Date.now() + ONCE_COMMIT_WAIT_MS;
  let failures = 0;
  try {
    // Bounded by the signal (continuous) or by ONCE_COMMIT_WAIT_MS and the segments ready (--once).
    while (!options.signal.aborted) {
      let waiting = false;
      try {
        waiting = (await streamer.pass(options.signal)).waitingForCommit;
        failures = 0;
      } catch (e) {
        if (options.signal.aborted) return;
        if (isFatal(e) || options.once) throw e;
        failures++;
        streamer.stats.failedPasses++;
        if (failures >= UPLOAD_FAILURES_MAX) {
          throw new VerityError(ErrorCode.UNAVAILABLE, `${UPLOAD_FAILURES_MAX} passes in a row failed (UPLOAD_FAILURES_MAX); the last: ${(e as Error).message}`, { cause: e });
        }
        const delay = Math.min(RETRY_DELAY_MS_MAX, RETRY_DELAY_MS_MIN * 2 ** (failures - 1));
        options.onRetry?.(e as VerityError, failures, delay);
        await sleep(delay);
        continue;
      }
      if (options.once && (!waiting || Date.now() >= onceUntil)) return;
      await sleep(waiting ? COMMIT_POLL_MS : STREAM_POLL_MS);
    }
  } finally {
    watcher?.close();
  }
}

/**
 * `projection rebuild --wait`: polls ProjectionStatus on the node that accepted the rebuild until
 * the projection runs again (rebuilt), fails (a handler failed during the replay), or the wait
 * times out. Progress goes to stderr, so that stdout keeps one JSON object with --json: a bar
 * redrawn in place on a terminal, a line a second otherwise (scripts, CI logs).
 */

import { AdminCallError, AdminApi } from "../client/admin-client.js";
import { ErrorCode, GrpcStatus, VerityError, assertNever } from "../errors.js";
import type { ProjectionInfo, ProjectionStatusResponse } from "./admin-tenant-api.js";

/** How often the status is asked for while waiting. */
export const REBUILD_POLL_MS = 250;
/** How often a progress line is written when stderr is not a terminal. */
export const PROGRESS_LINE_INTERVAL_MS = 1_000;
/** Status calls in a row that may fail (a node restarting) before the wait gives up. */
export const POLL_FAILURES_MAX = 5;
const BAR_WIDTH = 30;

export interface RebuildWait {
  /** The node that accepted the rebuild: it has applied the rebuild command, so its status is past it. */
  readonly api: AdminApi;
  readonly tenant: string;
  readonly projection: string;
  readonly timeoutMs: number;
}

export interface RebuildOutcome {
  /** "running": rebuilt; "failed": a handler failed during the replay; "timeout": still rebuilding. */
  readonly result: "running" | "failed" | "timeout";
  readonly projection: ProjectionInfo;
  /** The tenant's applied position on the polled node at the last poll. */
  readonly tenantAppliedPosition: number;
  readonly waitedMs: number;
}

/** How far a rebuilding projection is: positions done of positions to do, counted from its start. */
export function rebuildProgress(p: ProjectionInfo, tenantAppliedPosition: number): { done: number; total: number; fraction: number } {
  const before = p.startPosition - 1;
  const total = Math.max(0, tenantAppliedPosition - before);
  const done = Math.min(total, Math.max(0, p.appliedPosition - before));
  return { done, total, fraction: total === 0 ? 1 : done / total };
}

/** Draws progress on stderr: a bar redrawn in place on a terminal, else at most one line per PROGRESS_LINE_INTERVAL_MS. */
export class ProgressReporter {
  private lastLineMs = 0;
  private drawn = false;

  constructor(
    private readonly label: string,
    private readonly terminal: boolean = process.stderr.isTTY === true,
  ) {}

  update(p: ProjectionInfo, tenantAppliedPosition: number, force = false): void {
    const { fraction } = rebuildProgress(p, tenantAppliedPosition);
    const percent = `${Math.floor(fraction * 100)}%`.padStart(4);
    const where = `position ${p.appliedPosition} of ${tenantAppliedPosition}`;
    if (this.terminal) {
      const filled = Math.round(fraction * BAR_WIDTH);
      process.stderr.write(`\r${this.label} [${"#".repeat(filled)}${"-".repeat(BAR_WIDTH - filled)}] ${percent}  ${where}\x1b[K`);
      this.drawn = true;
      return;
    }
    const now = Date.now();
    if (!force && now - this.lastLineMs < PROGRESS_LINE_INTERVAL_MS) return;
    this.lastLineMs = now;
    process.stderr.write(`${this.label}: ${p.state}, ${where} (${percent.trim()})\n`);
  }

  /** Ends the bar's line, so that what follows starts on a new one. */
  finish(): void {
    if (this.drawn) process.stderr.write("\n");
    this.drawn = false;
  }
}

async function statusOf(w: RebuildWait): Promise<{ projection: ProjectionInfo; tenantAppliedPosition: number }> {
  const r = (await w.api.call("projectionStatus", { tenant: w.tenant })).response as unknown as ProjectionStatusResponse;
  const projection = (r.projections ?? []).find((p) => p.name === w.projection);
  if (projection === undefined) throw new VerityError(ErrorCode.NOT_FOUND, `tenant "${w.tenant}" has no projection "${w.projection}" any more (see projection status)`);
  return { projection, tenantAppliedPosition: r.appliedPosition };
}

/** A failed status call worth asking again: the node did not answer (restarting, busy); a refusal is final. */
function passing(e: unknown): boolean {
  return e instanceof AdminCallError && (e.code === GrpcStatus.UNAVAILABLE || e.code === GrpcStatus.DEADLINE_EXCEEDED);
}

/** Polls until the projection is running or failed, or `timeoutMs` has passed; draws progress on the way. */
export async function waitForRebuild(w: RebuildWait, progress: ProgressReporter): Promise<RebuildOutcome> {
  const started = Date.now();
  let failures = 0;
  let last: { projection: ProjectionInfo; tenantAppliedPosition: number } | undefined;
  try {
    // Bounded by timeoutMs (and by POLL_FAILURES_MAX failed calls in a row).
    for (;;) {
      try {
        last = await statusOf(w);
        failures = 0;
      } catch (e) {
        if (!passing(e) || ++failures >= POLL_FAILURES_MAX) throw e;
      }
      if (last !== undefined) {
        const state = last.projection.state;
        switch (state) {
          case "running":
          case "failed":
            progress.update(last.projection, last.tenantAppliedPosition, true);
            return { result: state, ...last, waitedMs: Date.now() - started };
          case "rebuilding":
            progress.update(last.projection, last.tenantAppliedPosition);
            break;
          default:
            assertNever(state);
        }
      }
      if (Date.now() - started >= w.timeoutMs) {
        if (last === undefined) throw new VerityError(ErrorCode.UNAVAILABLE, `no projection status from the node within ${w.timeoutMs} ms`);
        return { result: "timeout", ...last, waitedMs: Date.now() - started };
      }
      await new Promise((r) => setTimeout(r, REBUILD_POLL_MS));
    }
  } finally {
    progress.finish();
  }
}

/**
 * Rebuilding a restored data directory's derived state offline, as the node would by replaying:
 * the event index (`state/events.sqlite`) through the node's own state machine (src/server/
 * event-apply.ts), then every tenant's projections through the projector (src/projections/
 * projector.ts), each up to the last index of the restored log. A database restored from a
 * snapshot at an earlier position continues from there; an absent one starts from the log's start.
 * With `encryption`, every database is encrypted with its data key (its sidecar from the snapshot, or
 * a new one); a plaintext database from an older snapshot is rebuilt, encrypted, from the log.
 *
 * A batch of events spans several log entries; when the restore position cuts one, the event index
 * stops before it (its `decidedThrough`): the batch never completed in this log, and the node
 * voids it when its next entry arrives, as it does for a leader that failed mid-batch.
 */

import { invariant } from "../errors.js";
import type { SegmentedLog } from "../log/segmented-log.js";
import { RecordKind } from "../log/types.js";
import { decodeEventRecord } from "../projections/event-codec.js";
import { EventStore, type IndexedEvent } from "../projections/event-store.js";
import { TenantProjections, openTenantDatabaseKey, type ProjectorEvent } from "../projections/projector.js";
import type { AtRestEncryption } from "../crypto/at-rest.js";
import { mkdirSync } from "node:fs";
import { EventStateMachine } from "../server/event-apply.js";
import { dirname, join } from "node:path";
import { REPLAY_READ_BYTES_MAX, REPLAY_STEPS_MAX } from "./backup-limits.js";
import { PROJECTIONS_FILE_NAME } from "./snapshot.js";

/** Positions read in one run when loading event bodies (a longer gap starts a new read). */
const LOAD_GAP_MAX = 64;
/** `projections.checkpoint_interval` while replaying: the WAL is checkpointed when the database closes. */
const REPLAY_CHECKPOINT_ENTRIES = 100_000;

export interface ReplayProgress {
  /** Called with the event index's applied position as it advances. */
  eventIndex(position: number, through: number): void;
  /** Called with a tenant's projections' position as they advance. */
  projections(tenant: string, position: number, through: number): void;
}

export interface ReplayResult {
  /** Where the event index stands (≤ the log's last index; lower when a batch is cut). */
  readonly eventIndexPosition: number;
  readonly tenants: readonly { tenant: string; appliedPosition: number }[];
}

/** Replays `log` (opened on `dataDir/log`) into the event index and projections of `dataDir`. */
export async function rebuildState(dataDir: string, log: SegmentedLog, progress?: ReplayProgress, encryption?: AtRestEncryption): Promise<ReplayResult> {
  const through = log.lastIndex;
  const store = await EventStore.open(dataDir, { encryption });
  try {
    invariant(store.appliedPosition <= through, "databases past the restore position were removed before the replay");
    const machine = new EventStateMachine(store);
    let next = machine.appliedIndex + 1;
    // Bounded by the log: every read returns at least one entry.
    while (next <= through) {
      const entries = await log.read(next, through + 1, REPLAY_READ_BYTES_MAX);
      invariant(entries.length > 0, "a read inside the log returns entries");
      machine.apply(entries);
      next = entries[entries.length - 1]!.index + 1;
      progress?.eventIndex(next - 1, through);
    }
    const tenants: { tenant: string; appliedPosition: number }[] = [];
    for (const row of store.tenantList()) {
      const path = join(dataDir, "projections", `tenant_${row.tenant}`, PROJECTIONS_FILE_NAME);
      mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
      const key = await openTenantDatabaseKey(row.tenant, path, `projections/tenant_${row.tenant}/${PROJECTIONS_FILE_NAME}`, encryption);
      const t = new TenantProjections(row.tenant, path, {
        store, dataDir, checkpointInterval: REPLAY_CHECKPOINT_ENTRIES, load: (rows) => loadEvents(log, rows),
      }, key);
      try {
        // Bounded by REPLAY_STEPS_MAX chunks.
        for (let step = 0; step < REPLAY_STEPS_MAX && (await t.step()); step++) progress?.projections(row.tenant, t.appliedPosition, store.appliedPosition);
        progress?.projections(row.tenant, t.appliedPosition, store.appliedPosition);
        tenants.push({ tenant: row.tenant, appliedPosition: t.appliedPosition });
      } finally {
        t.close();
      }
    }
    return { eventIndexPosition: store.appliedPosition, tenants };
  } finally {
    store.close();
  }
}

/** The bodies of indexed events, from the log, in order; a prefix once REPLAY_READ_BYTES_MAX is reached. */
async function loadEvents(log: SegmentedLog, rows: readonly IndexedEvent[]): Promise<ProjectorEvent[]> {
  const out: ProjectorEvent[] = [];
  let bytes = 0;
  let i = 0;
  // Bounded by rows.length: each pass reads one run of nearby positions.
  while (i < rows.length && (bytes < REPLAY_READ_BYTES_MAX || out.length === 0)) {
    let j = i + 1;
    while (j < rows.length && rows[j]!.position - rows[j - 1]!.position <= LOAD_GAP_MAX) j++;
    const run = rows.slice(i, j);
    const byPosition = new Map(run.map((r) => [r.position, r]));
    let next = run[0]!.position;
    const to = run[run.length - 1]!.position + 1;
    // Bounded: each read returns at least one entry, so `next` advances.
    while (next < to) {
      const entries = await log.read(next, to, REPLAY_READ_BYTES_MAX);
      invariant(entries.length > 0, `the log holds position ${next}, which the event index lists`);
      for (const e of entries) {
        const row = byPosition.get(e.index);
        if (row === undefined || e.kind !== RecordKind.EVENTS) continue;
        const decoded = decodeEventRecord(e.index, e.tenant, e.payload);
        invariant(decoded !== undefined, `the event at position ${e.index} decodes (the event index indexed it)`);
        out.push({ position: e.index, stream: row.stream, version: row.version, type: decoded.type, data: decoded.data, timestampMs: decoded.timestampMs });
        bytes += decoded.data.length;
      }
      next = entries[entries.length - 1]!.index + 1;
    }
    i = j;
  }
  return out;
}

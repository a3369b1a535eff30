/**
 * Building the core's start state from what a node has on disk, after a clean stop or a crash:
 * term and vote from meta/state.json, the log's last index and term runs, and the cluster
 * configuration: the newest one known committed (saved in meta/state.json when its entry was
 * applied, or the bootstrap configuration before any change), then every MEMBERSHIP entry the log
 * holds after it. That keeps the history short however many changes the cluster has been through.
 */

import { invariant } from "../errors.js";
import { READ_BYTES_MAX } from "../limits.js";
import type { MetaState } from "../log/meta-state.js";
import { RecordKind, type LogIndex, type NodeId, type Term } from "../log/types.js";
import type { LogStoragePort } from "./driver.js";
import { decodeConfig, membershipConfig } from "./membership.js";
import type { RaftStartState } from "./raft.js";
import type { MembershipAt, MembershipConfig } from "./types.js";

export interface DiskState {
  readonly meta: Readonly<MetaState>;
  readonly log: LogStoragePort;
}

/**
 * @param bootstrap the configuration the cluster was created with (used until a change is applied)
 * @param appliedIndex how far the state machine's durable state reaches (0 when it keeps none)
 */
export async function startStateFromDisk(disk: DiskState, bootstrap: MembershipConfig, appliedIndex = 0): Promise<RaftStartState> {
  const { meta, log } = disk;
  invariant(log.firstIndex === 1, "starting from a compacted log needs the snapshot's term (not supported yet)");
  const saved = meta.membership;
  // A committed configuration past the log's end means the log was lost or replaced: start from
  // that configuration, with nothing known committed, and let the leader bring the log back.
  const checkpoint: MembershipAt =
    saved === undefined
      ? { index: 0 as LogIndex, config: bootstrap }
      : saved.index <= log.lastIndex
        ? { index: saved.index as LogIndex, config: membershipConfig(saved.voters as NodeId[], saved.learners as NodeId[]) }
        : { index: 0 as LogIndex, config: membershipConfig(saved.voters as NodeId[], saved.learners as NodeId[]) };
  const history: MembershipAt[] = [checkpoint];
  let next = checkpoint.index + 1;
  // Bounded by the log's length: every read returns at least one entry.
  while (next <= log.lastIndex) {
    const entries = await log.read(next, log.lastIndex + 1, READ_BYTES_MAX);
    invariant(entries.length > 0, "a read inside the log returns entries");
    for (const e of entries) {
      if (e.kind === RecordKind.MEMBERSHIP) history.push({ index: e.index, config: decodeConfig(e.payload) });
    }
    next = entries[entries.length - 1]!.index + 1;
  }
  const commit = Math.min(Math.max(checkpoint.index, appliedIndex), log.lastIndex) as LogIndex;
  return {
    hardState: { term: meta.term as Term, vote: meta.vote as NodeId, commit },
    log: { baseIndex: 0 as LogIndex, baseTerm: 0 as Term, lastIndex: log.lastIndex, termRuns: log.termRuns() },
    membership: history,
    appliedIndex: Math.min(appliedIndex, commit) as LogIndex,
    recoverUntilIndex: (meta.recoverUntil ?? 0) as LogIndex,
  };
}

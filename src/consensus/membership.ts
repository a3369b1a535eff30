/**
 * Cluster membership: configurations, their encoding in MEMBERSHIP log entries, and quorums.
 *
 * Timing (Raft thesis section 4.1): a node uses the newest configuration in its log as soon as the
 * entry is appended, committed or not. That is what makes single-server changes safe: any two
 * majorities of configurations that differ by one voter overlap. If a conflicting leader cuts
 * the entry from the log, the node falls back to the configuration before it.
 */

import { invariant } from "../errors.js";
import type { LogIndex, NodeId } from "../log/types.js";
import { CLUSTER_NODES_MAX } from "../limits.js";
import type { MembershipChange, MembershipConfig } from "./types.js";
import { assertNever } from "../errors.js";

const ENCODING_VERSION = 1;

function sortedUnique(ids: readonly NodeId[]): NodeId[] {
  return [...new Set(ids)].sort((a, b) => a - b);
}

/** Builds a configuration, checking ids and the disjointness of voters and learners. */
export function membershipConfig(voters: readonly NodeId[], learners: readonly NodeId[] = []): MembershipConfig {
  const config = { voters: sortedUnique(voters), learners: sortedUnique(learners) };
  for (const id of [...config.voters, ...config.learners]) {
    invariant(Number.isSafeInteger(id) && id > 0 && id <= 0xffff_ffff, `node id ${id} is not a positive 32-bit integer`);
  }
  invariant(!config.learners.some((id) => config.voters.includes(id)), "a node cannot be both voter and learner");
  invariant(config.voters.length + config.learners.length <= CLUSTER_NODES_MAX, "too many nodes in a configuration");
  return config;
}

export const EMPTY_CONFIG: MembershipConfig = { voters: [], learners: [] };

export function isVoter(config: MembershipConfig, id: NodeId): boolean {
  return config.voters.includes(id);
}

export function isLearner(config: MembershipConfig, id: NodeId): boolean {
  return config.learners.includes(id);
}

export function isMember(config: MembershipConfig, id: NodeId): boolean {
  return isVoter(config, id) || isLearner(config, id);
}

/** Votes needed among `voterCount` voters: a strict majority. */
export function quorumSize(voterCount: number): number {
  return Math.floor(voterCount / 2) + 1;
}

/**
 * The highest index that a quorum of voters holds, given each voter's match index. For the
 * commit rule the caller still checks that the index carries the leader's term (figure 8).
 */
export function quorumMatchIndex(config: MembershipConfig, matchOf: (id: NodeId) => LogIndex): LogIndex {
  if (config.voters.length === 0) return 0 as LogIndex;
  const matches = config.voters.map(matchOf).sort((a, b) => b - a);
  return matches[quorumSize(config.voters.length) - 1]!;
}

/** The configuration after `change`, or why the change makes no sense for `config`. */
export function applyChange(config: MembershipConfig, change: MembershipChange): MembershipConfig | string {
  const id = change.node;
  switch (change.type) {
    case "ADD_LEARNER":
      if (isMember(config, id)) return `node ${id} is already a member`;
      if (config.voters.length + config.learners.length >= CLUSTER_NODES_MAX) {
        return `the cluster already has ${CLUSTER_NODES_MAX} nodes (CLUSTER_NODES_MAX)`;
      }
      return membershipConfig(config.voters, [...config.learners, id]);
    case "PROMOTE_LEARNER":
      if (!isLearner(config, id)) return `node ${id} is not a learner; add it as a learner first`;
      return membershipConfig([...config.voters, id], config.learners.filter((l) => l !== id));
    case "REMOVE_NODE":
      if (!isMember(config, id)) return `node ${id} is not a member`;
      if (isVoter(config, id) && config.voters.length === 1) return `node ${id} is the last voter`;
      return membershipConfig(config.voters.filter((v) => v !== id), config.learners.filter((l) => l !== id));
    default:
      return assertNever(change);
  }
}

/** The payload of a MEMBERSHIP entry: version byte, then voter and learner counts and ids (u32 little-endian). */
export function encodeConfig(config: MembershipConfig): Uint8Array {
  const bytes = new Uint8Array(1 + 2 + 4 * (config.voters.length + config.learners.length));
  const view = new DataView(bytes.buffer);
  view.setUint8(0, ENCODING_VERSION);
  view.setUint8(1, config.voters.length);
  view.setUint8(2, config.learners.length);
  let offset = 3;
  for (const id of [...config.voters, ...config.learners]) {
    view.setUint32(offset, id, true);
    offset += 4;
  }
  return bytes;
}

/**
 * Decodes a MEMBERSHIP payload. The entry came through the replicated log, which checks every
 * record's checksum, so a payload that does not decode is a bug, not bad input.
 */
export function decodeConfig(payload: Uint8Array): MembershipConfig {
  invariant(payload.byteLength >= 3, "membership payload too short");
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  invariant(view.getUint8(0) === ENCODING_VERSION, `membership payload version ${view.getUint8(0)}`);
  const voterCount = view.getUint8(1);
  const learnerCount = view.getUint8(2);
  invariant(payload.byteLength === 3 + 4 * (voterCount + learnerCount), "membership payload length mismatch");
  const ids: NodeId[] = [];
  for (let i = 0; i < voterCount + learnerCount; i++) ids.push(view.getUint32(3 + 4 * i, true) as NodeId);
  return membershipConfig(ids.slice(0, voterCount), ids.slice(voterCount));
}

export function describeConfig(config: MembershipConfig): string {
  const learners = config.learners.length === 0 ? "" : ` learners=(${config.learners.join(" ")})`;
  return `voters=(${config.voters.join(" ")})${learners}`;
}

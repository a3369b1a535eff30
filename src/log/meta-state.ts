/**
 * `meta/state.json`: who this node is and what it has promised. Raft's hard state (term and vote)
 * must be durable before any vote or acknowledgement leaves the node, so every change is written
 * with `writeFileAtomic` (temp file, fsync, rename, fsync the directory).
 *
 *   {"format":1,"node_id":1,"cluster_id":"<uuid>","term":5,"vote":2,"crc32c":"0x1a2b3c4d"}
 *
 * `crc32c` covers the JSON text of the object without that field, so a damaged file is detected
 * and refused rather than read as a smaller term.
 */

import { crc32c } from "@node-rs/crc32";
import { CorruptionError } from "../errors.js";
import { META_STATE_BYTES_MAX } from "../limits.js";
import { readFileIfExists, writeFileAtomic } from "./atomic-file.js";
import type { FileSystem } from "./fs-port.js";
import { hex } from "./record.js";

export interface MetaState {
  /** This node's id; 0 until one is assigned. */
  nodeId: number;
  /** The cluster this data dir belongs to (UUID text). */
  clusterId: string;
  /** The latest term this node has seen (the guide's "view"). Never goes backwards. */
  term: number;
  /** The node voted for in `term`, or 0 for none. */
  vote: number;
  /**
   * The newest cluster configuration known committed (saved when its entry is applied), so a
   * restart needs only the configurations after it. Absent until the first change is applied.
   */
  membership?: { index: number; voters: number[]; learners: number[] };
  /**
   * Set when this data directory was created empty for a node that was already a member (its disk
   * was lost or wiped): the highest log index any peer held then. The node neither votes nor
   * campaigns until its commit index reaches it, because it may have forgotten a vote, or entries
   * that counted towards a commit (docs/consensus.md, "Rejoining with an empty disk").
   */
  recoverUntil?: number;
}

const FORMAT = 1;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function body(state: MetaState): Record<string, unknown> {
  const b: Record<string, unknown> = { format: FORMAT, node_id: state.nodeId, cluster_id: state.clusterId, term: state.term, vote: state.vote };
  if (state.membership !== undefined) b.membership = state.membership;
  if (state.recoverUntil !== undefined) b.recover_until = state.recoverUntil;
  return b;
}

function isIdList(v: unknown): v is number[] {
  return Array.isArray(v) && v.length <= 64 && v.every((x) => Number.isSafeInteger(x) && (x as number) > 0);
}

export function encodeMetaState(state: MetaState): Uint8Array {
  const text = JSON.stringify(body(state));
  const crc = hex(crc32c(Buffer.from(text, "utf8")));
  return Buffer.from(JSON.stringify({ ...body(state), crc32c: crc }) + "\n", "utf8");
}

/** Decodes the file, or throws `CorruptionError` naming what is wrong with it. */
export function decodeMetaState(bytes: Uint8Array, displayName: string): MetaState {
  const fail = (detail: string): never => {
    throw new CorruptionError({ file: displayName, offset: 0 }, detail);
  };
  if (bytes.length > META_STATE_BYTES_MAX) fail(`file is ${bytes.length} bytes, larger than any valid state file`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(bytes).toString("utf8"));
  } catch {
    return fail("not valid JSON");
  }
  if (typeof parsed !== "object" || parsed === null) return fail("not a JSON object");
  const o = parsed as Record<string, unknown>;
  if (o.format !== FORMAT) fail(`format ${String(o.format)} is not supported (this build reads format ${FORMAT})`);
  const state: MetaState = {
    nodeId: o.node_id as number,
    clusterId: o.cluster_id as string,
    term: o.term as number,
    vote: o.vote as number,
  };
  for (const [k, v] of [["node_id", state.nodeId], ["term", state.term], ["vote", state.vote]] as const) {
    if (!Number.isSafeInteger(v) || v < 0) fail(`${k} is not a non-negative integer`);
  }
  if (typeof state.clusterId !== "string" || !UUID.test(state.clusterId)) fail("cluster_id is not a UUID");
  if (o.membership !== undefined) {
    const m = o.membership as Record<string, unknown>;
    if (typeof m !== "object" || m === null || !Number.isSafeInteger(m.index) || (m.index as number) < 0 || !isIdList(m.voters) || !isIdList(m.learners)) {
      fail("membership is not {index, voters, learners}");
    }
    state.membership = { index: m.index as number, voters: m.voters as number[], learners: m.learners as number[] };
  }
  if (o.recover_until !== undefined) {
    if (!Number.isSafeInteger(o.recover_until) || (o.recover_until as number) < 0) fail("recover_until is not a non-negative integer");
    state.recoverUntil = o.recover_until as number;
  }
  const expected = hex(crc32c(Buffer.from(JSON.stringify(body(state)), "utf8")));
  if (o.crc32c !== expected) fail(`checksum mismatch (stored ${String(o.crc32c)}, computed ${expected})`);
  return state;
}

export async function readMetaState(fs: FileSystem, path: string, displayName: string): Promise<MetaState | undefined> {
  const bytes = await readFileIfExists(fs, path);
  return bytes === undefined ? undefined : decodeMetaState(bytes, displayName);
}

export async function writeMetaState(fs: FileSystem, path: string, state: MetaState): Promise<void> {
  await writeFileAtomic(fs, path, encodeMetaState(state));
}

/** The 16 bytes of a UUID, as segment headers store the cluster id. */
export function uuidBytes(uuid: string): Uint8Array {
  return Buffer.from(uuid.replace(/-/g, ""), "hex");
}

export function uuidFromBytes(bytes: Uint8Array): string {
  const h = Buffer.from(bytes).toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

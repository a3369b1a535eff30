/**
 * The two manifests: the stream manifest (`<prefix>manifest.json` in the bucket) and the snapshot
 * manifest (`backup-manifest.json`, the last entry of a snapshot archive). Both are JSON with a
 * `sha256` field, last, over the JSON text of everything before it, so a damaged or hand-edited
 * manifest is refused rather than trusted:
 *
 *   {"format":1,"kind":"verity-stream-backup","cluster_id":"...","node_id":1,"term":3,
 *    "membership":{"index":0,"voters":[1,2,3],"learners":[]},
 *    "segments":[{"sequence":0,"key":"segments/00000000-1-5210.segment","first_index":1,"last_index":5210,
 *                 "first_term":1,"last_term":2,"records":5210,"bytes":1048390,"sha256":"...",
 *                 "sealed_at":"...","uploaded_at":"..."}],
 *    "updated_at":"...","sha256":"..."}
 *
 * Invariant of both: segments are in index order, contiguous (each starts one past the previous
 * one's last index), and the first starts at index 1 (the log is never compacted).
 */

import { createHash } from "node:crypto";
import { CorruptionError } from "../errors.js";
import type { MetaState } from "../log/meta-state.js";
import { MANIFEST_SEGMENTS_MAX } from "./backup-limits.js";

export const MANIFEST_FORMAT = 1;
export const STREAM_MANIFEST_KEY = "manifest.json";
export const SNAPSHOT_MANIFEST_PATH = "backup-manifest.json";

/**
 * A damaged or missing part of a backup: a CorruptionError (code CORRUPTION, gRPC DATA_LOSS) whose
 * message names the object, archive entry or manifest and says what to do about a backup, not a node.
 */
export class DamagedBackupError extends CorruptionError {
  constructor(name: string, detail: string, at?: { offset?: number; index?: number }) {
    super({ file: name, offset: at?.offset ?? 0, index: at?.index }, detail);
    const where = (at?.offset === undefined || at.offset === 0 ? "" : ` at byte offset ${at.offset}`) + (at?.index === undefined ? "" : ` (log index ${at.index})`);
    this.message = `damaged backup: ${name}${where}: ${detail}. Nothing was restored from it; restore from another backup, or to an earlier --position`;
  }
}

/** One log segment in a backup. */
export interface BackedUpSegment {
  /** The segment's sequence number (its file name on the node). */
  readonly sequence: number;
  /** Stream: the object key relative to the prefix. Snapshot: the path in the archive. */
  readonly key: string;
  readonly firstIndex: number;
  readonly lastIndex: number;
  readonly firstTerm: number;
  readonly lastTerm: number;
  readonly records: number;
  /** Bytes of the object or file (segment header included). */
  readonly bytes: number;
  /** SHA-256 of the object or file, hex. */
  readonly sha256: string;
  /** Stream only: when the node sealed the segment (its index file's time), if known. */
  readonly sealedAt?: string | undefined;
  /** Stream only: when the upload completed. */
  readonly uploadedAt?: string | undefined;
  /** An encrypted segment: the KMS key that wraps its data key (its header's), and that key's version label. */
  readonly keyId?: string | undefined;
  readonly keyVersion?: string | undefined;
}

/** Who the backed-up node was: what a restore needs to write meta/state.json. */
export interface SourceIdentity {
  readonly clusterId: string;
  readonly nodeId: number;
  /** The node's term when the manifest was written (never below the last segment's last term). */
  readonly term: number;
  /** The newest committed configuration the node knew, as its meta/state.json had it. */
  readonly membership: MetaState["membership"];
}

export interface StreamManifest extends SourceIdentity {
  readonly segments: readonly BackedUpSegment[];
  readonly updatedAt: string;
}

/** Any other file of a snapshot (a database, an index file), with its checksum. */
export interface ArchivedFile {
  readonly path: string;
  readonly bytes: number;
  readonly sha256: string;
}

export interface SnapshotManifest extends SourceIdentity {
  /** The log in the archive holds exactly the indexes 1..position. */
  readonly position: number;
  readonly createdAt: string;
  readonly segments: readonly BackedUpSegment[];
  /** Databases in the archive: the event index and each tenant's projections, each at or below `position`. */
  readonly databases: readonly SnapshotDatabase[];
}

/** A database in a snapshot; an encrypted one comes with its key sidecar (its data key, wrapped). */
export type SnapshotDatabase = ArchivedFile & {
  readonly appliedPosition: number;
  readonly tenant?: string | undefined;
  /** The key sidecar (`projections.key`, `events.key`) of an encrypted database. */
  readonly keyFile?: ArchivedFile | undefined;
};

function checksummed(body: Record<string, unknown>): Buffer {
  const text = JSON.stringify(body);
  const sha256 = createHash("sha256").update(text).digest("hex");
  return Buffer.from(JSON.stringify({ ...body, sha256 }) + "\n", "utf8");
}

/** Parses and checks the checksum; throws CorruptionError naming `displayName`. */
function parseChecksummed(bytes: Uint8Array, displayName: string, kind: string): Record<string, unknown> {
  const fail = (detail: string): never => {
    throw new DamagedBackupError(displayName, detail);
  };
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(bytes).toString("utf8"));
  } catch {
    return fail("the manifest is not valid JSON");
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return fail("the manifest is not a JSON object");
  const { sha256, ...body } = parsed as Record<string, unknown>;
  const computed = createHash("sha256").update(JSON.stringify(body)).digest("hex");
  if (sha256 !== computed) fail(`manifest checksum mismatch (stored ${String(sha256)}, computed ${computed})`);
  if (body.format !== MANIFEST_FORMAT) fail(`manifest format ${String(body.format)} is not supported (this build reads format ${MANIFEST_FORMAT})`);
  if (body.kind !== kind) fail(`this is a "${String(body.kind)}" manifest, not a "${kind}" one`);
  return body;
}

function segmentJson(s: BackedUpSegment): Record<string, unknown> {
  const o: Record<string, unknown> = {
    sequence: s.sequence, key: s.key, first_index: s.firstIndex, last_index: s.lastIndex, first_term: s.firstTerm,
    last_term: s.lastTerm, records: s.records, bytes: s.bytes, sha256: s.sha256,
  };
  if (s.sealedAt !== undefined) o.sealed_at = s.sealedAt;
  if (s.uploadedAt !== undefined) o.uploaded_at = s.uploadedAt;
  if (s.keyId !== undefined) o.key_id = s.keyId;
  if (s.keyVersion !== undefined) o.key_version = s.keyVersion;
  return o;
}

function identityJson(kind: string, s: SourceIdentity): Record<string, unknown> {
  return { format: MANIFEST_FORMAT, kind, cluster_id: s.clusterId, node_id: s.nodeId, term: s.term, membership: s.membership ?? null };
}

const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
const HEX64 = /^[0-9a-f]{64}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Checks fields and structure (after the checksum matched: a bug or a hand edit, not bit rot). */
class Reader {
  constructor(private readonly displayName: string) {}

  fail(detail: string): never {
    throw new DamagedBackupError(this.displayName, detail);
  }

  count(o: Record<string, unknown>, field: string): number {
    const v = o[field];
    if (!isCount(v)) this.fail(`${field} is not a non-negative integer`);
    return v;
  }

  text(o: Record<string, unknown>, field: string): string {
    const v = o[field];
    if (typeof v !== "string") this.fail(`${field} is not a string`);
    return v;
  }

  identity(body: Record<string, unknown>): SourceIdentity {
    const clusterId = this.text(body, "cluster_id");
    if (!UUID.test(clusterId)) this.fail("cluster_id is not a UUID");
    const m = body.membership as Record<string, unknown> | null | undefined;
    let membership: MetaState["membership"];
    if (m !== null && m !== undefined) {
      const ids = (v: unknown): number[] => (Array.isArray(v) && v.every((x) => isCount(x) && x > 0) ? (v as number[]) : this.fail("membership ids are not positive integers"));
      membership = { index: this.count(m, "index"), voters: ids(m.voters), learners: ids(m.learners) };
    }
    return { clusterId, nodeId: this.count(body, "node_id"), term: this.count(body, "term"), membership };
  }

  segments(v: unknown): BackedUpSegment[] {
    if (!Array.isArray(v)) this.fail("segments is not a list");
    if (v.length > MANIFEST_SEGMENTS_MAX) this.fail(`lists ${v.length} segments, more than ${MANIFEST_SEGMENTS_MAX}`);
    const out: BackedUpSegment[] = [];
    for (const item of v as Record<string, unknown>[]) {
      const s: BackedUpSegment = {
        sequence: this.count(item, "sequence"), key: this.text(item, "key"), firstIndex: this.count(item, "first_index"),
        lastIndex: this.count(item, "last_index"), firstTerm: this.count(item, "first_term"), lastTerm: this.count(item, "last_term"),
        records: this.count(item, "records"), bytes: this.count(item, "bytes"), sha256: this.text(item, "sha256"),
        sealedAt: typeof item.sealed_at === "string" ? item.sealed_at : undefined,
        uploadedAt: typeof item.uploaded_at === "string" ? item.uploaded_at : undefined,
        keyId: typeof item.key_id === "string" ? item.key_id : undefined,
        keyVersion: typeof item.key_version === "string" ? item.key_version : undefined,
      };
      if (!HEX64.test(s.sha256)) this.fail(`segment ${s.key}: sha256 is not 64 hex digits`);
      const expectFirst = out.length === 0 ? 1 : out[out.length - 1]!.lastIndex + 1;
      if (s.firstIndex !== expectFirst) this.fail(`segment ${s.key} starts at index ${s.firstIndex}, expected ${expectFirst}: the segments are not contiguous`);
      if (s.lastIndex < s.firstIndex - 1 || s.records !== s.lastIndex - s.firstIndex + 1) this.fail(`segment ${s.key}: index range ${s.firstIndex}..${s.lastIndex} does not hold ${s.records} records`);
      if (out.length > 0 && s.sequence !== out[out.length - 1]!.sequence + 1) this.fail(`segment ${s.key} has sequence number ${s.sequence}, expected ${out[out.length - 1]!.sequence + 1}`);
      out.push(s);
    }
    return out;
  }
}

export function encodeStreamManifest(m: StreamManifest): Buffer {
  return checksummed({ ...identityJson("verity-stream-backup", m), segments: m.segments.map(segmentJson), updated_at: m.updatedAt });
}

export function decodeStreamManifest(bytes: Uint8Array, displayName: string): StreamManifest {
  const body = parseChecksummed(bytes, displayName, "verity-stream-backup");
  const r = new Reader(displayName);
  return { ...r.identity(body), segments: r.segments(body.segments), updatedAt: r.text(body, "updated_at") };
}

export function encodeSnapshotManifest(m: SnapshotManifest): Buffer {
  return checksummed({
    ...identityJson("verity-snapshot", m),
    position: m.position,
    created_at: m.createdAt,
    segments: m.segments.map(segmentJson),
    databases: m.databases.map((d) => ({
      path: d.path, bytes: d.bytes, sha256: d.sha256, applied_position: d.appliedPosition, ...(d.tenant === undefined ? {} : { tenant: d.tenant }),
      ...(d.keyFile === undefined ? {} : { key_file: { path: d.keyFile.path, bytes: d.keyFile.bytes, sha256: d.keyFile.sha256 } }),
    })),
  });
}

export function decodeSnapshotManifest(bytes: Uint8Array, displayName: string): SnapshotManifest {
  const body = parseChecksummed(bytes, displayName, "verity-snapshot");
  const r = new Reader(displayName);
  const segments = r.segments(body.segments);
  const position = r.count(body, "position");
  const last = segments.length === 0 ? 0 : segments[segments.length - 1]!.lastIndex;
  if (last !== position) r.fail(`the segments end at index ${last}, not at the snapshot's position ${position}`);
  if (!Array.isArray(body.databases)) r.fail("databases is not a list");
  const databases = (body.databases as Record<string, unknown>[]).map((d) => ({
    path: r.text(d, "path"), bytes: r.count(d, "bytes"), sha256: r.text(d, "sha256"), appliedPosition: r.count(d, "applied_position"),
    tenant: typeof d.tenant === "string" ? d.tenant : undefined,
    keyFile: typeof d.key_file === "object" && d.key_file !== null ? keyFileOf(r, d.key_file as Record<string, unknown>) : undefined,
  }));
  return { ...r.identity(body), position, createdAt: r.text(body, "created_at"), segments, databases };
}

function keyFileOf(r: Reader, o: Record<string, unknown>): ArchivedFile {
  const f = { path: r.text(o, "path"), bytes: r.count(o, "bytes"), sha256: r.text(o, "sha256") };
  if (!HEX64.test(f.sha256)) r.fail(`key file ${f.path}: sha256 is not 64 hex digits`);
  return f;
}

/** The last index a manifest's segments hold (0 for none). */
export function lastBackedUpIndex(segments: readonly BackedUpSegment[]): number {
  return segments.length === 0 ? 0 : segments[segments.length - 1]!.lastIndex;
}


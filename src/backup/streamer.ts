/**
 * `verity-backup stream`: uploads every sealed, committed segment of one node's log to an object
 * store, once, in index order, and after each upload replaces the manifest.
 *
 * Why nothing in the bucket can be rolled back: a segment is uploaded only when its last record is
 * at or below the commit index of the node that owns the file (commit-source.ts), read before the
 * segment is. Committed records never change, and a sealed file is never rewritten (only a
 * truncation of uncommitted records removes one, which cannot touch a committed segment).
 *
 * Why a crash at any moment leaves no gap and no duplicate: the manifest is the only record of
 * what is backed up, and it is replaced (one atomic PUT) only after the segment's upload
 * completed. An interrupted upload creates no object (S3 PUTs are atomic; an unfinished multipart
 * upload is not an object). A crash after the upload and before the manifest leaves an object the
 * manifest does not list; the next run uploads the same segment again under the same key, which
 * replaces it with the same bytes. So the bucket holds each segment under one key, once.
 *
 * Segments are chosen by sequence number after the manifest's last one, and each must start at the
 * index after the manifest's last index (checked from its header), so a source whose segments do
 * not line up with the backup (another node's log, another cluster) is refused, not mixed in.
 */

import { join } from "node:path";
import { ErrorCode, FailedPreconditionError, VerityError } from "../errors.js";
import type { FileSystem } from "../log/fs-port.js";
import { readFully } from "../log/segment-scan.js";
import { CURRENT_SEGMENT_NAME, decodeSegmentHeader, sealedSegmentName } from "../log/segment-header.js";
import { SEGMENT_HEADER_BYTES } from "../limits.js";
import { MANIFEST_BYTES_MAX, MANIFEST_SEGMENTS_MAX, RECOVERY_POINT_SAMPLES_MAX } from "./backup-limits.js";
import type { CommitSource } from "./commit-source.js";
import {
  STREAM_MANIFEST_KEY,
  decodeStreamManifest,
  encodeStreamManifest,
  lastBackedUpIndex,
  type BackedUpSegment,
  type StreamManifest,
} from "./manifest.js";
import { readSmallObject, type ObjectStore } from "./object-store.js";
import { hashFile, inspectSegment } from "./segment-file.js";
import { listSealed, readSourceMeta, type SealedFile, type SourceDir } from "./source-dir.js";

/** The object key of a segment: sequence and index range, so a listing reads like the manifest. */
export function segmentKey(sequence: number, firstIndex: number, lastIndex: number): string {
  return `segments/${sealedSegmentName(sequence).replace(/\.segment$/, "")}-${firstIndex}-${lastIndex}.segment`;
}

/** What one upload did, for the progress line and the metrics. */
export interface UploadReport {
  readonly segment: BackedUpSegment;
  readonly durationMs: number;
  /** From the node sealing the segment to its being in the manifest; undefined when unknown. */
  readonly recoveryPointMs: number | undefined;
}

/** The streamer's counters and gauges (the metrics and the summary read them). */
export interface StreamStats {
  segmentsUploaded: number;
  bytesUploaded: number;
  /** Time spent uploading (for MB/s). */
  uploadMs: number;
  /** The manifest's last index. */
  lastUploadedIndex: number;
  segmentsInBackup: number;
  /** The last index of the node's newest sealed segment. */
  sealedTailIndex: number;
  /** Sealed segments on the node not yet in the backup. */
  lagSegments: number;
  /** Entries between the backup's last index and the node's sealed tail. */
  lagEntries: number;
  /** Recovery points of this run's uploads, ms (the last RECOVERY_POINT_SAMPLES_MAX). */
  recoveryPointsMs: number[];
  failedPasses: number;
}

/** The outcome of one pass. */
export interface PassResult {
  readonly uploaded: number;
  /** A sealed segment waits for its last record to be committed: ask again soon. */
  readonly waitingForCommit: boolean;
}

export interface StreamerOptions {
  readonly fs: FileSystem;
  readonly source: SourceDir;
  readonly store: ObjectStore;
  readonly commit: CommitSource;
  readonly onUpload?: (report: UploadReport) => void;
  readonly now?: () => number;
}

export class Streamer {
  readonly stats: StreamStats = {
    segmentsUploaded: 0, bytesUploaded: 0, uploadMs: 0, lastUploadedIndex: 0, segmentsInBackup: 0, sealedTailIndex: 0,
    lagSegments: 0, lagEntries: 0, recoveryPointsMs: [], failedPasses: 0,
  };
  private manifest: StreamManifest | undefined;
  /** The manifest's bytes as this process last read or wrote them (undefined: there was none). */
  private manifestBytes: Buffer | undefined;
  private readonly now: () => number;

  constructor(private readonly options: StreamerOptions) {
    this.now = options.now ?? Date.now;
  }

  get backup(): StreamManifest | undefined {
    return this.manifest;
  }

  /** Uploads every sealed segment that is committed and not in the backup yet, in order. */
  async pass(signal?: AbortSignal): Promise<PassResult> {
    const { fs, source } = this.options;
    const meta = await readSourceMeta(fs, source.dataDir);
    const manifest = this.manifest ?? (await this.load(meta.clusterId));
    if (manifest.clusterId !== meta.clusterId) {
      throw new FailedPreconditionError(
        `${this.options.store.location} holds the backup of cluster ${manifest.clusterId}, but ${source.dataDir} belongs to cluster ${meta.clusterId}: give each cluster its own prefix`,
      );
    }
    // The commit index first, the files after it: every record found at or below it is committed.
    const commit = await this.options.commit.commitIndex();
    const sealed = await listSealed(fs, source.logDir);
    const lastSequence = manifest.segments.length === 0 ? -1 : manifest.segments[manifest.segments.length - 1]!.sequence;
    const pending = sealed.filter((s) => s.sequence > lastSequence);
    await this.noteTail(pending);
    let uploaded = 0;
    // Bounded by the sealed segments listed at the start of the pass.
    for (const file of pending) {
      if (signal?.aborted === true) break;
      const done = await this.uploadOne(file, commit, meta, signal);
      if (!done) return { uploaded, waitingForCommit: true };
      uploaded++;
    }
    return { uploaded, waitingForCommit: false };
  }

  /** Reads the manifest, or starts an empty backup for `clusterId`. */
  private async load(clusterId: string): Promise<StreamManifest> {
    const bytes = await readSmallObject(this.options.store, STREAM_MANIFEST_KEY, MANIFEST_BYTES_MAX);
    this.manifestBytes = bytes;
    this.manifest = bytes === undefined
      ? { clusterId, nodeId: 0, term: 0, membership: undefined, segments: [], updatedAt: new Date(this.now()).toISOString() }
      : decodeStreamManifest(bytes, `${this.options.store.location}${STREAM_MANIFEST_KEY}`);
    this.noteManifest(this.manifest);
    return this.manifest;
  }

  private noteManifest(m: StreamManifest): void {
    this.stats.lastUploadedIndex = lastBackedUpIndex(m.segments);
    this.stats.segmentsInBackup = m.segments.length;
  }

  /** Lag behind the sealed tail: current.segment's base index is one past the newest sealed record. */
  private async noteTail(pending: readonly SealedFile[]): Promise<void> {
    const base = await this.headerBase(join(this.options.source.logDir, CURRENT_SEGMENT_NAME));
    if (base !== undefined) this.stats.sealedTailIndex = Math.max(this.stats.sealedTailIndex, base - 1);
    this.stats.lagSegments = pending.length;
    this.stats.lagEntries = Math.max(0, this.stats.sealedTailIndex - this.stats.lastUploadedIndex);
  }

  private async headerBase(path: string): Promise<number | undefined> {
    let handle;
    try {
      handle = await this.options.fs.open(path, "read");
    } catch {
      return undefined; // between a seal and the next current.segment
    }
    try {
      const buf = Buffer.alloc(SEGMENT_HEADER_BYTES);
      const got = await readFully(handle, buf, 0);
      const h = decodeSegmentHeader(buf.subarray(0, got));
      return h.ok ? h.header.baseIndex : undefined;
    } finally {
      await handle.close();
    }
  }

  /** Uploads one sealed segment; false when its records are not all committed yet. */
  private async uploadOne(file: SealedFile, commit: number, meta: { nodeId: number; term: number; membership?: StreamManifest["membership"] }, signal?: AbortSignal): Promise<boolean> {
    const manifest = this.manifest!;
    const displayName = `log/${file.name}`;
    const content = await inspectSegment(this.options.fs, file.path, { displayName, sealed: true });
    const expected = lastBackedUpIndex(manifest.segments) + 1;
    if (content.clusterId !== manifest.clusterId) {
      throw new FailedPreconditionError(`${displayName} belongs to cluster ${content.clusterId}, the backup to ${manifest.clusterId}: give each cluster its own prefix`);
    }
    const expectedSequence = manifest.segments.length === 0 ? content.sequence : manifest.segments[manifest.segments.length - 1]!.sequence + 1;
    if (content.sequence !== file.sequence) {
      throw new VerityError(ErrorCode.CORRUPTION, `${displayName}: its header says segment ${content.sequence}; run verity-admin log verify on the node`);
    }
    if (content.baseIndex !== expected || content.sequence !== expectedSequence) {
      throw new FailedPreconditionError(
        `${displayName} (segment ${content.sequence}) starts at index ${content.baseIndex}, but the backup in ${this.options.store.location} ends at index ${expected - 1} with segment ${expectedSequence - 1}: ` +
          "this node's segments do not line up with the backup (was it written from another node?); stream this node to a new prefix",
      );
    }
    if (content.lastIndex > commit) return false;
    if (manifest.segments.length >= MANIFEST_SEGMENTS_MAX) {
      throw new VerityError(ErrorCode.QUOTA_EXCEEDED, `the backup in ${this.options.store.location} lists ${MANIFEST_SEGMENTS_MAX} segments, the most one manifest holds (MANIFEST_SEGMENTS_MAX): take a snapshot and stream to a new prefix`);
    }
    const sha256 = await hashFile(this.options.fs, file.path, content.bytes);
    const key = segmentKey(content.sequence, content.baseIndex, content.lastIndex);
    const started = this.now();
    const sent = await this.options.store.putFile(key, file.path, content.bytes, {
      "verity-sha256": sha256, "verity-cluster-id": content.clusterId, "verity-first-index": String(content.baseIndex), "verity-last-index": String(content.lastIndex),
    }, signal);
    if (sent !== sha256) {
      throw new VerityError(ErrorCode.CORRUPTION, `${displayName} changed while it was uploaded (SHA-256 ${sha256} before, ${sent} sent): a sealed segment must never change; run verity-admin log verify on the node`);
    }
    const finished = this.now();
    const segment: BackedUpSegment = {
      sequence: content.sequence, key, firstIndex: content.baseIndex, lastIndex: content.lastIndex, firstTerm: content.firstTerm,
      lastTerm: content.lastTerm, records: content.records, bytes: content.bytes, sha256,
      sealedAt: file.sealedAtMs === undefined ? undefined : new Date(file.sealedAtMs).toISOString(),
      uploadedAt: new Date(finished).toISOString(),
      keyId: content.keyId, keyVersion: content.keyVersion,
    };
    await this.writeManifest({
      clusterId: manifest.clusterId, nodeId: meta.nodeId, term: Math.max(meta.term, content.lastTerm, manifest.term),
      membership: meta.membership, segments: [...manifest.segments, segment], updatedAt: segment.uploadedAt!,
    });
    const recoveryPointMs = file.sealedAtMs === undefined ? undefined : Math.max(0, this.now() - file.sealedAtMs);
    this.noteUpload(segment, finished - started, recoveryPointMs);
    this.options.onUpload?.({ segment, durationMs: finished - started, recoveryPointMs });
    return true;
  }

  /** Replaces the manifest, after checking that nobody else replaced it since this process did. */
  private async writeManifest(next: StreamManifest): Promise<void> {
    const store = this.options.store;
    const current = await readSmallObject(store, STREAM_MANIFEST_KEY, MANIFEST_BYTES_MAX);
    const same = current === undefined ? this.manifestBytes === undefined : this.manifestBytes !== undefined && current.equals(this.manifestBytes);
    if (!same) {
      throw new FailedPreconditionError(
        `${store.location}${STREAM_MANIFEST_KEY} was changed by someone else since this process read it: is another verity-backup stream writing to the same prefix? Run one streamer per prefix`,
      );
    }
    const bytes = encodeStreamManifest(next);
    await store.putBytes(STREAM_MANIFEST_KEY, bytes, "application/json");
    this.manifestBytes = bytes;
    this.manifest = next;
    this.noteManifest(next);
  }

  private noteUpload(segment: BackedUpSegment, durationMs: number, recoveryPointMs: number | undefined): void {
    const s = this.stats;
    s.segmentsUploaded++;
    s.bytesUploaded += segment.bytes;
    s.uploadMs += durationMs;
    s.lagSegments = Math.max(0, s.lagSegments - 1);
    s.sealedTailIndex = Math.max(s.sealedTailIndex, segment.lastIndex);
    s.lagEntries = Math.max(0, s.sealedTailIndex - s.lastUploadedIndex);
    if (recoveryPointMs !== undefined) {
      if (s.recoveryPointsMs.length >= RECOVERY_POINT_SAMPLES_MAX) s.recoveryPointsMs.shift();
      s.recoveryPointsMs.push(recoveryPointMs);
    }
  }
}

/** The p-th percentile (0..100) of `values` (nearest rank); undefined when empty. */
export function percentile(values: readonly number[], p: number): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank];
}

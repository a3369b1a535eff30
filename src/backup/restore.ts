/**
 * `verity-restore`: a data directory rebuilt from a snapshot archive or from a stream backup in S3,
 * up to a position, checked, and ready to start a node on.
 *
 * 1. The target must be empty (or `--force`, which replaces only VerityDB's own entries) and is
 *    locked (its LOCK file) for the whole restore, so a node cannot start on it half-written; a
 *    node running on it makes the restore refuse even with --force.
 * 2. Everything is written to `<data_dir>/.verity-restore/` first. Every segment and database is
 *    hashed as it arrives and compared with the manifest: a damaged or missing object or entry
 *    stops the restore with its name, and the target stays as it was.
 * 3. The log is cut just after the position's record (that segment becomes current.segment).
 * 4. meta/state.json is written for the chosen start (see `RestoreStart`).
 * 5. The event index and the projections are rebuilt to the position by replaying the log
 *    (replay.ts); a snapshot's databases continue from their own positions.
 * 6. The staged directories are moved into place, and the same checks as `verity-admin verify
 *    --data-dir` run on the result (verifyLog and verifyProjections).
 */

import { createHash } from "node:crypto";
import { createWriteStream, existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync, truncateSync, type WriteStream } from "node:fs";
import { open } from "node:fs/promises";
import { once } from "node:events";
import { dirname, join } from "node:path";
import { AdminApi, type ClientTlsFiles } from "../client/admin-client.js";
import type { AtRestEncryption } from "../crypto/at-rest.js";
import type { KeyProvider } from "../crypto/kms.js";
import { removeDatabaseFiles } from "../projections/sqlite-encryption.js";
import { decryptArchive, inspectArchive } from "./archive-encryption.js";
import { ErrorCode, FailedPreconditionError, VerityError, invariant } from "../errors.js";
import { DirLock, LOCK_FILE_NAME } from "../log/dir-lock.js";
import type { FileSystem } from "../log/fs-port.js";
import { uuidBytes, writeMetaState, type MetaState } from "../log/meta-state.js";
import { verifyLog, type VerifyReport } from "../log/offline.js";
import { CURRENT_SEGMENT_NAME, sealedSegmentName } from "../log/segment-header.js";
import { SegmentedLog } from "../log/segmented-log.js";
import { verifyProjections, type ProjectionsReport } from "../projections/verify-projections.js";
import { ARCHIVE_MANIFEST_BYTES_MAX, MANIFEST_BYTES_MAX, REJOIN_ENDPOINTS_MAX } from "./backup-limits.js";
import {
  DamagedBackupError,
  SNAPSHOT_MANIFEST_PATH,
  STREAM_MANIFEST_KEY,
  decodeSnapshotManifest,
  decodeStreamManifest,
  lastBackedUpIndex,
  type BackedUpSegment,
  type SourceIdentity,
} from "./manifest.js";
import { readSmallObject, type ObjectStore } from "./object-store.js";
import type { ByteProgress } from "./progress.js";
import { rebuildState, type ReplayResult } from "./replay.js";
import { inspectSegment } from "./segment-file.js";
import { drained, readTarGz, type EntrySink } from "./tar-gz.js";

/** The staging directory inside the target. */
export const STAGING_NAME = ".verity-restore";
/** What a data directory holds that a restore replaces (with --force) and writes. */
export const DATA_DIR_ENTRIES = ["log", "meta", "state", "projections", "wal"] as const;

/**
 * How the restored directory starts:
 * - "member": the seed of a replaced member (the guide's "Data Corruption" procedure). It keeps the
 *   node id, the cluster id and the cluster configuration, with no vote; start it with its old
 *   --node-id and --cluster-peers and it syncs the rest from the leader. It grants no vote and never
 *   campaigns until it holds `recoverUntil` (meta/state.json recover_until): the cluster's commit
 *   index asked from `--peers`, or without them one past the restored log, so a stale copy cannot
 *   help elect a leader that lacks committed entries.
 * - "new-cluster": a new single-node cluster keeping the cluster id and the log: this node is the
 *   only voter and every restored entry counts as committed (they were committed when backed up).
 */
export type RestoreStart = { kind: "member"; peers: readonly string[]; tls: ClientTlsFiles | undefined } | { kind: "new-cluster"; nodeId: number | undefined };

export type RestoreSource = { kind: "archive"; path: string } | { kind: "s3"; store: ObjectStore };

export interface RestoreOptions {
  readonly fs: FileSystem;
  readonly dataDir: string;
  readonly source: RestoreSource;
  /** The last index to restore; default: everything the backup holds. */
  readonly position?: number | undefined;
  readonly force: boolean;
  readonly start: RestoreStart;
  readonly progress: ByteProgress;
  /**
   * The key provider from `--config` (the node's [encryption] section): needed to read an encrypted
   * archive or encrypted segments, and makes the rebuilt databases encrypted. Undefined: plaintext.
   */
  readonly keyProvider?: KeyProvider | undefined;
}

export interface RestoreResult {
  readonly position: number;
  readonly identity: SourceIdentity;
  readonly meta: MetaState;
  readonly segments: number;
  /** Bytes fetched (segments and databases). */
  readonly bytes: number;
  readonly fetchMs: number;
  readonly replayMs: number;
  readonly durationMs: number;
  readonly replay: ReplayResult;
  readonly databasesRestored: readonly string[];
  readonly removed: readonly string[];
  readonly verify: VerifyReport;
  readonly projections: ProjectionsReport | undefined;
  readonly ok: boolean;
}

/** What was fetched into the staging directory. */
interface Staged {
  readonly identity: SourceIdentity;
  /** Segments to keep, in order, with their staged paths (relative to staging). */
  readonly segments: readonly (BackedUpSegment & { readonly staged: string })[];
  /** Databases staged (relative paths) with their applied positions. */
  readonly databases: readonly { path: string; appliedPosition: number }[];
  readonly bytes: number;
}

export async function restore(o: RestoreOptions): Promise<RestoreResult> {
  const started = Date.now();
  const { lock, removed } = prepareTarget(o.dataDir, o.force);
  const staging = join(o.dataDir, STAGING_NAME);
  try {
    rmSync(staging, { recursive: true, force: true });
    mkdirSync(join(staging, "log"), { recursive: true, mode: 0o700 });
    const staged = o.source.kind === "archive" ? await fetchArchive(o, staging) : await fetchStream(o, o.source.store, staging);
    const fetchMs = Date.now() - started;
    const position = await cutLog(o, staging, staged);
    const meta = await metaFor(o, staged.identity, position, staged.segments[staged.segments.length - 1]?.lastTerm ?? 0);
    mkdirSync(join(staging, "meta"), { recursive: true, mode: 0o700 });
    await writeMetaState(o.fs, join(staging, "meta", "state.json"), meta);
    const replayStarted = Date.now();
    const encryption: AtRestEncryption | undefined = o.keyProvider === undefined ? undefined : { provider: o.keyProvider, clusterId: staged.identity.clusterId };
    const replay = await replayStaged(o, staging, staged.identity.clusterId, position, encryption).catch((e: unknown) => {
      if (encryption === undefined && e instanceof VerityError && e.code === ErrorCode.FAILED_PRECONDITION && /is encrypted/.test(e.message)) {
        throw new FailedPreconditionError(
          `the backup's log segments are encrypted: give verity-restore --config <a verity-server config file> whose [encryption] section ` +
            `names the key they were written with, then restore again (${e.message})`, { cause: e },
        );
      }
      throw e;
    });
    const replayMs = Date.now() - replayStarted;
    await moveIntoPlace(staging, o.dataDir);
    const verify = await verifyLog(o.fs, join(o.dataDir, "log"));
    const projections = verify.ok ? await verifyProjections(o.fs, o.dataDir, verify.lastIndex ?? 0, encryption) : undefined;
    return {
      position, identity: staged.identity, meta, segments: staged.segments.length, bytes: staged.bytes, fetchMs, replayMs,
      durationMs: Date.now() - started, replay, databasesRestored: staged.databases.filter((d) => d.appliedPosition <= position).map((d) => d.path),
      removed, verify, projections, ok: verify.ok && (projections?.ok ?? true),
    };
  } finally {
    rmSync(staging, { recursive: true, force: true });
    lock.release();
  }
}

/** Locks the target and checks that it is empty, or (--force) removes VerityDB's entries from it. */
function prepareTarget(dataDir: string, force: boolean): { lock: DirLock; removed: string[] } {
  if (existsSync(dataDir) && !statSync(dataDir).isDirectory()) {
    throw new FailedPreconditionError(`${dataDir} is a file, not a directory: give --data-dir a directory`);
  }
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const lock = DirLock.acquire(dataDir); // refuses while a node runs on it, --force or not
  try {
    const present = readdirSync(dataDir).filter((n) => n !== LOCK_FILE_NAME);
    if (present.length > 0 && !force) {
      throw new FailedPreconditionError(
        `${dataDir} is not empty (it holds ${present.slice(0, 5).join(", ")}${present.length > 5 ? ", ..." : ""}): restore into an empty directory, or add --force to replace its VerityDB data (${DATA_DIR_ENTRIES.join("/, ")}/)`,
      );
    }
    const removed: string[] = [];
    for (const name of [...DATA_DIR_ENTRIES, STAGING_NAME]) {
      if (!present.includes(name)) continue;
      rmSync(join(dataDir, name), { recursive: true, force: true });
      if (name !== STAGING_NAME) removed.push(name);
    }
    return { lock, removed };
  } catch (e) {
    lock.release();
    throw e;
  }
}

/** Writes a stream into a file while hashing it; returns bytes and SHA-256. */
class HashingFile implements EntrySink {
  readonly hash = createHash("sha256");
  bytes = 0;
  private readonly file: WriteStream;
  private failure: Error | undefined;

  constructor(path: string, private readonly onBytes: (n: number) => void) {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    this.file = createWriteStream(path, { flags: "wx", mode: 0o600 });
    this.file.on("error", (e) => (this.failure ??= e));
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.failure !== undefined) throw this.failure;
    this.hash.update(chunk);
    this.bytes += chunk.length;
    this.onBytes(chunk.length);
    if (!this.file.write(chunk)) await drained(this.file);
  }

  async end(): Promise<void> {
    const closed = once(this.file, "close");
    this.file.end();
    await closed;
    if (this.failure !== undefined) throw this.failure;
  }
}

/** The entries a snapshot may hold: anything else (a path with "..", an absolute path) is refused. */
const ARCHIVE_PATH = /^(log\/(\d{8,10}|current)\.segment|state\/events\.(sqlite|key)|projections\/tenant_[^/]+\/projections\.(sqlite|key)|backup-manifest\.json)$/;

async function fetchArchive(o: RestoreOptions, staging: string): Promise<Staged> {
  const archive = (o.source as { path: string }).path;
  if (!existsSync(archive)) throw new FailedPreconditionError(`${archive} does not exist: give --source a snapshot archive (.tar.gz) or s3://bucket/prefix/`);
  const files = new Map<string, { bytes: number; sha256: string }>();
  let manifestBytes: Buffer | undefined;
  const kind = inspectArchive(archive);
  // Decrypted chunks are written only into the staging directory, which is moved into place only
  // after the whole archive authenticated (a wrong key, damage or a cut stops the restore first).
  const encrypted = kind.kind === "encrypted" ? { bodyOffset: kind.bodyOffset, decrypt: decryptArchive(archive, kind, o.keyProvider) } : undefined;
  o.progress.start("reading the archive", statSync(archive).size);
  await readTarGz(archive, (entry) => {
    if (entry.type !== "File" || !ARCHIVE_PATH.test(entry.path) || entry.path.split("/").includes("..")) {
      throw new DamagedBackupError(archive, `entry "${entry.path}" is not part of a VerityDB snapshot`);
    }
    if (files.has(entry.path) || (entry.path === SNAPSHOT_MANIFEST_PATH && manifestBytes !== undefined)) {
      throw new DamagedBackupError(archive, `entry "${entry.path}" appears twice`);
    }
    if (entry.path === SNAPSHOT_MANIFEST_PATH) {
      if (entry.size > ARCHIVE_MANIFEST_BYTES_MAX) throw new DamagedBackupError(archive, `${SNAPSHOT_MANIFEST_PATH} is ${entry.size} bytes, more than any valid one`);
      const chunks: Buffer[] = [];
      return { write: (c) => void chunks.push(Buffer.from(c)), end: () => void (manifestBytes = Buffer.concat(chunks)) };
    }
    const sink = new HashingFile(join(staging, entry.path), () => {});
    return {
      write: (c) => sink.write(c),
      end: async () => {
        await sink.end();
        files.set(entry.path, { bytes: sink.bytes, sha256: sink.hash.digest("hex") });
      },
    };
  }, undefined, encrypted);
  o.progress.finish();
  if (manifestBytes === undefined) {
    throw new DamagedBackupError(archive, `the archive has no ${SNAPSHOT_MANIFEST_PATH}: it is not a VerityDB snapshot, or it was cut short`);
  }
  const manifest = decodeSnapshotManifest(manifestBytes, `${archive}:${SNAPSHOT_MANIFEST_PATH}`);
  if (kind.kind === "encrypted" && kind.context.clusterId !== manifest.clusterId) {
    throw new DamagedBackupError(archive, `the archive was encrypted for cluster ${kind.context.clusterId} but its manifest names cluster ${manifest.clusterId}`);
  }
  const expected = [
    ...manifest.segments.map((s) => ({ path: s.key, bytes: s.bytes, sha256: s.sha256 })),
    ...manifest.databases,
    ...manifest.databases.flatMap((d) => (d.keyFile === undefined ? [] : [d.keyFile])),
  ];
  for (const e of expected) {
    const got = files.get(e.path);
    const name = `${archive}:${e.path}`;
    if (got === undefined) throw new DamagedBackupError(name, "the manifest lists this file but the archive does not hold it");
    if (got.bytes !== e.bytes || got.sha256 !== e.sha256) {
      throw new DamagedBackupError(name, `the file does not match the manifest (${got.bytes} bytes with SHA-256 ${got.sha256}; the manifest says ${e.bytes} bytes, ${e.sha256})`);
    }
    files.delete(e.path);
  }
  const extra = [...files.keys()];
  if (extra.length > 0) throw new DamagedBackupError(`${archive}:${extra[0]}`, "the archive holds this file but the manifest does not list it");
  return {
    identity: manifest,
    segments: manifest.segments.map((s) => ({ ...s, staged: s.key })),
    databases: manifest.databases.map((d) => ({ path: d.path, appliedPosition: d.appliedPosition })),
    bytes: expected.reduce((n, e) => n + e.bytes, 0),
  };
}

async function fetchStream(o: RestoreOptions, store: ObjectStore, staging: string): Promise<Staged> {
  const manifestName = `${store.location}${STREAM_MANIFEST_KEY}`;
  const bytes = await readSmallObject(store, STREAM_MANIFEST_KEY, MANIFEST_BYTES_MAX);
  if (bytes === undefined) throw new VerityError(ErrorCode.NOT_FOUND, `there is no backup at ${store.location} (no ${STREAM_MANIFEST_KEY}): check --source, --endpoint and the bucket`);
  const manifest = decodeStreamManifest(bytes, manifestName);
  const last = lastBackedUpIndex(manifest.segments);
  if (last === 0) throw new FailedPreconditionError(`the backup at ${store.location} holds no segment yet: there is nothing to restore`);
  const position = o.position ?? last;
  if (position > last) throw new FailedPreconditionError(`the backup at ${store.location} holds indexes 1..${last}: --position ${position} is past its end`);
  const needed = manifest.segments.filter((s) => s.firstIndex <= position);
  const total = needed.reduce((n, s) => n + s.bytes, 0);
  o.progress.start("downloading", total);
  const segments: (BackedUpSegment & { staged: string })[] = [];
  for (const s of needed) {
    const name = `${store.location}${s.key}`;
    const staged = `log/${sealedSegmentName(s.sequence)}`;
    const body = await store.get(s.key);
    if (body === undefined) throw new DamagedBackupError(name, "the object is missing from the bucket (the manifest lists it)", { index: s.firstIndex });
    const sink = new HashingFile(join(staging, staged), (n) => o.progress.add(n));
    try {
      for await (const chunk of body) await sink.write(chunk as Buffer);
      await sink.end();
    } catch (e) {
      await sink.end().catch(() => {});
      throw new VerityError(ErrorCode.UNAVAILABLE, `cannot download ${name}: ${(e as Error).message}; check the network and the store, then restore again`, { cause: e });
    }
    const sha256 = sink.hash.digest("hex");
    if (sink.bytes !== s.bytes || sha256 !== s.sha256) {
      throw new DamagedBackupError(
        name,
        `the object does not match the manifest (${sink.bytes} bytes with SHA-256 ${sha256}; the manifest says ${s.bytes} bytes, ${s.sha256})`,
        { index: s.firstIndex },
      );
    }
    segments.push({ ...s, staged });
  }
  o.progress.finish();
  return { identity: manifest, segments, databases: [], bytes: total };
}

/**
 * Keeps the segments up to the position and cuts the one holding it just after its record; that
 * one, and a snapshot's current.segment, becomes current.segment. Databases past the position go.
 * Returns the position.
 */
async function cutLog(o: RestoreOptions, staging: string, staged: Staged): Promise<number> {
  const last = lastBackedUpIndex(staged.segments);
  const position = o.position ?? last;
  if (position < 1 || position > last) throw new FailedPreconditionError(`the backup holds indexes 1..${last}: --position ${position} is outside it`);
  const kept = staged.segments.filter((s) => s.firstIndex <= position);
  for (const s of staged.segments) if (s.firstIndex > position) rmSync(join(staging, s.staged), { force: true });
  const tail = kept[kept.length - 1]!;
  const tailPath = join(staging, tail.staged);
  if (tail.lastIndex > position) {
    const content = await inspectSegment(o.fs, tailPath, { displayName: tail.staged, sealed: true, upTo: position });
    invariant(content.lastIndex === position, "the backup's segment holds the position");
    truncateSync(tailPath, content.bytes);
  }
  const currentPath = join(staging, "log", CURRENT_SEGMENT_NAME);
  if ((tail.lastIndex > position || tail.staged.endsWith(CURRENT_SEGMENT_NAME)) && tailPath !== currentPath) renameSync(tailPath, currentPath);
  for (const d of staged.databases) {
    if (d.appliedPosition > position) removeDatabaseFiles(join(staging, d.path));
  }
  return position;
}

/** meta/state.json of the restored directory (see RestoreStart). */
async function metaFor(o: RestoreOptions, id: SourceIdentity, position: number, lastTerm: number): Promise<MetaState> {
  const term = Math.max(id.term, lastTerm);
  if (o.start.kind === "new-cluster") {
    const nodeId = o.start.nodeId ?? (id.nodeId > 0 ? id.nodeId : 1);
    return { nodeId, clusterId: id.clusterId, term, vote: 0, membership: { index: position, voters: [nodeId], learners: [] } };
  }
  if (id.nodeId < 1) throw new FailedPreconditionError("the backup does not say which node it was taken from; restore it with --new-cluster");
  const recoverUntil = o.start.peers.length === 0 ? position + 1 : Math.max(position + 1, await clusterCommitIndex(o.start.peers, o.start.tls));
  const meta: MetaState = { nodeId: id.nodeId, clusterId: id.clusterId, term, vote: 0, recoverUntil };
  if (id.membership !== undefined) meta.membership = id.membership;
  return meta;
}

/** The highest commit index the live members report (every one must answer). */
async function clusterCommitIndex(peers: readonly string[], tls: ClientTlsFiles | undefined): Promise<number> {
  if (peers.length > REJOIN_ENDPOINTS_MAX) throw new FailedPreconditionError(`--peers lists ${peers.length} endpoints; at most ${REJOIN_ENDPOINTS_MAX}`);
  let highest = 0;
  for (const endpoint of peers) {
    let response: Record<string, unknown>;
    try {
      response = (await new AdminApi({ endpoints: [endpoint], tls }).call("nodeStatus", {})).response;
    } catch (e) {
      throw new VerityError(ErrorCode.UNAVAILABLE, `--peers: ${endpoint} did not answer (${(e as Error).message}); every live member must answer, because the newest commit may be on any one of them`, { cause: e });
    }
    highest = Math.max(highest, Number(response.commitIndex ?? 0));
  }
  return highest;
}

async function replayStaged(o: RestoreOptions, staging: string, clusterId: string, position: number, encryption: AtRestEncryption | undefined): Promise<ReplayResult> {
  const log = await SegmentedLog.open({ dir: join(staging, "log"), fs: o.fs, clusterId: uuidBytes(clusterId), displayPrefix: "log/", encryption });
  try {
    invariant(log.lastIndex === position, "the staged log ends at the position");
    o.progress.start("rebuilding the event index (positions)", position);
    let projectionsStarted = false;
    const result = await rebuildState(staging, log, {
      eventIndex: (p) => o.progress.set(p),
      projections: (_tenant, p, through) => {
        if (!projectionsStarted) {
          projectionsStarted = true;
          o.progress.start("rebuilding projections (positions)", through);
        }
        o.progress.set(p);
      },
    }, encryption);
    o.progress.finish();
    return result;
  } finally {
    await log.close();
  }
}

/** Moves log/, state/, projections/ and then meta/ from the staging directory into the target, and syncs it. */
async function moveIntoPlace(staging: string, dataDir: string): Promise<void> {
  for (const name of ["log", "state", "projections", "wal", "meta"]) {
    if (existsSync(join(staging, name))) renameSync(join(staging, name), join(dataDir, name));
  }
  for (const dir of [join(dataDir, "log"), dataDir]) {
    const handle = await open(dir, "r");
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  }
}


/**
 * `verity-backup snapshot`: a consistent tar.gz of a running node's data directory at log
 * position N:
 *
 *   log/00000000.segment ...   the sealed segments wholly at or below N, as they are on the node
 *   log/current.segment        the segment holding N, cut just after N's record (when N is inside one)
 *   projections/tenant_<id>/projections.sqlite, state/events.sqlite
 *                              the databases, each at an applied position at or below N
 *   projections/tenant_<id>/projections.key, state/events.key
 *                              with encryption on: each encrypted database's key sidecar (its data key, wrapped)
 *   backup-manifest.json       identity, N, every file's size and SHA-256, index ranges and terms
 *
 * With `[encryption]` on (`--config`), databases are copied encrypted, with their sidecars, and the
 * whole archive is encrypted (archive-encryption.ts: a clear prologue, then chunk-cipher.ts).
 *
 * Consistency without stopping the node: the databases are copied first, with SQLite's online
 * backup (a consistent image, taken between the node's transactions), projections before the event
 * index (the projector follows the event index, so each projection copy is at or below the event
 * index copy). The commit index is read after them, so N (by default the commit index) is at or
 * above every copy. A database copied past an explicit, older N is left out: the restore rebuilds it
 * from the log. Log records at or below N are committed, hence durable and never rewritten, so
 * reading them while the node appends after them is safe; current.segment is copied to a scratch
 * file first, so a seal renaming it mid-read does not matter.
 */

import { createHash } from "node:crypto";
import { copyFileSync, existsSync, mkdtempSync, readdirSync, renameSync, rmSync, statSync } from "node:fs";
import { open } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import Database from "better-sqlite3-multiple-ciphers";
import type { AtRestEncryption } from "../crypto/at-rest.js";
import { eventIndexFileIdentity, projectionFileIdentity } from "../crypto/encryption-context.js";
import { FailedPreconditionError, invariant } from "../errors.js";
import { isSqliteCorruption, keyConnection, keySidecarPath, openDatabaseKey, sqliteCorruptionError } from "../projections/sqlite-encryption.js";
import { encryptArchive } from "./archive-encryption.js";
import { isTenantDirectoryName } from "../projections/projector.js";
import type { FileSystem } from "../log/fs-port.js";
import { hasSyscallCode } from "../log/fs-port.js";
import { CURRENT_SEGMENT_NAME, parseSealedSegmentName } from "../log/segment-header.js";
import { SNAPSHOT_LIST_ATTEMPTS_MAX, SQLITE_BACKUP_PAGES_PER_STEP } from "./backup-limits.js";
import type { CommitSource } from "./commit-source.js";
import { SNAPSHOT_MANIFEST_PATH, encodeSnapshotManifest, type ArchivedFile, type BackedUpSegment, type SnapshotDatabase, type SnapshotManifest } from "./manifest.js";
import type { ByteProgress } from "./progress.js";
import { inspectSegment, type SegmentContent } from "./segment-file.js";
import { readSourceMeta } from "./source-dir.js";
import { TarGzWriter } from "./tar-gz.js";

export const EVENT_INDEX_PATH = "state/events.sqlite";
export const PROJECTIONS_FILE_NAME = "projections.sqlite";

export interface SnapshotOptions {
  readonly fs: FileSystem;
  readonly dataDir: string;
  /** The last index to include; default: the commit index. */
  readonly position?: number | undefined;
  readonly output: string;
  readonly commit: CommitSource;
  readonly progress: ByteProgress;
  /**
   * The node's at-rest encryption (from `--config`): encrypted databases are copied encrypted (with
   * their key sidecars), and the archive itself is encrypted (archive-encryption.ts). Needed when the
   * databases are encrypted; undefined writes a plain archive.
   */
  readonly encryption?: AtRestEncryption | undefined;
}

export interface SnapshotResult {
  readonly manifest: SnapshotManifest;
  readonly archiveBytes: number;
  /** Bytes of files archived (before compression). */
  readonly bytes: number;
  readonly durationMs: number;
  /** Databases left out because the node had applied them past the position (rebuilt on restore). */
  readonly omitted: readonly string[];
}

/** A database copied to the scratch directory. */
interface CopiedDatabase {
  readonly path: string;
  readonly copy: string;
  readonly appliedPosition: number;
  readonly tenant?: string;
  /** An encrypted database's key sidecar: its path in the archive and the copy to archive. */
  readonly keyFile?: { readonly path: string; readonly copy: string };
}

/** One segment to archive: the first `content.bytes` bytes of `source`. */
interface PlannedSegment {
  readonly archivePath: string;
  readonly source: string;
  readonly content: SegmentContent;
}

export async function takeSnapshot(o: SnapshotOptions): Promise<SnapshotResult> {
  const started = Date.now();
  if (existsSync(o.output)) throw new FailedPreconditionError(`${o.output} exists: choose another --output, or remove it first`);
  const meta = await readSourceMeta(o.fs, o.dataDir);
  const scratch = mkdtempSync(join(dirname(o.output), ".verity-snapshot-"));
  const tmp = o.output + ".tmp";
  rmSync(tmp, { force: true });
  try {
    const databases = await copyDatabases(o.dataDir, scratch, o.encryption);
    const commit = await o.commit.commitIndex();
    const position = o.position ?? commit;
    if (position < 1) throw new FailedPreconditionError(`nothing is committed yet on this node (the ${o.commit.description} says ${commit}): there is nothing to back up`);
    if (position > commit) {
      throw new FailedPreconditionError(`position ${position} is not committed on this node yet (its ${o.commit.description} says ${commit}): give a position at or below ${commit}, or wait`);
    }
    const segments = await planLog(o.fs, join(o.dataDir, "log"), position, scratch);
    const kept = databases.filter((d) => d.appliedPosition <= position);
    const omitted = databases.filter((d) => d.appliedPosition > position).map((d) => d.path);
    const total = segments.reduce((n, s) => n + s.content.bytes, 0) + kept.reduce((n, d) => n + statSync(d.copy).size, 0);
    o.progress.start("archiving", total);
    const writer = new TarGzWriter(tmp, o.encryption === undefined ? undefined : await encryptArchive(o.encryption, basename(o.output)));
    let manifest: SnapshotManifest;
    try {
      const archived: BackedUpSegment[] = [];
      for (const s of segments) {
        const sha256 = await writer.addFile(s.archivePath, s.source, s.content.bytes, (n) => o.progress.add(n));
        const c = s.content;
        archived.push({
          sequence: c.sequence, key: s.archivePath, firstIndex: c.baseIndex, lastIndex: c.lastIndex, firstTerm: c.firstTerm, lastTerm: c.lastTerm, records: c.records,
          bytes: c.bytes, sha256, keyId: c.keyId, keyVersion: c.keyVersion,
        });
      }
      const files: SnapshotDatabase[] = [];
      for (const d of kept) {
        const bytes = statSync(d.copy).size;
        const sha256 = await writer.addFile(d.path, d.copy, bytes, (n) => o.progress.add(n));
        let keyFile: ArchivedFile | undefined;
        if (d.keyFile !== undefined) {
          const keyBytes = statSync(d.keyFile.copy).size;
          keyFile = { path: d.keyFile.path, bytes: keyBytes, sha256: await writer.addFile(d.keyFile.path, d.keyFile.copy, keyBytes) };
        }
        files.push({ path: d.path, bytes, sha256, appliedPosition: d.appliedPosition, tenant: d.tenant, keyFile });
      }
      const lastTerm = archived[archived.length - 1]?.lastTerm ?? 0;
      manifest = {
        clusterId: meta.clusterId, nodeId: meta.nodeId, term: Math.max(meta.term, lastTerm), membership: meta.membership,
        position, createdAt: new Date().toISOString(), segments: archived, databases: files,
      };
      await writer.addBytes(SNAPSHOT_MANIFEST_PATH, encodeSnapshotManifest(manifest));
      await writer.finish();
    } catch (e) {
      await writer.abort();
      throw e;
    }
    o.progress.finish();
    renameSync(tmp, o.output);
    const dir = await open(dirname(o.output), "r");
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
    return { manifest, archiveBytes: statSync(o.output).size, bytes: total, durationMs: Date.now() - started, omitted };
  } finally {
    rmSync(tmp, { force: true });
    rmSync(scratch, { recursive: true, force: true });
  }
}

/**
 * A consistent copy of one database into `copy`; returns the copy's applied position. A plaintext
 * database goes through SQLite's online backup (in steps); an encrypted one (`key`) through VACUUM
 * INTO, which writes the copy encrypted with the same key (the online backup cannot copy between
 * differently keyed databases), so no plaintext copy ever reaches the disk.
 */
async function copyDatabase(path: string, copy: string, positionSql: string, key: Buffer | undefined): Promise<number> {
  const source = new Database(path, { readonly: true, fileMustExist: true });
  try {
    if (key === undefined) {
      await source.backup(copy, { progress: () => SQLITE_BACKUP_PAGES_PER_STEP });
    } else {
      keyConnection(source, key);
      source.pragma("busy_timeout = 5000");
      source.exec(`VACUUM INTO '${copy.replace(/'/g, "''")}'`);
    }
  } catch (e) {
    if (isSqliteCorruption(e)) throw sqliteCorruptionError(path, e, key !== undefined);
    throw e;
  } finally {
    source.close();
  }
  const db = new Database(copy, { readonly: true, fileMustExist: true });
  if (key !== undefined) keyConnection(db, key);
  try {
    return (db.prepare(positionSql).pluck().get() as number | undefined) ?? 0;
  } catch {
    return 0; // created, schema not written yet: an empty database
  } finally {
    db.close();
  }
}

/**
 * The key of an encrypted database (its sidecar unwrapped) and a copy of the sidecar in the scratch
 * directory; undefined for a plaintext one. Encrypted databases need the key provider (`--config`).
 */
async function keyOf(dataDir: string, relative: string, fileIdentity: string, scratch: string, encryption: AtRestEncryption | undefined):
  Promise<{ key: Buffer; keyFile: { path: string; copy: string } } | undefined> {
  const sidecar = keySidecarPath(join(dataDir, relative));
  if (!existsSync(sidecar)) return undefined;
  if (encryption === undefined) {
    throw new FailedPreconditionError(
      `${relative} is encrypted (its data key is in ${keySidecarPath(relative)}): give verity-backup snapshot the node's config file ` +
        "(--config <file> with its [encryption] section) so it can copy the databases; the archive is then encrypted too",
    );
  }
  const keying = await openDatabaseKey(join(dataDir, relative), relative, encryption, fileIdentity);
  invariant(keying.kind === "keyed", "a database with a sidecar is keyed");
  const copy = join(scratch, `${createHash("sha256").update(relative).digest("hex").slice(0, 16)}.key`);
  copyFileSync(sidecar, copy);
  return { key: keying.key, keyFile: { path: keySidecarPath(relative), copy } };
}

/** Every tenant's projections, then the event index (see the module comment for the order). */
async function copyDatabases(dataDir: string, scratch: string, encryption: AtRestEncryption | undefined): Promise<CopiedDatabase[]> {
  const out: CopiedDatabase[] = [];
  const projections = join(dataDir, "projections");
  const tenantDirs = existsSync(projections) ? readdirSync(projections).filter(isTenantDirectoryName).sort() : [];
  for (const dir of tenantDirs) {
    const path = join(projections, dir, PROJECTIONS_FILE_NAME);
    if (!existsSync(path)) continue;
    const relative = `projections/${dir}/${PROJECTIONS_FILE_NAME}`;
    const tenant = dir.slice("tenant_".length);
    const keyed = await keyOf(dataDir, relative, projectionFileIdentity(tenant), scratch, encryption);
    const copy = join(scratch, `${dir}.sqlite`);
    try {
      const appliedPosition = await copyDatabase(path, copy, "SELECT applied_position FROM _verity_state WHERE id = 1", keyed?.key);
      out.push({ path: relative, copy, appliedPosition, tenant, ...(keyed === undefined ? {} : { keyFile: keyed.keyFile }) });
    } finally {
      keyed?.key.fill(0);
    }
  }
  const events = join(dataDir, EVENT_INDEX_PATH);
  if (existsSync(events)) {
    const keyed = await keyOf(dataDir, EVENT_INDEX_PATH, eventIndexFileIdentity(), scratch, encryption);
    const copy = join(scratch, "events.sqlite");
    try {
      const appliedPosition = await copyDatabase(events, copy, "SELECT position FROM applied WHERE id = 1", keyed?.key);
      out.push({ path: EVENT_INDEX_PATH, copy, appliedPosition, ...(keyed === undefined ? {} : { keyFile: keyed.keyFile }) });
    } finally {
      keyed?.key.fill(0);
    }
  }
  return out;
}

/**
 * The segments holding indexes 1..position. Tried again when a seal renames current.segment while
 * the log is listed (the listing then no longer matches the files).
 */
async function planLog(fs: FileSystem, logDir: string, position: number, scratch: string): Promise<PlannedSegment[]> {
  let lastProblem = "";
  // Bounded by SNAPSHOT_LIST_ATTEMPTS_MAX.
  for (let attempt = 0; attempt < SNAPSHOT_LIST_ATTEMPTS_MAX; attempt++) {
    const planned = await tryPlan(fs, logDir, position, scratch);
    if (Array.isArray(planned)) return planned;
    lastProblem = planned.problem;
  }
  throw new FailedPreconditionError(`the log kept changing while the snapshot listed it (${SNAPSHOT_LIST_ATTEMPTS_MAX} attempts; the last: ${lastProblem}); try again`);
}

async function tryPlan(fs: FileSystem, logDir: string, position: number, scratch: string): Promise<PlannedSegment[] | { problem: string }> {
  const names = readdirSync(logDir);
  const sealed = names.flatMap((n) => {
    const sequence = parseSealedSegmentName(n);
    return sequence === undefined ? [] : [{ name: n, sequence }];
  }).sort((a, b) => a.sequence - b.sequence);
  const planned: PlannedSegment[] = [];
  let expected = 1;
  for (const s of sealed) {
    const path = join(logDir, s.name);
    const content = await inspectSegment(fs, path, { displayName: `log/${s.name}`, sealed: true, upTo: position });
    if (content.baseIndex !== expected) return { problem: `log/${s.name} starts at index ${content.baseIndex}, expected ${expected}` };
    const cut = content.bytes < statSync(path).size;
    planned.push({ archivePath: cut ? `log/${CURRENT_SEGMENT_NAME}` : `log/${s.name}`, source: path, content });
    expected = content.lastIndex + 1;
    if (expected > position) return planned;
  }
  const copy = join(scratch, CURRENT_SEGMENT_NAME);
  try {
    copyFileSync(join(logDir, CURRENT_SEGMENT_NAME), copy);
  } catch (e) {
    if (hasSyscallCode(e, "ENOENT")) return { problem: "current.segment was being replaced by a seal" };
    throw e;
  }
  const content = await inspectSegment(fs, copy, { displayName: `log/${CURRENT_SEGMENT_NAME}`, sealed: false, upTo: position });
  if (content.baseIndex !== expected) return { problem: `current.segment starts at index ${content.baseIndex}, expected ${expected}` };
  if (content.lastIndex < position) {
    return { problem: `the log ends at index ${content.lastIndex}, before position ${position}` };
  }
  invariant(content.lastIndex === position, "the cut ends at the position");
  planned.push({ archivePath: `log/${CURRENT_SEGMENT_NAME}`, source: copy, content });
  return planned;
}


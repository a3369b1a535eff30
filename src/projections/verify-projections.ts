/**
 * The projection half of `verity-admin verify --data-dir D` (on a stopped node): every tenant's
 * projections database opens, its applied position is within the log and the event index, and a
 * replay of a sample of tenants from the log, into a scratch database, reproduces exactly the rows
 * on disk (the same digest `projection status` shows).
 */

import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3-multiple-ciphers";
import { dumpLog } from "../log/offline.js";
import { uuidBytes } from "../log/meta-state.js";
import type { SegmentHeader } from "../log/segment-header.js";
import { SegmentKeys } from "../log/segment-keys.js";
import type { FileSystem } from "../log/fs-port.js";
import { RecordKind } from "../log/types.js";
import { decodeEventRecord } from "./event-codec.js";
import { EventStore } from "./event-store.js";
import { TenantProjections, isTenantDirectoryName, type ProjectorEvent } from "./projector.js";
import type { AtRestEncryption } from "../crypto/at-rest.js";
import { keyConnection, keySidecarPath, openDatabaseKey, scratchDatabaseKey } from "./sqlite-encryption.js";
import { projectionFileIdentity } from "../crypto/encryption-context.js";

const NEEDS_CONFIG = "give verify the node's configuration (--config <file> with its [encryption] section) so it can unwrap their data keys";

/** The key of a tenant's database for verify: undefined for a plaintext one; an encrypted one without `encryption` is an error saying what to give. */
async function verifyKeyOf(tenant: string, path: string, encryption: AtRestEncryption | undefined): Promise<Buffer | undefined> {
  if (!existsSync(keySidecarPath(path))) return undefined;
  if (encryption === undefined) throw new Error(`the database is encrypted (projections.key beside it): ${NEEDS_CONFIG}`);
  const keying = await openDatabaseKey(path, `projections/tenant_${tenant}/projections.sqlite`, encryption, projectionFileIdentity(tenant));
  return keying.kind === "keyed" ? keying.key : undefined;
}

/** Tenants replayed at most (the largest ones first are not chosen: the first by name, so runs repeat). */
export const VERIFY_SAMPLE_TENANTS = 3;
/** Event payload bytes a replay keeps in memory at most; a larger sample is skipped with a note. */
export const VERIFY_REPLAY_BYTES_MAX = 256 * 1024 * 1024;
/** Chunks a replay runs at most (each applies up to PROJECTOR_CHUNK_ENTRIES entries). */
const VERIFY_REPLAY_STEPS_MAX = 10_000_000;

export interface ProjectionCheck {
  tenant: string;
  appliedPosition: number;
  status: "ok" | "ahead" | "unreadable" | "replay-mismatch" | "replay-skipped";
  detail: string;
  digest?: string;
  replayDigest?: string;
}

export interface ProjectionsReport {
  ok: boolean;
  eventIndexPosition: number | undefined;
  tenants: ProjectionCheck[];
  notes: string[];
}

/** Checks the projections of the data directory `dataDir`, whose log ends at `logLastIndex`. */
/**
 * Checks the projections of the data directory `dataDir`, whose log ends at `logLastIndex`.
 * Encrypted databases (a key sidecar beside them) need `encryption` (the node's key provider, from
 * `--config`); without it they are reported as needing it. Plaintext databases are read as they are
 * (never removed or rebuilt here), and the replay's scratch databases are encrypted with a throwaway
 * key whenever the data directory's databases are encrypted.
 */
export async function verifyProjections(fs: FileSystem, dataDir: string, logLastIndex: number, encryption?: AtRestEncryption): Promise<ProjectionsReport> {
  const report: ProjectionsReport = { ok: true, eventIndexPosition: undefined, tenants: [], notes: [] };
  const projectionsDir = join(dataDir, "projections");
  const tenantDirs = existsSync(projectionsDir) ? readdirSync(projectionsDir).filter(isTenantDirectoryName).sort() : [];
  if (!existsSync(join(dataDir, "state", "events.sqlite"))) {
    report.notes.push("no event index (state/events.sqlite): the node rebuilds it and every projection from the log when it starts");
    return report;
  }
  const eventsKeyed = existsSync(keySidecarPath(join(dataDir, "state", "events.sqlite")));
  if (eventsKeyed && encryption === undefined) {
    report.ok = false;
    report.notes.push(`the event index and projections are encrypted (state/events.key): ${NEEDS_CONFIG}`);
    return report;
  }
  const store = await EventStore.open(dataDir, { encryption: eventsKeyed ? encryption : undefined });
  try {
    report.eventIndexPosition = store.appliedPosition;
    if (store.appliedPosition > logLastIndex) {
      report.ok = false;
      report.notes.push(`the event index is applied up to ${store.appliedPosition}, beyond the log's last index ${logLastIndex}: move state/ aside so the node rebuilds it`);
    }
    const sample: { tenant: string; path: string; check: ProjectionCheck; key: Buffer | undefined }[] = [];
    for (const dir of tenantDirs) {
      const tenant = dir.slice("tenant_".length);
      const path = join(projectionsDir, dir, "projections.sqlite");
      const check: ProjectionCheck = { tenant, appliedPosition: 0, status: "ok", detail: "" };
      report.tenants.push(check);
      let key: Buffer | undefined;
      try {
        key = await verifyKeyOf(tenant, path, encryption);
        const db = new Database(path, { readonly: true, fileMustExist: true });
        try {
          if (key !== undefined) keyConnection(db, key);
          check.appliedPosition = (db.prepare("SELECT applied_position FROM _verity_state WHERE id = 1").pluck().get() as number | undefined) ?? 0;
        } finally {
          db.close();
        }
      } catch (e) {
        key?.fill(0);
        check.status = "unreadable";
        check.detail = `cannot read ${path}: ${e instanceof Error ? e.message : String(e)}; move it aside and the node rebuilds it`;
        report.ok = false;
        continue;
      }
      if (check.appliedPosition > logLastIndex || check.appliedPosition > store.appliedPosition) {
        check.status = "ahead";
        check.detail = `applied up to ${check.appliedPosition}, beyond the log (${logLastIndex}) or the event index (${store.appliedPosition})`;
        report.ok = false;
        continue;
      }
      if (sample.length < VERIFY_SAMPLE_TENANTS) sample.push({ tenant, path, check, key });
      else key?.fill(0);
    }
    if (sample.length > 0) await replaySample(fs, dataDir, store, sample, report, encryption);
  } finally {
    store.close();
  }
  return report;
}

async function replaySample(
  fs: FileSystem,
  dataDir: string,
  store: EventStore,
  sample: { tenant: string; path: string; check: ProjectionCheck; key: Buffer | undefined }[],
  report: ProjectionsReport,
  encryption: AtRestEncryption | undefined,
): Promise<void> {
  const keys = encryption === undefined ? undefined : new SegmentKeys(encryption, uuidBytes(encryption.clusterId), () => {});
  try {
    await replaySampleWith(fs, dataDir, store, sample, report, keys);
  } finally {
    keys?.close();
  }
}

async function replaySampleWith(
  fs: FileSystem,
  dataDir: string,
  store: EventStore,
  sample: { tenant: string; path: string; check: ProjectionCheck; key: Buffer | undefined }[],
  report: ProjectionsReport,
  keys: SegmentKeys | undefined,
): Promise<void> {
  const wanted = new Set(sample.map((s) => s.tenant));
  const upTo = Math.max(...sample.map((s) => s.check.appliedPosition));
  // One pass over the log keeps the sampled tenants' events, bounded in bytes.
  const bodies = new Map<number, ProjectorEvent>();
  let bytes = 0;
  const cipherFor = keys === undefined ? undefined : (header: SegmentHeader, file: string) => keys.cipherFor(header, file);
  for await (const item of dumpLog(fs, join(dataDir, "log"), 1, upTo, "log/", cipherFor)) {
    if ("damage" in item) {
      report.notes.push(`the replay stopped at damage in ${item.file}: ${item.damage} (log verify reports it)`);
      for (const s of sample) s.check.status = "replay-skipped";
      return;
    }
    if (item.sealed) {
      report.notes.push(`the log is encrypted (${item.file}): the replay was skipped; ${NEEDS_CONFIG}`);
      for (const s of sample) s.check.status = "replay-skipped";
      return;
    }
    const e = item.entry;
    if (e.kind !== RecordKind.EVENTS || !wanted.has(e.tenant)) continue;
    const decoded = decodeEventRecord(e.index, e.tenant, e.payload);
    if (decoded === undefined) continue;
    bytes += e.payload.length;
    if (bytes > VERIFY_REPLAY_BYTES_MAX) {
      report.notes.push(`the sampled tenants' events exceed ${VERIFY_REPLAY_BYTES_MAX} bytes: the replay was skipped`);
      for (const s of sample) s.check.status = "replay-skipped";
      return;
    }
    bodies.set(e.index, { position: e.index, stream: decoded.stream, version: 0, type: decoded.type, data: decoded.data, timestampMs: decoded.timestampMs });
  }
  const scratch = mkdtempSync(join(tmpdir(), "verity-verify-"));
  try {
    for (const s of sample) {
      const target = s.check.appliedPosition;
      // The replay holds the tenant's rows: encrypted like the original, with a key that dies with it.
      const replay = new TenantProjections(s.tenant, join(scratch, `tenant_${s.tenant}`, "projections.sqlite"), {
        store,
        dataDir: scratch,
        through: () => target,
        checkpointInterval: Number.MAX_SAFE_INTEGER,
        load: async (rows) => rows.flatMap((r) => {
          const b = bodies.get(r.position);
          return b === undefined ? [] : [{ ...b, stream: r.stream, version: r.version }];
        }),
      }, s.key === undefined ? undefined : scratchDatabaseKey());
      try {
        // Bounded by VERIFY_REPLAY_STEPS_MAX chunks.
        for (let step = 0; step < VERIFY_REPLAY_STEPS_MAX && (await replay.step()); step++);
        const onDisk = new TenantProjections(s.tenant, s.path, { store, dataDir, through: () => 0, checkpointInterval: Number.MAX_SAFE_INTEGER, load: async () => [] }, s.key);
        try {
          s.check.digest = onDisk.digest();
        } finally {
          onDisk.close();
        }
        s.check.replayDigest = replay.digest();
        if (s.check.digest !== s.check.replayDigest) {
          s.check.status = "replay-mismatch";
          s.check.detail = `a replay of the log to position ${target} gives digest ${s.check.replayDigest}, the database on disk ${s.check.digest}: rebuild its projections (verity-admin projection rebuild)`;
          report.ok = false;
        } else {
          s.check.detail = `a replay of the log to position ${target} reproduces its rows`;
        }
      } finally {
        replay.close();
      }
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

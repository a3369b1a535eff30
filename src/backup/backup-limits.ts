/**
 * Every bound of verity-backup and verity-restore, in one place (STYLE.md section 3): queues,
 * buffers, loops and retries. Relationships are asserted when the module loads.
 */

import { strict as assert } from "node:assert";
import { SEGMENTS_MAX, Units } from "../limits.js";

const { KiB, MiB } = Units;

// ---- Streaming segments to S3. ----

/** Segments one stream manifest lists at most (about 30 MB of JSON; 6.4 TB of 64 MB segments). */
export const MANIFEST_SEGMENTS_MAX = 100_000;
/** A manifest larger than this is refused as damaged (a full one is well below it). */
export const MANIFEST_BYTES_MAX = 64 * MiB;
/** Multipart part size for segments larger than one part (S3's minimum part is 5 MiB). */
export const UPLOAD_PART_BYTES = 8 * MiB;
/** Parts of one segment in flight at once: an upload holds at most this many parts in memory. */
export const UPLOAD_PARTS_IN_FLIGHT_MAX = 4;
/** How often the streamer looks for newly sealed segments when no file-system event woke it. */
export const STREAM_POLL_MS = 1_000;
/** How often it asks again for the commit index while a sealed segment waits to be committed. */
export const COMMIT_POLL_MS = 100;
/** Failed passes in a row before the streamer gives up and exits 1 (its supervisor restarts it). */
export const UPLOAD_FAILURES_MAX = 20;
/** Delay after the first failed pass; doubled after each further failure, up to the maximum. */
export const RETRY_DELAY_MS_MIN = 500;
export const RETRY_DELAY_MS_MAX = 30_000;
/** Recovery-point samples kept for the summary (the oldest are dropped past this). */
export const RECOVERY_POINT_SAMPLES_MAX = 10_000;

// ---- Reading files. ----

/** Bytes read per call while hashing or copying a file. */
export const COPY_CHUNK_BYTES = 1 * MiB;

// ---- Snapshots (tar.gz). ----

/** Entries one snapshot archive holds at most (segments, index files, databases, manifest). */
export const ARCHIVE_ENTRIES_MAX = 2 * SEGMENTS_MAX + 10_000;
/** The snapshot manifest is refused past this size. */
export const ARCHIVE_MANIFEST_BYTES_MAX = 256 * MiB;
/** Listing the log while the node seals a segment under us: attempts before giving up. */
export const SNAPSHOT_LIST_ATTEMPTS_MAX = 20;
/** SQLite online backup: pages copied per step (the node's writers get the lock between steps). */
export const SQLITE_BACKUP_PAGES_PER_STEP = 1_024;

// ---- Restore. ----

/** Entries applied to the event index per transaction while a restore rebuilds it. */
export const REPLAY_READ_BYTES_MAX = 16 * MiB;
/** Projector chunks one tenant's rebuild runs at most (each up to 1,000 entries). */
export const REPLAY_STEPS_MAX = 10_000_000;
/** Admin API endpoints asked for the cluster's commit index when rejoining, at most. */
export const REJOIN_ENDPOINTS_MAX = 16;

// ---- Progress. ----

/** A progress line at most this often when the output is not a terminal. */
export const PROGRESS_LINE_INTERVAL_MS = 1_000;
/** The bar is redrawn at most this often on a terminal. */
export const PROGRESS_BAR_INTERVAL_MS = 100;

assert(UPLOAD_PART_BYTES >= 5 * MiB, "S3 parts (all but the last) are at least 5 MiB");
assert(COPY_CHUNK_BYTES >= 64 * KiB && COPY_CHUNK_BYTES <= UPLOAD_PART_BYTES);
assert(RETRY_DELAY_MS_MIN <= RETRY_DELAY_MS_MAX);
assert(COMMIT_POLL_MS <= STREAM_POLL_MS);
assert(MANIFEST_SEGMENTS_MAX <= SEGMENTS_MAX);

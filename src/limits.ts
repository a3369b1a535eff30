/**
 * Every bound in VerityDB, in one place (STYLE.md section 3). Names put the qualifier last
 * (`RECORD_BYTES_MAX`, not `MAX_RECORD_BYTES`). The relationships between them are asserted at the
 * bottom of this file, when it is loaded, so a bad edit fails at start-up rather than in production.
 *
 * Config defaults from the operations guide live here too; a config value may lower or (within the
 * hard bounds) raise a default, and is checked against these bounds when the config is loaded.
 */

import { strict as assert } from "node:assert";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

// ---- Defaults from the operations guide ([limits], [storage]). ----

/** `max_tenants`: how many tenants a cluster holds. */
export const TENANTS_MAX_DEFAULT = 1000;
/** `max_streams_per_tenant`. */
export const STREAMS_PER_TENANT_MAX_DEFAULT = 100;
/** `max_record_size`: the largest payload of one log record. */
export const RECORD_BYTES_MAX_DEFAULT = 1 * MiB;
/** `max_batch_size`: the largest batch one client request may append. */
export const BATCH_BYTES_MAX_DEFAULT = 10 * MiB;
/** `segment_size`: a segment is sealed once it reaches this many bytes. */
export const SEGMENT_BYTES_DEFAULT = 64 * MiB;

// ---- Hard bounds: no configuration may go past these. ----

/** The smallest `segment_size` accepted (tests use it to exercise sealing). */
export const SEGMENT_BYTES_MIN = 1 * MiB;
/** The largest `segment_size` accepted: byte offsets in a segment stay well inside 32 bits. */
export const SEGMENT_BYTES_MAX = 1 * GiB;
/** The largest `max_record_size` accepted. */
export const RECORD_BYTES_MAX = 16 * MiB;
/** The largest `max_batch_size` accepted. */
export const BATCH_BYTES_MAX = 64 * MiB;
/** Tenant ids in a record header are at most this many bytes. */
export const TENANT_ID_BYTES_MAX = 64;

/** Bytes of appends that may wait for the group-commit writer before `append` refuses more. */
export const APPEND_QUEUE_BYTES_MAX = 128 * MiB;
/** Appends (calls) that may wait for the group-commit writer before `append` refuses more. */
export const APPEND_QUEUE_CALLS_MAX = 65_536;
/** Bytes one group-commit write coalesces at most (one write syscall, one fdatasync). */
export const GROUP_COMMIT_BYTES_MAX = 8 * MiB;

/** Segments a log may have; past this the node refuses to append (compaction must run first). */
export const SEGMENTS_MAX = 1_000_000;
/** Open read handles kept per log (least recently used are closed past this). */
export const SEGMENT_READ_HANDLES_MAX = 32;
/** The sparse index keeps one entry per this many bytes of segment data (at least). */
export const SPARSE_INDEX_INTERVAL_BYTES = 64 * KiB;
/** Bytes read from a segment file in one read call while scanning or reading ranges. */
export const SEGMENT_READ_CHUNK_BYTES = 1 * MiB;
/** The most entries one `read` call returns. */
export const READ_ENTRIES_MAX = 100_000;
/** The most bytes of payload one `read` call returns (it returns at least one entry). */
export const READ_BYTES_MAX = 64 * MiB;

/** Size of `meta/state.json` at most; a larger file is refused as damaged. */
export const META_STATE_BYTES_MAX = 64 * KiB;

// ---- Segment format sizes (part of the on-disk format; changing them changes the format). ----

/** Fixed size of the segment header at the start of every segment file. */
export const SEGMENT_HEADER_BYTES = 512;
/** Room for the at-rest encryption key id in the segment header. */
export const SEGMENT_KEY_ID_BYTES_MAX = 160;
/** Room for the wrapped (encrypted) data key in the segment header. */
export const SEGMENT_WRAPPED_KEY_BYTES_MAX = 256;
/** Bytes of a record frame before its tenant id and payload: crc, length, term, index, kind, tenant length. */
export const RECORD_FRAME_HEADER_BYTES = 4 + 4 + 8 + 8 + 1 + 1;

export const Units = { KiB, MiB, GiB } as const;

// ---- Relationships, checked when this module loads. ----
assert(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT && SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
assert(RECORD_BYTES_MAX_DEFAULT <= RECORD_BYTES_MAX);
// One record, framed, must fit in one group-commit write and in a segment next to its header.
assert(RECORD_FRAME_HEADER_BYTES + TENANT_ID_BYTES_MAX + RECORD_BYTES_MAX <= GROUP_COMMIT_BYTES_MAX * 4);
assert(RECORD_FRAME_HEADER_BYTES + TENANT_ID_BYTES_MAX + RECORD_BYTES_MAX_DEFAULT <= GROUP_COMMIT_BYTES_MAX);
assert(BATCH_BYTES_MAX_DEFAULT <= BATCH_BYTES_MAX && BATCH_BYTES_MAX <= APPEND_QUEUE_BYTES_MAX);
// Offsets inside a segment are kept as unsigned 32-bit numbers in the sparse index.
assert(SEGMENT_BYTES_MAX + RECORD_BYTES_MAX * 2 < 2 ** 32);
assert(SEGMENT_HEADER_BYTES >= 64 + SEGMENT_KEY_ID_BYTES_MAX + SEGMENT_WRAPPED_KEY_BYTES_MAX);
assert(TENANT_ID_BYTES_MAX <= 255); // the frame stores the tenant length in one byte

// ---- Server settings (src/server/settings.ts, docs/configuration.md). ----
// Defaults first (the operations guide's values, except that a bare start listens on loopback only:
// DESIGN.md section 1), then hard bounds, then relationships. Durations in ms, sizes in bytes.

/** `server.bind_address`: client gRPC and HTTP health/status. The guide's 0.0.0.0 needs TLS or --insecure. */
export const BIND_ADDRESS_DEFAULT = "127.0.0.1:7000";
/** `server.cluster_address`: peer (Raft) traffic. */
export const CLUSTER_ADDRESS_DEFAULT = "127.0.0.1:7001";
/** `telemetry.metrics_address`: Prometheus `/metrics`. */
export const METRICS_ADDRESS_DEFAULT = "127.0.0.1:9090";
/** `storage.data_dir` of a bare start, relative to the working directory (`npm start` puts it in ./data). */
export const DATA_DIR_DEFAULT = "./data";
/** `server.cluster_name`. The guide's example says "production"; a bare dev node should not claim that. */
export const CLUSTER_NAME_DEFAULT = "verity";
/** `consensus.heartbeat_interval`. */
export const HEARTBEAT_INTERVAL_MS_DEFAULT = 100;
/** `consensus.election_timeout_min`: the low end of the randomized election timeout. */
export const ELECTION_TIMEOUT_MS_MIN_DEFAULT = 150;
/** `consensus.election_timeout_max`: the high end of the randomized election timeout. */
export const ELECTION_TIMEOUT_MS_MAX_DEFAULT = 300;
/** `projections.cache_size`: memory for the projection cache. */
export const PROJECTION_CACHE_BYTES_DEFAULT = 1 * GiB;
/** `projections.checkpoint_interval`: log entries between projection checkpoints. */
export const CHECKPOINT_INTERVAL_ENTRIES_DEFAULT = 10_000;

/** The largest `server.node_id` (ids travel as unsigned 32-bit numbers in peer messages). */
export const NODE_ID_MAX = 2 ** 32 - 1;
/** `server.cluster_name` is 1 to this many characters from [A-Za-z0-9_.-]. */
export const CLUSTER_NAME_BYTES_MAX = 64;
/** Any other text setting (paths, URLs, key ids, identities) is at most this many bytes. */
export const SETTING_TEXT_BYTES_MAX = 4096;
/** A config file larger than this is refused before it is parsed. */
export const CONFIG_FILE_BYTES_MAX = 1 * MiB;
/** Accepted range of `consensus.heartbeat_interval`. */
export const HEARTBEAT_INTERVAL_MS_MIN = 1;
export const HEARTBEAT_INTERVAL_MS_MAX = 10_000;
/** Accepted range of both ends of the election timeout. */
export const ELECTION_TIMEOUT_MS_LOWEST = 10;
export const ELECTION_TIMEOUT_MS_HIGHEST = 60_000;
/** Accepted range of `projections.cache_size`. */
export const PROJECTION_CACHE_BYTES_MIN = 1 * MiB;
export const PROJECTION_CACHE_BYTES_MAX = 64 * GiB;
/** Accepted range of `projections.checkpoint_interval`. */
export const CHECKPOINT_INTERVAL_ENTRIES_MIN = 1;
export const CHECKPOINT_INTERVAL_ENTRIES_MAX = 10_000_000;
/** The largest `max_tenants` accepted. */
export const TENANTS_MAX = 100_000;
/** The largest `max_streams_per_tenant` accepted. */
export const STREAMS_PER_TENANT_MAX = 10_000_000;
/** Identities in `security.admins`, `security.nodes` and `[[security.clients]]` together, at most. */
export const SECURITY_IDENTITIES_MAX = 10_000;

assert(HEARTBEAT_INTERVAL_MS_DEFAULT < ELECTION_TIMEOUT_MS_MIN_DEFAULT);
assert(ELECTION_TIMEOUT_MS_MIN_DEFAULT < ELECTION_TIMEOUT_MS_MAX_DEFAULT);
assert(HEARTBEAT_INTERVAL_MS_MIN <= HEARTBEAT_INTERVAL_MS_DEFAULT && HEARTBEAT_INTERVAL_MS_DEFAULT <= HEARTBEAT_INTERVAL_MS_MAX);
assert(ELECTION_TIMEOUT_MS_LOWEST <= ELECTION_TIMEOUT_MS_MIN_DEFAULT && ELECTION_TIMEOUT_MS_MAX_DEFAULT <= ELECTION_TIMEOUT_MS_HIGHEST);
// Every accepted heartbeat interval leaves room for an election timeout above it.
assert(HEARTBEAT_INTERVAL_MS_MAX < ELECTION_TIMEOUT_MS_HIGHEST);
assert(PROJECTION_CACHE_BYTES_MIN <= PROJECTION_CACHE_BYTES_DEFAULT && PROJECTION_CACHE_BYTES_DEFAULT <= PROJECTION_CACHE_BYTES_MAX);
assert(CHECKPOINT_INTERVAL_ENTRIES_MIN <= CHECKPOINT_INTERVAL_ENTRIES_DEFAULT);
assert(CHECKPOINT_INTERVAL_ENTRIES_DEFAULT <= CHECKPOINT_INTERVAL_ENTRIES_MAX);
assert(1 <= TENANTS_MAX_DEFAULT && TENANTS_MAX_DEFAULT <= TENANTS_MAX);
assert(1 <= STREAMS_PER_TENANT_MAX_DEFAULT && STREAMS_PER_TENANT_MAX_DEFAULT <= STREAMS_PER_TENANT_MAX);
// A record must fit in a batch, by default and at the bounds.
assert(RECORD_BYTES_MAX_DEFAULT <= BATCH_BYTES_MAX_DEFAULT && RECORD_BYTES_MAX <= BATCH_BYTES_MAX);
assert(CLUSTER_NAME_BYTES_MAX <= SETTING_TEXT_BYTES_MAX && SETTING_TEXT_BYTES_MAX < CONFIG_FILE_BYTES_MAX);

// ---- Consensus (src/consensus). Config defaults first, then hard bounds, then relationships. ----

/** `election_ticks`: a follower that hears nothing for this many ticks (randomized up to twice it) campaigns. */
export const ELECTION_TICKS_DEFAULT = 10;
/** `heartbeat_ticks`: a leader sends heartbeats every this many ticks. */
export const HEARTBEAT_TICKS_DEFAULT = 1;
/** `max_entries_per_rpc`: the most entries one AppendEntries message carries. */
export const ENTRIES_PER_RPC_MAX_DEFAULT = 100;
/** The most entries one AppendEntries message may carry, whatever the config says. */
export const ENTRIES_PER_RPC_MAX = 10_000;
/** Payload bytes one AppendEntries message carries at most (it carries at least one entry). */
export const APPEND_RPC_BYTES_MAX = 16 * MiB;
/** AppendEntries messages in flight to one follower (unacknowledged) at most: the pipeline depth. */
export const INFLIGHT_MESSAGES_MAX = 256;
/** Payload bytes in flight to one follower at most. */
export const INFLIGHT_BYTES_MAX = 32 * MiB;
/** Voters plus learners in one cluster at most. */
export const CLUSTER_NODES_MAX = 16;
/** Entries the core keeps in memory that are durable and already handed out to apply (the read cache). */
export const ENTRY_CACHE_ENTRIES_MAX = 4096;
/** Payload bytes of that cache at most. */
export const ENTRY_CACHE_BYTES_MAX = 64 * MiB;
/** Payload bytes proposed but not yet durable at most; past it `propose` returns QUOTA_EXCEEDED. */
export const UNSTABLE_BYTES_MAX = 128 * MiB;
/** Entries one `propose` call may carry at most. */
export const PROPOSAL_ENTRIES_MAX = 10_000;
/** Payload bytes of committed entries one Ready batch hands out to apply at most (at least one entry). */
export const APPLY_BATCH_BYTES_MAX = 16 * MiB;
/** Read-index requests waiting for leadership confirmation at most; past it `readIndex` returns QUOTA_EXCEEDED. */
export const READ_INDEX_PENDING_MAX = 4096;
/**
 * Messages waiting in the core for the next Ready at most. Past it new messages are dropped (Raft
 * tolerates lost messages; the driver should take a Ready after every input anyway).
 */
export const OUTBOX_MESSAGES_MAX = 65_536;
/** Outstanding fetch requests (entries the core asked the driver to load from disk) at most. */
export const FETCH_REQUESTS_MAX = 64;
/**
 * Term runs the in-memory term index holds at most. One run per term that has entries, so this
 * allows a million elections that each wrote a no-op; at 16 bytes a run it stays under 32 MiB.
 */
export const TERM_RUNS_MAX = 1_000_000;
/** Membership configurations the core remembers at most: the latest committed one plus those not yet committed. */
export const MEMBERSHIP_HISTORY_MAX = 64;

assert(ELECTION_TICKS_DEFAULT > HEARTBEAT_TICKS_DEFAULT && HEARTBEAT_TICKS_DEFAULT >= 1);
assert(1 <= ENTRIES_PER_RPC_MAX_DEFAULT && ENTRIES_PER_RPC_MAX_DEFAULT <= ENTRIES_PER_RPC_MAX);
// A full AppendEntries message must fit in the in-flight byte window, or a follower could never be sent one.
assert(APPEND_RPC_BYTES_MAX <= INFLIGHT_BYTES_MAX);
// One record of the largest size must fit in one AppendEntries message and in one apply batch.
assert(RECORD_BYTES_MAX <= APPEND_RPC_BYTES_MAX && RECORD_BYTES_MAX <= APPLY_BATCH_BYTES_MAX);
// One client batch must be proposable without hitting the unstable bound on an idle leader.
assert(BATCH_BYTES_MAX <= UNSTABLE_BYTES_MAX);
assert(CLUSTER_NODES_MAX >= 7); // the guide's largest cluster, plus room for learners
assert(MEMBERSHIP_HISTORY_MAX >= 2 && FETCH_REQUESTS_MAX >= CLUSTER_NODES_MAX);
// A full pipeline to every peer fits in the outbox, with room for heartbeats and votes.
assert(OUTBOX_MESSAGES_MAX >= 2 * INFLIGHT_MESSAGES_MAX * CLUSTER_NODES_MAX);

// ---- Events (docs/design/events.md). ----

/** Events one Append may carry (one log entry each); bounds the batch apply buffers. */
export const EVENTS_PER_BATCH_MAX = 10_000;
/** Decided request ids a tenant remembers for deduplication (evicted oldest position first). */
export const REQUEST_IDS_PER_TENANT_MAX = 100_000;

assert(EVENTS_PER_BATCH_MAX >= 100); // the cluster benchmark's 100-event batches

// ---- The deterministic simulator (src/sim). ----

/** Events one seed may process at most; a run that needs more is reported as a liveness failure. */
export const SIM_EVENTS_PER_SEED_MAX = 5_000_000;
/** Events waiting in the simulator's heap at most. */
export const SIM_HEAP_EVENTS_MAX = 1_000_000;
/** Messages held for a paused node at most; later ones are dropped, as a full socket buffer would. */
export const SIM_HELD_MESSAGES_MAX = 4096;
/** Event-loop turns one drain may take at most before the simulator declares the run stuck. */
export const SIM_DRAIN_ROUNDS_MAX = 10_000;
/**
 * Membership changes one seed may make at most: well past MEMBERSHIP_HISTORY_MAX, to show that a
 * restart starts from the committed configuration saved in meta (driver-start.ts) rather than from
 * every MEMBERSHIP entry in the log.
 */
export const SIM_MEMBERSHIP_CHANGES_MAX = 200;
/** Ticks (of the slowest clock) the liveness phase may take to converge. */
export const SIM_LIVENESS_TICKS_MAX = 600;
/** Trace lines printed with a failure. */
export const SIM_TRACE_LINES = 40;

assert(SIM_MEMBERSHIP_CHANGES_MAX > MEMBERSHIP_HISTORY_MAX);

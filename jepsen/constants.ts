/**
 * Every bound of the jepsen-lite harness, in one place (STYLE.md section 3): queues, histories,
 * loops, retries and waits. Names put the qualifier last. Relationships are asserted at the bottom.
 */

import { strict as assert } from "node:assert";

// ---- Cluster ----

/**
 * Node ids (and certificate identities node-1 ..) the harness may use, membership changes and
 * replacements included. Ids are never reused, so a long run with membership changes needs many
 * (and so meets the cluster's bound on peer links, CLUSTER_NODES_MAX = 15, if links to removed
 * members are never dropped).
 */
export const NODE_IDS_MAX = 240;
/** The cluster sizes `--nodes` accepts. */
export const CLUSTER_SIZES = [3, 5] as const;
/** Ports inside a node's own network namespace (each namespace has its own address). */
export const NAMESPACE_CLIENT_PORT = 7000;
export const NAMESPACE_CLUSTER_PORT = 7001;
export const NAMESPACE_METRICS_PORT = 9090;
/** Loopback mode: ports are drawn from below Linux's ephemeral range. */
export const LOOPBACK_PORT_MIN = 20_000;
export const LOOPBACK_PORT_MAX = 32_000;
export const PORT_ATTEMPTS_MAX = 200;
/** Segments are sealed at this size, so that a short run has sealed segments to damage. */
export const SEGMENT_SIZE = "1MB";
/** Streams a tenant may have: the workload rotates streams, so raise the default of 100. */
export const STREAMS_PER_TENANT_LIMIT = 1_000_000;
/** How long a node may take to answer /status. */
export const STATUS_TIMEOUT_MS = 1_000;
/** How long one admin call may take (a membership change waits for its commit). */
export const ADMIN_TIMEOUT_MS = 20_000;
/** Bytes of a node's output kept in memory (the whole output goes to its log file). */
export const NODE_OUTPUT_TAIL_BYTES = 64 * 1024;
/** Waiting for a first leader, and for a node to come up after a (re)start. */
export const LEADER_WAIT_MS = 30_000;
export const NODE_UP_WAIT_MS = 30_000;
/** A (re)started node that exits within this long is taken to have refused to start. */
export const START_REFUSAL_WAIT_MS = 6_000;
/** SIGTERM, then SIGKILL after this long. */
export const STOP_GRACE_MS = 10_000;
/** Polling interval of every wait loop. */
export const POLL_MS = 200;

// ---- Network namespaces ----

/** Third octets tried for the run's 10.213.X.0/24 subnet. */
export const SUBNET_OCTETS_MAX = 250;
/** Commands (ip ...) time out after this long. */
export const IP_COMMAND_TIMEOUT_MS = 10_000;

// ---- Workload ----

export const TENANTS = ["jepsen-a", "jepsen-b", "jepsen-c"] as const;
/** Streams being written per tenant at any time. */
export const ACTIVE_STREAMS_PER_TENANT = 4;
/** A stream is retired (a new one takes its place) once it holds this many events. */
export const STREAM_EVENTS_MAX = 120;
/** Retired streams remembered for occasional re-reads, per tenant. */
export const RETIRED_STREAMS_KEPT_MAX = 32;
/** Client slots (concurrent logical processes) per node. */
export const SLOTS_PER_NODE = 3;
/** Events per append, at most. */
export const EVENTS_PER_APPEND_MAX = 3;
/** Tries of one client call (the library retries UNAVAILABLE with the same request id). */
export const CLIENT_ATTEMPTS = 3;
/** The default and the largest `--rate` (operations per second, all clients together). */
export const RATE_DEFAULT = 40;
export const RATE_MAX = 1_000;
/** Operations in flight at the end of a run get this long before they are recorded as info. */
export const DRAIN_MS_MAX = 50_000;
/** Events one read asks for (streams are shorter). */
export const READ_LIMIT = 1_000;
/** Events per ReadAll page in final reads. */
export const READ_ALL_PAGE = 5_000;
/** Pages of final ReadAll per tenant, at most. */
export const READ_ALL_PAGES_MAX = 10_000;
/** Concurrent final stream reads per node. */
export const FINAL_READ_CONCURRENCY = 8;
/** Subscriptions per tenant. */
export const SUBSCRIBERS_PER_TENANT = 1;
/** Subscription deliveries are written to the history in batches of at most this many events, or every SUB_FLUSH_MS. */
export const SUB_BATCH_EVENTS_MAX = 500;
export const SUB_FLUSH_MS = 1_000;
/** Subscription restarts (after the library gave up) per subscriber, at most. */
export const SUB_RESTARTS_MAX = 10_000;
/** Wait between a failed subscription and its restart on another node. */
export const SUB_RESTART_DELAY_MS = 500;

// ---- Nemesis ----

/** Quiet time between faults. */
export const NEMESIS_QUIET_MS_MIN = 2_000;
export const NEMESIS_QUIET_MS_MAX = 5_000;
/** How long a fault is held. */
export const FAULT_HOLD_MS_MIN = 2_000;
export const FAULT_HOLD_MS_MAX = 8_000;
/** Pauses: longer than the election timeout (300 ms at most by default). */
export const PAUSE_MS_MIN = 1_500;
export const PAUSE_MS_MAX = 8_000;
/** How long a killed node stays down. */
export const DOWN_MS_MIN = 500;
export const DOWN_MS_MAX = 5_000;
/** Chance that a lose-unsynced crash takes down every node at once (a power loss of the cluster). */
export const POWER_LOSS_ALL_PROBABILITY = 0.2;
/** lose-unsynced: how often each node's SQLite databases are copied (what a crash may roll them back to). */
export const SQLITE_COPY_MS_MIN = 2_000;
export const SQLITE_COPY_MS_MAX = 6_000;
/** Chance, in --nemesis all, that a second fault is laid over the first. */
export const OVERLAY_PROBABILITY = 0.3;
/** Bits flipped per corrupt fault, at most. */
export const CORRUPT_BIT_FLIPS_MAX = 4;
/** A membership change (add, catch up, promote; or remove) must finish within this long. */
export const MEMBERSHIP_STEP_MS_MAX = 60_000;
/** Pause between membership changes. */
export const MEMBERSHIP_PAUSE_MS_MIN = 6_000;
export const MEMBERSHIP_PAUSE_MS_MAX = 15_000;
/** Voters added above the starting size, at most. */
export const EXTRA_VOTERS_MAX = 1;
/** Faults per run, at most (a bound on the nemesis loop). */
export const FAULTS_MAX = 100_000;

// ---- Settle and final reads ----

/** After healing: how long the cluster may take to agree on one commit index, everything applied. */
export const SETTLE_MS_MAX = 90_000;
/** A new member must catch up within this long. */
export const CATCH_UP_MS_MAX = 120_000;
/** A node restarted empty (Single Node Failure) must catch up within this long, or it is replaced. */
export const REJOIN_CATCH_UP_MS_MAX = 30_000;

// ---- Results ----

/** Anomalies of one kind printed by --json and shown in the report (checker.json keeps them all). */
export const ANOMALIES_SHOWN_MAX = 50;
/** Anomalies of one kind kept at all (bounds the checker's memory on a badly broken run). */
export const ANOMALIES_KEPT_MAX = 10_000;
/** Width of the report's time buckets. */
export const REPORT_BUCKET_MS = 1_000;

// ---- Relationships ----

assert(LOOPBACK_PORT_MIN < LOOPBACK_PORT_MAX && LOOPBACK_PORT_MAX < 32_768, "loopback ports stay below the ephemeral range");
assert(Math.max(...CLUSTER_SIZES) + EXTRA_VOTERS_MAX < NODE_IDS_MAX, "membership changes need spare node ids");
assert(NODE_IDS_MAX + 10 <= 250, "node addresses are 10.213.X.(10 + id)");
assert(NEMESIS_QUIET_MS_MIN <= NEMESIS_QUIET_MS_MAX && FAULT_HOLD_MS_MIN <= FAULT_HOLD_MS_MAX);
assert(PAUSE_MS_MIN > 300, "a pause must outlast the default election timeout (300 ms at most)");
assert(STREAM_EVENTS_MAX + EVENTS_PER_APPEND_MAX < READ_LIMIT, "one read returns a whole stream");
assert(ANOMALIES_SHOWN_MAX <= ANOMALIES_KEPT_MAX);

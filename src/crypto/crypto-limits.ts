/**
 * Every bound of at-rest encryption (STYLE.md section 3). They belong in src/limits.ts; they live
 * here until the encryption is wired into the log, so that this groundwork touches no shared file.
 * Names put the qualifier last. Relationships are asserted at the bottom, when the module loads.
 */

import { strict as assert } from "node:assert";
import { SEGMENT_BYTES_MAX, SEGMENT_KEY_ID_BYTES_MAX, SEGMENT_WRAPPED_KEY_BYTES_MAX, RECORD_FRAME_HEADER_BYTES } from "../limits.js";

const KiB = 1024;

// ---- AES-256-GCM (part of the on-disk format: changing these changes the format). ----

/** A data key (and a local master key version) is an AES-256 key. */
export const DATA_KEY_BYTES = 32;
/** GCM nonce: 96 bits, the size GCM is defined for without an extra GHASH pass (NIST SP 800-38D 5.2.1.1). */
export const GCM_NONCE_BYTES = 12;
/** GCM authentication tag: the full 128 bits; shorter tags weaken forgery resistance. */
export const GCM_TAG_BYTES = 16;
/** Bytes a sealed record carries beyond its plaintext: its random nonce and its tag. */
export const RECORD_SEAL_OVERHEAD_BYTES = GCM_NONCE_BYTES + GCM_TAG_BYTES;

/**
 * Records one data key may seal at most. With random 96-bit nonces the chance that two of n nonces
 * collide is below n^2 / 2^97; NIST SP 800-38D 8.3 caps random-IV GCM at 2^32 invocations per key
 * (collision chance below 2^-33). A key serves one segment, so this is never near (see below).
 */
export const RECORD_SEALS_PER_KEY_MAX = 2 ** 32;
/** Random bytes drawn from the operating system at once for record nonces (one syscall per 1024 records). */
export const NONCE_POOL_BYTES = 1024 * GCM_NONCE_BYTES;
/**
 * How many times the records of one full segment may be written under its key, counting rewrites
 * of a truncated tail (torn-tail recovery, Raft suffix truncation), before RECORD_SEALS_PER_KEY_MAX.
 * Checked below for the smallest possible sealed record in the largest possible segment.
 */
export const SEGMENT_REWRITES_PER_KEY_MAX = 64;

// ---- Sealing units of the log (docs/log-format.md, "In an encrypted segment"; part of the format). ----

/**
 * A group commit's records are sealed in units, one AEAD call per unit: a unit takes records
 * while their payloads total at most this many bytes (a larger record is a unit by itself).
 */
export const UNIT_PAYLOAD_BYTES_MAX = 64 * KiB;
/** Records in one unit at most (the frame stores the position and count in 16 bits each). */
export const UNIT_RECORDS_MAX = 1024;
/** Bytes every frame of an encrypted segment carries beyond a plaintext frame: position (2), count (2), bytes back to the unit's first frame (4). */
export const UNIT_FRAME_FIELDS_BYTES = 8;
/** Decrypted units the log keeps for nearby reads (an LRU), and the bytes of payload they may hold at most. */
export const DECRYPTED_UNITS_CACHED_MAX = 64;
export const DECRYPTED_UNIT_CACHE_BYTES_MAX = 8 * 1024 * KiB;

// ---- Wrapped keys and key ids (bounded by the room the segment header has for them). ----

/** A KMS key id (ARN, local key id) stored beside a wrapped key at most this many UTF-8 bytes. */
export const KMS_KEY_ID_BYTES_MAX = SEGMENT_KEY_ID_BYTES_MAX;
/** A wrapped data key at most this many bytes (an AWS KMS ciphertext blob of a 32-byte key is about 184). */
export const WRAPPED_KEY_BYTES_MAX = SEGMENT_WRAPPED_KEY_BYTES_MAX;
/** Each encryption-context field (cluster id, file identity) at most this many UTF-8 bytes. */
export const ENCRYPTION_CONTEXT_FIELD_BYTES_MAX = 256;
/** Earlier KMS keys (kms_previous_key_ids) a provider may still unwrap with while a move to a new key is under way. */
export const KMS_PREVIOUS_KEY_IDS_MAX = 8;

// ---- The local provider's master key file. ----

/** A master key file larger than this is refused before it is parsed. */
export const LOCAL_KEY_FILE_BYTES_MAX = 64 * KiB;
/** Key versions one master key file holds at most (each rotation adds one). */
export const LOCAL_KEY_VERSIONS_MAX = 256;
/** Upper bound of the JSON of one key version (number, date, base64 of 32 bytes, punctuation). */
export const LOCAL_KEY_VERSION_JSON_BYTES_MAX = 160;

// ---- The cache of unwrapped data keys (memory only). ----

/** Unwrapped data keys kept in memory by default: 4096 x 32 bytes. One per open segment or projection. */
export const DATA_KEY_CACHE_ENTRIES_DEFAULT = 4096;
/** The most unwrapped data keys any configuration may keep in memory. */
export const DATA_KEY_CACHE_ENTRIES_MAX = 1_000_000;
/**
 * An unwrapped key is used from the cache for at most this long, then unwrapped again by the KMS:
 * a key revoked in the KMS stops working for files opened later within this time.
 */
export const DATA_KEY_CACHE_AGE_MS_DEFAULT = 10 * 60_000;
/** Distinct unwraps waiting on the KMS at once that share one call per key; past it calls are not shared. */
export const DATA_KEY_UNWRAPS_INFLIGHT_MAX = 256;

// ---- Talking to a KMS. ----

/** Attempts at reaching the KMS when the node starts (describe the key) before it gives up. */
export const KMS_START_ATTEMPTS_MAX = 8;
/** First delay between those attempts; it doubles up to KMS_RETRY_DELAY_MS_MAX (with jitter). */
export const KMS_RETRY_DELAY_MS_INITIAL = 250;
export const KMS_RETRY_DELAY_MS_MAX = 8_000;
/** Attempts the AWS SDK makes for one call (its own retry of throttling, 5xx and network errors). */
export const AWS_KMS_SDK_ATTEMPTS_MAX = 3;
/** TCP connect timeout of one AWS KMS request. */
export const AWS_KMS_CONNECT_TIMEOUT_MS = 2_000;
/** Time one AWS KMS request may take once connected. */
export const AWS_KMS_REQUEST_TIMEOUT_MS = 5_000;
/** Time one Cloud KMS or Key Vault request (one attempt) may take, connecting included. */
export const CLOUD_KMS_REQUEST_TIMEOUT_MS = 5_000;
/** Attempts the GCP and Azure SDKs make for one call (their own retry of UNAVAILABLE, 429, 5xx, network errors). */
export const CLOUD_KMS_SDK_ATTEMPTS_MAX = 3;
/** First delay between those attempts (the SDKs add jitter and double it, up to CLOUD_KMS_SDK_RETRY_DELAY_MS_MAX). */
export const CLOUD_KMS_SDK_RETRY_DELAY_MS_INITIAL = 200;
export const CLOUD_KMS_SDK_RETRY_DELAY_MS_MAX = 2_000;
/** How long the azure-keyvault provider keeps using the key version it last saw as current before asking again. */
export const AZURE_KEY_VERSION_REFRESH_MS = 60_000;
/** Key Vault CryptographyClients (one per key version in use) kept open at once; the least recently used is dropped. */
export const AZURE_KEY_CLIENTS_MAX = 64;

// ---- Chunked encryption of whole files (projection snapshots, backups). ----

/** Plaintext bytes per chunk of an encrypted file. */
export const FILE_CHUNK_BYTES = 64 * KiB;
/** Chunks one encrypted file may have (64 KiB x 2^32 = 256 TiB); the chunk index is in every chunk's AAD. */
export const FILE_CHUNKS_MAX = 2 ** 32;

// ---- Relationships, checked when this module loads. ----

/** The smallest sealed record frame: frame header, empty tenant, one payload byte, nonce and tag. */
const SEALED_FRAME_BYTES_MIN = RECORD_FRAME_HEADER_BYTES + 1 + RECORD_SEAL_OVERHEAD_BYTES;
// A segment, fully rewritten SEGMENT_REWRITES_PER_KEY_MAX times, stays under the random-nonce bound.
assert((SEGMENT_BYTES_MAX / SEALED_FRAME_BYTES_MIN) * SEGMENT_REWRITES_PER_KEY_MAX < RECORD_SEALS_PER_KEY_MAX);
assert(NONCE_POOL_BYTES % GCM_NONCE_BYTES === 0);
// A full key file fits in the bytes a key file may have.
assert(LOCAL_KEY_VERSIONS_MAX * LOCAL_KEY_VERSION_JSON_BYTES_MAX + 4 * KiB <= LOCAL_KEY_FILE_BYTES_MAX);
assert(DATA_KEY_CACHE_ENTRIES_DEFAULT <= DATA_KEY_CACHE_ENTRIES_MAX);
assert(KMS_RETRY_DELAY_MS_INITIAL <= KMS_RETRY_DELAY_MS_MAX);
assert(AWS_KMS_CONNECT_TIMEOUT_MS <= AWS_KMS_REQUEST_TIMEOUT_MS);
assert(CLOUD_KMS_SDK_RETRY_DELAY_MS_INITIAL <= CLOUD_KMS_SDK_RETRY_DELAY_MS_MAX && CLOUD_KMS_SDK_ATTEMPTS_MAX >= 1);
// Every key version a provider may be asked to unwrap with (current, previous keys) has room in the client cache.
assert(AZURE_KEY_CLIENTS_MAX > KMS_PREVIOUS_KEY_IDS_MAX + 1);
assert(FILE_CHUNK_BYTES <= 2 ** 32 - 1 - RECORD_SEAL_OVERHEAD_BYTES);
// Position and count fit 16 bits; a full multi-record unit fits the read chunk and the cache.
assert(UNIT_RECORDS_MAX <= 0xffff && UNIT_PAYLOAD_BYTES_MAX <= DECRYPTED_UNIT_CACHE_BYTES_MAX / 8);
// A unit seals at least one record, so units per key stay below the record bound checked above.
assert(UNIT_PAYLOAD_BYTES_MAX >= 1);

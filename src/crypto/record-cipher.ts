/**
 * AES-256-GCM for single records: one data key per segment, one random 96-bit nonce per sealed
 * record, stored in front of the ciphertext.
 *
 * The log no longer seals records one by one: it seals them in units, one AEAD call per unit
 * (src/crypto/unit-cipher.ts; segment format version 3), because a call costs 3 to 4 us of CPU
 * whatever the size (docs/encryption.md, "Measured costs"). This class stays as the per-record
 * primitive the KMS provider tests seal and open records with; the nonce argument below is the one
 * the unit cipher relies on too.
 *
 * Why random nonces, and not one derived from the record's position: a position (segment, index or
 * byte offset) is NOT written only once under a segment's key. Torn-tail recovery cuts a record that
 * was written but not synced and the next append writes the same index at the same offset, with
 * different content when a new leader sent a different entry; Raft suffix truncation does the same
 * to records that were synced. Both happen in the segment being appended to, under its existing key.
 * A deterministic nonce would then encrypt two plaintexts with one (key, nonce): their XOR leaks, and
 * GCM's authentication key can be recovered, so records could be forged. The old ciphertext need not
 * survive in the file for this to matter: it may be in a backup, a replica's copy or freed disk blocks.
 * A random nonce makes a rewrite a fresh encryption. The price is 12 bytes per record (28 with the
 * tag): 11% of a 256-byte record, 0.7% of a 4 KiB one (docs/encryption.md has measurements).
 *
 * Random nonces are safe up to RECORD_SEALS_PER_KEY_MAX (2^32) records per key; a key serves one
 * segment, so even the smallest records filling the largest segment 64 times over stay far below it
 * (asserted in crypto-limits.ts). Counting seals here catches a caller that keeps a key too long.
 *
 * The associated data binds each record to where it belongs and to its cleartext frame fields:
 *   "VRTYREC1" | cluster id (16) | segment sequence (u32) | index (u64) | term (u64) | kind (u8)
 *   | tenant id length (u8) | tenant id (0..64 bytes, when the frame keeps it in the clear)
 * so a record copied to another index, segment or cluster, or with its term, kind or tenant edited
 * (the frame's CRC32C is not a MAC), fails authentication. A failure is a CorruptionError naming the file,
 * the byte offset and the index: never garbage.
 */

import type { KeyObject } from "node:crypto";
import { createCipheriv, createDecipheriv, createSecretKey, randomFillSync } from "node:crypto";
import { CorruptionError, InvalidArgumentError, invariant } from "../errors.js";
import { TENANT_ID_BYTES_MAX } from "../limits.js";
import {
  DATA_KEY_BYTES,
  GCM_NONCE_BYTES,
  GCM_TAG_BYTES,
  NONCE_POOL_BYTES,
  RECORD_SEAL_OVERHEAD_BYTES,
  RECORD_SEALS_PER_KEY_MAX,
} from "./crypto-limits.js";

const ALGORITHM = "aes-256-gcm";
const AAD_MAGIC = Buffer.from("VRTYREC1", "latin1");
const CLUSTER_ID_BYTES = 16;
/** AAD: magic (8), cluster id (16), segment sequence (4), index (8), term (8), kind (1), tenant length (1), tenant. */
const AAD_RECORD_OFFSET = AAD_MAGIC.length + CLUSTER_ID_BYTES + 4;
const AAD_TENANT_OFFSET = AAD_RECORD_OFFSET + 8 + 8 + 1 + 1;
const AAD_BYTES_MAX = AAD_TENANT_OFFSET + TENANT_ID_BYTES_MAX;
const NO_TENANT = new Uint8Array(0);
const TWO_32 = 2 ** 32;

/** The cleartext frame fields of a record, authenticated with its sealed body. */
export interface RecordIdentity {
  /** The record's log index (safe integer >= 1). */
  readonly index: number;
  /** The record's term (safe integer >= 0). */
  readonly term: number;
  /** The record's kind (1..255). */
  readonly kind: number;
  /**
   * The tenant id as the frame stores it in the clear (UTF-8, at most TENANT_ID_BYTES_MAX), so the
   * log can filter by tenant without decrypting; empty or absent when it is inside the ciphertext.
   */
  readonly tenant?: Uint8Array;
}

/** Where a sealed record was read from, for the CorruptionError. */
export interface RecordLocation {
  /** The segment file, relative to the data directory (it changes when the segment is sealed). */
  readonly file: string;
  /** Byte offset of the record's frame in that file. */
  readonly offset: number;
}

export interface SegmentRecordCipherOptions {
  /** The segment's 32-byte data key (copied into a KeyObject; the caller may zero its buffer). */
  readonly dataKey: Uint8Array;
  /** The 16-byte cluster id from the segment header. */
  readonly clusterId: Uint8Array;
  /** The segment's sequence number from its header. */
  readonly segmentSequence: number;
  /** Injected source of nonces for tests; defaults to the operating system's CSPRNG. */
  readonly randomFill?: (buffer: Buffer) => void;
}

/** Sealed size of a record body of `plaintextBytes`. */
export function sealedBytes(plaintextBytes: number): number {
  return plaintextBytes + RECORD_SEAL_OVERHEAD_BYTES;
}

function writeU64(target: Buffer, value: number, offset: number): void {
  target.writeUInt32LE(value % TWO_32, offset);
  target.writeUInt32LE(Math.floor(value / TWO_32), offset + 4);
}

/**
 * Seals and opens the record bodies of one segment. Synchronous and single-threaded: the segment's
 * writer and readers call it from the event loop. Sealed layout: nonce (12) | ciphertext | tag (16).
 */
export class SegmentRecordCipher {
  readonly segmentSequence: number;
  private readonly key: KeyObject;
  private readonly aadBuffer = Buffer.alloc(AAD_BYTES_MAX);
  private readonly randomFill: (buffer: Buffer) => void;
  private readonly noncePool = Buffer.alloc(NONCE_POOL_BYTES);
  /** Invariant: 0 <= noncePoolOffset <= NONCE_POOL_BYTES; bytes before it are used. */
  private noncePoolOffset = NONCE_POOL_BYTES;
  /** Invariant: sealsCount <= RECORD_SEALS_PER_KEY_MAX. */
  private sealsCount = 0;

  constructor(options: SegmentRecordCipherOptions) {
    if (options.dataKey.length !== DATA_KEY_BYTES) throw new InvalidArgumentError(`a data key is ${DATA_KEY_BYTES} bytes, not ${options.dataKey.length}`);
    if (options.clusterId.length !== CLUSTER_ID_BYTES) throw new InvalidArgumentError(`a cluster id is ${CLUSTER_ID_BYTES} bytes, not ${options.clusterId.length}`);
    if (!Number.isSafeInteger(options.segmentSequence) || options.segmentSequence < 0 || options.segmentSequence >= TWO_32) {
      throw new InvalidArgumentError(`segment sequence ${options.segmentSequence} is not an unsigned 32-bit number`);
    }
    this.key = createSecretKey(Buffer.from(options.dataKey));
    this.segmentSequence = options.segmentSequence;
    this.randomFill = options.randomFill ?? ((b) => randomFillSync(b));
    AAD_MAGIC.copy(this.aadBuffer, 0);
    this.aadBuffer.set(options.clusterId, AAD_MAGIC.length);
    this.aadBuffer.writeUInt32LE(options.segmentSequence, AAD_MAGIC.length + CLUSTER_ID_BYTES);
  }

  /** Seals one record body (given as one buffer or as parts, e.g. tenant length, tenant, payload). */
  seal(identity: RecordIdentity, plaintext: Uint8Array | readonly Uint8Array[]): Buffer {
    const parts = plaintext instanceof Uint8Array ? [plaintext] : plaintext;
    let length = 0;
    for (const part of parts) length += part.length;
    const out = Buffer.allocUnsafe(sealedBytes(length));
    const end = this.sealInto(identity, parts, out, 0);
    invariant(end === out.length, "sealed length");
    return out;
  }

  /**
   * Seals into `target` at `offset` (straight into a group-commit buffer); returns the end offset.
   * `target` must have room for sealedBytes(total plaintext length).
   */
  sealInto(identity: RecordIdentity, parts: readonly Uint8Array[], target: Buffer, offset: number): number {
    invariant(this.sealsCount < RECORD_SEALS_PER_KEY_MAX, "a data key sealed RECORD_SEALS_PER_KEY_MAX records: start a new segment");
    this.sealsCount++;
    const aad = this.recordAad(identity);
    const nonce = this.nextNonce();
    nonce.copy(target, offset);
    const cipher = createCipheriv(ALGORITHM, this.key, nonce, { authTagLength: GCM_TAG_BYTES });
    cipher.setAAD(aad);
    let at = offset + GCM_NONCE_BYTES;
    for (const part of parts) {
      const encrypted = cipher.update(part);
      encrypted.copy(target, at);
      at += encrypted.length;
    }
    const rest = cipher.final();
    rest.copy(target, at);
    at += rest.length;
    cipher.getAuthTag().copy(target, at);
    return at + GCM_TAG_BYTES;
  }

  /** Opens a sealed body, or throws CorruptionError naming the file, offset and index. */
  open(identity: RecordIdentity, sealed: Uint8Array, at: RecordLocation): Buffer {
    if (sealed.length < RECORD_SEAL_OVERHEAD_BYTES) {
      throw new CorruptionError({ ...at, index: identity.index },
        `the encrypted record body is ${sealed.length} bytes, shorter than its nonce and tag (${RECORD_SEAL_OVERHEAD_BYTES} bytes)`);
    }
    const aad = this.recordAad(identity);
    const tagStart = sealed.length - GCM_TAG_BYTES;
    const decipher = createDecipheriv(ALGORITHM, this.key, sealed.subarray(0, GCM_NONCE_BYTES), { authTagLength: GCM_TAG_BYTES });
    decipher.setAAD(aad);
    decipher.setAuthTag(sealed.subarray(tagStart));
    const plaintext = decipher.update(sealed.subarray(GCM_NONCE_BYTES, tagStart));
    try {
      decipher.final();
    } catch {
      plaintext.fill(0);
      throw new CorruptionError({ ...at, index: identity.index },
        `the encrypted record (segment ${this.segmentSequence}, term ${identity.term}, kind ${identity.kind}) does not authenticate ` +
          "under the segment's data key (AES-256-GCM): its ciphertext, nonce or tag was damaged or tampered with, its cleartext " +
          "frame fields were changed, it was moved from another position, segment or cluster, or the wrong data key was used");
    }
    return plaintext;
  }

  /** Records sealed with this key by this object (for the RECORD_SEALS_PER_KEY_MAX check and metrics). */
  get seals(): number {
    return this.sealsCount;
  }

  /** The record's AAD, in this object's buffer (valid until the next call: callers are synchronous). */
  private recordAad(identity: RecordIdentity): Buffer {
    const { index, term, kind } = identity;
    const tenant = identity.tenant ?? NO_TENANT;
    if (!Number.isSafeInteger(index) || index < 1 || !Number.isSafeInteger(term) || term < 0 || !Number.isInteger(kind) ||
        kind < 1 || kind > 255 || tenant.length > TENANT_ID_BYTES_MAX) {
      throw new InvalidArgumentError(`record identity out of range: index ${index}, term ${term}, kind ${kind}, tenant id ${tenant.length} bytes`);
    }
    writeU64(this.aadBuffer, index, AAD_RECORD_OFFSET);
    writeU64(this.aadBuffer, term, AAD_RECORD_OFFSET + 8);
    this.aadBuffer[AAD_RECORD_OFFSET + 16] = kind;
    this.aadBuffer[AAD_RECORD_OFFSET + 17] = tenant.length;
    this.aadBuffer.set(tenant, AAD_TENANT_OFFSET);
    return this.aadBuffer.subarray(0, AAD_TENANT_OFFSET + tenant.length);
  }

  /** 12 fresh random bytes; the pool is refilled from the CSPRNG every 1024 records. */
  private nextNonce(): Buffer {
    if (this.noncePoolOffset + GCM_NONCE_BYTES > NONCE_POOL_BYTES) {
      this.randomFill(this.noncePool);
      this.noncePoolOffset = 0;
    }
    const nonce = this.noncePool.subarray(this.noncePoolOffset, this.noncePoolOffset + GCM_NONCE_BYTES);
    this.noncePoolOffset += GCM_NONCE_BYTES;
    return nonce;
  }
}

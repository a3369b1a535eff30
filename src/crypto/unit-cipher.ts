/**
 * AES-256-GCM for the log, one AEAD call per *unit*: the records of one group-commit write, per
 * segment, up to UNIT_PAYLOAD_BYTES_MAX of payload (docs/encryption.md, "Log records"). One data
 * key per segment, one fresh random 96-bit nonce per unit (never derived from the position: a
 * position is rewritten under the same key by torn-tail recovery and by Raft suffix truncation,
 * see record-cipher.ts for the argument, which holds unchanged for units).
 *
 * The unit's plaintext is its records' payloads, concatenated; GCM is a stream mode, so the
 * ciphertext has the same length and each record's frame holds its own slice of it
 * (src/log/record.ts). The associated data binds the unit to where it belongs and to every
 * cleartext field of its frames:
 *
 *   "VRTYUNT1" | cluster id (16) | segment sequence (u32) | first index (u64) | record count (u32)
 *   then per record: term (u64) | kind (u8) | tenant id length (u8) | tenant id | payload length (u32)
 *
 * The payload lengths are there because the frame boundaries are cleartext: without them, bytes
 * moved from one record's slice to the next (CRCs recomputed) would authenticate and change both
 * records. Indexes need no per-record field: they are first index + position, checked by the reader.
 * A unit that does not authenticate is a CorruptionError naming the file, the unit's first frame
 * offset and its first index, and the range of records it holds: never garbage.
 *
 * Random nonces are safe up to RECORD_SEALS_PER_KEY_MAX seals per key; a unit seals at least one
 * record, so the bound asserted for records in crypto-limits.ts covers units.
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
  RECORD_SEALS_PER_KEY_MAX,
  UNIT_RECORDS_MAX,
} from "./crypto-limits.js";

const ALGORITHM = "aes-256-gcm";
const AAD_MAGIC = Buffer.from("VRTYUNT1", "latin1");
const CLUSTER_ID_BYTES = 16;
const AAD_UNIT_OFFSET = AAD_MAGIC.length + CLUSTER_ID_BYTES + 4;
const AAD_RECORDS_OFFSET = AAD_UNIT_OFFSET + 8 + 4;
const AAD_RECORD_BYTES_MAX = 8 + 1 + 1 + TENANT_ID_BYTES_MAX + 4;
const AAD_BYTES_MAX = AAD_RECORDS_OFFSET + UNIT_RECORDS_MAX * AAD_RECORD_BYTES_MAX;
const TWO_32 = 2 ** 32;
/**
 * The AAD is built here, shared by every cipher: sealing and opening are synchronous on the event
 * loop, so no two calls overlap. Bounded: UNIT_RECORDS_MAX records of the largest tenant id (80 KB).
 */
const aadScratch = Buffer.alloc(AAD_BYTES_MAX);

/** The cleartext fields of one record of a unit, authenticated with the unit. */
export interface UnitRecord {
  /** Safe integer >= 0. */
  readonly term: number;
  /** 1..255. */
  readonly kind: number;
  /** The tenant id as the frame stores it in the clear (UTF-8, at most TENANT_ID_BYTES_MAX bytes). */
  readonly tenant: Uint8Array;
  /** The record's payload length (its slice of the unit's plaintext). */
  readonly payloadBytes: number;
}

/** Where a unit was read from, for the CorruptionError. */
export interface UnitLocation {
  /** The segment file, relative to the data directory. */
  readonly file: string;
  /** Byte offset of the unit's first frame. */
  readonly offset: number;
}

export interface SegmentUnitCipherOptions {
  /** The segment's 32-byte data key (copied into a KeyObject; the caller may zero its buffer). */
  readonly dataKey: Uint8Array;
  /** The 16-byte cluster id from the segment header. */
  readonly clusterId: Uint8Array;
  /** The segment's sequence number from its header. */
  readonly segmentSequence: number;
  /** Injected source of nonces for tests; defaults to the operating system's CSPRNG. */
  readonly randomFill?: (buffer: Buffer) => void;
}

/** A sealed unit: the nonce goes in its first frame, the tag in its last, the ciphertext sliced across all. */
export interface SealedUnit {
  readonly nonce: Buffer;
  readonly ciphertext: Buffer;
  readonly tag: Buffer;
}

function writeU64(target: Buffer, value: number, offset: number): void {
  target.writeUInt32LE(value % TWO_32, offset);
  target.writeUInt32LE(Math.floor(value / TWO_32), offset + 4);
}

/** Seals and opens the units of one segment. Synchronous and single-threaded (the event loop). */
export class SegmentUnitCipher {
  readonly segmentSequence: number;
  private readonly key: KeyObject;
  private readonly clusterId: Buffer;
  private readonly randomFill: (buffer: Buffer) => void;
  private readonly noncePool = Buffer.alloc(NONCE_POOL_BYTES);
  /** Invariant: 0 <= noncePoolOffset <= NONCE_POOL_BYTES; bytes before it are used. */
  private noncePoolOffset = NONCE_POOL_BYTES;
  /** Invariant: sealsCount <= RECORD_SEALS_PER_KEY_MAX. */
  private sealsCount = 0;

  constructor(options: SegmentUnitCipherOptions) {
    if (options.dataKey.length !== DATA_KEY_BYTES) throw new InvalidArgumentError(`a data key is ${DATA_KEY_BYTES} bytes, not ${options.dataKey.length}`);
    if (options.clusterId.length !== CLUSTER_ID_BYTES) throw new InvalidArgumentError(`a cluster id is ${CLUSTER_ID_BYTES} bytes, not ${options.clusterId.length}`);
    if (!Number.isSafeInteger(options.segmentSequence) || options.segmentSequence < 0 || options.segmentSequence >= TWO_32) {
      throw new InvalidArgumentError(`segment sequence ${options.segmentSequence} is not an unsigned 32-bit number`);
    }
    this.key = createSecretKey(Buffer.from(options.dataKey));
    this.clusterId = Buffer.from(options.clusterId);
    this.segmentSequence = options.segmentSequence;
    this.randomFill = options.randomFill ?? ((b) => randomFillSync(b));
  }

  /**
   * Seals one unit: `plaintext` is its records' payloads concatenated (lengths in `records`).
   * The nonce returned is fresh; the caller copies it into the unit's first frame.
   */
  seal(firstIndex: number, records: readonly UnitRecord[], plaintext: Uint8Array): SealedUnit {
    invariant(this.sealsCount < RECORD_SEALS_PER_KEY_MAX, "a data key sealed RECORD_SEALS_PER_KEY_MAX units: start a new segment");
    this.sealsCount++;
    const aad = this.unitAad(firstIndex, records, plaintext.length);
    const nonce = Buffer.from(this.nextNonce());
    const cipher = createCipheriv(ALGORITHM, this.key, nonce, { authTagLength: GCM_TAG_BYTES });
    cipher.setAAD(aad);
    const head = cipher.update(plaintext);
    const rest = cipher.final();
    const ciphertext = rest.length === 0 ? head : Buffer.concat([head, rest]);
    return { nonce, ciphertext, tag: cipher.getAuthTag() };
  }

  /** Opens a unit (all of it: a record is only returned once its whole unit authenticated), or throws CorruptionError. */
  open(firstIndex: number, records: readonly UnitRecord[], sealed: SealedUnit, at: UnitLocation): Buffer {
    const aad = this.unitAad(firstIndex, records, sealed.ciphertext.length);
    const decipher = createDecipheriv(ALGORITHM, this.key, sealed.nonce, { authTagLength: GCM_TAG_BYTES });
    decipher.setAAD(aad);
    decipher.setAuthTag(sealed.tag);
    const plaintext = decipher.update(sealed.ciphertext);
    try {
      decipher.final();
    } catch {
      plaintext.fill(0);
      const last = firstIndex + records.length - 1;
      throw new CorruptionError({ ...at, index: firstIndex },
        `the encrypted unit of ${records.length} record(s), indexes ${firstIndex}..${last} (segment ${this.segmentSequence}), ` +
          "does not authenticate under the segment's data key (AES-256-GCM): a ciphertext, nonce or tag byte was damaged or " +
          "tampered with, a cleartext frame field (term, kind, tenant, length) was changed, the unit was moved from another " +
          "position, segment or cluster, or the wrong data key was used");
    }
    return plaintext;
  }

  /** Units sealed with this key by this object. */
  get seals(): number {
    return this.sealsCount;
  }

  /** The unit's AAD, in the shared scratch buffer (valid until the next call: callers are synchronous). */
  private unitAad(firstIndex: number, records: readonly UnitRecord[], plaintextBytes: number): Buffer {
    if (!Number.isSafeInteger(firstIndex) || firstIndex < 1 || records.length < 1 || records.length > UNIT_RECORDS_MAX) {
      throw new InvalidArgumentError(`unit out of range: first index ${firstIndex}, ${records.length} records`);
    }
    const aad = aadScratch;
    AAD_MAGIC.copy(aad, 0);
    this.clusterId.copy(aad, AAD_MAGIC.length);
    aad.writeUInt32LE(this.segmentSequence, AAD_MAGIC.length + CLUSTER_ID_BYTES);
    writeU64(aad, firstIndex, AAD_UNIT_OFFSET);
    aad.writeUInt32LE(records.length, AAD_UNIT_OFFSET + 8);
    let at = AAD_RECORDS_OFFSET;
    let total = 0;
    for (const r of records) {
      if (!Number.isSafeInteger(r.term) || r.term < 0 || !Number.isInteger(r.kind) || r.kind < 1 || r.kind > 255 ||
          r.tenant.length > TENANT_ID_BYTES_MAX || !Number.isSafeInteger(r.payloadBytes) || r.payloadBytes < 0) {
        throw new InvalidArgumentError(`unit record out of range: term ${r.term}, kind ${r.kind}, tenant id ${r.tenant.length} bytes`);
      }
      writeU64(aad, r.term, at);
      aad[at + 8] = r.kind;
      aad[at + 9] = r.tenant.length;
      aad.set(r.tenant, at + 10);
      at += 10 + r.tenant.length;
      aad.writeUInt32LE(r.payloadBytes, at);
      at += 4;
      total += r.payloadBytes;
    }
    if (total !== plaintextBytes) throw new InvalidArgumentError(`unit records hold ${total} payload bytes, the unit ${plaintextBytes}`);
    return aad.subarray(0, at);
  }

  /** 12 fresh random bytes (a view into the pool: copy before the next call); refilled every 1024 units. */
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

/**
 * The log's side of at-rest encryption (docs/encryption.md, "The log"): data keys for new segments,
 * made ahead of time so that a roll never waits on the KMS, and the record cipher of an existing
 * segment from the wrapped key in its header.
 *
 * Each segment has its own data key, bound (by the KMS) to the cluster and to the segment's logical
 * identity `log/segment/<sequence>`, which does not change when sealing renames the file. Only the
 * wrapped key is stored (segment header, offset 208); the plaintext key lives in the segment's
 * SegmentUnitCipher (a KeyObject) and in the provider's bounded cache.
 *
 * Bounds: at most PREPARED_SEGMENT_KEYS_MAX keys are made ahead (one per segment a group commit can
 * fill); a key for another sequence (after a truncation went back) is dropped and zeroed.
 */

import type { AtRestEncryption } from "../crypto/at-rest.js";
import { contextFor } from "../crypto/at-rest.js";
import { segmentFileIdentity } from "../crypto/encryption-context.js";
import type { GeneratedDataKey, WrappedDataKey } from "../crypto/kms.js";
import { SegmentUnitCipher } from "../crypto/unit-cipher.js";
import { ErrorCode, VerityError, invariant } from "../errors.js";
import { GROUP_COMMIT_BYTES_MAX, SEGMENT_BYTES_MIN } from "../limits.js";
import {
  EncryptionAlgorithm,
  SEGMENT_WRAPPED_KEY_OFFSET,
  keyVersionLabel,
  plaintextEncryption,
  type SegmentHeader,
} from "./segment-header.js";

/** Keys made ahead at most: a group commit of GROUP_COMMIT_BYTES_MAX fills at most this many minimum-size segments. */
export const PREPARED_SEGMENT_KEYS_MAX = Math.ceil(GROUP_COMMIT_BYTES_MAX / SEGMENT_BYTES_MIN) + 1;

/** What a new segment gets: the header's encryption fields and the cipher for its records (none in plaintext). */
export interface SegmentKey {
  readonly encryption: SegmentHeader["encryption"];
  readonly cipher: SegmentUnitCipher | undefined;
}

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

/** Where errors about a segment's key point: the file and the header's wrapped-key offset. */
function keyLocation(file: string): { file: string; offset: number } {
  return { file, offset: SEGMENT_WRAPPED_KEY_OFFSET };
}

export class SegmentKeys {
  /** Keys being made (or made) for segments not created yet, by sequence. Invariant: size <= PREPARED_SEGMENT_KEYS_MAX. */
  private readonly prepared = new Map<number, Promise<GeneratedDataKey>>();
  private closed = false;

  constructor(
    readonly atRest: AtRestEncryption | undefined,
    private readonly clusterIdBytes: Uint8Array,
    private readonly warn: (obj: object, msg: string) => void,
  ) {}

  get enabled(): boolean {
    return this.atRest !== undefined;
  }

  /** Starts making the data key of segment `sequence` in the background, if not yet under way. */
  prepare(sequence: number): void {
    const atRest = this.atRest;
    if (atRest === undefined || this.closed || this.prepared.has(sequence)) return;
    if (this.prepared.size >= PREPARED_SEGMENT_KEYS_MAX) this.dropOutside(sequence, sequence + PREPARED_SEGMENT_KEYS_MAX);
    if (this.prepared.size >= PREPARED_SEGMENT_KEYS_MAX) return;
    const made = atRest.provider.generateDataKey(contextFor(atRest, segmentFileIdentity(sequence)));
    this.prepared.set(sequence, made);
    made.catch((e: unknown) => {
      // Forgotten so that the next prepare (or the roll itself) asks again.
      if (this.prepared.get(sequence) === made) this.prepared.delete(sequence);
      this.warn({ segment: sequence, error: e instanceof Error ? e.message : String(e) },
        "could not make the next segment's data key ahead of time; retried at the next append");
    });
  }

  /**
   * Makes sure the keys of segments `first` .. `first + count - 1` are ready, asking the KMS now for
   * any that are not. Throws UNAVAILABLE (KmsError) if the KMS cannot make them: the caller then
   * writes nothing, so no segment is ever started without its key and nothing is written in plaintext.
   */
  async ensureReady(first: number, count: number): Promise<void> {
    if (this.atRest === undefined || count === 0) return;
    invariant(count <= PREPARED_SEGMENT_KEYS_MAX, `a group commit needs ${count} new segments`);
    this.dropOutside(first, first + PREPARED_SEGMENT_KEYS_MAX);
    const pending: Promise<GeneratedDataKey>[] = [];
    for (let s = first; s < first + count; s++) {
      this.prepare(s);
      const p = this.prepared.get(s);
      invariant(p !== undefined || this.closed, "a prepared key within the bound");
      if (p !== undefined) pending.push(p);
    }
    try {
      for (const p of pending) await p;
    } catch (e) {
      throw new VerityError(ErrorCode.UNAVAILABLE,
        `cannot start a new log segment: its data key could not be made by the KMS (${e instanceof Error ? e.message : String(e)}). ` +
          "Nothing was written (an encrypted log never falls back to plaintext); the append can be retried once the KMS answers",
        { cause: e });
    }
  }

  /** The key material of a new segment `sequence` (prepared ahead when possible). */
  async forNewSegment(sequence: number): Promise<SegmentKey> {
    const atRest = this.atRest;
    if (atRest === undefined) return { encryption: plaintextEncryption(), cipher: undefined };
    this.prepare(sequence);
    const pending = this.prepared.get(sequence);
    const key = pending !== undefined ? await pending : await atRest.provider.generateDataKey(contextFor(atRest, segmentFileIdentity(sequence)));
    this.prepared.delete(sequence);
    try {
      return {
        encryption: {
          algorithm: EncryptionAlgorithm.AES_256_GCM,
          keyId: utf8.encode(key.keyId),
          wrappedKey: Buffer.from(key.wrapped),
          keyVersion: keyVersionLabel(key.keyVersion),
        },
        cipher: new SegmentUnitCipher({ dataKey: key.plaintext, clusterId: this.clusterIdBytes, segmentSequence: sequence }),
      };
    } finally {
      key.plaintext.fill(0);
    }
  }

  /**
   * The cipher of an existing segment, from its header; undefined for a plaintext segment. Throws
   * CorruptionError (the wrapped key does not authenticate: tampered, another file's or cluster's,
   * another master key) or KmsError; FAILED_PRECONDITION when the segment is encrypted and this
   * node has no key provider.
   */
  async cipherFor(header: SegmentHeader, file: string): Promise<SegmentUnitCipher | undefined> {
    if (header.encryption.algorithm === EncryptionAlgorithm.NONE) return undefined;
    const atRest = this.atRest;
    if (atRest === undefined) throw encryptedWithoutProvider(file);
    const dataKey = await atRest.provider.unwrap(header.encryption.wrappedKey, contextFor(atRest, segmentFileIdentity(header.sequence)), {
      keyId: utf8Decoder.decode(header.encryption.keyId),
      location: keyLocation(file),
    });
    try {
      return new SegmentUnitCipher({ dataKey, clusterId: this.clusterIdBytes, segmentSequence: header.sequence });
    } finally {
      dataKey.fill(0);
    }
  }

  /**
   * The segment's data key re-wrapped under the KMS key's current version (rotation), or undefined
   * when the provider returned it unchanged (already current) or the segment is plaintext.
   */
  async rewrap(header: SegmentHeader, file: string): Promise<SegmentHeader["encryption"] | undefined> {
    if (header.encryption.algorithm === EncryptionAlgorithm.NONE) return undefined;
    const atRest = this.atRest;
    if (atRest === undefined) throw encryptedWithoutProvider(file);
    const next: WrappedDataKey = await atRest.provider.rewrap(header.encryption.wrappedKey, contextFor(atRest, segmentFileIdentity(header.sequence)), {
      keyId: utf8Decoder.decode(header.encryption.keyId),
      location: keyLocation(file),
    });
    const keyId = utf8.encode(next.keyId);
    const label = keyVersionLabel(next.keyVersion);
    if (Buffer.from(next.wrapped).equals(Buffer.from(header.encryption.wrappedKey)) &&
        Buffer.from(keyId).equals(Buffer.from(header.encryption.keyId)) && label === (header.encryption.keyVersion ?? label)) {
      return undefined;
    }
    return { algorithm: EncryptionAlgorithm.AES_256_GCM, keyId, wrappedKey: Buffer.from(next.wrapped), keyVersion: label };
  }

  /** Forgets prepared keys (zeroing them once they arrive). */
  close(): void {
    this.closed = true;
    this.dropOutside(0, 0);
  }

  /** Forgets (and zeroes) prepared keys for sequences outside [from, to): a truncation went back, or closing. */
  private dropOutside(from: number, to: number): void {
    for (const [s, p] of this.prepared) {
      if (s >= from && s < to) continue;
      this.prepared.delete(s);
      p.then((k) => k.plaintext.fill(0), () => undefined);
    }
  }
}

/** Opening or reading an encrypted segment on a node without `[encryption]`. */
export function encryptedWithoutProvider(file: string): VerityError {
  return new VerityError(ErrorCode.FAILED_PRECONDITION,
    `${file} is encrypted (its header names a KMS key) but this node has no key provider: set [encryption] enabled = true ` +
      "with the kms_provider and kms_key_id that wrote it (docs/encryption.md). Encrypted segments are never served without their key.");
}

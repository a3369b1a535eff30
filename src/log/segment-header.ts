/**
 * The segment header: the first SEGMENT_HEADER_BYTES bytes of every segment file, little-endian.
 *
 *   offset  size  field
 *   0       8     magic "VRTYSEG\0"
 *   8       2     format version (1 plaintext, 3 encrypted: records sealed in units)
 *   10      2     header length (512)
 *   12      4     sequence number of the segment (its file name once sealed)
 *   16      16    cluster id (UUID bytes)
 *   32      8     base index: the index of the first record in this segment
 *   40      1     encryption algorithm: 0 none, 1 AES-256-GCM (filled by at-rest encryption)
 *   41      1     reserved
 *   42      2     key id length
 *   44      2     wrapped data key length
 *   46      2     reserved
 *   48      160   key id (the KMS key that wrapped the data key)
 *   208     256   wrapped data key
 *   464     1     key version label length (0: none)
 *   465     43    key version label: which version of the KMS key wrapped the data key (the local key
 *                 file's version number, an AWS key material id cut to 40 characters + "..."),
 *                 for `verity-admin encryption status`; informational, never trusted for unwrapping
 *   508     4     CRC32C of bytes [0, 508)
 *
 * Headers written before at-rest encryption hold zeros at 40..508: algorithm 0, no key, no label.
 * Re-wrapping (key rotation) rewrites only the key id, wrapped key and label (log/rewrap.intent).
 */

import { crc32c } from "@node-rs/crc32";
import { SEGMENT_HEADER_BYTES, SEGMENT_KEY_ID_BYTES_MAX, SEGMENT_WRAPPED_KEY_BYTES_MAX } from "../limits.js";
import { hex, readU32, readU64, writeU64 } from "./record.js";
import type { LogIndex } from "./types.js";

export const SEGMENT_MAGIC = Buffer.from("VRTYSEG\0", "latin1");
export const SEGMENT_FORMAT_VERSION = 1;
/**
 * The format version of an encrypted segment's header: 3, records sealed in units (one AEAD call
 * per unit, src/log/record.ts). A build from before at-rest encryption ignored the algorithm byte
 * and would read sealed payloads as plaintext, and a build that sealed each record on its own
 * (version 2) would misread unit frames; both refuse version 3 ("upgrade VerityDB") instead.
 * Plaintext segments keep version 1, readable by every build.
 */
export const SEGMENT_FORMAT_VERSION_ENCRYPTED = 3;
/**
 * Version 2 sealed each record with its own nonce and tag. It was never released (only test
 * builds wrote it) and this build does not read it: such a segment is refused, saying so.
 */
export const SEGMENT_FORMAT_VERSION_PER_RECORD = 2;

/** Encryption algorithms a segment header can name. */
export const EncryptionAlgorithm = { NONE: 0, AES_256_GCM: 1 } as const;
export type EncryptionAlgorithm = (typeof EncryptionAlgorithm)[keyof typeof EncryptionAlgorithm];

export interface SegmentHeader {
  /** The segment's sequence number: 0 for the first segment, then 1, 2, ... */
  sequence: number;
  /** 16 bytes identifying the cluster; a segment from another cluster is refused. */
  clusterId: Uint8Array;
  /** Index of the first record this segment holds (or will hold). */
  baseIndex: LogIndex;
  /**
   * At-rest encryption: the algorithm, the KMS key id (UTF-8), the wrapped data key and the key
   * version label (see `keyVersionLabel`; absent in plaintext segments and in headers that predate it).
   */
  encryption: { algorithm: EncryptionAlgorithm; keyId: Uint8Array; wrappedKey: Uint8Array; keyVersion?: string };
}

const KEY_ID_OFFSET = 48;
const WRAPPED_KEY_OFFSET = KEY_ID_OFFSET + SEGMENT_KEY_ID_BYTES_MAX;
const KEY_VERSION_OFFSET = WRAPPED_KEY_OFFSET + SEGMENT_WRAPPED_KEY_BYTES_MAX;
/** Room for the key version label in the header. */
export const KEY_VERSION_LABEL_BYTES_MAX = 43;
const CRC_OFFSET = SEGMENT_HEADER_BYTES - 4;

/** A header's offset of the wrapped data key (named by errors about it). */
export const SEGMENT_WRAPPED_KEY_OFFSET = WRAPPED_KEY_OFFSET;

/**
 * The key version as stored in a header: printable ASCII, at most KEY_VERSION_LABEL_BYTES_MAX bytes
 * (longer versions, such as AWS key material ids, keep their first 40 characters and "...").
 */
export function keyVersionLabel(version: string): string {
  const printable = version.replace(/[^\x20-\x7e]/g, "?");
  return printable.length <= KEY_VERSION_LABEL_BYTES_MAX ? printable : printable.slice(0, KEY_VERSION_LABEL_BYTES_MAX - 3) + "...";
}

/** The plaintext segment's (algorithm 0) encryption fields. */
export function plaintextEncryption(): SegmentHeader["encryption"] {
  return { algorithm: EncryptionAlgorithm.NONE, keyId: new Uint8Array(0), wrappedKey: new Uint8Array(0) };
}

export function encodeSegmentHeader(header: SegmentHeader): Buffer {
  const { keyId, wrappedKey } = header.encryption;
  if (header.clusterId.length !== 16) throw new RangeError("cluster id must be 16 bytes");
  if (keyId.length > SEGMENT_KEY_ID_BYTES_MAX || wrappedKey.length > SEGMENT_WRAPPED_KEY_BYTES_MAX) {
    throw new RangeError("encryption key fields do not fit the segment header");
  }
  const buf = Buffer.alloc(SEGMENT_HEADER_BYTES);
  SEGMENT_MAGIC.copy(buf, 0);
  buf.writeUInt16LE(header.encryption.algorithm === EncryptionAlgorithm.NONE ? SEGMENT_FORMAT_VERSION : SEGMENT_FORMAT_VERSION_ENCRYPTED, 8);
  buf.writeUInt16LE(SEGMENT_HEADER_BYTES, 10);
  buf.writeUInt32LE(header.sequence, 12);
  buf.set(header.clusterId, 16);
  writeU64(buf, header.baseIndex, 32);
  buf[40] = header.encryption.algorithm;
  buf.writeUInt16LE(keyId.length, 42);
  buf.writeUInt16LE(wrappedKey.length, 44);
  buf.set(keyId, KEY_ID_OFFSET);
  buf.set(wrappedKey, WRAPPED_KEY_OFFSET);
  const label = Buffer.from(keyVersionLabel(header.encryption.keyVersion ?? ""), "latin1");
  buf[KEY_VERSION_OFFSET] = label.length;
  label.copy(buf, KEY_VERSION_OFFSET + 1);
  buf.writeUInt32LE(crc32c(buf.subarray(0, CRC_OFFSET)), CRC_OFFSET);
  return buf;
}

export type HeaderDecodeResult = { ok: true; header: SegmentHeader } | { ok: false; reason: string };

/** Decodes and checks a segment header; never throws on any input. */
export function decodeSegmentHeader(buf: Uint8Array): HeaderDecodeResult {
  if (buf.length < SEGMENT_HEADER_BYTES) {
    return { ok: false, reason: `file is ${buf.length} bytes, shorter than the ${SEGMENT_HEADER_BYTES}-byte segment header` };
  }
  if (!Buffer.from(buf.buffer, buf.byteOffset, 8).equals(SEGMENT_MAGIC)) {
    return { ok: false, reason: "bad magic: this is not a VerityDB segment file" };
  }
  const stored = readU32(buf, CRC_OFFSET);
  const actual = crc32c(Buffer.from(buf.buffer, buf.byteOffset, CRC_OFFSET));
  if (stored !== actual) return { ok: false, reason: `segment header checksum mismatch (stored ${hex(stored)}, computed ${hex(actual)})` };
  const view = Buffer.from(buf.buffer, buf.byteOffset, SEGMENT_HEADER_BYTES);
  const version = view.readUInt16LE(8);
  if (version === SEGMENT_FORMAT_VERSION_PER_RECORD) {
    return { ok: false, reason: `segment format version ${SEGMENT_FORMAT_VERSION_PER_RECORD} (records sealed one by one, written only by unreleased test builds) is not read by this build, which seals records in units (version ${SEGMENT_FORMAT_VERSION_ENCRYPTED}); recreate the log` };
  }
  if (version !== SEGMENT_FORMAT_VERSION && version !== SEGMENT_FORMAT_VERSION_ENCRYPTED) {
    return { ok: false, reason: `segment format version ${version} is not supported by this build (it reads versions ${SEGMENT_FORMAT_VERSION} and ${SEGMENT_FORMAT_VERSION_ENCRYPTED}); upgrade VerityDB` };
  }
  if (view.readUInt16LE(10) !== SEGMENT_HEADER_BYTES) return { ok: false, reason: "unexpected segment header length" };
  const keyIdLength = view.readUInt16LE(42);
  const wrappedKeyLength = view.readUInt16LE(44);
  const algorithm = view[40]!;
  const labelLength = view[KEY_VERSION_OFFSET]!;
  if (keyIdLength > SEGMENT_KEY_ID_BYTES_MAX || wrappedKeyLength > SEGMENT_WRAPPED_KEY_BYTES_MAX || algorithm > 1 ||
      labelLength > KEY_VERSION_LABEL_BYTES_MAX || (algorithm === 1 && (keyIdLength === 0 || wrappedKeyLength === 0)) ||
      (algorithm === 1) !== (version === SEGMENT_FORMAT_VERSION_ENCRYPTED)) {
    return { ok: false, reason: "segment header encryption fields out of range" };
  }
  const baseIndex = readU64(view, 32);
  if (!Number.isSafeInteger(baseIndex) || baseIndex < 1) return { ok: false, reason: `base index ${baseIndex} out of range` };
  return {
    ok: true,
    header: {
      sequence: view.readUInt32LE(12),
      clusterId: Uint8Array.prototype.slice.call(view, 16, 32),
      baseIndex: baseIndex as LogIndex,
      encryption: {
        algorithm: algorithm as EncryptionAlgorithm,
        keyId: Uint8Array.prototype.slice.call(view, KEY_ID_OFFSET, KEY_ID_OFFSET + keyIdLength),
        wrappedKey: Uint8Array.prototype.slice.call(view, WRAPPED_KEY_OFFSET, WRAPPED_KEY_OFFSET + wrappedKeyLength),
        ...(labelLength === 0 ? {} : { keyVersion: view.toString("latin1", KEY_VERSION_OFFSET + 1, KEY_VERSION_OFFSET + 1 + labelLength) }),
      },
    },
  };
}

/** Segment file names: `00000000.segment` ... and `current.segment`. */
export const CURRENT_SEGMENT_NAME = "current.segment";
export function sealedSegmentName(sequence: number): string {
  return `${sequence.toString().padStart(8, "0")}.segment`;
}
export function sparseIndexName(sequence: number): string {
  return `${sequence.toString().padStart(8, "0")}.index`;
}
const SEALED_NAME = /^(\d{8,10})\.segment$/;
/** The sequence number in a sealed segment's file name, or undefined for any other name. */
export function parseSealedSegmentName(name: string): number | undefined {
  const m = SEALED_NAME.exec(name);
  return m === null ? undefined : Number(m[1]);
}

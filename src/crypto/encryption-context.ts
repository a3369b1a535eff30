/**
 * The encryption context: what a wrapped data key is bound to. Every KMS provider authenticates it
 * together with the data key (AWS KMS as its EncryptionContext, the local provider as GCM associated
 * data), so a wrapped key copied into another file's header, or another cluster's, does not unwrap.
 *
 * The file identity is logical and stable for the life of the file's data key: a segment is
 * `log/segment/00000005` both as `current.segment` and after sealing renames it, because the key
 * is made once, when the segment is created. Where the bytes were actually read from (for error
 * messages) travels separately, as a KeyLocation.
 */

import { InvalidArgumentError } from "../errors.js";
import { ENCRYPTION_CONTEXT_FIELD_BYTES_MAX } from "./crypto-limits.js";

/** What a data key is bound to. Both fields are authenticated by the KMS on every unwrap. */
export interface EncryptionContext {
  /** The cluster's id as text (the UUID in meta/state.json); a key of another cluster never unwraps. */
  readonly clusterId: string;
  /** The file's logical identity, from the helpers below; never a path that changes on rename. */
  readonly fileIdentity: string;
}

/** Where a wrapped key was read from, for error messages only (it is not bound). */
export interface KeyLocation {
  /** The file, relative to the data directory where possible. */
  readonly file: string;
  /** Byte offset of the wrapped key in that file (208 in a segment header). */
  readonly offset: number;
}

/** The identity of segment `sequence`, the same before and after sealing renames it. */
export function segmentFileIdentity(sequence: number): string {
  return `log/segment/${sequence.toString().padStart(8, "0")}`;
}

/** The identity of a tenant's projection database. */
export function projectionFileIdentity(tenantId: string): string {
  return `projections/tenant_${tenantId}`;
}

/** The identity of the event index (`state/events.sqlite`: stream names, event ids, request outcomes). */
export function eventIndexFileIdentity(): string {
  return "state/events";
}

/** The identity of a backup object (a snapshot archive or an uploaded segment), by its name in the backup. */
export function backupFileIdentity(objectName: string): string {
  return `backup/${objectName}`;
}

const PRINTABLE = /^[\x21-\x7e]+$/;

/** Refuses an empty, over-long or non-printable field: these strings go into AAD, KMS requests and logs. */
export function checkEncryptionContext(context: EncryptionContext): void {
  for (const [name, value] of [["cluster id", context.clusterId], ["file identity", context.fileIdentity]] as const) {
    if (value.length === 0 || !PRINTABLE.test(value)) {
      throw new InvalidArgumentError(`encryption context ${name} ${JSON.stringify(value)} must be non-empty printable ASCII without spaces`);
    }
    if (value.length > ENCRYPTION_CONTEXT_FIELD_BYTES_MAX) {
      throw new InvalidArgumentError(
        `encryption context ${name} is ${value.length} bytes, over ENCRYPTION_CONTEXT_FIELD_BYTES_MAX (${ENCRYPTION_CONTEXT_FIELD_BYTES_MAX})`,
      );
    }
  }
}

/**
 * The context as unambiguous bytes for AAD: each field as a 2-byte little-endian length and its
 * bytes, in a fixed order, so no two different contexts encode alike.
 */
export function encodeEncryptionContext(context: EncryptionContext): Buffer {
  checkEncryptionContext(context);
  const cluster = Buffer.from(context.clusterId, "latin1");
  const file = Buffer.from(context.fileIdentity, "latin1");
  const out = Buffer.alloc(2 + cluster.length + 2 + file.length);
  out.writeUInt16LE(cluster.length, 0);
  cluster.copy(out, 2);
  out.writeUInt16LE(file.length, 2 + cluster.length);
  file.copy(out, 4 + cluster.length);
  return out;
}

/** The context as a KMS EncryptionContext map (AWS KMS logs it in CloudTrail: it names, never reveals). */
export function encryptionContextMap(context: EncryptionContext): Record<string, string> {
  checkEncryptionContext(context);
  return { "verity:cluster": context.clusterId, "verity:file": context.fileIdentity };
}

/** Human-readable form for messages. */
export function describeEncryptionContext(context: EncryptionContext): string {
  return `cluster ${context.clusterId}, file ${context.fileIdentity}`;
}

/**
 * Encrypted snapshot archives (`verity-backup snapshot` with `[encryption]` on, issue 9):
 *
 *   offset  size  field
 *   0       8     magic "VRTYSNP1"
 *   8       2     prologue length P (little-endian), at most ARCHIVE_PROLOGUE_BYTES_MAX
 *   10      P     JSON {"cluster_id": "<uuid>", "file_identity": "backup/<archive name>"}
 *   10+P    ...   the tar.gz, encrypted in chunks (src/crypto/chunk-cipher.ts: header with key id and
 *                 wrapped data key, then AES-256-GCM chunks of 64 KiB)
 *
 * The prologue is in the clear because a restore onto an empty directory knows neither the cluster
 * id nor the name the archive had when it was made, and needs both to build the encryption context
 * before it can unwrap the data key. It is not trusted: the context is authenticated by the KMS at
 * unwrap and is in every chunk's associated data, so an edited prologue fails like a wrong key.
 * The archive's name is fixed at creation: renaming the file later does not matter.
 */

import { closeSync, openSync, readSync } from "node:fs";
import type { Transform } from "node:stream";
import type { AtRestEncryption } from "../crypto/at-rest.js";
import { createDecryptingStream, createEncryptingStream, decodeEncryptedFileHeader } from "../crypto/chunk-cipher.js";
import { backupFileIdentity, type EncryptionContext } from "../crypto/encryption-context.js";
import type { KeyProvider } from "../crypto/kms.js";
import { FailedPreconditionError } from "../errors.js";
import { DamagedBackupError } from "./manifest.js";

export const ENCRYPTED_ARCHIVE_MAGIC = Buffer.from("VRTYSNP1", "latin1");
/** The prologue's JSON is at most this long. */
export const ARCHIVE_PROLOGUE_BYTES_MAX = 1024;
/** Bytes read from the start of an archive to tell what it is (prologue and chunk-file header). */
const ARCHIVE_HEAD_BYTES = 10 + ARCHIVE_PROLOGUE_BYTES_MAX + 1024;

/** How to write an encrypted archive: the clear prologue, then everything through `encrypt`. */
export interface ArchiveEncryptionWriter {
  readonly prologue: Buffer;
  readonly encrypt: Transform;
}

/** The prologue and encrypting stream for a new archive named `archiveName` (its base name). */
export async function encryptArchive(encryption: AtRestEncryption, archiveName: string): Promise<ArchiveEncryptionWriter> {
  const context: EncryptionContext = { clusterId: encryption.clusterId, fileIdentity: backupFileIdentity(archiveName) };
  const json = Buffer.from(JSON.stringify({ cluster_id: context.clusterId, file_identity: context.fileIdentity }), "utf8");
  const prologue = Buffer.alloc(10 + json.length);
  ENCRYPTED_ARCHIVE_MAGIC.copy(prologue, 0);
  prologue.writeUInt16LE(json.length, 8);
  json.copy(prologue, 10);
  return { prologue, encrypt: await createEncryptingStream(encryption.provider, context) };
}

/** What the start of an archive says about it. */
export type ArchiveKind =
  | { readonly kind: "plain" }
  | { readonly kind: "encrypted"; readonly context: EncryptionContext; readonly keyId: string; readonly bodyOffset: number };

/** Reads the head of `archive`: a plain tar.gz, or an encrypted one with its context and key id. */
export function inspectArchive(archive: string): ArchiveKind {
  const fd = openSync(archive, "r");
  let head: Buffer;
  try {
    const buf = Buffer.alloc(ARCHIVE_HEAD_BYTES);
    head = buf.subarray(0, readSync(fd, buf, 0, buf.length, 0));
  } finally {
    closeSync(fd);
  }
  if (head.length < 8 || !head.subarray(0, 8).equals(ENCRYPTED_ARCHIVE_MAGIC)) return { kind: "plain" };
  const broken = (detail: string): DamagedBackupError => new DamagedBackupError(archive, detail);
  if (head.length < 10) throw broken("the encrypted archive ends inside its prologue");
  const length = head.readUInt16LE(8);
  if (length > ARCHIVE_PROLOGUE_BYTES_MAX || head.length < 10 + length) throw broken("the encrypted archive's prologue is damaged or cut short");
  let parsed: { cluster_id?: unknown; file_identity?: unknown };
  try {
    parsed = JSON.parse(head.toString("utf8", 10, 10 + length)) as typeof parsed;
  } catch {
    throw broken("the encrypted archive's prologue is not JSON");
  }
  if (typeof parsed.cluster_id !== "string" || typeof parsed.file_identity !== "string") throw broken("the encrypted archive's prologue lacks cluster_id or file_identity");
  const header = decodeEncryptedFileHeader(head.subarray(10 + length), archive);
  if (header === "more") throw broken("the encrypted archive ends inside its key header");
  return { kind: "encrypted", context: { clusterId: parsed.cluster_id, fileIdentity: parsed.file_identity }, keyId: header.keyId, bodyOffset: 10 + length };
}

/**
 * The decrypting stream for an encrypted archive, or a clear refusal when no key provider was given.
 * The stream fails (CorruptionError naming the archive) on a wrong key, damage or a cut.
 */
export function decryptArchive(archive: string, kind: ArchiveKind & { kind: "encrypted" }, provider: KeyProvider | undefined): Transform {
  if (provider === undefined) {
    throw new FailedPreconditionError(
      `${archive} is encrypted (cluster ${kind.context.clusterId}, data key wrapped by KMS key ${kind.keyId}): give --config <a verity-server ` +
        "config file> whose [encryption] section names that key (kms_provider and kms_key_id: the same key file, or the same KMS key), then restore again",
    );
  }
  return createDecryptingStream(provider, kind.context, archive);
}

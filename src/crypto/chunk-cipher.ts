/**
 * Whole-file encryption in chunks, for files that are written once as a stream: backup archives
 * (`verity-backup snapshot`), projection checkpoints copied into a snapshot, uploaded index files.
 * (Live SQLite databases are encrypted page by page by SQLite itself: docs/encryption.md.)
 *
 * Encrypted file, little-endian:
 *
 *   offset  size  field
 *   0       8     magic "VRTYENC\0"
 *   8       2     format version (1)
 *   10      2     header length H = 20 + k + w
 *   12      4     plaintext bytes per chunk (C)
 *   16      2     key id length k
 *   18      2     wrapped data key length w
 *   20      k     key id (the KMS key that wrapped the data key)
 *   20+k    w     wrapped data key (bound to the file's encryption context by the KMS)
 *   H       ...   chunks: nonce (12) | ciphertext (C bytes; the last chunk 0..C) | tag (16)
 *
 * Each chunk's associated data is "VRTYCHK1" | SHA-256 of the header | the encoded encryption
 * context | chunk index (u64) | final flag (u8). The index stops chunks from being reordered,
 * dropped or repeated; the final flag, set only on the last chunk, makes a file cut at a chunk
 * boundary fail (as the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizar does); the
 * header hash authenticates the header. Every chunk has a fresh random nonce and files get fresh
 * data keys, so no (key, nonce) pair repeats.
 */

import type { KeyObject } from "node:crypto";
import { createCipheriv, createDecipheriv, createHash, createSecretKey, randomBytes } from "node:crypto";
import { Transform } from "node:stream";
import type { TransformCallback } from "node:stream";
import { CorruptionError, InvalidArgumentError, invariant } from "../errors.js";
import {
  DATA_KEY_BYTES,
  FILE_CHUNK_BYTES,
  FILE_CHUNKS_MAX,
  GCM_NONCE_BYTES,
  GCM_TAG_BYTES,
  KMS_KEY_ID_BYTES_MAX,
  RECORD_SEAL_OVERHEAD_BYTES,
  WRAPPED_KEY_BYTES_MAX,
} from "./crypto-limits.js";
import type { EncryptionContext } from "./encryption-context.js";
import { encodeEncryptionContext } from "./encryption-context.js";
import type { KeyProvider } from "./kms.js";

export const ENCRYPTED_FILE_MAGIC = Buffer.from("VRTYENC\0", "latin1");
export const ENCRYPTED_FILE_FORMAT_VERSION = 1;
const FIXED_HEADER_BYTES = 20;
const CHUNK_AAD_MAGIC = Buffer.from("VRTYCHK1", "latin1");
const TWO_32 = 2 ** 32;

export interface EncryptedFileHeader {
  readonly keyId: string;
  readonly wrappedKey: Buffer;
  readonly chunkBytes: number;
  /** The header exactly as stored (its hash is in every chunk's AAD). */
  readonly bytes: Buffer;
}

export function encodeEncryptedFileHeader(keyId: string, wrappedKey: Uint8Array, chunkBytes = FILE_CHUNK_BYTES): EncryptedFileHeader {
  const id = Buffer.from(keyId, "utf8");
  if (id.length === 0 || id.length > KMS_KEY_ID_BYTES_MAX || wrappedKey.length === 0 || wrappedKey.length > WRAPPED_KEY_BYTES_MAX) {
    throw new InvalidArgumentError("key id or wrapped key out of range for an encrypted file header");
  }
  if (!Number.isSafeInteger(chunkBytes) || chunkBytes < 1 || chunkBytes > FILE_CHUNK_BYTES) {
    throw new InvalidArgumentError(`chunk size ${chunkBytes} must be 1 to FILE_CHUNK_BYTES (${FILE_CHUNK_BYTES})`);
  }
  const bytes = Buffer.alloc(FIXED_HEADER_BYTES + id.length + wrappedKey.length);
  ENCRYPTED_FILE_MAGIC.copy(bytes, 0);
  bytes.writeUInt16LE(ENCRYPTED_FILE_FORMAT_VERSION, 8);
  bytes.writeUInt16LE(bytes.length, 10);
  bytes.writeUInt32LE(chunkBytes, 12);
  bytes.writeUInt16LE(id.length, 16);
  bytes.writeUInt16LE(wrappedKey.length, 18);
  id.copy(bytes, FIXED_HEADER_BYTES);
  bytes.set(wrappedKey, FIXED_HEADER_BYTES + id.length);
  return { keyId, wrappedKey: Buffer.from(wrappedKey), chunkBytes, bytes };
}

/**
 * Decodes the header at the start of `buf`: the header, or "more" when `buf` is too short to tell.
 * Throws CorruptionError naming `file` when it is not a valid header.
 */
export function decodeEncryptedFileHeader(buf: Buffer, file: string): EncryptedFileHeader | "more" {
  if (buf.length < FIXED_HEADER_BYTES) {
    if (!ENCRYPTED_FILE_MAGIC.subarray(0, Math.min(buf.length, 8)).equals(buf.subarray(0, Math.min(buf.length, 8)))) {
      throw new CorruptionError({ file, offset: 0 }, "not a VerityDB encrypted file (bad magic)");
    }
    return "more";
  }
  if (!buf.subarray(0, 8).equals(ENCRYPTED_FILE_MAGIC)) throw new CorruptionError({ file, offset: 0 }, "not a VerityDB encrypted file (bad magic)");
  const version = buf.readUInt16LE(8);
  if (version !== ENCRYPTED_FILE_FORMAT_VERSION) {
    throw new CorruptionError({ file, offset: 8 }, `encrypted file format version ${version}; this build reads ${ENCRYPTED_FILE_FORMAT_VERSION}`);
  }
  const length = buf.readUInt16LE(10);
  const chunkBytes = buf.readUInt32LE(12);
  const keyIdLength = buf.readUInt16LE(16);
  const wrappedLength = buf.readUInt16LE(18);
  if (length !== FIXED_HEADER_BYTES + keyIdLength + wrappedLength || keyIdLength === 0 || keyIdLength > KMS_KEY_ID_BYTES_MAX ||
      wrappedLength === 0 || wrappedLength > WRAPPED_KEY_BYTES_MAX || chunkBytes < 1 || chunkBytes > FILE_CHUNK_BYTES) {
    throw new CorruptionError({ file, offset: 10 }, "encrypted file header fields out of range");
  }
  if (buf.length < length) return "more";
  const bytes = Buffer.from(buf.subarray(0, length));
  return {
    keyId: bytes.toString("utf8", FIXED_HEADER_BYTES, FIXED_HEADER_BYTES + keyIdLength),
    wrappedKey: bytes.subarray(FIXED_HEADER_BYTES + keyIdLength),
    chunkBytes,
    bytes,
  };
}

/** Seals and opens the chunks of one encrypted file. */
export class FileChunkCipher {
  private readonly key: KeyObject;
  private readonly aad: Buffer;
  private readonly indexOffset: number;

  constructor(dataKey: Uint8Array, context: EncryptionContext, header: EncryptedFileHeader) {
    if (dataKey.length !== DATA_KEY_BYTES) throw new InvalidArgumentError(`a data key is ${DATA_KEY_BYTES} bytes, not ${dataKey.length}`);
    this.key = createSecretKey(Buffer.from(dataKey));
    const prefix = Buffer.concat([CHUNK_AAD_MAGIC, createHash("sha256").update(header.bytes).digest(), encodeEncryptionContext(context)]);
    this.aad = Buffer.alloc(prefix.length + 9);
    prefix.copy(this.aad, 0);
    this.indexOffset = prefix.length;
  }

  seal(index: number, final: boolean, plaintext: Uint8Array): Buffer {
    this.setChunkAad(index, final);
    const nonce = randomBytes(GCM_NONCE_BYTES);
    const cipher = createCipheriv("aes-256-gcm", this.key, nonce, { authTagLength: GCM_TAG_BYTES });
    cipher.setAAD(this.aad);
    return Buffer.concat([nonce, cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
  }

  /** Opens chunk `index`; `at` is the chunk's byte offset in `file`, named by the CorruptionError. */
  open(index: number, final: boolean, sealed: Uint8Array, file: string, at: number): Buffer {
    if (sealed.length < RECORD_SEAL_OVERHEAD_BYTES) {
      throw new CorruptionError({ file, offset: at }, `the file ends inside chunk ${index} (${sealed.length} bytes, less than a nonce and tag): it was cut short`);
    }
    this.setChunkAad(index, final);
    const tagStart = sealed.length - GCM_TAG_BYTES;
    const decipher = createDecipheriv("aes-256-gcm", this.key, sealed.subarray(0, GCM_NONCE_BYTES), { authTagLength: GCM_TAG_BYTES });
    decipher.setAAD(this.aad);
    decipher.setAuthTag(sealed.subarray(tagStart));
    const plaintext = decipher.update(sealed.subarray(GCM_NONCE_BYTES, tagStart));
    try {
      decipher.final();
    } catch {
      plaintext.fill(0);
      throw new CorruptionError({ file, offset: at },
        `chunk ${index}${final ? " (the last one)" : ""} does not authenticate (AES-256-GCM): the file was damaged, tampered with, ` +
          "cut short or extended, or chunks were moved, or it belongs to another file");
    }
    return plaintext;
  }

  private setChunkAad(index: number, final: boolean): void {
    invariant(Number.isSafeInteger(index) && index >= 0 && index < FILE_CHUNKS_MAX, "chunk index within FILE_CHUNKS_MAX");
    this.aad.writeUInt32LE(index % TWO_32, this.indexOffset);
    this.aad.writeUInt32LE(Math.floor(index / TWO_32), this.indexOffset + 4);
    this.aad[this.indexOffset + 8] = final ? 1 : 0;
  }
}

/**
 * A Transform that encrypts a byte stream into the format above under a new data key from
 * `provider`. It holds at most one chunk of plaintext (plus the write being processed).
 */
export async function createEncryptingStream(provider: KeyProvider, context: EncryptionContext, chunkBytes = FILE_CHUNK_BYTES): Promise<Transform> {
  const key = await provider.generateDataKey(context);
  const header = encodeEncryptedFileHeader(key.keyId, key.wrapped, chunkBytes);
  const cipher = new FileChunkCipher(key.plaintext, context, header);
  key.plaintext.fill(0);
  let pending: Buffer = Buffer.alloc(0);
  let index = 0;
  let headerSent = false;
  const sendHeader = (stream: Transform): void => {
    if (!headerSent) stream.push(header.bytes);
    headerSent = true;
  };
  return new Transform({
    transform(data: Buffer, _encoding, done: TransformCallback) {
      sendHeader(this);
      pending = pending.length === 0 ? data : Buffer.concat([pending, data]);
      // Strictly more than a chunk: the last chunk is kept back for flush, which marks it final.
      let start = 0;
      while (pending.length - start > chunkBytes) {
        this.push(cipher.seal(index++, false, pending.subarray(start, start + chunkBytes)));
        start += chunkBytes;
      }
      pending = Buffer.from(pending.subarray(start));
      done();
    },
    flush(done: TransformCallback) {
      sendHeader(this);
      this.push(cipher.seal(index++, true, pending));
      done();
    },
  });
}

/**
 * A Transform that decrypts the format above, failing with CorruptionError (naming `file` and the
 * byte offset) on any damage, including a file cut at a chunk boundary or with chunks added.
 */
export function createDecryptingStream(provider: KeyProvider, context: EncryptionContext, file: string): Transform {
  let buffered: Buffer = Buffer.alloc(0);
  let cipher: FileChunkCipher | undefined;
  let sealedChunkBytes = 0;
  let index = 0;
  let offset = 0;
  const openFullChunks = async (stream: Transform): Promise<void> => {
    if (cipher === undefined) {
      const header = decodeEncryptedFileHeader(buffered, file);
      if (header === "more") return;
      const dataKey = await provider.unwrap(header.wrappedKey, context, { keyId: header.keyId, location: { file, offset: FIXED_HEADER_BYTES } });
      cipher = new FileChunkCipher(dataKey, context, header);
      dataKey.fill(0);
      sealedChunkBytes = header.chunkBytes + RECORD_SEAL_OVERHEAD_BYTES;
      offset = header.bytes.length;
      buffered = buffered.subarray(header.bytes.length);
    }
    let start = 0;
    while (buffered.length - start > sealedChunkBytes) { // a later chunk follows: this one is not the last
      stream.push(cipher.open(index++, false, buffered.subarray(start, start + sealedChunkBytes), file, offset));
      start += sealedChunkBytes;
      offset += sealedChunkBytes;
    }
    buffered = Buffer.from(buffered.subarray(start));
  };
  return new Transform({
    transform(data: Buffer, _encoding, done: TransformCallback) {
      buffered = buffered.length === 0 ? data : Buffer.concat([buffered, data]);
      openFullChunks(this).then(() => done(), (e: unknown) => done(e as Error));
    },
    flush(done: TransformCallback) {
      openFullChunks(this).then(() => {
        if (cipher === undefined) throw new CorruptionError({ file, offset: 0 }, "the file ends inside its header: it was cut short");
        this.push(cipher.open(index++, true, buffered, file, offset));
        done();
      }).catch((e: unknown) => done(e as Error));
    },
  });
}

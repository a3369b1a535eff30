/**
 * The `local` key provider: a master key file on the node's disk (`kms_key_id` is its path), for
 * single-machine deployments, development and tests. Data keys are wrapped with AES-256-GCM under
 * the file's current key version, with the encryption context as associated data.
 *
 * Master key file (JSON, mode 0600, at most LOCAL_KEY_FILE_BYTES_MAX bytes):
 *
 *   {
 *     "format": "verity-local-kms",
 *     "format_version": 1,
 *     "key_id": "local:3f0c8a52-...",          // stable id, stored in every segment header
 *     "current_version": 2,                     // the version new data keys are wrapped with
 *     "versions": [                             // every version ever made, oldest first
 *       { "version": 1, "created_at": "2026-11-02T10:00:00.000Z", "key": "<base64 of 32 bytes>" },
 *       { "version": 2, "created_at": "2026-12-01T09:00:00.000Z", "key": "<base64 of 32 bytes>" }
 *     ],
 *     "sha256": "<hex>"   // SHA-256 of the compact JSON of the fields above, in this order
 *   }
 *
 * Rotation adds a version and makes it current; old versions stay, because data keys (and backups)
 * wrapped under them must still unwrap until they are re-wrapped. A file that group or others can
 * read is refused: `chmod 600` it.
 *
 * Wrapped data key (73 bytes):
 *
 *   offset size field
 *   0      1    wrap format (1)
 *   1      8    key fingerprint: the first 8 bytes of SHA-256("verity-local-kms:" + key_id)
 *   9      4    key version, little-endian
 *   13     12   GCM nonce (random)
 *   25     32   the data key, encrypted
 *   57     16   GCM tag
 *
 * AAD = "VRTYLKW1" + bytes [0, 13) + the encoded encryption context: the key version, the key it
 * belongs to, the cluster and the file are all authenticated.
 */

import { createCipheriv, createDecipheriv, createHash, randomBytes, randomUUID } from "node:crypto";
import { constants as fsConstants, promises as fsp } from "node:fs";
import { dirname } from "node:path";
import { ErrorCode, FailedPreconditionError, IoError, VerityError } from "../errors.js";
import {
  DATA_KEY_BYTES,
  GCM_NONCE_BYTES,
  GCM_TAG_BYTES,
  LOCAL_KEY_FILE_BYTES_MAX,
  LOCAL_KEY_VERSIONS_MAX,
} from "./crypto-limits.js";
import type { EncryptionContext } from "./encryption-context.js";
import { encodeEncryptionContext } from "./encryption-context.js";
import type { GeneratedDataKey, KeyDescription, KeyProvider, UnwrapOptions, WrappedDataKey } from "./kms.js";
import { KmsError, checkWrappedKey, kmsKeyNotFound, wrappedKeyCorruption } from "./kms.js";

export const LOCAL_KEY_FILE_FORMAT = "verity-local-kms";
export const LOCAL_KEY_FILE_FORMAT_VERSION = 1;
/** Permission bits a key file may have: owner read/write only. */
const KEY_FILE_MODE = 0o600;
const GROUP_OTHER_BITS = 0o077;

const WRAP_FORMAT = 1;
const FINGERPRINT_BYTES = 8;
const WRAP_HEADER_BYTES = 1 + FINGERPRINT_BYTES + 4;
/** Size of a wrapped key made by this provider. */
export const LOCAL_WRAPPED_KEY_BYTES = WRAP_HEADER_BYTES + GCM_NONCE_BYTES + DATA_KEY_BYTES + GCM_TAG_BYTES;
const WRAP_AAD_PREFIX = Buffer.from("VRTYLKW1", "latin1");

interface KeyVersion {
  readonly version: number;
  readonly createdAt: string;
  /** 32 bytes of key material; zeroed when the provider is closed. */
  readonly key: Buffer;
}

/** A parsed, checked master key file. */
export interface LocalKeyFile {
  readonly keyId: string;
  readonly currentVersion: number;
  /** Versions by number; always holds currentVersion. */
  readonly versions: ReadonlyMap<number, KeyVersion>;
}

function canonicalBody(file: LocalKeyFile): string {
  const versions = [...file.versions.values()]
    .sort((a, b) => a.version - b.version)
    .map((v) => ({ version: v.version, created_at: v.createdAt, key: v.key.toString("base64") }));
  return JSON.stringify({
    format: LOCAL_KEY_FILE_FORMAT,
    format_version: LOCAL_KEY_FILE_FORMAT_VERSION,
    key_id: file.keyId,
    current_version: file.currentVersion,
    versions,
  });
}

/** The file's bytes: the canonical body plus its SHA-256, pretty-printed for people who look. */
export function encodeLocalKeyFile(file: LocalKeyFile): Buffer {
  const body = canonicalBody(file);
  const sha256 = createHash("sha256").update(body, "utf8").digest("hex");
  const text = JSON.stringify({ ...(JSON.parse(body) as object), sha256 }, null, 2) + "\n";
  if (Buffer.byteLength(text) > LOCAL_KEY_FILE_BYTES_MAX) {
    throw new VerityError(ErrorCode.INTERNAL, `invariant violated: key file would be over LOCAL_KEY_FILE_BYTES_MAX (${LOCAL_KEY_FILE_BYTES_MAX})`);
  }
  return Buffer.from(text, "utf8");
}

function damaged(path: string, detail: string): FailedPreconditionError {
  return new FailedPreconditionError(
    `the master key file ${path} is damaged: ${detail}. Restore it from your copy of the key file ` +
      "(without it the encrypted data cannot be read); do not create a new one over it.",
  );
}

/** Parses and checks a key file's bytes; throws FailedPreconditionError naming `path` on anything wrong. */
export function decodeLocalKeyFile(path: string, bytes: Uint8Array): LocalKeyFile {
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(bytes).toString("utf8"));
  } catch {
    throw damaged(path, "it is not JSON");
  }
  const o = parsed as Record<string, unknown>;
  if (typeof o !== "object" || o === null || o["format"] !== LOCAL_KEY_FILE_FORMAT) throw damaged(path, `it is not a ${LOCAL_KEY_FILE_FORMAT} file`);
  if (o["format_version"] !== LOCAL_KEY_FILE_FORMAT_VERSION) {
    throw new FailedPreconditionError(`the master key file ${path} has format_version ${String(o["format_version"])}; this build reads ${LOCAL_KEY_FILE_FORMAT_VERSION}: upgrade VerityDB`);
  }
  const keyId = o["key_id"];
  const current = o["current_version"];
  const list = o["versions"];
  if (typeof keyId !== "string" || !/^local:[0-9a-f-]{36}$/.test(keyId)) throw damaged(path, "key_id is missing or malformed");
  if (!Number.isSafeInteger(current) || !Array.isArray(list) || list.length === 0 || list.length > LOCAL_KEY_VERSIONS_MAX) {
    throw damaged(path, `current_version or versions is missing or out of range (at most LOCAL_KEY_VERSIONS_MAX = ${LOCAL_KEY_VERSIONS_MAX} versions)`);
  }
  const versions = new Map<number, KeyVersion>();
  for (const entry of list as unknown[]) {
    const v = entry as Record<string, unknown>;
    const key = typeof v?.["key"] === "string" ? Buffer.from(v["key"], "base64") : undefined;
    if (!Number.isSafeInteger(v?.["version"]) || (v["version"] as number) < 1 || typeof v["created_at"] !== "string" ||
        key === undefined || key.length !== DATA_KEY_BYTES || versions.has(v["version"] as number)) {
      throw damaged(path, "a key version is malformed or repeated");
    }
    versions.set(v["version"] as number, { version: v["version"] as number, createdAt: v["created_at"], key });
  }
  if (!versions.has(current as number)) throw damaged(path, `current_version ${String(current)} is not among its versions`);
  const file: LocalKeyFile = { keyId, currentVersion: current as number, versions };
  const expected = createHash("sha256").update(canonicalBody(file), "utf8").digest("hex");
  if (o["sha256"] !== expected) throw damaged(path, "its sha256 does not match its contents");
  return file;
}

/**
 * Reads a key file, refusing one that is not a regular file, is over LOCAL_KEY_FILE_BYTES_MAX, or
 * can be read or written by group or others. The mode is checked on the open handle, so the file
 * checked is the file read.
 */
export async function readLocalKeyFile(path: string): Promise<LocalKeyFile> {
  let handle: fsp.FileHandle;
  try {
    handle = await fsp.open(path, fsConstants.O_RDONLY);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") throw kmsKeyNotFound("local", "open", path, "the local file system", e);
    throw new IoError(path, "open the master key file", e);
  }
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) throw new FailedPreconditionError(`the master key file ${path} is not a regular file`);
    if (process.platform !== "win32" && (stat.mode & GROUP_OTHER_BITS) !== 0) {
      throw new KmsError(
        ErrorCode.FAILED_PRECONDITION, "local", "open",
        `the master key file ${path} can be read or written by group or others (mode ${(stat.mode & 0o777).toString(8).padStart(4, "0")}); ` +
          `anyone who can read it can read the whole database. Run \`chmod 600 ${path}\` (as its owner) and start again.`,
      );
    }
    if (stat.size > LOCAL_KEY_FILE_BYTES_MAX) throw damaged(path, `it is ${stat.size} bytes, over LOCAL_KEY_FILE_BYTES_MAX (${LOCAL_KEY_FILE_BYTES_MAX})`);
    const bytes = Buffer.alloc(stat.size);
    const { bytesRead } = await handle.read(bytes, 0, stat.size, 0);
    return decodeLocalKeyFile(path, bytes.subarray(0, bytesRead));
  } finally {
    await handle.close();
  }
}

async function syncDirectory(path: string): Promise<void> {
  const dir = await fsp.open(dirname(path), fsConstants.O_RDONLY);
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/** Writes `bytes` to a new file `tmp` (mode 0600, refusing to reuse an existing one) and syncs it. */
async function writeNewPrivateFile(tmp: string, bytes: Buffer, busyMessage: string): Promise<void> {
  let handle: fsp.FileHandle;
  try {
    handle = await fsp.open(tmp, "wx", KEY_FILE_MODE);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") throw new FailedPreconditionError(busyMessage);
    throw new IoError(tmp, "create", e);
  }
  try {
    await handle.chmod(KEY_FILE_MODE); // the umask can only remove bits; this states the intent
    await handle.writeFile(bytes);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** What init and rotate report (never key material). */
export interface LocalKeyFileSummary {
  readonly path: string;
  readonly keyId: string;
  readonly keyVersion: string;
  readonly versions: number;
}

/**
 * `verity-admin encryption init-local --output F`: creates a new master key file with one version,
 * mode 0600. Refuses to overwrite anything (ALREADY_EXISTS): a new key file in place of an old one
 * would make every file encrypted under the old one unreadable. Crash-safe: the file appears whole
 * (a synced temporary file, hard-linked into place) or not at all.
 */
export async function initLocalKeyFile(path: string): Promise<LocalKeyFileSummary> {
  const file: LocalKeyFile = {
    keyId: `local:${randomUUID()}`,
    currentVersion: 1,
    versions: new Map([[1, { version: 1, createdAt: new Date().toISOString(), key: randomBytes(DATA_KEY_BYTES) }]]),
  };
  const tmp = `${path}.init.tmp`;
  await writeNewPrivateFile(tmp, encodeLocalKeyFile(file),
    `${tmp} exists: another init-local is running, or one was interrupted (then remove ${tmp} and run it again)`);
  try {
    await fsp.link(tmp, path); // fails with EEXIST instead of replacing, unlike rename
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") {
      throw new VerityError(ErrorCode.ALREADY_EXISTS,
        `${path} exists: init-local never overwrites a key file (data encrypted under it would be lost). Choose another --output path.`);
    }
    throw new IoError(path, "create the master key file", e);
  } finally {
    await fsp.unlink(tmp).catch(() => undefined);
    for (const v of file.versions.values()) v.key.fill(0);
  }
  await syncDirectory(path);
  return { path, keyId: file.keyId, keyVersion: "1", versions: 1 };
}

/**
 * Rotation: adds a new key version to the file and makes it current. Existing data keys keep
 * unwrapping under their old versions; re-wrap them with `rewrap` (only headers change). Running
 * nodes pick the new version up on `reload()` (or on the first unwrap that needs it). Crash-safe
 * (synced temporary file renamed over the old one); two rotations at once are refused, because the
 * later rename would drop the version the earlier one added.
 */
export async function rotateLocalKeyFile(path: string): Promise<LocalKeyFileSummary> {
  const old = await readLocalKeyFile(path);
  try {
    if (old.versions.size >= LOCAL_KEY_VERSIONS_MAX) {
      throw new KmsError(ErrorCode.QUOTA_EXCEEDED, "local", "rewrap",
        `the master key file ${path} holds LOCAL_KEY_VERSIONS_MAX (${LOCAL_KEY_VERSIONS_MAX}) versions; start a new key file and re-wrap to it`);
    }
    const next = Math.max(...old.versions.keys()) + 1;
    const versions = new Map(old.versions);
    versions.set(next, { version: next, createdAt: new Date().toISOString(), key: randomBytes(DATA_KEY_BYTES) });
    const file: LocalKeyFile = { keyId: old.keyId, currentVersion: next, versions };
    const tmp = `${path}.rotate.tmp`;
    await writeNewPrivateFile(tmp, encodeLocalKeyFile(file),
      `${tmp} exists: another rotation is under way, or one was interrupted (then remove ${tmp} and run it again)`);
    try {
      await fsp.rename(tmp, path);
    } catch (e) {
      await fsp.unlink(tmp).catch(() => undefined);
      throw new IoError(path, "replace the master key file", e);
    }
    await syncDirectory(path);
    versions.get(next)!.key.fill(0);
    return { path, keyId: file.keyId, keyVersion: String(next), versions: versions.size };
  } finally {
    for (const v of old.versions.values()) v.key.fill(0);
  }
}

function fingerprintOf(keyId: string): Buffer {
  return createHash("sha256").update(`verity-local-kms:${keyId}`, "utf8").digest().subarray(0, FINGERPRINT_BYTES);
}

/** The local provider. Holds the key file's versions in memory; never writes the file. */
export class LocalKeyProvider implements KeyProvider {
  readonly kind = "local" as const;
  readonly path: string;
  private file: LocalKeyFile;
  private readonly fingerprint: Buffer;
  private closed = false;

  private constructor(path: string, file: LocalKeyFile) {
    this.path = path;
    this.file = file;
    this.fingerprint = fingerprintOf(file.keyId);
  }

  /** Opens the key file named by `kms_key_id` (refusing a group/other-readable one). */
  static async open(path: string): Promise<LocalKeyProvider> {
    return new LocalKeyProvider(path, await readLocalKeyFile(path));
  }

  get keyId(): string {
    return this.file.keyId;
  }

  /**
   * Re-reads the key file after a rotation. The new file must be the same key (same key_id) and
   * hold every version this one holds with the same material: a replaced key file is refused.
   */
  async reload(): Promise<void> {
    this.checkOpen("describe");
    const next = await readLocalKeyFile(this.path);
    const same = next.keyId === this.file.keyId &&
      [...this.file.versions.values()].every((v) => next.versions.get(v.version)?.key.equals(v.key) === true);
    if (!same) {
      for (const v of next.versions.values()) v.key.fill(0);
      throw new FailedPreconditionError(
        `the master key file ${this.path} was replaced by a different key (or lost versions) while the node ran; ` +
          "restore the original file: only rotation (which adds versions) may change it",
      );
    }
    // The old buffers are not zeroed here: an unwrap may hold one between its await and its use,
    // and they hold the same material as the new ones, which stay in memory anyway.
    this.file = next;
  }

  async generateDataKey(context: EncryptionContext): Promise<GeneratedDataKey> {
    this.checkOpen("generate-data-key");
    const plaintext = randomBytes(DATA_KEY_BYTES);
    const wrapped = this.wrap(plaintext, context, this.file.currentVersion, "generate-data-key");
    return { plaintext, ...wrapped };
  }

  async unwrap(wrapped: Uint8Array, context: EncryptionContext, options: UnwrapOptions = {}): Promise<Buffer> {
    this.checkOpen("unwrap");
    const version = await this.versionOf(wrapped, context, options);
    const aad = Buffer.concat([WRAP_AAD_PREFIX, wrapped.subarray(0, WRAP_HEADER_BYTES), encodeEncryptionContext(context)]);
    const nonce = wrapped.subarray(WRAP_HEADER_BYTES, WRAP_HEADER_BYTES + GCM_NONCE_BYTES);
    const body = wrapped.subarray(WRAP_HEADER_BYTES + GCM_NONCE_BYTES, WRAP_HEADER_BYTES + GCM_NONCE_BYTES + DATA_KEY_BYTES);
    const tag = wrapped.subarray(WRAP_HEADER_BYTES + GCM_NONCE_BYTES + DATA_KEY_BYTES);
    const decipher = createDecipheriv("aes-256-gcm", version.key, nonce, { authTagLength: GCM_TAG_BYTES });
    decipher.setAAD(aad);
    decipher.setAuthTag(tag);
    const plaintext = decipher.update(body);
    try {
      decipher.final();
    } catch {
      plaintext.fill(0);
      throw wrappedKeyCorruption("local", context, options.location,
        `authentication failed under key ${this.file.keyId} version ${version.version}`);
    }
    return plaintext;
  }

  /** Re-wraps under the current version; returns the input unchanged when it is already current. */
  async rewrap(wrapped: Uint8Array, context: EncryptionContext, options: UnwrapOptions = {}): Promise<WrappedDataKey> {
    const plaintext = await this.unwrap(wrapped, context, options);
    try {
      const version = Buffer.from(wrapped).readUInt32LE(1 + FINGERPRINT_BYTES);
      if (version === this.file.currentVersion) {
        return { wrapped: Buffer.from(wrapped), keyId: this.file.keyId, keyVersion: String(version) };
      }
      return this.wrap(plaintext, context, this.file.currentVersion, "rewrap");
    } finally {
      plaintext.fill(0);
    }
  }

  async describe(): Promise<KeyDescription> {
    this.checkOpen("describe");
    return { provider: "local", keyId: this.file.keyId, keyVersion: String(this.file.currentVersion), where: this.path };
  }

  /** Zeroes the key material held in memory. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const v of this.file.versions.values()) v.key.fill(0);
  }

  private wrap(plaintext: Buffer, context: EncryptionContext, versionNumber: number, operation: "generate-data-key" | "rewrap"): WrappedDataKey {
    const version = this.file.versions.get(versionNumber)!;
    const header = Buffer.alloc(WRAP_HEADER_BYTES);
    header[0] = WRAP_FORMAT;
    this.fingerprint.copy(header, 1);
    header.writeUInt32LE(versionNumber, 1 + FINGERPRINT_BYTES);
    const nonce = randomBytes(GCM_NONCE_BYTES);
    const cipher = createCipheriv("aes-256-gcm", version.key, nonce, { authTagLength: GCM_TAG_BYTES });
    cipher.setAAD(Buffer.concat([WRAP_AAD_PREFIX, header, encodeEncryptionContext(context)]));
    const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    const result = {
      wrapped: Buffer.concat([header, nonce, body, cipher.getAuthTag()]),
      keyId: this.file.keyId,
      keyVersion: String(versionNumber),
    };
    checkWrappedKey("local", operation, result);
    return result;
  }

  /** Finds the key version a wrapped key names, or throws what is wrong with it. */
  private async versionOf(wrapped: Uint8Array, context: EncryptionContext, options: UnwrapOptions): Promise<KeyVersion> {
    const bytes = Buffer.from(wrapped.buffer, wrapped.byteOffset, wrapped.length);
    if (bytes.length !== LOCAL_WRAPPED_KEY_BYTES || bytes[0] !== WRAP_FORMAT) {
      throw wrappedKeyCorruption("local", context, options.location,
        `it is ${bytes.length} bytes with format byte ${bytes[0] ?? "none"}, not a ${LOCAL_WRAPPED_KEY_BYTES}-byte local wrapped key of format ${WRAP_FORMAT}`);
    }
    if (!bytes.subarray(1, 1 + FINGERPRINT_BYTES).equals(this.fingerprint) ||
        (options.keyId !== undefined && options.keyId !== this.file.keyId)) {
      throw wrappedKeyCorruption("local", context, options.location,
        `it was wrapped by another master key (${options.keyId ?? "fingerprint " + bytes.subarray(1, 1 + FINGERPRINT_BYTES).toString("hex")}), ` +
          `not by ${this.file.keyId} in ${this.path}`);
    }
    const number = bytes.readUInt32LE(1 + FINGERPRINT_BYTES);
    if (!this.file.versions.has(number)) await this.reload(); // rotated since we opened it?
    const version = this.file.versions.get(number);
    if (version === undefined) {
      throw new KmsError(ErrorCode.NOT_FOUND, "local", "unwrap",
        `${options.location?.file ?? context.fileIdentity}: its data key was wrapped by version ${number} of ${this.file.keyId}, ` +
          `which the key file ${this.path} does not hold (it has versions ${[...this.file.versions.keys()].join(", ")}): ` +
          "the key file is older than the data; restore the newest copy of the key file");
    }
    return version;
  }

  private checkOpen(operation: "describe" | "generate-data-key" | "unwrap"): void {
    if (this.closed) throw new KmsError(ErrorCode.FAILED_PRECONDITION, "local", operation, "the local key provider is closed");
  }
}

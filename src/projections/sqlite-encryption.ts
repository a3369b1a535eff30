/**
 * Encrypted SQLite databases (issue 9): the event index (`state/events.sqlite`) and each tenant's
 * projections (`projections/tenant_<id>/projections.sqlite`), with their WAL, are encrypted page by
 * page by SQLite3 Multiple Ciphers (better-sqlite3-multiple-ciphers) when `[encryption]` is on.
 *
 * - Each database has its own random 256-bit data key from the key provider, bound to the file's
 *   identity (projectionFileIdentity(tenant), eventIndexFileIdentity()). Its wrapped form is kept in
 *   a sidecar beside the database, `<name>.key` (projections.key, events.key), in the header format
 *   of encrypted files (chunk-cipher.ts: magic, key id, wrapped key). The sidecar is written
 *   atomically (temporary file, fsync, rename, fsync the directory) BEFORE the database is created,
 *   so a database never exists without the key that reads it.
 * - Cipher: SQLCipher v4 settings (AES-256-CBC, HMAC-SHA512 over every page and its page number, a
 *   random IV per page write). Chosen over chacha20 (ChaCha20-Poly1305, about as fast here) because
 *   its per-page HMAC gives the same "tampering is an error, never garbage" property, AES matches the
 *   rest of VerityDB (AES-NI), and a SQLCipher database can be opened with the raw key by standard
 *   SQLCipher tools for forensics. The key is given raw (`PRAGMA key = "x'<64 hex>'"`): it is already
 *   a random 256-bit key, so no passphrase KDF runs (opening costs 0.3 ms instead of ~100 ms).
 * - `temp_store = MEMORY`, so sorts and temporary tables never spill plaintext into temp files.
 * - A wrong key or a tampered page is SQLITE_NOTADB / SQLITE_CORRUPT from SQLite: mapped to a
 *   CorruptionError (DATA_LOSS) naming the file.
 *
 * The key (plaintext) lives only in memory: in the connection, in the Projector (to hand to the
 * query workers over IPC) and nowhere else; it is never logged, written, or put in argv or env.
 */

import { randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import { Worker } from "node:worker_threads";
import { closeSync, existsSync, openSync, readSync, rmSync } from "node:fs";
import { posix as pathPosix } from "node:path";
import type Database from "better-sqlite3-multiple-ciphers";
import type { AtRestEncryption } from "../crypto/at-rest.js";
import { contextFor } from "../crypto/at-rest.js";
import { decodeEncryptedFileHeader, encodeEncryptedFileHeader, type EncryptedFileHeader } from "../crypto/chunk-cipher.js";
import { DATA_KEY_BYTES, KMS_KEY_ID_BYTES_MAX, WRAPPED_KEY_BYTES_MAX } from "../crypto/crypto-limits.js";
import { eventIndexFileIdentity, projectionFileIdentity, type EncryptionContext } from "../crypto/encryption-context.js";
import type { KeyProvider } from "../crypto/kms.js";
import { CorruptionError, FailedPreconditionError, invariant } from "../errors.js";
import { readFileIfExists, writeFileAtomic } from "../log/atomic-file.js";
import { NodeFileSystem } from "../log/node-fs.js";

/** SQLite3 Multiple Ciphers cipher scheme and its version settings (SQLCipher 4). */
export const SQLITE_CIPHER = "sqlcipher";
export const SQLITE_CIPHER_LEGACY = 4;
const requireHere = createRequire(import.meta.url);

/** A key sidecar is the 20-byte fixed header, a key id and a wrapped key: at most this many bytes. */
export const SQLITE_KEY_SIDECAR_BYTES_MAX = 20 + KMS_KEY_ID_BYTES_MAX + WRAPPED_KEY_BYTES_MAX;
/** The first 16 bytes of every plaintext SQLite database. */
const PLAINTEXT_SQLITE_MAGIC = Buffer.from("SQLite format 3\0", "latin1");

/** The sidecar of `dbPath`: `x/projections.sqlite` -> `x/projections.key`. */
export function keySidecarPath(dbPath: string): string {
  invariant(dbPath.endsWith(".sqlite"), `an encrypted database's name ends in .sqlite: ${dbPath}`);
  return dbPath.slice(0, -".sqlite".length) + ".key";
}

/** The raw key of one database, in memory only. Zero it (`fill(0)`) when the database closes. */
export type SqliteKey = Buffer;

/**
 * What a database file is: absent (or empty: SQLite had not written its first page), a plaintext
 * SQLite database, or something else (encrypted, or not a database at all).
 */
export function databaseFileKind(path: string): "absent" | "plaintext" | "other" {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return "absent";
    throw e;
  }
  try {
    const head = Buffer.alloc(PLAINTEXT_SQLITE_MAGIC.length);
    const n = readSync(fd, head, 0, head.length, 0);
    if (n === 0) return "absent";
    return n === head.length && head.equals(PLAINTEXT_SQLITE_MAGIC) ? "plaintext" : "other";
  } finally {
    closeSync(fd);
  }
}

/** Removes a database, its WAL and shared-memory files and its key sidecar (for a rebuild from the log). */
export function removeDatabaseFiles(dbPath: string): void {
  for (const suffix of ["", "-wal", "-shm", "-journal"]) rmSync(dbPath + suffix, { force: true });
  if (dbPath.endsWith(".sqlite")) rmSync(keySidecarPath(dbPath), { force: true });
}

/** Writes a key sidecar atomically and durably (temporary file, fsync, rename, fsync the directory). */
export async function writeKeySidecar(path: string, keyId: string, wrapped: Uint8Array): Promise<void> {
  await writeFileAtomic(new NodeFileSystem(), path, encodeEncryptedFileHeader(keyId, wrapped).bytes);
}

/** Reads and checks a key sidecar; undefined when there is none. `display` names it in errors. */
export async function readKeySidecar(path: string, display: string): Promise<EncryptedFileHeader | undefined> {
  const bytes = await readFileIfExists(new NodeFileSystem(), path);
  if (bytes === undefined) return undefined;
  if (bytes.length > SQLITE_KEY_SIDECAR_BYTES_MAX) {
    throw new CorruptionError({ file: display, offset: 0 }, `a key sidecar is at most ${SQLITE_KEY_SIDECAR_BYTES_MAX} bytes, this one is ${bytes.length}`);
  }
  const header = decodeEncryptedFileHeader(Buffer.from(bytes), display);
  if (header === "more" || header.bytes.length !== bytes.length) {
    throw new CorruptionError({ file: display, offset: 0 }, `the key sidecar is ${bytes.length} bytes, not one whole header: it was cut short or extended`);
  }
  return header;
}

/**
 * Re-wraps the data key in a key sidecar under the key provider's current key version (rotation,
 * `verity-admin encryption rotate`): only the sidecar changes, the database is not touched. Returns
 * "unchanged" when the provider returned the same wrapped key (already current).
 *
 * Run it on a stopped node, or from inside the node serialised with the projector (which replaces a
 * tenant's directory, key included, on `projection rebuild`): the sidecar is checked to be unchanged
 * just before the new one is renamed over it, which narrows but cannot close that race.
 */
export async function rewrapSidecar(path: string, provider: KeyProvider, context: EncryptionContext): Promise<"rewrapped" | "unchanged"> {
  const header = await readKeySidecar(path, path);
  if (header === undefined) throw new FailedPreconditionError(`the key sidecar ${path} does not exist: nothing to re-wrap`);
  const next = await provider.rewrap(header.wrappedKey, context, { keyId: header.keyId, location: { file: path, offset: 20 + Buffer.byteLength(header.keyId) } });
  if (next.keyId === header.keyId && Buffer.from(next.wrapped).equals(header.wrappedKey)) return "unchanged";
  const again = await readKeySidecar(path, path);
  if (again === undefined || !again.bytes.equals(header.bytes)) {
    throw new FailedPreconditionError(`the key sidecar ${path} changed while it was re-wrapped (a projection rebuild replaced it): run the re-wrap again`);
  }
  await writeKeySidecar(path, next.keyId, next.wrapped);
  return "rewrapped";
}

/** The re-wrappable key sidecars of a data directory, with the file identity each is bound to. */
export function keySidecarsOf(dataDir: string, tenants: readonly string[]): { path: string; fileIdentity: string }[] {
  const out: { path: string; fileIdentity: string }[] = [];
  const events = pathPosix.join(dataDir, "state", "events.key");
  if (existsSync(events)) out.push({ path: events, fileIdentity: eventIndexFileIdentity() });
  for (const tenant of tenants) {
    const path = pathPosix.join(dataDir, "projections", `tenant_${tenant}`, "projections.key");
    if (existsSync(path)) out.push({ path, fileIdentity: projectionFileIdentity(tenant) });
  }
  return out;
}

/** What `openDatabaseKey` found. */
export type DatabaseKeyResult =
  /** Encryption is off and the database is plaintext or new: open it without a key. */
  | { readonly kind: "plaintext" }
  /** The database's key (new, or unwrapped from its sidecar). */
  | { readonly kind: "keyed"; readonly key: SqliteKey; readonly created: boolean }
  /** Encryption is on, and the database exists in plaintext without a sidecar (written before encryption was on). */
  | { readonly kind: "plaintext-existing" };

/**
 * The key of the database at `dbPath` (shown as `display`), before it is opened:
 * - encryption off: a plaintext database (or none) opens as before; a database with a key sidecar is
 *   refused (FAILED_PRECONDITION: turn encryption back on, or move it aside to rebuild);
 * - encryption on, sidecar present: its data key, unwrapped (a wrong or tampered wrapped key is a
 *   CorruptionError from the provider, naming the sidecar);
 * - encryption on, no sidecar, no database: a new data key, its sidecar written before the database;
 * - encryption on, no sidecar, a plaintext database: "plaintext-existing" (the caller rebuilds it);
 * - encryption on, no sidecar, a database that is not plaintext: CorruptionError (the key is lost).
 */
export async function openDatabaseKey(dbPath: string, display: string, encryption: AtRestEncryption | undefined, fileIdentity: string): Promise<DatabaseKeyResult> {
  const sidecar = keySidecarPath(dbPath);
  const sidecarDisplay = keySidecarPath(display);
  const kind = databaseFileKind(dbPath);
  if (encryption === undefined) {
    if (existsSync(sidecar) && kind !== "plaintext") {
      throw new FailedPreconditionError(
        `${display} is encrypted (its data key is wrapped in ${sidecarDisplay}) but [encryption] is off: start with encryption.enabled = true ` +
          `and the key it was written with, or stop the node and move ${pathPosix.dirname(display)} aside so it is rebuilt, in plaintext, from the log`,
      );
    }
    return { kind: "plaintext" };
  }
  const context = contextFor(encryption, fileIdentity);
  const header = await readKeySidecar(sidecar, sidecarDisplay);
  if (header !== undefined) {
    const key = await encryption.provider.unwrap(header.wrappedKey, context, {
      keyId: header.keyId, location: { file: sidecarDisplay, offset: 20 + Buffer.byteLength(header.keyId) },
    });
    invariant(key.length === DATA_KEY_BYTES, "a data key is 32 bytes");
    return { kind: "keyed", key, created: false };
  }
  if (kind === "plaintext") return { kind: "plaintext-existing" };
  if (kind === "other") {
    throw new CorruptionError({ file: display, offset: 0 },
      `the database is encrypted but its key sidecar ${sidecarDisplay} is missing, so it cannot be read. It is derived from the log: ` +
        `stop the node, move ${pathPosix.dirname(display)} aside (or restore ${sidecarDisplay}), and start the node to rebuild it`);
  }
  removeDatabaseFiles(dbPath); // an empty file or stray WAL files from a database that never got its first page
  const generated = await encryption.provider.generateDataKey(context);
  await writeKeySidecar(sidecar, generated.keyId, generated.wrapped);
  return { kind: "keyed", key: generated.plaintext, created: true };
}

/**
 * Keys a connection right after it is opened, before any other statement: the cipher settings, the
 * raw key, and temp_store = MEMORY. SQLite reads nothing until the first statement, so a wrong key
 * shows at `checkKeyedDatabase` (or the first query).
 */
export function keyConnection(db: Database.Database, key: SqliteKey): void {
  invariant(key.length === DATA_KEY_BYTES, "a database key is 32 bytes");
  db.pragma(`cipher = '${SQLITE_CIPHER}'`);
  db.pragma(`legacy = ${SQLITE_CIPHER_LEGACY}`);
  db.pragma(`key = "x'${key.toString("hex")}'"`);
  db.pragma("temp_store = MEMORY");
}

/** The SQLite error code (`SQLITE_...`) of an error, if it is one. */
function sqliteCodeOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === "string" && code.startsWith("SQLITE_") ? code : undefined;
}

/** True when SQLite says the file is not a database or is damaged: a wrong key, a tampered page. */
export function isSqliteCorruption(error: unknown): boolean {
  const code = sqliteCodeOf(error);
  return code !== undefined && (code === "SQLITE_NOTADB" || code.startsWith("SQLITE_CORRUPT"));
}

/** The CorruptionError for a database that does not decrypt or authenticate. */
export function sqliteCorruptionError(display: string, error: unknown, encrypted: boolean): CorruptionError {
  const detail = error instanceof Error ? error.message : String(error);
  return new CorruptionError({ file: display, offset: 0 },
    encrypted
      ? `the encrypted database does not decrypt or authenticate (${detail}): its pages were damaged or tampered with, or it is ` +
          `read with another data key than the one in ${keySidecarPath(display)}. It is derived from the log: stop the node, move ` +
          `${pathPosix.dirname(display)} aside, and start the node to rebuild it`
      : `SQLite reports the database damaged (${detail}). It is derived from the log: stop the node, move ${pathPosix.dirname(display)} aside, and start the node to rebuild it`);
}

/**
 * Reads the schema once, so a wrong key or a damaged first page fails here, as a CorruptionError
 * naming the file, rather than at some later statement.
 */
export function checkKeyedDatabase(db: Database.Database, display: string, encrypted: boolean): void {
  try {
    db.prepare("SELECT COUNT(*) FROM sqlite_schema").pluck().get();
  } catch (e) {
    if (isSqliteCorruption(e)) throw sqliteCorruptionError(display, e, encrypted);
    throw e;
  }
}

/**
 * The worker thread's code (CommonJS, run with `eval`) for copyRekeyed: a consistent copy of the
 * database (VACUUM INTO, still under the old key), then the copy re-keyed (PRAGMA rekey needs a
 * rollback journal, so the copy leaves WAL mode for it and returns to it).
 */
const REKEY_WORKER_SOURCE = `
const { workerData, parentPort } = require("node:worker_threads");
const Database = require(workerData.module);
const keyed = (db, hex) => {
  db.pragma("cipher = '${SQLITE_CIPHER}'");
  db.pragma("legacy = ${SQLITE_CIPHER_LEGACY}");
  db.pragma("key = " + JSON.stringify("x'" + hex + "'"));
  db.pragma("temp_store = MEMORY");
};
try {
  const source = new Database(workerData.source, { readonly: true, fileMustExist: true });
  try {
    keyed(source, workerData.oldKey);
    source.pragma("busy_timeout = 10000");
    source.exec("VACUUM INTO '" + workerData.target.replace(/'/g, "''") + "'");
  } finally {
    source.close();
  }
  const copy = new Database(workerData.target, { fileMustExist: true });
  try {
    keyed(copy, workerData.oldKey);
    copy.pragma("journal_mode = DELETE");
    copy.pragma("rekey = " + JSON.stringify("x'" + workerData.newKey + "'"));
    copy.pragma("journal_mode = WAL");
  } finally {
    copy.close();
  }
  parentPort.postMessage({ ok: true });
} catch (e) {
  parentPort.postMessage({ ok: false, code: e && e.code, message: String(e && e.message) });
}
`;

/**
 * Copies the encrypted database `source` (key `oldKey`) to `target`, re-encrypted under `newKey`,
 * in a worker thread: the copy of a large database takes seconds (about 110 MiB/s measured), and the
 * node's main thread must keep serving Raft meanwhile. The keys go to the thread in memory
 * (workerData), never through argv or the environment. The caller makes sure nothing writes
 * `source` meanwhile (the projector's loop is paused), so the copy is exactly the live database.
 */
export async function copyRekeyed(source: string, target: string, oldKey: SqliteKey, newKey: SqliteKey): Promise<void> {
  const worker = new Worker(REKEY_WORKER_SOURCE, {
    eval: true,
    workerData: { module: requireHere.resolve("better-sqlite3-multiple-ciphers"), source, target, oldKey: oldKey.toString("hex"), newKey: newKey.toString("hex") },
  });
  try {
    const answer = await new Promise<{ ok: boolean; code?: string; message?: string }>((resolve, reject) => {
      worker.once("message", resolve);
      worker.once("error", reject);
      worker.once("exit", (code) => reject(new Error(`the re-key thread exited (code ${code}) before answering`)));
    });
    if (!answer.ok) {
      const error = Object.assign(new Error(answer.message ?? "the re-key copy failed"), { code: answer.code });
      throw isSqliteCorruption(error) ? sqliteCorruptionError(source, error, true) : error;
    }
  } finally {
    await worker.terminate();
  }
}

/** A random key for a scratch database that is deleted afterwards (verify's replay): never wrapped or stored. */
export function scratchDatabaseKey(): SqliteKey {
  return randomBytes(DATA_KEY_BYTES);
}

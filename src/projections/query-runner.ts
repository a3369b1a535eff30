/**
 * Runs one projection query synchronously on a read-only connection. This is the body of a query
 * worker (query-worker.ts) and runs only there: never on the server's main thread, where it would
 * block heartbeats for as long as the query runs.
 *
 * Guarantees:
 * - connections are opened `readonly` with `fileMustExist`, then `PRAGMA query_only = ON` is set
 *   (a query can never set a pragma itself, query-guard.ts), so nothing a query does can write;
 * - every query is checked by query-guard.ts before and after SQLite prepares it;
 * - a query reads one consistent snapshot: the statement runs in its own read transaction, so a
 *   writer committing to the WAL at the same time is seen entirely or not at all;
 * - at most `limit` rows are returned, `truncated` tells whether there were more; at most
 *   QUERY_RESULT_BYTES_MAX bytes (estimated as JSON) are returned, or QUOTA_EXCEEDED;
 * - values: numbers, strings and null as they are; integers are JavaScript numbers (past 2^53 they
 *   lose precision, never a BigInt); a blob is `{ "$base64": "..." }`;
 * - at most QUERY_CONNECTIONS_MAX connections stay open; the least recently used is closed first.
 *   A database file replaced by another (a new inode) is reopened.
 */

import { createHash } from "node:crypto";
import { statSync } from "node:fs";
import Database from "better-sqlite3-multiple-ciphers";
import { ErrorCode, VerityError, invariant } from "../errors.js";
import { prepareQuery, queryErrorOf } from "./query-guard.js";
import { checkKeyedDatabase, isSqliteCorruption, keyConnection, sqliteCorruptionError } from "./sqlite-encryption.js";
import { QUERY_CONNECTIONS_MAX, QUERY_RESULT_BYTES_MAX } from "./query-limits.js";
import type { QueryJob, QueryRows } from "./query-protocol.js";

/** The answer to a missing database file. */
export const NO_PROJECTIONS_DATABASE_MESSAGE = "the tenant has no projections database yet: run a migration first";

/** Bytes counted for a number, null or punctuation in the result estimate. */
const VALUE_BYTES_ESTIMATE = 24;

interface OpenConnection {
  readonly db: Database.Database;
  /** The file the connection has open; a different inode at the same path means the file was replaced. */
  readonly dev: number;
  readonly ino: number;
  /** SHA-256 of the key it was opened with ("" for none): a job with another key reopens it. */
  readonly keyTag: string;
}

function keyTagOf(key: Uint8Array | undefined): string {
  return key === undefined ? "" : createHash("sha256").update(key).digest("hex");
}

/** Open read-only connections by path, least recently used first (a Map keeps insertion order). */
export class ConnectionCache {
  // Invariant: open.size <= QUERY_CONNECTIONS_MAX.
  private readonly open = new Map<string, OpenConnection>();

  /**
   * The connection to `path`, opened read-only with `query_only` on, keyed with `key` when the
   * database is encrypted; NOT_FOUND if there is no such file, CORRUPTION (naming the file) when the
   * key does not decrypt it.
   */
  get(path: string, key?: Uint8Array): Database.Database {
    const file = statOrNotFound(path);
    const keyTag = keyTagOf(key);
    const cached = this.open.get(path);
    if (cached !== undefined) {
      this.open.delete(path);
      if (cached.dev === file.dev && cached.ino === file.ino && cached.keyTag === keyTag) {
        this.open.set(path, cached);
        return cached.db;
      }
      cached.db.close();
    }
    const db = openReadOnly(path, key);
    this.open.set(path, { db, dev: file.dev, ino: file.ino, keyTag });
    // Bounded: runs at most once, the map held at most QUERY_CONNECTIONS_MAX before this insert.
    for (const [oldestPath, oldest] of this.open) {
      if (this.open.size <= QUERY_CONNECTIONS_MAX) break;
      this.open.delete(oldestPath);
      oldest.db.close();
    }
    invariant(this.open.size <= QUERY_CONNECTIONS_MAX, "the connection cache holds at most QUERY_CONNECTIONS_MAX connections");
    return db;
  }

  get size(): number {
    return this.open.size;
  }

  closeAll(): void {
    for (const connection of this.open.values()) connection.db.close();
    this.open.clear();
  }
}

function statOrNotFound(path: string): { dev: number; ino: number } {
  try {
    const stats = statSync(path);
    return { dev: stats.dev, ino: stats.ino };
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") throw new VerityError(ErrorCode.NOT_FOUND, NO_PROJECTIONS_DATABASE_MESSAGE);
    throw new VerityError(ErrorCode.IO_ERROR, `cannot read the tenant's projections database: ${code ?? String(error)}; check the disk and the data directory's permissions`);
  }
}

function openReadOnly(path: string, key: Uint8Array | undefined): Database.Database {
  let db: Database.Database;
  try {
    db = new Database(path, { readonly: true, fileMustExist: true });
  } catch (error) {
    const mapped = queryErrorOf(error);
    throw mapped.code === ErrorCode.NOT_FOUND ? new VerityError(ErrorCode.NOT_FOUND, NO_PROJECTIONS_DATABASE_MESSAGE) : mapped;
  }
  try {
    // Keyed before anything else is read; the key came with the job over IPC (query-protocol.ts).
    if (key !== undefined) keyConnection(db, Buffer.from(key));
    checkKeyedDatabase(db, path, key !== undefined);
  } catch (error) {
    db.close();
    if (error instanceof VerityError) throw error;
    throw isSqliteCorruption(error) ? sqliteCorruptionError(path, error, key !== undefined) : queryErrorOf(error);
  }
  try {
    db.pragma("query_only = ON");
    db.defaultSafeIntegers(false);
    invariant(db.pragma("query_only", { simple: true }) === 1, "a query connection has query_only on");
  } catch (error) {
    db.close();
    throw queryErrorOf(error);
  }
  return db;
}

/** A result value as the answer carries it, and its size in the JSON estimate. */
function convertValue(value: unknown, bytesLeft: number): { value: unknown; bytes: number } {
  if (Buffer.isBuffer(value)) {
    const bytes = Math.ceil(value.length / 3) * 4 + VALUE_BYTES_ESTIMATE;
    // Checked before encoding, so an oversized blob is never copied into a string.
    if (bytes > bytesLeft) return { value: null, bytes };
    return { value: { $base64: value.toString("base64") }, bytes };
  }
  if (typeof value === "string") return { value, bytes: value.length + 2 };
  if (typeof value === "number" || value === null) return { value, bytes: VALUE_BYTES_ESTIMATE };
  // safeIntegers is off, so SQLite values are only numbers, strings, null and Buffers.
  throw new VerityError(ErrorCode.INTERNAL, `invariant violated: a query returned a ${typeof value} value`);
}

function resultTooLarge(): VerityError {
  return new VerityError(
    ErrorCode.QUOTA_EXCEEDED,
    `the query's result is larger than QUERY_RESULT_BYTES_MAX (${QUERY_RESULT_BYTES_MAX} bytes): select fewer columns, smaller values, or fewer rows (WHERE, LIMIT)`,
  );
}

/** Runs one query; throws VerityError for anything refused or failed. */
export function runQuery(cache: ConnectionCache, job: QueryJob): QueryRows {
  const db = cache.get(job.dbPath, job.key);
  const statement = prepareQuery(db, job.sql);
  try {
    statement.raw(true);
    statement.safeIntegers(false);
    const columns = statement.columns().map((column) => column.name);
    const rows: unknown[][] = [];
    let truncated = false;
    let bytes = 0;
    // One read snapshot for the rows and the position they reflect: the projector may commit
    // meanwhile, and a position read apart from the rows could be behind them.
    db.prepare("BEGIN").run();
    let position: number | undefined;
    try {
      position = db.prepare("SELECT applied_position FROM _verity_state WHERE id = 1").pluck().get() as number | undefined;
    } catch {
      position = undefined; // a database without the projector's bookkeeping
    }
    try {
      // Bounded: stops at limit + 1 rows (the extra row only tells that the result was truncated).
      for (const row of statement.iterate(job.params) as IterableIterator<unknown[]>) {
        if (rows.length >= job.limit) {
          truncated = true;
          break;
        }
        const converted: unknown[] = [];
        for (const value of row) {
          const one = convertValue(value, QUERY_RESULT_BYTES_MAX - bytes);
          bytes += one.bytes;
          if (bytes > QUERY_RESULT_BYTES_MAX) throw resultTooLarge();
          converted.push(one.value);
        }
        rows.push(converted);
      }
    } finally {
      db.prepare("COMMIT").run();
    }
    return { columns, rows, truncated, position };
  } catch (error) {
    if (isSqliteCorruption(error)) throw sqliteCorruptionError(job.dbPath, error, job.key !== undefined);
    throw queryErrorOf(error);
  }
}

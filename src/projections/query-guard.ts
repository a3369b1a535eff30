/**
 * What a projection query may be, checked twice: on the SQL text before SQLite sees it, and on
 * the statement SQLite prepared from it.
 *
 * Guarantees (with the read-only, `query_only` connection the worker opens, query-runner.ts):
 * - exactly one statement, and it starts with SELECT, WITH or VALUES;
 * - it never writes (SQLite says the prepared statement is read-only), and it returns rows;
 * - it never ATTACHes or DETACHes a file, runs a PRAGMA (PRAGMA key included) or a `pragma_*`
 *   table-valued function, calls the cipher functions `sqlite3mc_*`,
 *   runs VACUUM (VACUUM INTO writes a copy anywhere), calls load_extension, fts3_tokenizer or the
 *   file functions of SQLite's shell (readfile, writefile, edit), or reads the raw-page and
 *   file-system virtual tables (sqlite_dbpage, fsdir, zipfile).
 *
 * The text check tokenizes the SQL the way SQLite does (comments, '...' strings, "..." `...` and
 * [...] quoted names), so a forbidden name in a comment or a string does not refuse a query, and a
 * forbidden name in quotes (`"load_extension"(...)`, which SQLite accepts) does. Refusals throw
 * VerityError: INVALID_ARGUMENT for what is not one query (empty, malformed, several statements,
 * not a SELECT), PERMISSION_DENIED for what a query may never do (write, ATTACH, PRAGMA, extensions).
 */

import type Database from "better-sqlite3-multiple-ciphers";
import { ErrorCode, VerityError } from "../errors.js";
import { QUERY_SQL_BYTES_MAX } from "./query-limits.js";

/** What is allowed, said in every refusal. */
export const QUERY_ALLOWED =
  "queries are one read-only SELECT over this tenant's projection tables (SELECT, WITH ... SELECT or VALUES, with named :parameters)";

/** Words a query may start with. */
const QUERY_FIRST_WORDS: ReadonlySet<string> = new Set(["select", "with", "values"]);
/** Statements that change the database (or its schema); refused as writes. */
const WRITE_FIRST_WORDS: ReadonlySet<string> = new Set([
  "insert", "update", "delete", "replace", "create", "drop", "alter", "reindex", "analyze", "upsert",
]);
/** Keywords refused wherever they appear outside quotes, with what to say. */
const DENIED_KEYWORDS: ReadonlyMap<string, string> = new Map([
  ["attach", "queries cannot ATTACH a database file"],
  ["detach", "queries cannot DETACH a database"],
  ["pragma", "queries cannot run a PRAGMA, to read or to change a setting (to list the tables, SELECT name, sql FROM sqlite_schema)"],
  ["vacuum", "queries cannot run VACUUM or VACUUM INTO"],
]);
/** Functions refused when called (the name, quoted or not, followed by '('). */
const DENIED_FUNCTIONS: ReadonlyMap<string, string> = new Map([
  ["load_extension", "queries cannot load an extension (load_extension)"],
  ["fts3_tokenizer", "queries cannot call fts3_tokenizer"],
  ["readfile", "queries cannot read files (readfile)"],
  ["writefile", "queries cannot write files (writefile)"],
  ["edit", "queries cannot call edit()"],
]);
/** Virtual tables refused wherever they are named (quoted or not, even as a string). */
const DENIED_TABLES: ReadonlyMap<string, string> = new Map([
  ["sqlite_dbpage", "queries cannot read raw database pages (sqlite_dbpage)"],
  ["fsdir", "queries cannot list files (fsdir)"],
  ["zipfile", "queries cannot read archives (zipfile)"],
]);
/** Table-valued pragma functions (`pragma_table_info`, `pragma_database_list`, ...). */
const PRAGMA_FUNCTION_PREFIX = "pragma_";
/** The cipher functions of SQLite3 Multiple Ciphers (`sqlite3mc_config`, `sqlite3mc_codec_data`, ...): server-only, like PRAGMA key. */
const CIPHER_FUNCTION_PREFIX = "sqlite3mc_";

type TokenKind = "word" | "quoted" | "string" | "variable" | "number" | "punct";

/** A token of the SQL text; `text` is lower-cased (ASCII) and unescaped for names and strings. */
interface Token {
  readonly kind: TokenKind;
  readonly text: string;
}

function refuse(code: ErrorCode, what: string): never {
  throw new VerityError(code, `${what}: ${QUERY_ALLOWED}`);
}

function isSpace(c: number): boolean {
  // SQLite's whitespace: space, \t, \n, \v, \f, \r.
  return c === 0x20 || (c >= 0x09 && c <= 0x0d);
}

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

/** SQLite's identifier characters: letters, digits, '_', '$' and every non-ASCII character. */
function isIdChar(c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || isDigit(c) || c === 0x5f || c === 0x24 || c >= 0x80;
}

function isIdStart(c: number): boolean {
  return isIdChar(c) && !isDigit(c) && c !== 0x24;
}

function asciiLower(text: string): string {
  return text.replace(/[A-Z]/g, (ch) => ch.toLowerCase());
}

/** The index of the quote closing the quoted text opened at `start`; a doubled quote is an escaped one. */
function closingQuote(sql: string, start: number, quote: string): number {
  const unterminated = `the query has an unterminated ${sql[start]}...${quote} starting at character ${start + 1}`;
  let from = start + 1;
  // Bounded: `from` moves forward by at least two characters per pass.
  while (from <= sql.length) {
    const at = sql.indexOf(quote, from);
    if (at === -1) refuse(ErrorCode.INVALID_ARGUMENT, unterminated);
    if (quote !== "]" && sql[at + 1] === quote) {
      from = at + 2;
      continue;
    }
    return at;
  }
  return refuse(ErrorCode.INVALID_ARGUMENT, unterminated);
}

/** The end (exclusive) of a run of characters that satisfy `accept`, starting at `from`. */
function runEnd(sql: string, from: number, accept: (c: number) => boolean): number {
  let end = from;
  while (end < sql.length && accept(sql.charCodeAt(end))) end++;
  return end;
}

/** Splits SQL into tokens as SQLite's tokenizer does, dropping whitespace and comments. */
function tokenize(sql: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  // Bounded: every branch moves `i` forward by at least one character.
  while (i < sql.length) {
    const c = sql.charCodeAt(i);
    const ch = sql[i]!;
    if (isSpace(c)) {
      i++;
    } else if (ch === "-" && sql[i + 1] === "-") {
      const end = sql.indexOf("\n", i + 2);
      i = end === -1 ? sql.length : end + 1;
    } else if (ch === "/" && sql[i + 1] === "*") {
      const end = sql.indexOf("*/", i + 2);
      i = end === -1 ? sql.length : end + 2;
    } else if (ch === "'" || ch === "\"" || ch === "`" || ch === "[") {
      const close = ch === "[" ? "]" : ch;
      const end = closingQuote(sql, i, close);
      const body = sql.slice(i + 1, end);
      const text = close === "]" ? body : body.split(close + close).join(close);
      tokens.push({ kind: ch === "'" ? "string" : "quoted", text: asciiLower(text) });
      i = end + 1;
    } else if (isIdStart(c)) {
      const end = runEnd(sql, i + 1, isIdChar);
      tokens.push({ kind: "word", text: asciiLower(sql.slice(i, end)) });
      i = end;
    } else if (isDigit(c) || (ch === "." && isDigit(sql.charCodeAt(i + 1)))) {
      const end = runEnd(sql, i + 1, (d) => isIdChar(d) || d === 0x2e);
      tokens.push({ kind: "number", text: sql.slice(i, end) });
      i = end;
    } else if (ch === "?" || ch === ":" || ch === "@" || ch === "$" || ch === "#") {
      const end = runEnd(sql, i + 1, isIdChar);
      tokens.push({ kind: "variable", text: sql.slice(i, end) });
      i = end;
    } else {
      tokens.push({ kind: "punct", text: ch });
      i++;
    }
  }
  return tokens;
}

/** The tokens of the one statement, or a refusal when there are none or several. */
function oneStatement(tokens: readonly Token[]): readonly Token[] {
  const semicolon = tokens.findIndex((t) => t.kind === "punct" && t.text === ";");
  const statement = semicolon === -1 ? tokens : tokens.slice(0, semicolon);
  if (semicolon !== -1 && tokens.slice(semicolon).some((t) => !(t.kind === "punct" && t.text === ";"))) {
    refuse(ErrorCode.INVALID_ARGUMENT, "the query holds more than one statement: send one statement per query (a trailing ';' is fine)");
  }
  if (statement.length === 0) refuse(ErrorCode.INVALID_ARGUMENT, "the query is empty (no SQL outside comments)");
  return statement;
}

function checkFirstWord(first: Token): void {
  if (first.kind === "word" && QUERY_FIRST_WORDS.has(first.text)) return;
  const shown = first.text.toUpperCase();
  if (first.kind === "word" && WRITE_FIRST_WORDS.has(first.text)) {
    refuse(ErrorCode.PERMISSION_DENIED, `queries cannot write (${shown}): projections change only through migrations and projection handlers`);
  }
  const denied = first.kind === "word" ? DENIED_KEYWORDS.get(first.text) : undefined;
  if (denied !== undefined) refuse(ErrorCode.PERMISSION_DENIED, denied);
  refuse(ErrorCode.INVALID_ARGUMENT, `the statement starts with ${JSON.stringify(shown)}, which is not a query`);
}

/** Refuses a forbidden keyword, function call or table anywhere in the statement. */
function checkNames(tokens: readonly Token[]): void {
  tokens.forEach((token, index) => {
    if (token.kind === "word") {
      const denied = DENIED_KEYWORDS.get(token.text);
      if (denied !== undefined) refuse(ErrorCode.PERMISSION_DENIED, denied);
    }
    if (token.kind !== "word" && token.kind !== "quoted" && token.kind !== "string") return;
    if (token.text.startsWith(PRAGMA_FUNCTION_PREFIX)) {
      refuse(ErrorCode.PERMISSION_DENIED, `queries cannot use pragma functions (${token.text}); to list the tables, SELECT name, sql FROM sqlite_schema`);
    }
    if (token.text.startsWith(CIPHER_FUNCTION_PREFIX)) {
      refuse(ErrorCode.PERMISSION_DENIED, `queries cannot use the database encryption functions (${token.text})`);
    }
    const table = DENIED_TABLES.get(token.text);
    if (table !== undefined) refuse(ErrorCode.PERMISSION_DENIED, table);
    const next = tokens[index + 1];
    const call = DENIED_FUNCTIONS.get(token.text);
    if (call !== undefined && next !== undefined && next.kind === "punct" && next.text === "(") {
      refuse(ErrorCode.PERMISSION_DENIED, call);
    }
  });
}

/**
 * Checks a query's SQL text before it reaches SQLite: its size, one statement, the first word,
 * and no forbidden keyword, function or table. Throws VerityError; returns nothing when it passes.
 */
export function checkQueryText(sql: string): void {
  if (Buffer.byteLength(sql, "utf8") > QUERY_SQL_BYTES_MAX) {
    throw new VerityError(
      ErrorCode.INVALID_ARGUMENT,
      `the query's SQL is ${Buffer.byteLength(sql, "utf8")} bytes, more than QUERY_SQL_BYTES_MAX (${QUERY_SQL_BYTES_MAX}): shorten it`,
    );
  }
  const statement = oneStatement(tokenize(sql));
  checkFirstWord(statement[0]!);
  checkNames(statement);
}

/** What the check needs of a prepared statement (better-sqlite3's Statement has both). */
export interface PreparedQueryShape {
  /** SQLite's sqlite3_stmt_readonly: the statement makes no direct change to the database file. */
  readonly readonly: boolean;
  /** The statement returns rows (it has result columns). */
  readonly reader: boolean;
}

/** Checks what SQLite says of the prepared statement: it never writes, and it returns rows. */
export function checkPreparedQuery(statement: PreparedQueryShape): void {
  if (!statement.readonly) {
    refuse(ErrorCode.PERMISSION_DENIED, "queries cannot write: projections change only through migrations and projection handlers");
  }
  if (!statement.reader) refuse(ErrorCode.INVALID_ARGUMENT, "the statement returns no rows, so it is not a query");
}

/** The `code` of a better-sqlite3 SqliteError (`SQLITE_...`), or undefined for any other error. */
function sqliteCode(error: unknown): string | undefined {
  if (!(error instanceof Error)) return undefined;
  const code = (error as { code?: unknown }).code;
  return typeof code === "string" && code.startsWith("SQLITE_") ? code : undefined;
}

/**
 * The VerityError for an error better-sqlite3 threw while preparing, binding or running a query.
 * Errors that are already VerityError pass through unchanged.
 */
export function queryErrorOf(error: unknown): VerityError {
  if (error instanceof VerityError) return error;
  const detail = error instanceof Error ? error.message : String(error);
  const code = sqliteCode(error);
  if (code === undefined) {
    if (error instanceof RangeError || error instanceof TypeError) {
      if (/more than one statement/i.test(detail)) {
        return new VerityError(ErrorCode.INVALID_ARGUMENT, `the query holds more than one statement: send one statement per query: ${QUERY_ALLOWED}`);
      }
      if (/no statements/i.test(detail)) return new VerityError(ErrorCode.INVALID_ARGUMENT, `the query is empty: ${QUERY_ALLOWED}`);
      return new VerityError(
        ErrorCode.INVALID_ARGUMENT,
        `the query's parameters do not match its SQL (${detail}): give a value for every :name the SQL uses, ` +
          "named without the ':' (positional ? parameters are not supported)",
      );
    }
    return new VerityError(ErrorCode.INTERNAL, `the query failed unexpectedly: ${detail}`, { cause: error });
  }
  return sqliteErrorOf(code, detail, error);
}

function sqliteErrorOf(code: string, detail: string, cause: unknown): VerityError {
  if (code.startsWith("SQLITE_READONLY") || code === "SQLITE_AUTH") {
    return new VerityError(ErrorCode.PERMISSION_DENIED, `queries cannot write (${detail}): ${QUERY_ALLOWED}`);
  }
  if (code === "SQLITE_ERROR") {
    return new VerityError(ErrorCode.INVALID_ARGUMENT, `SQLite cannot run the query: ${detail}; ${QUERY_ALLOWED}`);
  }
  if (code === "SQLITE_RANGE" || code === "SQLITE_MISMATCH") {
    return new VerityError(ErrorCode.INVALID_ARGUMENT, `the query's parameters do not match its SQL: ${detail}`);
  }
  if (code === "SQLITE_TOOBIG" || code.startsWith("SQLITE_NOMEM")) {
    return new VerityError(ErrorCode.QUOTA_EXCEEDED, `the query needs more memory than a query may use (${detail}): select fewer or smaller values`);
  }
  if (code.startsWith("SQLITE_BUSY") || code.startsWith("SQLITE_LOCKED")) {
    return new VerityError(ErrorCode.UNAVAILABLE, `the projections database is busy (${detail}): retry the query`);
  }
  if (code.startsWith("SQLITE_CORRUPT") || code === "SQLITE_NOTADB") {
    return new VerityError(
      ErrorCode.CORRUPTION,
      `the tenant's projections database is damaged (${detail}): rebuild the tenant's projections, and check the disk`,
    );
  }
  if (code.startsWith("SQLITE_CANTOPEN")) {
    return new VerityError(ErrorCode.NOT_FOUND, `the tenant has no projections database yet: run a migration first (${detail})`);
  }
  if (code.startsWith("SQLITE_IOERR") || code === "SQLITE_FULL") {
    return new VerityError(ErrorCode.IO_ERROR, `reading the tenant's projections database failed (${detail}): check the disk`);
  }
  return new VerityError(ErrorCode.INTERNAL, `SQLite failed the query unexpectedly (${code}: ${detail})`, { cause });
}

/**
 * Prepares a query on a read-only connection after checking its text, then checks the prepared
 * statement. Any refusal or SQLite error is thrown as VerityError.
 */
export function prepareQuery(db: Database.Database, sql: string): Database.Statement<unknown[], unknown> {
  checkQueryText(sql);
  let statement: Database.Statement<unknown[], unknown>;
  try {
    statement = db.prepare<unknown[], unknown>(sql);
  } catch (error) {
    throw queryErrorOf(error);
  }
  checkPreparedQuery(statement);
  return statement;
}

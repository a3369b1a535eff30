import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { ErrorCode, VerityError } from "../../src/errors.js";
import { QUERY_ALLOWED, checkPreparedQuery, checkQueryText, queryErrorOf } from "../../src/projections/query-guard.js";
import { QUERY_SQL_BYTES_MAX } from "../../src/projections/query-limits.js";

function refusal(sql: string): VerityError {
  try {
    checkQueryText(sql);
  } catch (error) {
    expect(error).toBeInstanceOf(VerityError);
    return error as VerityError;
  }
  throw new Error(`expected ${JSON.stringify(sql)} to be refused`);
}

describe("checkQueryText", () => {
  it.each([
    "SELECT 1",
    "select 1;",
    "SELECT 1;;",
    "  /* leading comment */ -- and a line comment\n\tselect 1",
    "WITH a AS (SELECT 1 AS x) SELECT x FROM a",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5) SELECT x FROM c",
    "VALUES (1, 'a'), (2, 'b')",
    "SELECT 'attach pragma load_extension(' AS s -- PRAGMA query_only = OFF",
    "SELECT 1 /* ATTACH 'x' AS y; load_extension('z') */",
    "SELECT edit, \"pragma\", [attach] FROM t", // names, not calls or keywords
    "SELECT replace(name, 'a', 'b'), edit_count FROM t WHERE id = :id AND owner = @owner AND x = $x",
    "SELECT 'it''s' AS s, \"a\"\"b\" FROM t",
    "SELECT x'0102' AS blob",
  ])("allows %j", (sql) => {
    expect(() => checkQueryText(sql)).not.toThrow();
  });

  it.each([
    ["INSERT INTO t VALUES (1)", /cannot write \(INSERT\)/],
    ["update t set a = 1", /cannot write \(UPDATE\)/],
    ["DELETE FROM t", /cannot write \(DELETE\)/],
    ["REPLACE INTO t VALUES (1)", /cannot write \(REPLACE\)/],
    ["CREATE TABLE x (a)", /cannot write \(CREATE\)/],
    ["DROP TABLE t", /cannot write \(DROP\)/],
    ["ALTER TABLE t ADD COLUMN b", /cannot write \(ALTER\)/],
    ["ATTACH DATABASE '/etc/passwd' AS p", /ATTACH/],
    ["SELECT 1; ATTACH '/tmp/x' AS x", /more than one statement/],
    ["DETACH p", /DETACH/],
    ["PRAGMA table_info(t)", /PRAGMA/],
    ["pragma query_only = OFF", /PRAGMA/],
    ["SELECT * FROM pragma_table_info('t')", /pragma functions \(pragma_table_info\)/],
    ["SELECT * FROM \"PRAGMA_DATABASE_LIST\"", /pragma functions/],
    ["SELECT * FROM 'pragma_database_list'", /pragma functions/],
    ["SELECT load_extension('/tmp/evil.so')", /load an extension/],
    ["SELECT \"load_extension\"('/tmp/evil.so')", /load an extension/],
    ["SELECT [load_extension] ('/tmp/evil.so')", /load an extension/],
    ["SELECT LOAD_Extension /* hidden */ -- still\n ('/tmp/evil.so')", /load an extension/],
    ["SELECT readfile('/etc/passwd')", /readfile/],
    ["SELECT writefile('/tmp/x', 'y')", /writefile/],
    ["SELECT edit('x')", /edit/],
    ["SELECT fts3_tokenizer('simple')", /fts3_tokenizer/],
    ["SELECT * FROM sqlite_dbpage", /sqlite_dbpage/],
    ["SELECT * FROM fsdir('/')", /fsdir/],
    ["VACUUM INTO '/tmp/copy.sqlite'", /VACUUM/],
    ["VACUUM", /VACUUM/],
  ])("refuses %j with PERMISSION_DENIED or INVALID_ARGUMENT", (sql, message) => {
    const error = refusal(sql);
    expect(error.message).toMatch(message);
    expect(error.message).toContain(QUERY_ALLOWED);
    const expected = /more than one statement/.test(error.message) ? ErrorCode.INVALID_ARGUMENT : ErrorCode.PERMISSION_DENIED;
    expect(error.code).toBe(expected);
  });

  it.each([
    ["", /empty/],
    ["   \n\t", /empty/],
    ["-- only a comment", /empty/],
    ["/* only a comment */ ;", /empty/],
    ["SELECT 1; SELECT 2", /more than one statement/],
    ["SELECT 1; DELETE FROM t", /more than one statement/],
    ["BEGIN", /starts with "BEGIN", which is not a query/],
    ["EXPLAIN SELECT 1", /not a query/],
    ["(SELECT 1)", /not a query/],
    ["SELECT 'unterminated", /unterminated '...'/],
    ["SELECT \"unterminated", /unterminated "..."/],
    ["SELECT [unterminated", /unterminated \[...\]/],
  ])("refuses %j with INVALID_ARGUMENT", (sql, message) => {
    const error = refusal(sql);
    expect(error.code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(error.message).toMatch(message);
    expect(error.message).toContain(QUERY_ALLOWED);
  });

  it("refuses SQL longer than QUERY_SQL_BYTES_MAX", () => {
    const error = refusal(`SELECT '${"x".repeat(QUERY_SQL_BYTES_MAX)}'`);
    expect(error.code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(error.message).toMatch(/QUERY_SQL_BYTES_MAX/);
  });

  it("refuses a forbidden call however it is spelled, spaced and commented", () => {
    const filler = fc.array(fc.constantFrom(" ", "\n", "\t", "/* c */", "-- c\n", "/**/"), { maxLength: 4 }).map((parts) => parts.join(""));
    const name = fc.constantFrom("load_extension", "readfile", "writefile", "fts3_tokenizer")
      .chain((n) => fc.array(fc.boolean(), { minLength: n.length, maxLength: n.length })
        .map((upper) => [...n].map((ch, i) => (upper[i] ? ch.toUpperCase() : ch)).join("")));
    const quoting = fc.constantFrom((n: string) => n, (n: string) => `"${n}"`, (n: string) => `[${n}]`, (n: string) => `\`${n}\``);
    fc.assert(fc.property(filler, name, quoting, filler, (before, n, quote, between) => {
      const error = refusal(`${before}SELECT 1, ${quote(n)}${between}('/tmp/x')`);
      expect(error.code).toBe(ErrorCode.PERMISSION_DENIED);
    }));
  });
});

describe("checkPreparedQuery", () => {
  it("refuses a statement that writes, and one that returns no rows", () => {
    expect(() => checkPreparedQuery({ readonly: true, reader: true })).not.toThrow();
    expect(() => checkPreparedQuery({ readonly: false, reader: false })).toThrow(expect.objectContaining({ code: ErrorCode.PERMISSION_DENIED }));
    expect(() => checkPreparedQuery({ readonly: true, reader: false })).toThrow(expect.objectContaining({ code: ErrorCode.INVALID_ARGUMENT }));
  });
});

describe("queryErrorOf", () => {
  it("maps better-sqlite3's errors to VerityError codes", () => {
    const sqliteError = (code: string, message: string) => Object.assign(new Error(message), { code });
    expect(queryErrorOf(new RangeError("The supplied SQL string contains more than one statement")).code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(queryErrorOf(new RangeError("Missing named parameter \"id\"")).message).toMatch(/every :name/);
    expect(queryErrorOf(sqliteError("SQLITE_ERROR", "near \"FROM\": syntax error")).code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(queryErrorOf(sqliteError("SQLITE_READONLY", "attempt to write a readonly database")).code).toBe(ErrorCode.PERMISSION_DENIED);
    expect(queryErrorOf(sqliteError("SQLITE_BUSY", "database is locked")).code).toBe(ErrorCode.UNAVAILABLE);
    expect(queryErrorOf(sqliteError("SQLITE_CORRUPT", "database disk image is malformed")).code).toBe(ErrorCode.CORRUPTION);
    expect(queryErrorOf(sqliteError("SQLITE_TOOBIG", "string or blob too big")).code).toBe(ErrorCode.QUOTA_EXCEEDED);
    expect(queryErrorOf(new Error("something else")).code).toBe(ErrorCode.INTERNAL);
  });
});
